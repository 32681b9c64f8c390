//! The rule set: rules loaded from `rules/*.yaml`, validated and compiled once, matched against events.
//!
//! - [`model`]: the rule file as written (raw serde types; the JSON Schema is generated from them).
//! - [`compile`]: loading and validation into a [`RuleSet`]; every error of every file, with file:line:column.
//! - [`matcher`]: conditions, subject patterns, and the index that picks candidate rules per event.
//! - [`template`]: minijinja templates for targets, arguments and dedup keys (strict, sandboxed).
//!
//! Gates (dedup, rate limits, storm guards) live in [`crate::gate`]; the rule set only says what they are.

pub mod compile;
pub mod matcher;
pub mod model;
pub mod template;

use std::collections::BTreeSet;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::event::Event;
use crate::gate::breaker::BreakerSpec;
use crate::gate::ratelimit::RateSpec;
use crate::plugins::Plugin;

pub use compile::{load_dir, parse_files};
pub use matcher::MatchKind;
use matcher::{CompiledMatch, Index};
pub use model::DedupModeConfig as DedupMode;
use template::{TemplateError, Templates};

/// A problem (or, for warnings, a doubt) in a rule file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleDiagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule `{rule}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Where a rule was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: u64,
    pub column: u64,
}

/// The storm guard of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlastRadius {
    pub max_hosts: NonZeroUsize,
    #[serde(with = "humantime_serde_secs")]
    pub window: Duration,
}

/// The dedup gate of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dedup {
    pub mode: DedupMode,
    #[serde(with = "humantime_serde_secs")]
    pub window: Duration,
    /// Name of the compiled key template; `None` = fingerprint/status/target.
    #[serde(skip)]
    pub key_template: Option<String>,
    /// The key template as written (for display).
    pub key: String,
    pub clear_on_resolved: bool,
}

/// Where a rule acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Host(String),
    /// (compiled template name, source as written)
    HostFrom {
        #[serde(skip)]
        template: String,
        source: String,
    },
    Group(String),
}

/// A rule argument: a literal, or a template rendered per event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgSource {
    Literal(String),
    /// A literal `ssm:/path`: resolved from Parameter Store when the run starts (`crate::secrets`).
    Secret(#[serde(serialize_with = "crate::rules::secret_ref_text")] crate::secrets::SecretRef),
    Template {
        #[serde(skip)]
        template: String,
        source: String,
    },
}

fn secret_ref_text<S: serde::Serializer>(r: &crate::secrets::SecretRef, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(r)
}

/// A validated, compiled rule.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub name: Arc<str>,
    pub description: Option<String>,
    pub origin: Origin,
    pub enabled: bool,
    #[serde(skip)]
    pub matcher: CompiledMatch,
    pub target: Target,
    /// The action as written (`plugin` or `plugin@version`).
    pub action: String,
    #[serde(skip)]
    pub plugin: Arc<Plugin>,
    pub args: Vec<(String, ArgSource)>,
    pub dedup: Dedup,
    pub rate_rule: Option<RateSpec>,
    pub rate_host: Option<RateSpec>,
    /// Set for remediation plugins only (diagnostics are not storm-guarded).
    pub blast_radius: Option<BlastRadius>,
    pub breaker: BreakerSpec,
    pub stop: bool,
    /// The transport the runs use instead of each host's own (None: the host's).
    pub transport: Option<crate::inventory::TransportKind>,
}

/// Fleet-wide settings (from the one `policy` section, or the defaults).
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub global: RateSpec,
    pub host: RateSpec,
    pub remediation_allowed_rules: Option<BTreeSet<String>>,
    pub chatops_allowed_actions: Option<BTreeSet<String>>,
    pub chatops_rate: RateSpec,
    #[serde(with = "humantime_serde_secs")]
    pub default_dedup_window: Duration,
    pub default_blast_radius: BlastRadius,
    pub default_breaker: BreakerSpec,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            global: constant_rate(600, 60, 100),
            host: constant_rate(10, 600, 5),
            remediation_allowed_rules: None,
            chatops_allowed_actions: None,
            chatops_rate: constant_rate(10, 60, 5),
            default_dedup_window: Duration::from_secs(600),
            default_blast_radius: BlastRadius {
                max_hosts: NonZeroUsize::MIN.saturating_add(4),
                window: Duration::from_secs(900),
            },
            default_breaker: constant_breaker(3, 5, 1800),
        }
    }
}

// The defaults are constants, never input; `default_policy_is_valid` runs these once.
fn constant_rate(count: u32, per_secs: u64, burst: u32) -> RateSpec {
    let count = NonZeroU32::new(count).expect("constant count is not zero");
    let burst = NonZeroU32::new(burst).expect("constant burst is not zero");
    RateSpec::new(count, Duration::from_secs(per_secs), burst).expect("constant rate is valid")
}

fn constant_breaker(failures: u32, of_last: u32, cool_down_secs: u64) -> BreakerSpec {
    let failures = NonZeroU32::new(failures).expect("constant failures is not zero");
    let of_last = NonZeroU32::new(of_last).expect("constant of_last is not zero");
    BreakerSpec::new(failures, of_last, Duration::from_secs(cool_down_secs)).expect("constant breaker is valid")
}

/// A loaded rule set. Immutable: a reload builds a new one and swaps it in whole.
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub policy: Policy,
    /// Doubts that do not stop loading (shown by `rules check`).
    pub warnings: Vec<RuleDiagnostic>,
    pub files: Vec<PathBuf>,
    index: Index,
    templates: Templates,
}

