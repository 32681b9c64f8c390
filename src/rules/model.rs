//! Rule files as written: the raw serde types. `docs/schemas/rules.schema.json` is generated from them
//! (`rune rules schema`); [`super::compile`] turns them into the validated [`super::RuleSet`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::event::Source;

/// One file under `rules/`: a list of rules, and at most one `policy` across all files.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleFileConfig {
    /// Fleet-wide settings: global and per-host rate limits, gate defaults, remediation allow-list, chatops.
    /// Allowed in one file only.
    #[serde(default)]
    #[schemars(with = "Option<PolicyConfig>")]
    pub policy: Option<Spanned<PolicyConfig>>,
    /// Evaluated in file order (files in name order); every match is an independent decision until a `stop` rule.
    #[serde(default)]
    #[schemars(with = "Vec<RuleConfig>")]
    pub rules: Vec<Spanned<RuleConfig>>,
}

/// One rule: which events, which host, which plugin with which arguments, and its gates.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique across all files; `[a-z0-9][a-z0-9_-]*`, at most 64 bytes (it becomes a NATS subject token).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// A disabled rule is loaded and checked but never matches.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(rename = "match")]
    pub match_: MatchConfig,
    pub target: TargetConfig,
    /// `plugin` (its highest version) or `plugin@1.2.3`.
    #[schemars(with = "String")]
    pub action: Spanned<String>,
    /// Plugin arguments. Strings are templates rendered per event; the results are passed as data
    /// (`RUNE_ARG_*` and the BPCS input), never through a shell.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ArgConfig>")]
    pub args: BTreeMap<String, Spanned<ArgConfig>>,
    /// Default: `once_within`, 10 minutes, key = fingerprint/status/target, cleared by `resolved`.
    #[serde(default)]
    pub dedup: Option<DedupConfig>,
    #[serde(default)]
    pub rate_limit: Option<RuleRateLimitConfig>,
    #[serde(default)]
    pub safety: Option<SafetyConfig>,
    /// When this rule matches, later rules are not evaluated for the event.
    #[serde(default)]
    pub stop: bool,
    /// Reach the target through this transport instead of the host's own (`ssm`: every target needs an `ssm`
    /// section in the inventory).
    #[serde(default)]
    pub transport: Option<crate::inventory::TransportKind>,
}

fn default_true() -> bool {
    true
}

/// What a rule matches. Every condition given must hold.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// One source or a list; default: any alert source (chatops requests never match rules).
    #[serde(default)]
    pub source: Option<OneOrMany<Source>>,
    /// NATS-style subject pattern: tokens separated by `.`, `*` matches one token, a final `>` one or more.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub subject: Option<Spanned<String>>,
    #[serde(default)]
    pub status: StatusMatch,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ConditionConfig>")]
    pub labels: BTreeMap<String, Spanned<ConditionConfig>>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ConditionConfig>")]
    pub annotations: BTreeMap<String, Spanned<ConditionConfig>>,
}

/// A single value or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Which alert status a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusMatch {
    #[default]
    Firing,
    Resolved,
    Any,
}

/// A condition on one label or annotation. A plain scalar means `equals`.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionConfig {
    Equals(String),
    Op(Box<ConditionOp>),
}

/// The explicit condition forms; exactly one key.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConditionOp {
    /// The value is exactly this.
    Equals(String),
    /// The value matches this regular expression (Rust `regex` syntax, anchored: it must match the whole value).
    Regex(String),
    /// The value is one of these.
    OneOf(Vec<String>),
    /// `true`: the label is present (any value); `false`: it is absent.
    Present(bool),
    /// `true`: the label is absent.
    Absent(bool),
    /// The inner condition does not hold (an absent label satisfies `not: {equals: x}`).
    Not(ConditionConfig),
}

