//! Raw settings → validated [`Settings`]: every value checked, secrets read (references to Parameter Store
//! checked and recorded, read later by `super::resolve`), cross-field rules applied, every problem collected
//! with its position before anything is returned.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::{
    AuditConfig, ByteSizeConfig, ChatopsConfig, EndpointConfig, JetStreamConfig, LimitsConfig, LogConfig,
    LogFormatConfig, NatsAuthConfig, NatsConfig, NatsTlsConfig, PathsConfig, ResultsConfig, SettingsConfig,
    SourceRateConfig, SsmConfig, SubjectsConfig, WebhookConfig, WebhookTlsConfig, default_hmac_header, parse_byte_size,
};
use super::resolve::{Hook, Position, PrefetchPath, SecretReference, SecretSlot};
use super::secret::{self, Secret};
use super::source::{Layers, is_within};
use super::{
    AlertsStream, Audit, Chatops, ClientCert, ConfigError, Consumer, EndpointAuth, JetStream, Kv, Limits, Log,
    LogFormat, Metrics, Nats, NatsAuth, NatsTls, Origin, Paths, Reconnect, Results, ResultsStream, Settings, Ssm,
    Subjects, Webhook, WebhookTls,
};
use crate::gate::ratelimit::RateSpec;
use crate::rules::matcher::SubjectPattern;
use crate::secrets::SecretRef;

/// Longest duration anywhere in the settings.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);
/// Bounds of `webhook.max_body_bytes`.
pub const MIN_BODY_BYTES: u64 = 1024;
pub const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;

pub struct Compiled {
    pub settings: Option<Settings>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

pub fn compile(raw: SettingsConfig, layers: &Layers, pruned: &[String], env: &[(String, String)]) -> Compiled {
    let mut c = Compiler { layers, pruned, env, errors: Vec::new(), warnings: Vec::new(), references: Vec::new() };
    let embedded = raw.nats.urls.is_empty();
    let nats = c.nats(raw.nats);
    let webhook = c.webhook(raw.webhook, embedded);
    let chatops = c.chatops(raw.chatops, embedded);
    let paths = c.paths(raw.paths);
    let limits = c.limits(raw.limits);
    let results = c.results(raw.results, embedded);
    let log = c.log(raw.log);
    let ssm = c.ssm(raw.ssm);
    let audit = c.audit(raw.audit);
    let settings = (|| {
        Some(Settings {
            nats: nats?,
            webhook: webhook?,
            chatops: chatops?,
            paths: paths?,
            limits: limits?,
            results: results?,
            metrics: Metrics { enabled: raw.metrics.enabled },
            log: log?,
            ssm: ssm?,
            audit: audit?,
            references: Vec::new(),
            origin: Origin::default(),
            warnings: Vec::new(),
        })
    })();
    let settings = settings.map(|mut s| {
        // Only the references whose place exists (NATS settings without nats.urls are ignored, for one).
        let mut references = std::mem::take(&mut c.references);
        references.retain(|r| s.secret_mut(r.slot).is_some());
        s.references = references;
        s
    });
    Compiled { settings, errors: c.errors, warnings: c.warnings }
}

struct Compiler<'a> {
    layers: &'a Layers,
    /// Values removed by the shape check (already reported; their defaults stood in).
    pruned: &'a [String],
    env: &'a [(String, String)],
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Secrets given by reference, read after compiling (`Settings::resolve_secrets`).
    references: Vec<SecretReference>,
}

