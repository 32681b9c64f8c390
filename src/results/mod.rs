//! Results: the envelope every run produces, whoever started it (a person with `rune run`, later an alert).
//!
//! The JSON field names are a stable, documented interface (docs/results.md); add fields, never rename them.

pub mod nats;
pub mod outbox;
pub mod publish;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inventory::TransportKind;

/// Final status of one run on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The plugin reported ok.
    Ok,
    /// The plugin reported warn.
    Warn,
    /// The plugin reported error, or failed in a way it could describe.
    Error,
    /// The plugin decided there was nothing to do.
    Skipped,
    /// Ran with `dry_run` set and the plugin reported its plan.
    DryRun,
    /// The timeout expired; the process tree on the host was killed.
    Timeout,
    /// The host could not be reached (connect refused, timed out, connection lost).
    Unreachable,
    /// The host refused our credentials.
    AuthFailed,
    /// The host's key is unknown or changed in known_hosts.
    HostKeyRejected,
    /// A precondition failed before the plugin started (missing command, root needed).
    PreconditionFailed,
    /// The plugin broke the BPCS output contract.
    ProtocolError,
}

impl Status {
    /// True for the statuses that count as success for the exit code.
    pub fn is_success(self) -> bool {
        matches!(self, Status::Ok | Status::Warn | Status::Skipped | Status::DryRun)
    }

    /// The stable name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Error => "error",
            Status::Skipped => "skipped",
            Status::DryRun => "dry_run",
            Status::Timeout => "timeout",
            Status::Unreachable => "unreachable",
            Status::AuthFailed => "auth_failed",
            Status::HostKeyRejected => "host_key_rejected",
            Status::PreconditionFailed => "precondition_failed",
            Status::ProtocolError => "protocol_error",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which plugin ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginIdentity {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// ECS-style outcome of a run (`event.outcome`): whether it counts as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

impl From<Status> for Outcome {
    fn from(s: Status) -> Outcome {
        if s.is_success() { Outcome::Success } else { Outcome::Failure }
    }
}

/// What kind of record a line of the result stream is (results and decisions may share a file or a sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Result,
    Decision,
}

/// One run on one host: the documented, stable result record (one JSON line per host with `--output json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEnvelope {
    /// Always `result` (decisions carry `decision`).
    pub record: RecordKind,
    /// The instant the run finished (= `finished_at`), under the name SIEMs index on.
    #[serde(rename = "@timestamp")]
    pub timestamp: DateTime<Utc>,
    pub run_id: String,
    pub correlation_id: String,
    pub action: String,
    pub plugin: PluginIdentity,
    pub host: String,
    pub transport: TransportKind,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub status: Status,
    /// `success` for ok, warn, skipped and dry_run; `failure` otherwise.
    pub outcome: Outcome,
    /// The plugin's exit code, when it ran to an exit.
    pub exit_code: Option<i32>,
    /// The plugin's BPCS output object, when it produced a valid one.
    pub output: Option<Value>,
    /// Why the status is what it is when the plugin's own output does not say (transport, contract, timeout).
    pub error: Option<String>,
    /// The last bytes of the plugin's stderr (lossy UTF-8).
    pub stderr_tail: String,
    /// True when stdout exceeded the cap and was cut.
    pub truncated: bool,
    pub dry_run: bool,
    pub operator: String,
    /// What started the run: `{"source": "cli", "operator": ...}` by hand; for an alert its source, rule,
    /// event id, subject, status, fingerprint and labels.
    pub trigger: Value,
}
