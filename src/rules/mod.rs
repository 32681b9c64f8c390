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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::event::Event;
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

/// A rate: `count` per `per`, bursting to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    pub count: u32,
    #[serde(with = "humantime_serde_secs")]
    pub per: Duration,
    pub burst: u32,
}

/// The storm guard of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlastRadius {
    pub max_hosts: usize,
    #[serde(with = "humantime_serde_secs")]
    pub window: Duration,
}

/// The circuit breaker of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Breaker {
    pub failures: u32,
    pub of_last: u32,
    #[serde(with = "humantime_serde_secs")]
    pub cool_down: Duration,
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
    Template {
        #[serde(skip)]
        template: String,
        source: String,
    },
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
    pub rate_rule: Option<Rate>,
    pub rate_host: Option<Rate>,
    /// Set for remediation plugins only (diagnostics are not storm-guarded).
    pub blast_radius: Option<BlastRadius>,
    pub breaker: Breaker,
    pub stop: bool,
}

/// Fleet-wide settings (from the one `policy` section, or the defaults).
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub global: Rate,
    pub host: Rate,
    pub remediation_allowed_rules: Option<BTreeSet<String>>,
    pub chatops_allowed_actions: Option<BTreeSet<String>>,
    pub chatops_rate: Rate,
    #[serde(with = "humantime_serde_secs")]
    pub default_dedup_window: Duration,
    pub default_blast_radius: BlastRadius,
    pub default_breaker: Breaker,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            global: Rate { count: 600, per: Duration::from_secs(60), burst: 100 },
            host: Rate { count: 10, per: Duration::from_secs(600), burst: 5 },
            remediation_allowed_rules: None,
            chatops_allowed_actions: None,
            chatops_rate: Rate { count: 10, per: Duration::from_secs(60), burst: 5 },
            default_dedup_window: Duration::from_secs(600),
            default_blast_radius: BlastRadius { max_hosts: 5, window: Duration::from_secs(900) },
            default_breaker: Breaker { failures: 3, of_last: 5, cool_down: Duration::from_secs(1800) },
        }
    }
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

    /// Appends to `out` the rules that match `event`, in file order, up to and including the first `stop` rule
    /// that acts. `scratch` is reused between calls (no allocation per event once warm).
    pub fn matches(&self, event: &Event, scratch: &mut Vec<u32>, out: &mut Vec<(u32, MatchKind)>) {
        self.index.candidates(event, scratch);
        for &i in scratch.iter() {
            let Some(rule) = self.rules.get(i as usize) else { continue };
            if let Some(kind) = rule.matcher.evaluate(event, rule.dedup.clear_on_resolved) {
                out.push((i, kind));
                if kind == MatchKind::Act && rule.stop {
                    break;
                }
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

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}