impl<'de> Deserialize<'de> for ConditionConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ConditionVisitor;
        impl<'de> Visitor<'de> for ConditionVisitor {
            type Value = ConditionConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value to equal, or one of {equals, regex, one_of, present, absent, not}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConditionConfig, E> {
                Ok(ConditionConfig::Equals(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConditionConfig, E> {
                Ok(ConditionConfig::Equals(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConditionConfig, E> {
                Ok(ConditionConfig::Equals(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConditionConfig, E> {
                Ok(ConditionConfig::Equals(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ConditionConfig, A::Error> {
                let op = ConditionOp::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ConditionConfig::Op(Box::new(op)))
            }
        }
        deserializer.deserialize_any(ConditionVisitor)
    }
}

impl JsonSchema for ConditionConfig {
    fn schema_name() -> Cow<'static, str> {
        "Condition".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let op = generator.subschema_for::<ConditionOp>();
        json_schema!({
            "description": "A plain scalar means `equals`; otherwise exactly one of the condition forms.",
            "anyOf": [{ "type": ["string", "integer", "boolean"] }, op]
        })
    }
}

/// Where a rule acts. Exactly one key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetConfig {
    /// A fixed inventory host.
    #[schemars(with = "String")]
    Host(Spanned<String>),
    /// A template rendering to an inventory host name, e.g. `{{ labels.instance | strip_port }}`.
    #[schemars(with = "String")]
    HostFrom(Spanned<String>),
    /// Every host of an inventory group (one decision per host; the blast-radius gate applies).
    #[schemars(with = "String")]
    Group(Spanned<String>),
}

/// A plugin argument in a rule: a template string, or a literal number or boolean.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ArgConfig {
    Boolean(bool),
    Integer(i64),
    Template(String),
}

/// Dedup gate settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    #[serde(default)]
    pub mode: DedupModeConfig,
    /// Duration such as `30s`, `10m`, `1h`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub window: Option<Spanned<String>>,
    /// Template of the key; default `{{ fingerprint }}/{{ status }}/{{ target }}`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub key: Option<Spanned<String>>,
    /// A `resolved` event clears the key its firing twin claimed (the key rendered with `status` = firing),
    /// so the next firing acts again; with `once_after` it also cancels the pending run.
    #[serde(default = "default_true")]
    pub clear_on_resolved: bool,
}

/// How repeats are handled within the dedup window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DedupModeConfig {
    /// The first event acts at once; repeats within the window are suppressed.
    #[default]
    OnceWithin,
    /// The first event opens the window; repeats are collected; one run happens when the window closes.
    OnceAfter,
    /// No dedup: every matching event is a decision of its own (the other gates still apply).
    Off,
}

/// A rate: `count` runs per `per`, bursting up to `burst` (default `count`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub count: u32,
    #[schemars(with = "String")]
    pub per: Spanned<String>,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Per-rule rate limits.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleRateLimitConfig {
    /// All runs of this rule.
    #[serde(default)]
    pub rule: Option<RateConfig>,
    /// Runs of this rule on any one host.
    #[serde(default)]
    pub host: Option<RateConfig>,
}

/// Storm guards of one rule (defaults come from `policy.defaults`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    #[serde(default)]
    pub blast_radius: Option<BlastRadiusConfig>,
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
}

/// At most `max_hosts` distinct hosts remediated by the rule within `window`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlastRadiusConfig {
    pub max_hosts: usize,
    #[schemars(with = "String")]
    pub window: Spanned<String>,
}

/// After `failures` failed runs among the last `of_last`, stop auto-running for `cool_down`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    pub failures: u32,
    pub of_last: u32,
    #[schemars(with = "String")]
    pub cool_down: Spanned<String>,
}

/// Fleet-wide settings (one `policy` section across all rule files).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub rate_limit: PolicyRateLimitConfig,
    /// Gate defaults for rules that do not set their own.
    #[serde(default)]
    pub defaults: PolicyDefaultsConfig,
    #[serde(default)]
    pub remediation: RemediationPolicyConfig,
    #[serde(default)]
    pub chatops: ChatopsPolicyConfig,
}

/// Limits across all rules.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRateLimitConfig {
    /// All runs RUNE starts (default 600 per minute, burst 100).
    #[serde(default)]
    pub global: Option<RateConfig>,
    /// Runs on any one host, across all rules and chatops (default 10 per 10 minutes, burst 5).
    #[serde(default)]
    pub host: Option<RateConfig>,
}

/// Gate defaults.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDefaultsConfig {
    /// Default dedup window (default `10m`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub dedup_window: Option<Spanned<String>>,
    /// Default blast radius of remediation rules (default 5 hosts per 15 minutes).
    #[serde(default)]
    pub blast_radius: Option<BlastRadiusConfig>,
    /// Default breaker of every rule (default 3 failures of the last 5 runs, 30 minutes cool-down).
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
}

/// Which rules may run remediation plugins.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemediationPolicyConfig {
    /// When set, only these rules may run `remediation` plugins; others are suppressed (`safety_class`).
    /// Unset: any rule may.
    #[serde(default)]
    pub allowed_rules: Option<Vec<String>>,
}

/// What chatops requests may do. They skip matching, not the gates.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatopsPolicyConfig {
    /// Actions chatops may request (plugin names). Unset: every `diagnostic` plugin, no `remediation` one.
    #[serde(default)]
    pub allowed_actions: Option<Vec<String>>,
    /// Requests per requester (default 10 per minute, burst 5).
    #[serde(default)]
    pub rate_limit: Option<RateConfig>,
}
