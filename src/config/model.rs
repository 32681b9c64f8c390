//! The daemon's configuration as written: raw serde types, every field with its default. Nothing here is
//! validated beyond its shape; [`super::compile`] turns a [`SettingsConfig`] into [`super::Settings`].
//!
//! Every section and every field has a default (`#[serde(default)]` on each struct, `fn default_*` below), so
//! an absent file is a complete configuration (the embedded mode) and a file only says what differs. Whether a
//! field is *required* in a given situation (a password once a user is given, …) is a rule of the compile
//! step, which can report all such problems at once; serde could only report the first.
//!
//! Durations are strings (`30s`, `10m`, `1h 30m`) and sizes are integers or strings (`1048576`, `1MiB`);
//! both are parsed by the compile step so that a bad one is an error with its position, not a shape error.
//! Secrets have no field of their own: only `*_file`, `*_env` and `*_ref` (a Parameter Store reference,
//! `ssm:/path/name`, read after loading by `Settings::resolve_secrets`) forms exist.
//!
//! Every key's type, default and meaning is in `docs/configuration.md` (one table per section); the comments
//! here only say what the types alone do not.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::sources::per_source::{DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUESTS_PER_SECOND};

/// The whole file: one section per concern.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettingsConfig {
    pub nats: NatsConfig,
    pub webhook: WebhookConfig,
    pub chatops: ChatopsConfig,
    pub paths: PathsConfig,
    pub limits: LimitsConfig,
    pub results: ResultsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub ssm: SsmConfig,
    pub audit: AuditConfig,
}

/// The audit trail (docs/security.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// The active file; relative to the settings file's folder (the working directory without a file).
    pub file: PathBuf,
    /// The active file is rotated once it reaches this size.
    pub max_file_size: ByteSizeConfig,
    /// When the trail cannot be written, diagnostics are refused too (remediations always are).
    pub refuse_diagnostics: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            file: PathBuf::from("rune-audit.jsonl"),
            max_file_size: ByteSizeConfig::Bytes(100 * 1024 * 1024),
            refuse_diagnostics: false,
        }
    }
}

/// The SSM transport and Parameter Store secrets (durations as strings).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsmConfig {
    pub delivery_timeout: String,
    pub poll_first: String,
    pub poll_max: String,
    pub not_found_grace: String,
    pub secrets_cache_ttl: String,
    pub secrets_max_cached: usize,
    /// Parameter Store paths read whole into the secrets cache at start (`GetParametersByPath`).
    pub secrets_prefetch: Vec<String>,
}

impl Default for SsmConfig {
    fn default() -> Self {
        SsmConfig {
            delivery_timeout: "60s".into(),
            poll_first: "100ms".into(),
            poll_max: "3s".into(),
            not_found_grace: "30s".into(),
            secrets_cache_ttl: "5m".into(),
            secrets_max_cached: 1024,
            secrets_prefetch: Vec::new(),
        }
    }
}

/// The NATS connection. No `urls` means no NATS at all (the embedded mode): webhooks are processed in-process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    pub name: String,
    pub auth: NatsAuthConfig,
    pub tls: NatsTlsConfig,
    pub connect_timeout: String,
    pub reconnect: ReconnectConfig,
    pub subjects: SubjectsConfig,
    pub jetstream: JetStreamConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            name: default_client_name(),
            auth: NatsAuthConfig::default(),
            tls: NatsTlsConfig::default(),
            connect_timeout: default_connect_timeout(),
            reconnect: ReconnectConfig::default(),
            subjects: SubjectsConfig::default(),
            jetstream: JetStreamConfig::default(),
        }
    }
}

pub fn default_client_name() -> String {
    "rune".into()
}

pub fn default_connect_timeout() -> String {
    "5s".into()
}

/// NATS authentication: at most one method (none when every field is absent).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAuthConfig {
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_ref: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub password_ref: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Absent: reconnect forever.
    pub max_attempts: Option<u64>,
    pub max_delay: String,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig { max_attempts: None, max_delay: default_reconnect_max_delay() }
    }
}

pub fn default_reconnect_max_delay() -> String {
    "8s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectsConfig {
    pub alerts: Vec<String>,
    pub queue_group: String,
    pub requests_prefix: String,
    pub results_prefix: String,
    pub decisions_prefix: String,
    pub audit: String,
    pub dead_letter: String,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        SubjectsConfig {
            alerts: default_alert_subjects(),
            queue_group: default_queue_group(),
            requests_prefix: default_requests_prefix(),
            results_prefix: default_results_prefix(),
            decisions_prefix: default_decisions_prefix(),
            audit: default_audit_subject(),
            dead_letter: default_dead_letter_subject(),
        }
    }
}

pub fn default_alert_subjects() -> Vec<String> {
    vec!["rune.alerts.>".into()]
}

pub fn default_queue_group() -> String {
    "rune".into()
}

pub fn default_requests_prefix() -> String {
    "rune.requests".into()
}

pub fn default_results_prefix() -> String {
    "rune.results".into()
}

pub fn default_decisions_prefix() -> String {
    "rune.decisions".into()
}

