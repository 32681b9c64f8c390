//! The one asynchronous step of loading the settings: reading the secrets they name by reference
//! (`token_ref: ssm:/path/name`) and prefetching `ssm.secrets_prefetch`, through one [`ParameterStore`].
//!
//! Compiling stays synchronous and offline: it checks each reference's syntax and records where its value goes
//! (an empty placeholder stands there until then). [`Settings::resolve_secrets`] then reads them all; any
//! failure is a [`ConfigError`] naming the field and the reference — never a value — and the settings are not
//! used. Values are read once, at start: a rotated secret needs a restart.

use serde::{Serialize, Serializer};

use super::secret::trim_newline;
use super::{ConfigError, EndpointAuth, NatsAuth, Secret, Settings};
use crate::secrets::{ParameterStore, SecretRef};

/// Where a value was written (file position or variable), for errors found after loading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Position {
    pub location: Option<(String, u64, u64)>,
    pub env: Option<String>,
}

impl Position {
    fn error(&self, field: &str, message: String) -> ConfigError {
        ConfigError { field: field.to_owned(), location: self.location.clone(), env: self.env.clone(), message }
    }
}

/// A secret given by reference: where it was written, where its value goes, and whether it has been read.
/// `rune config check` shows it next to the `<redacted>` value (the path is not secret).
#[derive(Debug, Clone, Serialize)]
pub struct SecretReference {
    /// The field it was written in: `nats.auth.token_ref`.
    pub field: String,
    /// Where its value shows in the settings: `nats.auth.token`, `webhook.grafana.secret`.
    pub key: String,
    #[serde(serialize_with = "as_display")]
    pub reference: SecretRef,
    /// The value was read (by [`Settings::resolve_secrets`]).
    pub resolved: bool,
    #[serde(skip)]
    pub(super) slot: SecretSlot,
    #[serde(skip)]
    pub(super) position: Position,
}

/// A `ssm.secrets_prefetch` path (`/rune/prod`), serialized as the path alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PrefetchPath {
    pub path: String,
    #[serde(skip)]
    pub(super) position: Position,
}

/// The place in [`Settings`] a referenced secret's value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SecretSlot {
    NatsToken,
    NatsPassword,
    Bearer(Hook),
    Hmac(Hook),
}

/// A webhook endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hook {
    Alertmanager,
    Grafana,
    Generic,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Alertmanager => "alertmanager",
            Hook::Grafana => "grafana",
            Hook::Generic => "generic",
        }
    }
}

impl SecretSlot {
    /// The dotted key of the value in the settings as printed (`Settings::redacted_json`).
    pub fn key(self) -> String {
        match self {
            SecretSlot::NatsToken => "nats.auth.token".into(),
            SecretSlot::NatsPassword => "nats.auth.password".into(),
            SecretSlot::Bearer(hook) => format!("webhook.{}.token", hook.name()),
            SecretSlot::Hmac(hook) => format!("webhook.{}.secret", hook.name()),
        }
    }
}

impl Settings {
    /// The Parameter Store these settings ask: the standard AWS configuration chain (credentials, `AWS_REGION`
    /// or the profile's region, `AWS_ENDPOINT_URL_SSM`) and the cache bounds of `ssm`. Hand the same store to
    /// the orchestrator so that the runs use what was prefetched.
    pub fn parameter_store(&self) -> ParameterStore {
        ParameterStore::new(self.ssm.secrets_cache_ttl, self.ssm.secrets_max_cached)
    }

    /// The references not read yet.
    pub fn unresolved(&self) -> impl Iterator<Item = &SecretReference> {
        self.references.iter().filter(|r| !r.resolved)
    }

    /// Prefetches every `ssm.secrets_prefetch` path into `store`'s cache, then reads every secret given by
    /// reference (from that cache when prefetched) into its place. Every failure is reported, each naming the
    /// field and the reference or path; a prefetch that fills the cache or finds nothing is a warning.
    pub async fn resolve_secrets(&mut self, store: &ParameterStore) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        for (i, prefetch) in self.ssm.secrets_prefetch.iter().enumerate() {
            let field = format!("ssm.secrets_prefetch[{i}]");
            match store.prefetch(&prefetch.path).await {
                Err(e) => errors.push(prefetch.position.error(&field, e.to_string())),
                Ok(done) if done.truncated => self.warnings.push(prefetch.position.error(
                    &field,
                    format!(
                        "the secrets cache (ssm.secrets_max_cached) is full after {} parameter(s) under {}; the others are read when a run needs them",
                        done.cached, prefetch.path
                    ),
                )),
                Ok(done) if done.cached == 0 => self
                    .warnings
                    .push(prefetch.position.error(&field, format!("no parameters under {}", prefetch.path))),
                Ok(done) => tracing::info!(path = %prefetch.path, parameters = done.cached, "secrets prefetched"),
            }
        }
        let wanted: Vec<(usize, SecretRef)> = (self.references.iter().enumerate())
            .filter(|(_, r)| !r.resolved)
            .map(|(i, r)| (i, r.reference.clone()))
            .collect();
        let answers = futures::future::join_all(wanted.iter().map(|(_, reference)| store.get(reference))).await;
        for ((i, _), answer) in wanted.into_iter().zip(answers) {
            let Some(r) = self.references.get(i) else { continue };
            let (slot, field, position) = (r.slot, r.field.clone(), r.position.clone());
            match answer {
                Ok(value) => {
                    let mut bytes = value.expose().as_bytes().to_vec();
                    trim_newline(&mut bytes);
                    if bytes.is_empty() {
                        errors.push(position.error(&field, format!("secret {}: the value is empty", r.reference)));
                        continue;
                    }
                    match self.secret_mut(slot) {
                        Some(secret) => *secret = Secret::new(bytes),
                        None => continue,
                    }
                    if let Some(r) = self.references.get_mut(i) {
                        r.resolved = true;
                    }
                }
                Err(e) => errors.push(position.error(&field, e.to_string())),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            errors.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            Err(errors)
        }
    }

    /// The secret at `slot`, when the settings have one there.
    pub(super) fn secret_mut(&mut self, slot: SecretSlot) -> Option<&mut Secret> {
        match slot {
            SecretSlot::NatsToken => match &mut self.nats.as_mut()?.auth {
                NatsAuth::Token { token } => Some(token),
                _ => None,
            },
            SecretSlot::NatsPassword => match &mut self.nats.as_mut()?.auth {
                NatsAuth::UserPassword { password, .. } => Some(password),
                _ => None,
            },
            SecretSlot::Bearer(hook) => match endpoint(&mut self.webhook, hook)? {
                EndpointAuth::Bearer { token } => Some(token),
                _ => None,
            },
            SecretSlot::Hmac(hook) => match endpoint(&mut self.webhook, hook)? {
                EndpointAuth::Hmac { secret, .. } => Some(secret),
                _ => None,
            },
        }
    }
}

fn endpoint(webhook: &mut super::Webhook, hook: Hook) -> Option<&mut EndpointAuth> {
    match hook {
        Hook::Alertmanager => webhook.alertmanager.as_mut(),
        Hook::Grafana => webhook.grafana.as_mut(),
        Hook::Generic => webhook.generic.as_mut(),
    }
}

fn as_display<S: Serializer>(value: &SecretRef, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}