impl Compiler<'_> {
    fn diagnostic(&self, field: &str, message: String) -> ConfigError {
        let (location, env) = self.layers.locate(field, false);
        ConfigError { field: field.to_owned(), location, env, message }
    }

    /// Where `field` was written, kept for errors found after compiling.
    fn position(&self, field: &str) -> Position {
        let (location, env) = self.layers.locate(field, false);
        Position { location, env }
    }

    /// Whether `field` is, contains or lies under a value the shape check already reported.
    fn was_pruned(&self, field: &str) -> bool {
        self.pruned.iter().any(|p| is_within(field, p) || is_within(p, field))
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        if !self.was_pruned(field) {
            let d = self.diagnostic(field, message.into());
            self.errors.push(d);
        }
    }

    /// An error about `field` that also depends on the values of `depends` (silent when one was reported).
    fn cross_error(&mut self, field: &str, depends: &[&str], message: impl Into<String>) {
        if !depends.iter().any(|d| self.was_pruned(d)) {
            self.error(field, message);
        }
    }

    fn warn(&mut self, field: &str, message: impl Into<String>) {
        let d = self.diagnostic(field, message.into());
        self.warnings.push(d);
    }

    fn duration(&mut self, field: &str, text: &str, allow_zero: bool) -> Option<Duration> {
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.error(field, "must be longer than zero");
                None
            }
            Ok(d) if d > MAX_DURATION => {
                self.error(field, format!("`{text}` is longer than 365 days"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(field, format!("`{text}` is not a duration such as 30s, 10m, 1h: {e}"));
                None
            }
        }
    }

    fn size(&mut self, field: &str, size: &ByteSizeConfig, min: u64, max: u64) -> Option<u64> {
        let parsed = match size {
            ByteSizeConfig::Bytes(n) => Ok(*n),
            ByteSizeConfig::Text(text) => parse_byte_size(text).map_err(|e| format!("`{text}` is not a size: {e}")),
        };
        match parsed {
            Ok(n) if n < min || n > max => {
                self.error(field, format!("{n} bytes is outside {min}..={max}"));
                None
            }
            Ok(n) => Some(n),
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }

    fn at_least_one(&mut self, field: &str, n: u64) -> Option<NonZeroUsize> {
        match usize::try_from(n).ok().and_then(NonZeroUsize::new) {
            Some(n) => Some(n),
            None => {
                self.error(field, "must be at least 1");
                None
            }
        }
    }

    /// A path from the file is relative to the file's folder; one from the environment or a default, to the
    /// working directory.
    fn path(&self, field: &str, path: PathBuf) -> PathBuf {
        match &self.layers.file {
            Some((_, dir)) if path.is_relative() && self.layers.written_in_file(field) => dir.join(path),
            _ => path,
        }
    }

    fn existing_file(&mut self, field: &str, path: PathBuf) -> Option<PathBuf> {
        let path = self.path(field, path);
        if path.is_file() {
            Some(path)
        } else {
            self.error(field, format!("`{}` is not a readable file", path.display()));
            None
        }
    }

    fn secret_file(&mut self, field: &str, path: &Path) -> Option<Secret> {
        let path = self.path(field, path.to_path_buf());
        match secret::read_file(&path) {
            Ok((secret, warning)) => {
                if let Some(w) = warning {
                    self.warn(field, w);
                }
                Some(secret)
            }
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }

    fn secret_env(&mut self, field: &str, name: &str) -> Option<Secret> {
        if !secret::is_env_name(name) {
            // The value is not echoed: a secret written here by mistake must not reach the output.
            self.error(field, "is not an environment variable name (letters, digits and `_`; it names the variable holding the secret)");
            return None;
        }
        match secret::read_env(name, self.env) {
            Ok(s) => Some(s),
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }

    /// A Parameter Store reference (`ssm:/path/name`): checked and recorded; an empty placeholder stands for the
    /// value until `Settings::resolve_secrets` reads it.
    fn secret_ref(&mut self, field: &str, text: &str, slot: SecretSlot) -> Option<Secret> {
        match SecretRef::parse(text) {
            Some(Ok(reference)) => {
                let position = self.position(field);
                self.references.push(SecretReference {
                    field: field.to_owned(),
                    key: slot.key(),
                    reference,
                    resolved: false,
                    slot,
                    position,
                });
                Some(Secret::new(Vec::new()))
            }
            Some(Err(message)) => {
                self.error(field, message);
                None
            }
            None => {
                // The value is not echoed: a secret written here by mistake must not reach the output.
                self.error(
                    field,
                    "is not a secret reference such as ssm:/path/name (it names where the secret is kept)",
                );
                None
            }
        }
    }

    /// A secret given as `<field>_file`, `<field>_env` or `<field>_ref` (exactly one of them).
    fn secret(
        &mut self,
        field: &str,
        file: Option<&PathBuf>,
        env: Option<&String>,
        reference: Option<&String>,
        slot: SecretSlot,
    ) -> Option<Option<Secret>> {
        // Each one given is read, so that a missing one is reported too.
        let from_file = file.map(|f| self.secret_file(&format!("{field}_file"), f));
        let from_env = env.map(|e| self.secret_env(&format!("{field}_env"), e));
        let from_ref = reference.map(|r| self.secret_ref(&format!("{field}_ref"), r, slot));
        let given: Vec<&str> = [(file.is_some(), "file"), (env.is_some(), "env"), (reference.is_some(), "ref")]
            .into_iter()
            .filter_map(|(given, form)| given.then_some(form))
            .collect();
        if let [first, .., last] = given.as_slice() {
            let key = field.rsplit('.').next().unwrap_or(field);
            let names: Vec<String> = given.iter().map(|form| format!("`{key}_{form}`")).collect();
            let (init, _) = names.split_at(names.len() - 1);
            self.error(
                &format!("{field}_{first}"),
                format!("{} and `{key}_{last}` are exclusive: give one", init.join(", ")),
            );
            return None;
        }
        match from_file.or(from_env).or(from_ref) {
            None => Some(None),
            Some(read) => read.map(Some),
        }
    }

    fn literal_subject(&mut self, field: &str, subject: &str) -> Option<String> {
        match SubjectPattern::parse(subject) {
            Ok(p) if p.literal().is_some() => Some(subject.to_owned()),
            Ok(_) => {
                self.error(field, format!("`{subject}` must be a plain subject without `*` or `>`"));
                None
            }
            Err(e) => {
                self.error(field, e);
                None
            }
        }
    }

    fn patterns(&mut self, field: &str, patterns: &[String]) -> Option<Vec<(String, SubjectPattern)>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, p) in patterns.iter().enumerate() {
            match SubjectPattern::parse(p) {
                Ok(parsed) => out.push((p.clone(), parsed)),
                Err(e) => {
                    self.error(&format!("{field}[{i}]"), e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A stream, consumer or bucket name: `[A-Za-z0-9_-]`, 1 to 64 bytes (NATS allows more; these names also
    /// appear in subjects and file names, so RUNE keeps to the safe set).
    fn name(&mut self, field: &str, name: &str) -> Option<String> {
        if !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some(name.to_owned())
        } else {
            self.error(field, format!("`{name}` is not a valid name: 1 to 64 letters, digits, `_` or `-`"));
            None
        }
    }

    fn nats(&mut self, raw: NatsConfig) -> Option<Option<Nats>> {
        let embedded = raw.urls.is_empty();
        let mut urls = Some(Vec::new());
        for (i, url) in raw.urls.iter().enumerate() {
            match nats_url(url) {
                Ok(()) => {
                    if let Some(u) = urls.as_mut() {
                        u.push(url.clone());
                    }
                }
                Err(message) => {
                    self.error(&format!("nats.urls[{i}]"), message);
                    urls = None;
                }
            }
        }
        let name = if raw.name.trim().is_empty() || raw.name.len() > 128 || raw.name.chars().any(char::is_control) {
            self.error("nats.name", "must be 1 to 128 characters without control characters");
            None
        } else {
            Some(raw.name.clone())
        };
        let auth = self.nats_auth(&raw.auth);
        let tls = self.nats_tls(raw.tls);
        let connect_timeout = self.duration("nats.connect_timeout", &raw.connect_timeout, false);
        let max_attempts = match raw.reconnect.max_attempts {
            Some(0) => {
                self.error("nats.reconnect.max_attempts", "must be at least 1 (leave it out to reconnect forever)");
                None
            }
            other => Some(other),
        };
        let max_delay = self.duration("nats.reconnect.max_delay", &raw.reconnect.max_delay, false);
        let subjects = self.subjects(&raw.subjects);
        let jetstream = self.jetstream(raw.jetstream, &raw.subjects, embedded);
        if embedded {
            let layers = self.layers;
            let ignored: Vec<&str> = layers
                .key_positions
                .keys()
                .map(String::as_str)
                .chain(layers.env.iter().map(|o| o.field.as_str()))
                .filter(|f| f.starts_with("nats.") && !is_within(f, "nats.urls") && !is_within(f, "nats.jetstream"))
                .collect();
            if let Some(first) = ignored.iter().min() {
                let first = first.to_string();
                self.warn(&first, "NATS settings without nats.urls are ignored (the embedded mode)");
            }
        }
        let nats = Nats {
            urls: urls?,
            name: name?,
            auth: auth?,
            tls: tls?,
            connect_timeout: connect_timeout?,
            reconnect: Reconnect { max_attempts: max_attempts?, max_delay: max_delay? },
            subjects: subjects?,
            jetstream: jetstream?,
        };
        Some((!embedded).then_some(nats))
    }

    fn nats_auth(&mut self, raw: &NatsAuthConfig) -> Option<NatsAuth> {
        let f = "nats.auth";
        let token_used = raw.token_file.is_some() || raw.token_env.is_some() || raw.token_ref.is_some();
        let password_given = raw.password_file.is_some() || raw.password_env.is_some() || raw.password_ref.is_some();
        let user_used = raw.user.is_some() || password_given;
        let methods: Vec<&str> = [
            (token_used, "token"),
            (user_used, "user + password"),
            (raw.nkey_seed_file.is_some(), "nkey_seed_file"),
            (raw.creds_file.is_some(), "creds_file"),
        ]
        .into_iter()
        .filter_map(|(used, name)| used.then_some(name))
        .collect();
        let token = self.secret(
            "nats.auth.token",
            raw.token_file.as_ref(),
            raw.token_env.as_ref(),
            raw.token_ref.as_ref(),
            SecretSlot::NatsToken,
        );
        let password = self.secret(
            "nats.auth.password",
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
            raw.password_ref.as_ref(),
            SecretSlot::NatsPassword,
        );
        let user = match &raw.user {
            Some(u) if u.is_empty() || u.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                self.error("nats.auth.user", "must be non-empty, without spaces or control characters");
                None
            }
            other => Some(other.clone()),
        };
        if raw.user.is_some() && matches!(password, Some(None)) {
            self.error("nats.auth.user", "a user needs `password_file`, `password_env` or `password_ref`");
        }
        if raw.user.is_none() && matches!(password, Some(Some(_))) {
            let field = match (&raw.password_file, &raw.password_env) {
                (Some(_), _) => "nats.auth.password_file",
                (None, Some(_)) => "nats.auth.password_env",
                (None, None) => "nats.auth.password_ref",
            };
            self.error(field, "a password needs `user`");
        }
        let seed = raw.nkey_seed_file.as_ref().and_then(|p| {
            let secret = self.secret_file("nats.auth.nkey_seed_file", p)?;
            if secret.expose().starts_with(b"SU") {
                Some(secret)
            } else {
                // The content is not echoed.
                self.error("nats.auth.nkey_seed_file", "does not hold an NKey user seed (it must start with `SU`)");
                None
            }
        });
        let creds = raw.creds_file.as_ref().and_then(|p| {
            let contents = self.secret_file("nats.auth.creds_file", p)?;
            Some((self.path("nats.auth.creds_file", p.clone()), contents))
        });
        if methods.len() > 1 {
            self.error(f, format!("more than one authentication method ({}): choose one", methods.join(", ")));
            return None;
        }
        match methods.first().copied() {
            None => Some(NatsAuth::None),
            Some("token") => Some(NatsAuth::Token { token: token?? }),
            Some("user + password") => Some(NatsAuth::UserPassword { user: user??, password: password?? }),
            Some("nkey_seed_file") => Some(NatsAuth::Nkey { seed: seed? }),
            Some(_) => creds.map(|(file, contents)| NatsAuth::Credentials { file, contents }),
        }
    }

    fn nats_tls(&mut self, raw: NatsTlsConfig) -> Option<NatsTls> {
        let ca_file = match raw.ca_file {
            Some(p) => Some(self.existing_file("nats.tls.ca_file", p)),
            None => Some(None),
        };
        let client_cert = match (raw.cert_file, raw.key_file) {
            (None, None) => Some(None),
            (Some(cert), Some(key)) => {
                let cert = self.existing_file("nats.tls.cert_file", cert);
                let key = self.existing_file("nats.tls.key_file", key);
                if let Some(key) = &key {
                    self.private_key_mode("nats.tls.key_file", key);
                }
                match (cert, key) {
                    (Some(cert_file), Some(key_file)) => Some(Some(ClientCert { cert_file, key_file })),
                    _ => None,
                }
            }
            (Some(_), None) => {
                self.error("nats.tls.cert_file", "a client certificate needs `key_file` too");
                None
            }
            (None, Some(_)) => {
                self.error("nats.tls.key_file", "a client key needs `cert_file` too");
                None
            }
        };
        Some(NatsTls { ca_file: ca_file?, client_cert: client_cert?, required: raw.required })
    }

    fn subjects(&mut self, raw: &SubjectsConfig) -> Option<Subjects> {
        let alerts = self.patterns("nats.subjects.alerts", &raw.alerts);
        let queue_group = if !raw.queue_group.is_empty()
            && raw.queue_group.len() <= 64
            && raw.queue_group.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            Some(raw.queue_group.clone())
        } else {
            self.error("nats.subjects.queue_group", "must be 1 to 64 letters, digits, `_`, `-` or `.`");
            None
        };
        let published = [
            ("requests_prefix", &raw.requests_prefix, true),
            ("results_prefix", &raw.results_prefix, true),
            ("decisions_prefix", &raw.decisions_prefix, true),
            ("audit", &raw.audit, false),
            ("dead_letter", &raw.dead_letter, false),
        ];
        let mut checked = Vec::new();
        for (key, subject, is_prefix) in published {
            let subject = self.literal_subject(&format!("nats.subjects.{key}"), subject);
            checked.push(subject.map(|s| (s, is_prefix)));
        }
        // A subject RUNE publishes on must not be one it takes alerts from: it would feed on itself.
        if let Some(alerts) = &alerts {
            for (i, (pattern, parsed)) in alerts.iter().enumerate() {
                let caught: Vec<String> = checked
                    .iter()
                    .flatten()
                    .filter(|(s, is_prefix)| parsed.matches(&if *is_prefix { format!("{s}.x") } else { s.clone() }))
                    .map(|(s, is_prefix)| if *is_prefix { format!("{s}.…") } else { s.clone() })
                    .collect();
                if !caught.is_empty() {
                    self.cross_error(
                        &format!("nats.subjects.alerts[{i}]"),
                        &["nats.subjects"],
                        format!(
                            "`{pattern}` also matches subjects RUNE publishes on ({}): it would take its own messages for alerts",
                            caught.join(", ")
                        ),
                    );
                }
            }
        }
        let mut checked = checked.into_iter().map(|c| c.map(|(s, _)| s));
        let mut next = || checked.next().flatten();
        let (requests_prefix, results_prefix, decisions_prefix, audit, dead_letter) =
            (next(), next(), next(), next(), next());
        Some(Subjects {
            alerts: alerts?.into_iter().map(|(text, _)| text).collect(),
            queue_group: queue_group?,
            requests_prefix: requests_prefix?,
            results_prefix: results_prefix?,
            decisions_prefix: decisions_prefix?,
            audit: audit?,
            dead_letter: dead_letter?,
        })
    }

    fn jetstream(
        &mut self,
        raw: JetStreamConfig,
        subjects: &SubjectsConfig,
        embedded: bool,
    ) -> Option<Option<JetStream>> {
        if raw.enabled && embedded {
            self.cross_error("nats.jetstream.enabled", &["nats.urls"], "JetStream needs NATS: set nats.urls");
        }
        let s = &raw.alerts_stream;
        let alerts_name = self.name("nats.jetstream.alerts_stream.name", &s.name);
        let (stream_subjects_field, stream_subjects) = match &s.subjects {
            Some(list) => ("nats.jetstream.alerts_stream.subjects", list.clone()),
            None => ("nats.subjects.alerts", subjects.alerts.clone()),
        };
        let parsed = self.patterns("nats.jetstream.alerts_stream.subjects", s.subjects.as_deref().unwrap_or_default());
        if raw.enabled && stream_subjects.is_empty() {
            self.error(stream_subjects_field, "the alerts stream needs at least one subject");
        }
        let results_sample = format!("{}.x", subjects.results_prefix);
        if raw.enabled && raw.results_stream.enabled {
            for (i, subject) in stream_subjects.iter().enumerate() {
                if SubjectPattern::parse(subject).is_ok_and(|p| p.matches(&results_sample)) {
                    self.cross_error(
                        &format!("{stream_subjects_field}[{i}]"),
                        &["nats.subjects.results_prefix"],
                        format!("`{subject}` overlaps the results stream (`{}.>`)", subjects.results_prefix),
                    );
                }
            }
        }
        let max_age = self.duration("nats.jetstream.alerts_stream.max_age", &s.max_age, false);
        let max_bytes = self.size("nats.jetstream.alerts_stream.max_bytes", &s.max_bytes, 1, u64::MAX >> 1);
        let replicas = match s.replicas {
            1..=5 => Some(s.replicas as usize),
            _ => {
                self.error("nats.jetstream.alerts_stream.replicas", "must be 1 to 5");
                None
            }
        };

        let c = &raw.consumer;
        let consumer_name = self.name("nats.jetstream.consumer.name", &c.name);
        let max_deliver = match i64::try_from(c.max_deliver) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.error("nats.jetstream.consumer.max_deliver", "must be at least 1 (and at most 2^63 - 1)");
                None
            }
        };
        let ack_wait = self.duration("nats.jetstream.consumer.ack_wait", &c.ack_wait, false);
        let concurrency = match c.concurrency {
            1..=1024 => Some(c.concurrency as usize),
            _ => {
                self.error("nats.jetstream.consumer.concurrency", "must be 1 to 1024");
                None
            }
        };
        let mut backoff = Some(Vec::new());
        for (i, b) in c.backoff.iter().enumerate() {
            match self.duration(&format!("nats.jetstream.consumer.backoff[{i}]"), b, false) {
                Some(d) => backoff.iter_mut().for_each(|v| v.push(d)),
                None => backoff = None,
            }
        }
        if let Some(n) = max_deliver
            && !c.backoff.is_empty()
            && n <= c.backoff.len() as i64
        {
            self.cross_error(
                "nats.jetstream.consumer.backoff",
                &["nats.jetstream.consumer.max_deliver"],
                format!(
                    "{} delays need max_deliver above {} (NATS refuses the consumer otherwise)",
                    c.backoff.len(),
                    c.backoff.len()
                ),
            );
        }

        let r = &raw.results_stream;
        if r.enabled && !raw.enabled {
            self.cross_error(
                "nats.jetstream.results_stream.enabled",
                &["nats.jetstream.enabled"],
                "the results stream needs nats.jetstream.enabled",
            );
        }
        let results_name = self.name("nats.jetstream.results_stream.name", &r.name);
        if r.enabled && results_name.is_some() && alerts_name.as_deref() == Some(r.name.as_str()) {
            self.error("nats.jetstream.results_stream.name", "must differ from the alerts stream's name");
        }
        let results_max_age = self.duration("nats.jetstream.results_stream.max_age", &r.max_age, false);
        let results_max_bytes = self.size("nats.jetstream.results_stream.max_bytes", &r.max_bytes, 1, u64::MAX >> 1);
        let max_msgs = match r.max_msgs {
            Some(0) => {
                self.error("nats.jetstream.results_stream.max_msgs", "must be at least 1 (leave it out for no limit)");
                None
            }
            other => Some(other),
        };

        let kv = &raw.kv;
        let dedup_bucket = self.name("nats.jetstream.kv.dedup_bucket", &kv.dedup_bucket);
        let locks_bucket = self.name("nats.jetstream.kv.locks_bucket", &kv.locks_bucket);
        if dedup_bucket.is_some() && dedup_bucket == locks_bucket {
            self.error("nats.jetstream.kv.locks_bucket", "must differ from dedup_bucket");
        }
        let lease_ttl = self.duration("nats.jetstream.kv.lease_ttl", &kv.lease_ttl, false);

        let _ = parsed?;
        let results_stream = match r.enabled {
            true => Some(ResultsStream {
                name: results_name?,
                subjects: vec![format!("{}.>", subjects.results_prefix)],
                max_age: results_max_age?,
                max_bytes: results_max_bytes?,
                max_msgs: max_msgs?,
            }),
            false => None,
        };
        let jetstream = JetStream {
            alerts_stream: AlertsStream {
                name: alerts_name?,
                subjects: stream_subjects,
                max_age: max_age?,
                max_bytes: max_bytes?,
                replicas: replicas?,
            },
            consumer: Consumer {
                name: consumer_name?,
                max_deliver: max_deliver?,
                ack_wait: ack_wait?,
                backoff: backoff?,
                concurrency: concurrency?,
            },
            results_stream,
            kv: Kv { dedup_bucket: dedup_bucket?, locks_bucket: locks_bucket?, lease_ttl: lease_ttl? },
        };
        Some(raw.enabled.then_some(jetstream))
    }

    fn webhook(&mut self, raw: WebhookConfig, embedded: bool) -> Option<Webhook> {
        let listen = match raw.listen.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    "webhook.listen",
                    format!("`{}` is not a socket address such as 127.0.0.1:9300 or [::]:9300", raw.listen),
                );
                None
            }
        };
        let max_body_bytes = self.size("webhook.max_body_bytes", &raw.max_body_bytes, MIN_BODY_BYTES, MAX_BODY_BYTES);
        let request_timeout = self.duration("webhook.request_timeout", &raw.request_timeout, false);
        let loopback = listen.is_none_or(|a| a.ip().is_loopback());
        let alertmanager = self.endpoint(Hook::Alertmanager, raw.alertmanager, loopback);
        let grafana = self.endpoint(Hook::Grafana, raw.grafana, loopback);
        let generic = self.endpoint(Hook::Generic, raw.generic, loopback);
        if raw.publish_to_nats && embedded {
            self.cross_error("webhook.publish_to_nats", &["nats.urls"], "needs NATS: set nats.urls");
        }
        let rate_limit_per_source = self.source_rate(&raw.per_source.rate_limit);
        let max_connections_per_source =
            self.at_least_one("webhook.per_source.max_connections", raw.per_source.max_connections);
        let tls = match raw.tls {
            Some(_) if raw.plain_http => {
                self.error("webhook.plain_http", "contradicts webhook.tls: choose one");
                None
            }
            Some(tls) => self.webhook_tls(tls).map(Some),
            None => {
                if !loopback && !raw.plain_http {
                    self.warn(
                        "webhook.tls",
                        "the listener is not on loopback and serves plain HTTP: bearer tokens and payloads travel \
                         in clear unless TLS ends in front of RUNE (set webhook.tls, or plain_http: true to say so)",
                    );
                }
                Some(None)
            }
        };
        Some(Webhook {
            listen: listen?,
            max_body_bytes: usize::try_from(max_body_bytes?).ok()?,
            request_timeout: request_timeout?,
            alertmanager: alertmanager?,
            grafana: grafana?,
            generic: generic?,
            publish_to_nats: raw.publish_to_nats,
            rate_limit_per_source: rate_limit_per_source?,
            max_connections_per_source: max_connections_per_source?,
            tls: tls?,
        })
    }

    fn source_rate(&mut self, raw: &SourceRateConfig) -> Option<RateSpec> {
        let field = "webhook.per_source.rate_limit";
        let per = self.duration(&format!("{field}.per"), &raw.per, false);
        let Some(count) = NonZeroU32::new(raw.count) else {
            self.error(&format!("{field}.count"), "must be at least 1");
            return None;
        };
        let Some(burst) = NonZeroU32::new(raw.burst.unwrap_or(raw.count)) else {
            self.error(&format!("{field}.burst"), "must be at least 1");
            return None;
        };
        match RateSpec::new(count, per?, burst) {
            Ok(spec) => Some(spec),
            Err(e) => {
                self.error(field, e.to_string());
                None
            }
        }
    }

    /// The files must exist now; whether they hold a usable certificate and key is checked by `rune serve` (and
    /// `rune config check`) when it builds the TLS configuration.
    fn webhook_tls(&mut self, raw: WebhookTlsConfig) -> Option<WebhookTls> {
        let cert_file = self.existing_file("webhook.tls.cert_file", raw.cert_file);
        let key_file = self.existing_file("webhook.tls.key_file", raw.key_file);
        if let Some(key) = &key_file {
            self.private_key_mode("webhook.tls.key_file", key);
        }
        let client_ca_file = match raw.client_ca_file {
            Some(p) => Some(self.existing_file("webhook.tls.client_ca_file", p)),
            None => Some(None),
        };
        Some(WebhookTls { cert_file: cert_file?, key_file: key_file?, client_ca_file: client_ca_file? })
    }

    /// Warns when a private key file is readable by group or others.
    fn private_key_mode(&mut self, field: &str, key: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(m) = std::fs::metadata(key) else { return };
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            self.warn(
                field,
                format!("`{}` is readable by group or others (mode {mode:03o}); chmod 600 it", key.display()),
            );
        }
    }

    fn endpoint(&mut self, hook: Hook, raw: Option<EndpointConfig>, loopback: bool) -> Option<Option<EndpointAuth>> {
        let Some(raw) = raw else { return Some(None) };
        let field = &format!("webhook.{}", hook.name());
        let bearer = self.secret(
            &format!("{field}.bearer_token"),
            raw.bearer_token_file.as_ref(),
            raw.bearer_token_env.as_ref(),
            raw.bearer_token_ref.as_ref(),
            SecretSlot::Bearer(hook),
        );
        let hmac = self.secret(
            &format!("{field}.hmac_secret"),
            raw.hmac_secret_file.as_ref(),
            raw.hmac_secret_env.as_ref(),
            raw.hmac_secret_ref.as_ref(),
            SecretSlot::Hmac(hook),
        );
        let bearer_used =
            raw.bearer_token_file.is_some() || raw.bearer_token_env.is_some() || raw.bearer_token_ref.is_some();
        let hmac_used =
            raw.hmac_secret_file.is_some() || raw.hmac_secret_env.is_some() || raw.hmac_secret_ref.is_some();
        let header = match &raw.hmac_header {
            Some(_) if !hmac_used => {
                self.error(
                    &format!("{field}.hmac_header"),
                    "is only used with `hmac_secret_file`, `hmac_secret_env` or `hmac_secret_ref`",
                );
                None
            }
            Some(h)
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) =>
            {
                self.error(&format!("{field}.hmac_header"), format!("`{h}` is not an HTTP header name"));
                None
            }
            Some(h) => Some(h.clone()),
            None => Some(default_hmac_header()),
        };
        let chosen: Vec<&str> =
            [(raw.none, "none: true"), (bearer_used, "a bearer token"), (hmac_used, "an HMAC secret")]
                .into_iter()
                .filter_map(|(used, name)| used.then_some(name))
                .collect();
        match chosen.as_slice() {
            [] => {
                self.error(
                    field,
                    "no authentication chosen: give `bearer_token_file`/`_env`/`_ref` or \
                     `hmac_secret_file`/`_env`/`_ref`, or write `none: true` to accept unauthenticated requests",
                );
                None
            }
            [_] if raw.none => {
                if !loopback {
                    self.warn(&format!("{field}.none"), "accepts unauthenticated requests on a non-loopback address");
                }
                Some(Some(EndpointAuth::None))
            }
            [_] if bearer_used => Some(Some(EndpointAuth::Bearer { token: bearer?? })),
            [_] => Some(Some(EndpointAuth::Hmac { secret: hmac??, header: header? })),
            several => {
                self.error(field, format!("more than one authentication method ({}): choose one", several.join(", ")));
                None
            }
        }
    }

    fn chatops(&mut self, raw: ChatopsConfig, embedded: bool) -> Option<Chatops> {
        if raw.enabled && embedded {
            self.cross_error(
                "chatops.enabled",
                &["nats.urls"],
                "chatops requests arrive over NATS (on <requests_prefix>.<action>): set nats.urls",
            );
        }
        let reply_timeout = self.duration("chatops.reply_timeout", &raw.reply_timeout, false);
        Some(Chatops { enabled: raw.enabled, reply_timeout: reply_timeout? })
    }

    fn paths(&mut self, raw: PathsConfig) -> Option<Paths> {
        let rules_dir = self.path("paths.rules_dir", raw.rules_dir);
        if !rules_dir.is_dir() {
            self.warn("paths.rules_dir", format!("`{}` is not a folder (yet)", rules_dir.display()));
        }
        if raw.plugins_dirs.is_empty() {
            self.error("paths.plugins_dirs", "needs at least one folder");
        }
        let mut plugins_dirs = Vec::new();
        for (i, dir) in raw.plugins_dirs.into_iter().enumerate() {
            let field = format!("paths.plugins_dirs[{i}]");
            let dir = self.path(&field, dir);
            if !dir.is_dir() {
                self.warn(&field, format!("`{}` is not a folder (yet)", dir.display()));
            }
            plugins_dirs.push(dir);
        }
        let inventory = match raw.inventory {
            Some(p) => self.existing_file("paths.inventory", p).map(Some),
            None => {
                let local = PathBuf::from("inventory.yaml");
                Some(local.is_file().then_some(local))
            }
        };
        let state_dir = raw.state_dir.map(|d| self.path("paths.state_dir", d));
        if let Some(d) = &state_dir
            && d.exists()
            && !d.is_dir()
        {
            self.error("paths.state_dir", format!("`{}` exists and is not a folder", d.display()));
        }
        if self.errors.iter().any(|e| e.field.starts_with("paths.")) {
            return None;
        }
        Some(Paths { rules_dir, plugins_dirs, inventory: inventory?, state_dir })
    }

    fn limits(&mut self, raw: LimitsConfig) -> Option<Limits> {
        let max_in_flight_runs = self.at_least_one("limits.max_in_flight_runs", raw.max_in_flight_runs);
        let parallel = self.at_least_one("limits.parallel", raw.parallel);
        let shutdown_grace = self.duration("limits.shutdown_grace", &raw.shutdown_grace, true);
        let reload_debounce = self.duration("limits.reload_debounce", &raw.reload_debounce, true);
        Some(Limits {
            max_in_flight_runs: max_in_flight_runs?,
            parallel: parallel?,
            shutdown_grace: shutdown_grace?,
            reload_debounce: reload_debounce?,
        })
    }

    fn results(&mut self, raw: ResultsConfig, embedded: bool) -> Option<Results> {
        let nats = raw.nats.unwrap_or(!embedded);
        if nats && embedded {
            self.cross_error("results.nats", &["nats.urls"], "needs NATS: set nats.urls");
        }
        let stdout = raw.stdout.unwrap_or(embedded);
        let jsonl_file = raw.jsonl_file.map(|p| self.path("results.jsonl_file", p));
        if let Some(p) = &jsonl_file {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.is_dir() {
                self.error("results.jsonl_file", format!("the folder of `{}` does not exist", p.display()));
            } else if p.is_dir() {
                self.error("results.jsonl_file", format!("`{}` is a folder", p.display()));
            }
        }
        if !stdout && jsonl_file.is_none() && !nats {
            self.warn("results", "results go nowhere: stdout, jsonl_file and nats are all off");
        }
        let retry_for = self.duration("results.retry_for", &raw.retry_for, false);
        let max_pending = self.at_least_one("results.max_pending", raw.max_pending);
        Some(Results { stdout, jsonl_file, nats, retry_for: retry_for?, max_pending: max_pending? })
    }

    fn audit(&mut self, raw: AuditConfig) -> Option<Audit> {
        let max_file_size = self.size("audit.max_file_size", &raw.max_file_size, 64 * 1024, u64::MAX >> 1);
        let file = self.path("audit.file", raw.file);
        if raw.enabled && file.is_dir() {
            self.error("audit.file", format!("`{}` is a folder", file.display()));
        }
        Some(Audit {
            enabled: raw.enabled,
            file,
            max_file_size: max_file_size?,
            refuse_diagnostics: raw.refuse_diagnostics,
        })
    }

    fn ssm(&mut self, raw: SsmConfig) -> Option<Ssm> {
        let within = |c: &mut Self, field: &str, text: &str, min: Duration, max: Duration| {
            let d = c.duration(field, text, true)?;
            if d < min || d > max {
                c.error(
                    field,
                    format!(
                        "must be within {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                return None;
            }
            Some(d)
        };
        let s = Duration::from_secs;
        let delivery_timeout = within(self, "ssm.delivery_timeout", &raw.delivery_timeout, s(30), s(30 * 24 * 3600));
        let poll_first = within(self, "ssm.poll_first", &raw.poll_first, Duration::ZERO, s(60));
        let poll_max = within(self, "ssm.poll_max", &raw.poll_max, Duration::from_millis(100), s(300));
        let not_found_grace = within(self, "ssm.not_found_grace", &raw.not_found_grace, Duration::ZERO, s(600));
        let secrets_cache_ttl =
            within(self, "ssm.secrets_cache_ttl", &raw.secrets_cache_ttl, Duration::ZERO, s(24 * 3600));
        if !(1..=100_000).contains(&raw.secrets_max_cached) {
            self.error("ssm.secrets_max_cached", "must be within 1 and 100000");
            return None;
        }
        let mut secrets_prefetch = Some(Vec::new());
        for (i, text) in raw.secrets_prefetch.iter().enumerate() {
            let field = format!("ssm.secrets_prefetch[{i}]");
            // `/rune/prod/` and `/rune/prod` are the same hierarchy; a path has the syntax of a parameter name.
            let path = text.strip_suffix('/').unwrap_or(text);
            match SecretRef::parse(&format!("{}{path}", crate::secrets::PREFIX)) {
                Some(Ok(_)) => {
                    let position = self.position(&field);
                    if let Some(list) = secrets_prefetch.as_mut() {
                        list.push(PrefetchPath { path: path.to_owned(), position });
                    }
                }
                _ => {
                    self.error(
                        &field,
                        format!(
                            "`{}` is not a Parameter Store path such as /rune/prod/ (`/`-separated segments of letters, digits, `_`, `.`, `-`)",
                            crate::engine::truncate(text, 80)
                        ),
                    );
                    secrets_prefetch = None;
                }
            }
        }
        if !raw.secrets_prefetch.is_empty() && secrets_cache_ttl == Some(Duration::ZERO) {
            self.cross_error(
                "ssm.secrets_prefetch",
                &["ssm.secrets_cache_ttl"],
                "needs ssm.secrets_cache_ttl above 0s: nothing prefetched would be kept",
            );
            secrets_prefetch = None;
        }
        Some(Ssm {
            delivery_timeout: delivery_timeout?,
            poll_first: poll_first?,
            poll_max: poll_max?,
            not_found_grace: not_found_grace?,
            secrets_cache_ttl: secrets_cache_ttl?,
            secrets_max_cached: raw.secrets_max_cached,
            secrets_prefetch: secrets_prefetch?,
        })
    }

    fn log(&mut self, raw: LogConfig) -> Option<Log> {
        let level = match tracing_subscriber::EnvFilter::try_new(&raw.level) {
            Ok(_) if !raw.level.trim().is_empty() => Some(raw.level),
            Ok(_) => {
                self.error("log.level", "must not be empty (e.g. `info` or `rune=debug,warn`)");
                None
            }
            Err(e) => {
                self.error(
                    "log.level",
                    format!("`{}` is not a log filter such as `info` or `rune=debug,warn`: {e}", raw.level),
                );
                None
            }
        };
        let format = match raw.format {
            LogFormatConfig::Text => LogFormat::Text,
            LogFormatConfig::Json => LogFormat::Json,
        };
        Some(Log { level: level?, format })
    }
}

/// Checks a NATS URL: `nats://` or `tls://`, a host, an optional port, no credentials, no path.
fn nats_url(url: &str) -> Result<(), String> {
    // A URL with credentials is never echoed.
    let shown = if url.contains('@') { "<URL with credentials>" } else { url };
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("nats://").or_else(|| lower.strip_prefix("tls://")) else {
        return Err(format!("`{shown}`: only nats:// and tls:// URLs are allowed"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err("credentials in a URL would be written in clear: use nats.auth".into());
    }
    if !path.is_empty() || rest.contains(['?', '#']) {
        return Err(format!("`{shown}`: a NATS URL has no path or query"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("`{shown}`: unclosed `[`"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{shown}`: `{host}` is not an IPv6 address"));
        }
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')) {
        return Err(format!("`{shown}`: missing or invalid host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("`{shown}`: `{port}` is not a port (1 to 65535)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nats_url;

    #[test]
    fn nats_urls() {
        for ok in
            ["nats://127.0.0.1:4222", "tls://nats.example.com:4443", "nats://nats", "nats://[::1]:4222", "NATS://h:1"]
        {
            assert_eq!(nats_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://h:4222",
            "ws://h:80",
            "h:4222",
            "nats://",
            "nats://h:0",
            "nats://h:99999",
            "nats://h:4222/path",
            "nats://[zz]:4222",
            "nats://h h:4222",
        ] {
            assert!(nats_url(bad).is_err(), "{bad}");
        }
        let with_credentials = nats_url("nats://alice:hunter2@h:4222").unwrap_err();
        assert!(!with_credentials.contains("hunter2"), "{with_credentials}");
    }
}
