//! The normalised event: what every intake (webhook adapter, NATS message, chatops request) turns its input into.
//!
//! Adapters in [`crate::sources`] are pure functions from bytes to `Vec<Event>`; everything after them (rules,
//! gates, results) sees only this type.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where an event came from: the payload format, not the wire (a Grafana payload may arrive by webhook or NATS).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Prometheus Alertmanager webhook, payload version 4.
    Alertmanager,
    /// Grafana unified alerting webhook.
    Grafana,
    /// RUNE's generic JSON event (docs/events.md).
    Generic,
    /// A chatops request: names its action and target itself, skips rule matching, not the gates.
    Chatops,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Alertmanager, Source::Grafana, Source::Generic, Source::Chatops];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Alertmanager => "alertmanager",
            Source::Grafana => "grafana",
            Source::Generic => "generic",
            Source::Chatops => "chatops",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the alert is firing or has resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

impl fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a chatops request asks for. The target is a name still to be looked up in the inventory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatopsRequest {
    /// `plugin` or `plugin@version`.
    pub action: String,
    /// An inventory host name.
    pub target: String,
    /// Argument values as JSON scalars, checked against the plugin header later.
    pub args: BTreeMap<String, serde_json::Value>,
    /// Who asked (chat user id or name), as the chat bot vouches for it.
    pub requester: String,
}

/// One normalised alert (or request).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event (UUID v7, so ids sort by arrival).
    pub id: uuid::Uuid,
    pub source: Source,
    /// NATS-style subject the event arrived on (`hooks.alertmanager` for webhooks, the NATS subject otherwise).
    pub subject: String,
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Alertmanager's or Grafana's fingerprint; for other sources, [`fingerprint_of`] the labels.
    pub fingerprint: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    /// Carried into every decision, run, result and log line of this event.
    pub correlation_id: String,
    /// Set for [`Source::Chatops`] only.
    pub request: Option<ChatopsRequest>,
    /// Identity of the message that carried the event, the same on every redelivery (JetStream:
    /// `<stream>:<sequence>:<place in the payload>`); None where nothing is redelivered. It owns the pending dedup
    /// claims of the event's runs (see [`crate::gate::dedup`]), so a redelivery takes over its own claim.
    #[serde(skip)]
    pub delivery: Option<Arc<str>>,
    /// The whole payload as received (shared by all events cut from one payload); never interpreted again.
    #[serde(skip)]
    pub raw: Arc<str>,
}

/// The context an adapter needs besides the bytes: where and when the payload arrived.
#[derive(Debug, Clone)]
pub struct Intake<'a> {
    /// Subject the payload arrived on; webhook intake uses `hooks.<format>`.
    pub subject: &'a str,
    pub received_at: DateTime<Utc>,
    /// From a header of the carrying message, when present; it wins over any id in the payload.
    pub correlation_id: Option<&'a str>,
}

/// Bounds on what an adapter accepts. Anything over a bound is an error naming the field, never a truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Alerts per payload (Alertmanager, Grafana).
    pub max_alerts: usize,
    /// Labels per alert, and annotations per alert, each.
    pub max_labels: usize,
    pub max_key_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_annotation_value_bytes: usize,
    /// Any other string field (subject, fingerprint, requester, action, target, ids).
    pub max_field_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_alerts: 1000,
            max_labels: 256,
            max_key_bytes: 128,
            max_label_value_bytes: 4096,
            max_annotation_value_bytes: 16 * 1024,
            max_field_bytes: 1024,
        }
    }
}

/// Why a payload was refused: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} payload: `{field}`: {message}")]
pub struct AdapterError {
    pub format: Source,
    /// Path of the offending field, e.g. `alerts[3].labels.instance`; `.` for the whole body.
    pub field: String,
    pub message: String,
}

/// A stable fingerprint of a label set for sources that do not bring one: the first 16 hex digits of the
/// SHA-256 of the length-prefixed names and values in name order (so no value can imitate another label set).
pub fn fingerprint_of(labels: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in labels {
        for part in [k, v] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..8])
}

/// Whether `name` may be a label or annotation name: `^[A-Za-z_][A-Za-z0-9_.:/-]*$` (Prometheus names, plus the
/// `.`, `:`, `/` and `-` that OpenTelemetry-style and Kubernetes-style names use).
pub fn is_label_name(name: &str) -> bool {
    match name.as_bytes().split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
        }
        None => false,
    }
}

/// Whether `id` may be a correlation id: 1 to 128 characters of `[A-Za-z0-9._:-]` (safe in logs, subjects, paths).
pub fn is_correlation_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_order_free() {
        let a: BTreeMap<String, String> =
            [("b".to_owned(), "2".to_owned()), ("a".to_owned(), "1".to_owned())].into_iter().collect();
        let b: BTreeMap<String, String> =
            [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())].into_iter().collect();
        assert_eq!(fingerprint_of(&a), fingerprint_of(&b));
        assert_eq!(fingerprint_of(&a).len(), 16);
        let c: BTreeMap<String, String> = [("a".to_owned(), "1\nb=2".to_owned())].into_iter().collect();
        assert_ne!(fingerprint_of(&a), fingerprint_of(&c));
    }

    #[test]
    fn label_names() {
        for ok in ["alertname", "_x", "service.name", "k8s.io/app", "a:b-c", "A9"] {
            assert!(is_label_name(ok), "{ok}");
        }
        for bad in ["", "9a", "-a", ".a", "a b", "a\0", "é", "a=b"] {
            assert!(!is_label_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn correlation_ids() {
        assert!(is_correlation_id("019ab2a4-5f0d-7a10-8e0c-51d8f8a0c0aa"));
        assert!(is_correlation_id("ticket:OPS.42_a"));
        assert!(is_correlation_id(&"a".repeat(128)));
        for bad in ["", "a b", "a\n", "a/b", &"a".repeat(129)] {
            assert!(!is_correlation_id(bad), "{bad:?}");
        }
    }
}
