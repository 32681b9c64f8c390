//! The daemon's settings: one file (YAML or TOML) plus `RUNE_*` environment overrides, validated into a typed
//! [`Settings`] with every error reported at once, each with its file position or variable name.
//!
//! # Phases
//!
//! 1. `source`: the file is parsed **by RUNE** into a tree whose every key and value has a line and column;
//!    the tree is handed to the `config` crate as a source, with `config::Environment` (prefix `RUNE`, `__`
//!    between levels) layered on top. `config` does the layering and the key mapping; the merged tree is then
//!    deserialized into the raw [`model::SettingsConfig`] (`deny_unknown_fields`, `fn default_*`), and every
//!    shape error (unknown key, wrong type) is reported: the offending value is removed and deserialization
//!    retried, so one run lists them all.
//! 2. `compile`: raw → [`Settings`]: durations, sizes, addresses, URLs, subjects, names, exclusive choices
//!    (authentication), cross-field rules (JetStream needs NATS, …), and secrets read from their files or
//!    variables. Every problem is collected; a [`Settings`] exists only when there is none.
//! 3. `resolve` (asynchronous, the only step that reaches the network): secrets given by reference
//!    (`token_ref: ssm:/…`) are read from Parameter Store, and `ssm.secrets_prefetch` fills the secrets cache —
//!    [`Settings::resolve_secrets`]. Loading collects the references and stays offline-testable; `rune serve`
//!    and `rune config check` (unless `--offline`) call it before the settings are used.
//!
//! # Why RUNE parses the file itself instead of using `config`'s `yaml`/`toml` features
//!
//! `config` 0.15's YAML backend is `yaml-rust2` and its TOML backend discards spans: either way, a wrong value
//! deep in the file would be reported as `nats.jetstream.consumer.ack_wait` with no line. Parsing YAML with
//! `serde-saphyr` (already RUNE's YAML parser for rules and inventory: size and alias limits, strict booleans,
//! positions on every node) and TOML with `toml` (spans on every key and value) gives `file:line:column` on
//! every error, and one YAML parser in the binary instead of two. `config` is built with no default
//! features: it contributes the layering, the environment source and the lenient scalar conversions (a
//! variable's `true` or `30` becomes a boolean or a number where the field wants one).
//!
//! `config`'s own list parsing for variables works only together with `try_parsing`, which also turns a
//! string that looks like a number into one (`007` → `7`); so variables stay strings and RUNE splits the
//! list-typed fields (`model::LIST_FIELDS`) on `,` after the merge.

mod compile;
pub mod model;
mod resolve;
mod secret;
mod source;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::gate::ratelimit::RateSpec;

pub use resolve::{PrefetchPath, SecretReference};
pub use secret::{REDACTED, Secret};
pub use source::{CLI_VARIABLES, EnvOverride};

/// Loads the settings from `path` (none: every default, the embedded mode) and the process environment
/// (`RUNE_*` variables with `__` between levels override the file; `*_env` secrets are read from it).
///
/// The CLI takes the file from `--config PATH` or `RUNE_CONFIG`; this function reads only the path it is given.
pub fn load(path: Option<&Path>) -> Result<Settings, Vec<ConfigError>> {
    let env: Vec<(String, String)> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    load_from(path, &env)
}

/// [`load`] with an explicit environment: overrides are taken from its `RUNE_*` entries (those with `__`), and
/// `*_env` secrets are looked up in all of it.
pub fn load_from(path: Option<&Path>, env: &[(String, String)]) -> Result<Settings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let Some((raw, layers, pruned)) = source::layer(path, env, &mut errors, &mut warnings) else {
        return Err(errors);
    };
    let compiled = compile::compile(raw, &layers, &pruned, env);
    errors.extend(compiled.errors);
    warnings.extend(compiled.warnings);
    match compiled.settings {
        Some(mut settings) if errors.is_empty() => {
            settings.origin = Origin { file: path.map(Path::to_path_buf), env: layers.env };
            settings.warnings = warnings;
            Ok(settings)
        }
        _ => {
            if errors.is_empty() {
                // Every path that returns no value reports why; this guards the guarantee.
                errors.push(ConfigError {
                    field: String::new(),
                    location: None,
                    env: None,
                    message: "internal error: the settings are incomplete but no error was recorded".into(),
                });
            }
            errors.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            Err(errors)
        }
    }
}