pub fn default_audit_subject() -> String {
    "rune.audit".into()
}

pub fn default_dead_letter_subject() -> String {
    "rune.dead_letter".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    pub enabled: bool,
    pub alerts_stream: AlertsStreamConfig,
    pub consumer: ConsumerConfig,
    pub results_stream: ResultsStreamConfig,
    pub kv: KvConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsStreamConfig {
    pub name: String,
    /// Absent: the core alert subjects (`nats.subjects.alerts`).
    pub subjects: Option<Vec<String>>,
    pub max_age: String,
    pub max_bytes: ByteSizeConfig,
    pub replicas: u64,
}

impl Default for AlertsStreamConfig {
    fn default() -> Self {
        AlertsStreamConfig {
            name: default_alerts_stream_name(),
            subjects: None,
            max_age: default_alerts_max_age(),
            max_bytes: default_stream_max_bytes(),
            replicas: default_replicas(),
        }
    }
}

pub fn default_alerts_stream_name() -> String {
    "RUNE_ALERTS".into()
}

pub fn default_alerts_max_age() -> String {
    "24h".into()
}

pub fn default_stream_max_bytes() -> ByteSizeConfig {
    ByteSizeConfig::Bytes(1024 * 1024 * 1024)
}

pub fn default_replicas() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    pub name: String,
    pub max_deliver: u64,
    pub ack_wait: String,
    pub backoff: Vec<String>,
    pub concurrency: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            name: default_consumer_name(),
            max_deliver: default_max_deliver(),
            ack_wait: default_ack_wait(),
            backoff: Vec::new(),
            concurrency: default_consumer_concurrency(),
        }
    }
}

pub fn default_consumer_concurrency() -> u64 {
    256
}

pub fn default_consumer_name() -> String {
    "rune".into()
}

pub fn default_max_deliver() -> u64 {
    5
}

pub fn default_ack_wait() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsStreamConfig {
    pub enabled: bool,
    pub name: String,
    pub max_age: String,
    pub max_bytes: ByteSizeConfig,
    /// Absent: no limit on the number of messages (`max_bytes` and `max_age` still apply).
    pub max_msgs: Option<u64>,
}

impl Default for ResultsStreamConfig {
    fn default() -> Self {
        ResultsStreamConfig {
            enabled: false,
            name: default_results_stream_name(),
            max_age: default_results_max_age(),
            max_bytes: default_stream_max_bytes(),
            max_msgs: None,
        }
    }
}

pub fn default_results_stream_name() -> String {
    "RUNE_RESULTS".into()
}

pub fn default_results_max_age() -> String {
    "30d".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    pub dedup_bucket: String,
    pub locks_bucket: String,
    pub lease_ttl: String,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            dedup_bucket: default_dedup_bucket(),
            locks_bucket: default_locks_bucket(),
            lease_ttl: default_lease_ttl(),
        }
    }
}

pub fn default_dedup_bucket() -> String {
    "rune_dedup".into()
}

pub fn default_locks_bucket() -> String {
    "rune_locks".into()
}

pub fn default_lease_ttl() -> String {
    "10m".into()
}

/// The HTTP listener: webhook endpoints and `/metrics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub listen: String,
    pub max_body_bytes: ByteSizeConfig,
    pub request_timeout: String,
    /// Absent: the endpoint is not served.
    pub alertmanager: Option<EndpointConfig>,
    pub grafana: Option<EndpointConfig>,
    pub generic: Option<EndpointConfig>,
    pub publish_to_nats: bool,
    pub per_source: PerSourceConfig,
    /// Absent: plain HTTP (terminate TLS in front of RUNE, or set this).
    pub tls: Option<WebhookTlsConfig>,
    /// Plain HTTP off loopback on purpose (TLS ends in front of RUNE, or the network is private): no warning.
    pub plain_http: bool,
}

/// Limits per source address of the webhook listener (an IPv4 address, an IPv6 /64).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerSourceConfig {
    pub rate_limit: SourceRateConfig,
    pub max_connections: u64,
}

impl Default for PerSourceConfig {
    fn default() -> Self {
        PerSourceConfig { rate_limit: SourceRateConfig::default(), max_connections: DEFAULT_MAX_CONNECTIONS as u64 }
    }
}

/// Requests per source: `count` per `per`, bursting up to `burst` (default `count`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceRateConfig {
    pub count: u32,
    pub per: String,
    pub burst: Option<u32>,
}

impl Default for SourceRateConfig {
    fn default() -> Self {
        SourceRateConfig { count: DEFAULT_REQUESTS_PER_SECOND, per: "1s".into(), burst: None }
    }
}

/// The webhook listener's certificate (PEM), and optionally the CA its clients' certificates must chain to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            request_timeout: default_request_timeout(),
            alertmanager: None,
            grafana: None,
            generic: None,
            publish_to_nats: false,
            per_source: PerSourceConfig::default(),
            tls: None,
            plain_http: false,
        }
    }
}

pub fn default_listen() -> String {
    "127.0.0.1:9300".into()
}

pub fn default_max_body_bytes() -> ByteSizeConfig {
    ByteSizeConfig::Bytes(1024 * 1024)
}