impl RuleSet {
    /// An empty rule set (matches nothing; chatops still works under the default policy).
    pub fn empty() -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            policy: Policy::default(),
            warnings: Vec::new(),
            files: Vec::new(),
            index: Index::default(),
            templates: Templates::new(),
        }
    }

    /// Appends to `out` the rules that match `event`, in file order: every acting match up to and including the
    /// first `stop` rule that acts, and every clearing match (a `stop` never keeps a resolved alert from
    /// clearing the dedup keys of the firing rules it matches). `scratch` is reused between calls (no allocation
    /// per event once warm).
    pub fn matches(&self, event: &Event, scratch: &mut Vec<u32>, out: &mut Vec<(u32, MatchKind)>) {
        self.index.candidates(event, scratch);
        let mut stopped = false;
        for &i in scratch.iter() {
            let Some(rule) = self.rules.get(i as usize) else { continue };
            match rule.matcher.evaluate(event, rule.dedup.clear_on_resolved) {
                Some(MatchKind::Act) if !stopped => {
                    out.push((i, MatchKind::Act));
                    stopped = rule.stop;
                }
                Some(MatchKind::Clear) => out.push((i, MatchKind::Clear)),
                _ => {}
            }
        }
    }

    /// Renders one of this set's templates.
    pub fn render(&self, template: &str, context: &minijinja::Value) -> Result<String, TemplateError> {
        self.templates.render(template, context)
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.name == name)
    }

    /// How many enabled rules the index cannot narrow down (evaluated for every event).
    pub fn unindexed(&self) -> usize {
        self.index.unindexed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::event::{AlertStatus, Source};

    #[test]
    fn default_policy_is_valid() {
        let p = super::Policy::default();
        assert_eq!(p.default_blast_radius.max_hosts.get(), 5);
        assert_eq!(p.global.count().get(), 600);
    }

    /// Rules of every condition kind, indexed and not, with a `stop` in the middle.
    const MIXED: &str = "
rules:
  - { name: a, match: { labels: { alertname: A } }, target: { host: web-1 }, action: noop }
  - { name: b, match: { labels: { alertname: { one_of: [A, B] }, sev: { not: low } } }, target: { host: web-1 }, action: noop }
  - { name: c, match: { labels: { sev: { regex: \"crit.*\" } } }, target: { host: web-1 }, action: noop }
  - { name: d, match: { subject: hooks.generic, labels: { x: { absent: true } } }, target: { host: web-1 }, action: noop }
  - { name: e, match: { subject: \"hooks.*\", status: any, annotations: { s: { present: true } } }, target: { host: web-1 }, action: noop, stop: true }
  - { name: f, match: { source: grafana, labels: { sev: crit } }, target: { host: web-1 }, action: noop }
  - { name: g, enabled: false, match: { labels: { alertname: A } }, target: { host: web-1 }, action: noop }
  - { name: h, match: { status: resolved, labels: { alertname: B } }, target: { host: web-1 }, action: noop }
";

    fn arb_event() -> impl Strategy<Value = Event> {
        let value = prop_oneof![Just("A"), Just("B"), Just("low"), Just("crit"), Just("critical"), Just("x\0.>*")];
        let key = prop_oneof![Just("alertname"), Just("sev"), Just("x"), Just("s")];
        (
            proptest::collection::btree_map(key.clone(), value.clone(), 0..4),
            proptest::collection::btree_map(key, value, 0..2),
            prop_oneof![
                Just(Source::Alertmanager),
                Just(Source::Grafana),
                Just(Source::Generic),
                Just(Source::Chatops)
            ],
            prop_oneof![Just("hooks.generic"), Just("hooks.alertmanager"), Just("other"), Just("hooks.a.b")],
            any::<bool>(),
        )
            .prop_map(|(labels, annotations, source, subject, resolved)| Event {
                id: uuid::Uuid::nil(),
                source,
                subject: subject.into(),
                status: if resolved { AlertStatus::Resolved } else { AlertStatus::Firing },
                labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<BTreeMap<_, _>>(),
                annotations: annotations.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
                fingerprint: "f".into(),
                starts_at: None,
                received_at: chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
                correlation_id: "c".into(),
                request: None,
                delivery: None,
                raw: Arc::from(""),
            })
    }

    proptest! {
        /// The index never changes the answer: indexed matching equals a linear scan of every enabled rule.
        #[test]
        fn indexed_matching_equals_a_linear_scan(event in arb_event()) {
            let set = compile::tests::compile(&[("m.yaml", MIXED)]).unwrap_or_else(|e| panic!("{e:#?}"));
            let mut scratch = Vec::new();
            let mut indexed = Vec::new();
            set.matches(&event, &mut scratch, &mut indexed);
            let mut linear = Vec::new();
            let mut stopped = false;
            for (i, rule) in set.rules.iter().enumerate() {
                if !rule.enabled {
                    continue;
                }
                match rule.matcher.evaluate(&event, rule.dedup.clear_on_resolved) {
                    Some(MatchKind::Act) if !stopped => {
                        linear.push((i as u32, MatchKind::Act));
                        stopped = rule.stop;
                    }
                    Some(MatchKind::Clear) => linear.push((i as u32, MatchKind::Clear)),
                    _ => {}
                }
            }
            prop_assert_eq!(indexed, linear);
        }
    }
}

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}