/// One problem with the settings, named by its field (`nats.jetstream.consumer.ack_wait`) and placed in the
/// file or on the variable it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// Dotted path of the field; empty for a problem with the whole file.
    pub field: String,
    /// File, 1-based line and column (0, 0 when the file as a whole is meant).
    pub location: Option<(String, u64, u64)>,
    /// The `RUNE_*` variable that set the value.
    pub env: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn at_file(file: &str, line: u64, column: u64, field: &str, message: String) -> ConfigError {
        ConfigError { field: field.to_owned(), location: Some((file.to_owned(), line, column)), env: None, message }
    }

    pub(crate) fn env(var: &str, field: &str, message: String) -> ConfigError {
        ConfigError { field: field.to_owned(), location: None, env: Some(var.to_owned()), message }
    }

    fn sort_key(&self) -> (u8, &str, u64, u64, &str, &str) {
        match (&self.location, &self.env) {
            (Some((file, line, column)), _) => (0, file, *line, *column, "", &self.field),
            (None, Some(var)) => (1, "", 0, 0, var, &self.field),
            (None, None) => (2, "", 0, 0, "", &self.field),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.location, &self.env) {
            (_, Some(var)) => write!(f, "env {var}: ")?,
            (Some((file, 0, _)), None) => write!(f, "{file}: ")?,
            (Some((file, line, column)), None) => write!(f, "{file}:{line}:{column}: ")?,
            (None, None) => {}
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The validated settings. Built only by [`load`] / [`load_from`].
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `None`: no NATS (the embedded mode): webhooks are processed in-process.
    pub nats: Option<Nats>,
    pub webhook: Webhook,
    pub chatops: Chatops,
    pub paths: Paths,
    pub limits: Limits,
    pub results: Results,
    pub metrics: Metrics,
    pub log: Log,
    pub ssm: Ssm,
    pub audit: Audit,
    /// Secrets given by reference (`*_ref`): each stands as an empty placeholder until
    /// [`Settings::resolve_secrets`] reads it.
    #[serde(skip)]
    pub references: Vec<SecretReference>,
    /// Where the values came from (the file, the variables that overrode it).
    #[serde(skip)]
    pub origin: Origin,
    /// Problems that do not stop RUNE (a secret file readable by others, a missing rules folder, …).
    #[serde(skip)]
    pub warnings: Vec<ConfigError>,
}

impl Settings {
    /// No NATS: webhooks are processed in-process and results go to stdout / a file.
    pub fn embedded(&self) -> bool {
        self.nats.is_none()
    }

    /// The settings as JSON, every secret shown as `<redacted>`.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Where the settings came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub file: Option<PathBuf>,
    /// Each `RUNE_*` override, in the order found.
    pub env: Vec<EnvOverride>,
}

/// The NATS connection (present only when `nats.urls` is not empty).
#[derive(Debug, Clone, Serialize)]
pub struct Nats {
    /// `nats://` or `tls://` URLs, at least one, without credentials.
    pub urls: Vec<String>,
    /// Client name shown by the server (`connz`).
    pub name: String,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// Limit for the first connection.
    #[serde(serialize_with = "as_text")]
    pub connect_timeout: Duration,
    pub reconnect: Reconnect,
    pub subjects: Subjects,
    /// `None`: core NATS only (no streams, no KV; dedup and locks stay in memory).
    pub jetstream: Option<JetStream>,
}

/// How RUNE authenticates to NATS (at most one method).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum NatsAuth {
    None,
    /// A token, from `token_file`, `token_env` or `token_ref`.
    Token {
        token: Secret,
    },
    /// `user` with the password from `password_file`, `password_env` or `password_ref`.
    UserPassword {
        user: String,
        password: Secret,
    },
    /// An NKey user seed (`SU…`) from `nkey_seed_file`.
    Nkey {
        seed: Secret,
    },
    /// A `.creds` file (JWT and seed), read at load time; `file` for messages only.
    Credentials {
        file: PathBuf,
        contents: Secret,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct NatsTls {
    /// CA certificates to trust; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (both exist at load time).
    pub client_cert: Option<ClientCert>,
    /// Refuse to connect without TLS (`tls://` URLs require it anyway).
    pub required: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconnect {
    /// Attempts before giving up; `None`: forever.
    pub max_attempts: Option<u64>,
    /// Longest wait between two attempts.
    #[serde(serialize_with = "as_text")]
    pub max_delay: Duration,
}

/// Subjects RUNE subscribes to and publishes on. No alert pattern matches a subject RUNE publishes on.
#[derive(Debug, Clone, Serialize)]
pub struct Subjects {
    /// Core subscriptions (patterns) for alerts, in the queue group; may be empty.
    pub alerts: Vec<String>,
    /// Queue group of the subscriptions, so that instances share the work.
    pub queue_group: String,
    /// Requests (chatops) arrive on `<requests_prefix>.<action>`.
    pub requests_prefix: String,
    /// Results are published under it.
    pub results_prefix: String,
    /// Decisions (admitted, suppressed with a reason) are published under it.
    pub decisions_prefix: String,
    /// Subject of audit events.
    pub audit: String,
    /// Subject of payloads that could not be processed.
    pub dead_letter: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct JetStream {
    pub alerts_stream: AlertsStream,
    pub consumer: Consumer,
    /// `None`: results are published on core subjects only.
    pub results_stream: Option<ResultsStream>,
    pub kv: Kv,
}

/// The stream alerts are stored in.
#[derive(Debug, Clone, Serialize)]
pub struct AlertsStream {
    pub name: String,
    /// At least one pattern; `nats.subjects.alerts` unless given.
    pub subjects: Vec<String>,
    #[serde(serialize_with = "as_text")]
    pub max_age: Duration,
    pub max_bytes: u64,
    /// 1 to 5.
    pub replicas: usize,
}

/// The durable pull consumer on the alerts stream.
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    /// Durable name.
    pub name: String,
    /// At least 1, and above `backoff.len()` (as NATS requires).
    pub max_deliver: i64,
    #[serde(serialize_with = "as_text")]
    pub ack_wait: Duration,
    /// Redelivery delays; empty: redeliver after `ack_wait`.
    #[serde(serialize_with = "list_as_text")]
    pub backoff: Vec<Duration>,
    /// Messages decided at once (1–1024), in lanes by alert fingerprint so one alert's messages stay in order.
    pub concurrency: usize,
}

/// The stream results are kept in.
#[derive(Debug, Clone, Serialize)]
pub struct ResultsStream {
    /// Differs from the alerts stream's.
    pub name: String,
    /// `<results_prefix>.>`.
    pub subjects: Vec<String>,
    #[serde(serialize_with = "as_text")]
    pub max_age: Duration,
    pub max_bytes: u64,
    /// `None`: no limit on the count.
    pub max_msgs: Option<u64>,
}

/// KV buckets shared by all instances.
#[derive(Debug, Clone, Serialize)]
pub struct Kv {
    /// Dedup windows.
    pub dedup_bucket: String,
    /// Per-host locks (differs from `dedup_bucket`).
    pub locks_bucket: String,
    /// A host lock expires after this unless renewed.
    #[serde(serialize_with = "as_text")]
    pub lease_ttl: Duration,
}

/// The HTTP listener: webhook endpoints and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub listen: SocketAddr,
    /// Larger bodies are refused (1 KiB to 256 MiB).
    pub max_body_bytes: usize,
    #[serde(serialize_with = "as_text")]
    pub request_timeout: Duration,
    /// Alertmanager payloads; `None`: the endpoint is not served.
    pub alertmanager: Option<EndpointAuth>,
    /// Grafana payloads; `None`: the endpoint is not served.
    pub grafana: Option<EndpointAuth>,
    /// Generic payloads; `None`: the endpoint is not served.
    pub generic: Option<EndpointAuth>,
    /// Publish raw payloads to NATS instead of processing them in-process (only with NATS).
    pub publish_to_nats: bool,
    /// Requests per source address (an IPv4 address, an IPv6 /64), over every route of the listener.
    pub rate_limit_per_source: RateSpec,
    /// Open connections per source address; more are closed at accept.
    pub max_connections_per_source: NonZeroUsize,
    /// `None`: plain HTTP.
    pub tls: Option<WebhookTls>,
}

/// TLS on the webhook listener (rustls; TLS 1.2 and 1.3). The files are read at start and again whenever they
/// change (a renewed certificate is served without a restart).
#[derive(Debug, Clone, Serialize)]
pub struct WebhookTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Set: every client must present a certificate chaining to these CAs (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

/// How one webhook endpoint authenticates requests.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum EndpointAuth {
    /// Explicitly unauthenticated (`none: true`).
    None,
    /// `Authorization: Bearer <token>`.
    Bearer { token: Secret },
    /// HMAC-SHA256 of the body under `secret`, in `header` (default `X-Rune-Signature`).
    Hmac { secret: Secret, header: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Chatops {
    /// Take chatops requests from NATS (only with NATS).
    pub enabled: bool,
    /// The longest a requester waits for RUNE's reply.
    #[serde(serialize_with = "as_text")]
    pub reply_timeout: Duration,
}

/// Paths, resolved: relative ones from the file are joined to the file's folder.
#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    pub rules_dir: PathBuf,
    /// At least one; earlier ones win for shared helpers.
    pub plugins_dirs: Vec<PathBuf>,
    /// The inventory file (exists at load time; `./inventory.yaml` when present and none was given);
    /// `None`: the embedded default inventory (only `localhost`).
    pub inventory: Option<PathBuf>,
    /// Where state is kept between restarts; `None`: nowhere.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Plugin runs at once across all events.
    pub max_in_flight_runs: NonZeroUsize,
    /// Hosts one request runs on at once.
    pub parallel: NonZeroUsize,
    /// On SIGTERM, how long runs in flight may finish.
    #[serde(serialize_with = "as_text")]
    pub shutdown_grace: Duration,
    /// Quiet time after a change to rules or plugins before reloading.
    #[serde(serialize_with = "as_text")]
    pub reload_debounce: Duration,
}

/// Where result envelopes go (any combination).
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// One JSON line per result on stdout.
    pub stdout: bool,
    /// Appended, one JSON line per result (its folder exists at load time).
    pub jsonl_file: Option<PathBuf>,
    /// Published under `nats.subjects.results_prefix` (only with NATS).
    pub nats: bool,
    /// With a results stream: how long a result the stream does not acknowledge is kept and retried.
    #[serde(serialize_with = "as_text")]
    pub retry_for: Duration,
    /// With a results stream: results kept unacknowledged at once; the next finished run waits for room.
    pub max_pending: NonZeroUsize,
}

/// `audit`: the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    pub enabled: bool,
    /// The active file (its folder is made, mode 0700, when missing).
    pub file: PathBuf,
    pub max_file_size: u64,
    pub refuse_diagnostics: bool,
}

/// `ssm`: the SSM transport's timing and the Parameter Store cache.
#[derive(Debug, Clone, Serialize)]
pub struct Ssm {
    #[serde(serialize_with = "as_text")]
    pub delivery_timeout: Duration,
    #[serde(serialize_with = "as_text")]
    pub poll_first: Duration,
    #[serde(serialize_with = "as_text")]
    pub poll_max: Duration,
    #[serde(serialize_with = "as_text")]
    pub not_found_grace: Duration,
    #[serde(serialize_with = "as_text")]
    pub secrets_cache_ttl: Duration,
    pub secrets_max_cached: usize,
    /// Paths read whole into the secrets cache at start (`/rune/prod`, without a trailing `/`).
    pub secrets_prefetch: Vec<PrefetchPath>,
}

impl Ssm {
    pub fn transport(&self) -> crate::transport::ssm::SsmSettings {
        crate::transport::ssm::SsmSettings {
            delivery_timeout: self.delivery_timeout,
            poll_first: self.poll_first,
            poll_max: self.poll_max,
            not_found_grace: self.not_found_grace,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Prometheus metrics at `/metrics` on the webhook listener.
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Log {
    /// A tracing `EnvFilter` directive (`info`, `rune=debug,warn`), checked at load time.
    pub level: String,
    pub format: LogFormat,
}

/// Log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

fn as_text<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*d).to_string())
}

fn list_as_text<S: Serializer>(list: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(list.iter().map(|d| humantime::format_duration(*d).to_string()))
}