pub fn default_request_timeout() -> String {
    "10s".into()
}

/// One webhook endpoint's authentication: exactly one of `none: true`, a bearer token, an HMAC secret.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    pub none: bool,
    pub bearer_token_file: Option<PathBuf>,
    pub bearer_token_env: Option<String>,
    pub bearer_token_ref: Option<String>,
    pub hmac_secret_file: Option<PathBuf>,
    pub hmac_secret_env: Option<String>,
    pub hmac_secret_ref: Option<String>,
    /// Default `X-Rune-Signature` (only with an HMAC secret).
    pub hmac_header: Option<String>,
}

pub fn default_hmac_header() -> String {
    "X-Rune-Signature".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatopsConfig {
    pub enabled: bool,
    pub reply_timeout: String,
}

impl Default for ChatopsConfig {
    fn default() -> Self {
        ChatopsConfig { enabled: false, reply_timeout: default_reply_timeout() }
    }
}

pub fn default_reply_timeout() -> String {
    "10s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub rules_dir: PathBuf,
    pub plugins_dirs: Vec<PathBuf>,
    /// Absent: `./inventory.yaml` when present, else the embedded default inventory.
    pub inventory: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            rules_dir: default_rules_dir(),
            plugins_dirs: default_plugins_dirs(),
            inventory: None,
            state_dir: None,
        }
    }
}

pub fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}

pub fn default_plugins_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("plugins")]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_in_flight_runs: u64,
    pub parallel: u64,
    pub shutdown_grace: String,
    pub reload_debounce: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_in_flight_runs: default_max_in_flight_runs(),
            parallel: default_parallel(),
            shutdown_grace: default_shutdown_grace(),
            reload_debounce: default_reload_debounce(),
        }
    }
}

pub fn default_max_in_flight_runs() -> u64 {
    64
}

pub fn default_parallel() -> u64 {
    32
}

pub fn default_shutdown_grace() -> String {
    "30s".into()
}

pub fn default_reload_debounce() -> String {
    "1s".into()
}

/// Where results go. The two defaults depend on the mode, so they are `Option`s here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// Default: true in the embedded mode, false with NATS.
    pub stdout: Option<bool>,
    pub jsonl_file: Option<PathBuf>,
    /// Default: true with NATS; true without NATS is an error.
    pub nats: Option<bool>,
    /// With a results stream: how long a result the stream does not acknowledge is retried.
    pub retry_for: String,
    /// With a results stream: results kept unacknowledged at once.
    pub max_pending: u64,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            stdout: None,
            jsonl_file: None,
            nats: None,
            retry_for: default_results_retry_for(),
            max_pending: default_results_max_pending(),
        }
    }
}

pub fn default_results_retry_for() -> String {
    "5m".into()
}

pub fn default_results_max_pending() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormatConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: default_log_level(), format: LogFormatConfig::Text }
    }
}

pub fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormatConfig {
    #[default]
    Text,
    Json,
}

/// By hand: the `config` crate's enum support words an unknown variant as "enum … does not have variant
/// constructor …"; this gives serde's usual "unknown variant `xml`, expected `text` or `json`".
impl<'de> Deserialize<'de> for LogFormatConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "text" => Ok(LogFormatConfig::Text),
            "json" => Ok(LogFormatConfig::Json),
            other => Err(de::Error::unknown_variant(other, &["text", "json"])),
        }
    }
}

/// A size: a plain integer (bytes) or a string with a unit (`512KiB`, `1MiB`, `1GiB`, `10MB`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteSizeConfig {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for ByteSizeConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSizeConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as `1MiB`")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSizeConfig::Bytes(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSizeConfig::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ByteSizeConfig::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parses `1048576`, `512KiB`, `1 MiB`, `10MB`, `2G` (binary units `KiB`/`MiB`/`GiB`/`TiB`, decimal `KB`/`MB`/
/// `GB`/`TB`, `K`/`M`/`G`/`T` as binary).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("does not start with a number".into());
    }
    let number: u64 = number.parse().map_err(|_| "the number is too large".to_owned())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| "the size is too large".to_owned())
}

/// The dotted paths of the list-typed fields: an environment override of one of them is split on `,`.
pub const LIST_FIELDS: &[&str] = &[
    "nats.urls",
    "nats.subjects.alerts",
    "nats.jetstream.alerts_stream.subjects",
    "nats.jetstream.consumer.backoff",
    "paths.plugins_dirs",
    "ssm.secrets_prefetch",
];

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

    #[test]
    fn byte_sizes() {
        let table = [
            ("0", Ok(0)),
            ("1048576", Ok(1_048_576)),
            ("1MiB", Ok(1_048_576)),
            ("1 MiB", Ok(1_048_576)),
            ("512KiB", Ok(524_288)),
            ("2G", Ok(2 << 30)),
            ("10MB", Ok(10_000_000)),
        ];
        for (text, want) in table {
            assert_eq!(parse_byte_size(text), want, "{text}");
        }
        for bad in ["", "MiB", "1 parsec", "99999999999999999999", "18446744073709551615GiB", "-1"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }
}
