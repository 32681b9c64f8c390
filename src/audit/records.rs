//! What each audit record holds, and the [`Auditor`] that writes them around runs: who (operator, or rule and
//! event), what (action, plugin version and sha256, a hash of the arguments — secret arguments hashed as their
//! references, never their values), where (host, transport), when, the outcome, the correlation id.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::{AuditError, AuditLog};
use crate::bpcs::{ArgValue, SafetyClass};
use crate::mediator::RunSpec;
use crate::results::ResultEnvelope;

/// Longest error text a record keeps.
const MAX_ERROR_CHARS: usize = 500;

/// SHA-256 of the arguments as canonical JSON (sorted keys), a secret argument counted as its reference.
pub fn args_sha256(args: &BTreeMap<String, ArgValue>, reference: impl Fn(&str) -> Option<String>) -> String {
    let shown: BTreeMap<&str, Value> = args
        .iter()
        .map(|(name, value)| {
            let v = match reference(name) {
                Some(r) => json!(r),
                None => serde_json::to_value(value).unwrap_or(Value::Null),
            };
            (name.as_str(), v)
        })
        .collect();
    hex::encode(Sha256::digest(serde_json::to_string(&shown).unwrap_or_default().as_bytes()))
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Who, from the run's trigger: the source, and for an alert its rule and event.
fn who(spec: &RunSpec) -> Map<String, Value> {
    let trigger = |name: &str| spec.trigger.get(name).cloned().unwrap_or(Value::Null);
    object(json!({
        "source": trigger("source"),
        "operator": spec.operator,
        "rule": trigger("rule"),
        "event_id": trigger("event_id"),
        "correlation_id": spec.correlation_id,
        "run_id": spec.run_id,
    }))
}

/// Who, what and where of a run: the part its dispatch and result records share.
fn run(spec: &RunSpec) -> Map<String, Value> {
    let mut fields = who(spec);
    fields.extend(object(json!({
        "action": spec.action,
        "plugin": {"name": spec.plugin.name, "version": spec.plugin.version.to_string(), "sha256": spec.plugin.sha256},
        "host": spec.host.name,
        "transport": spec.host.transport,
        "dry_run": spec.dry_run,
    })));
    fields
}

/// The record a run writes before it starts.
pub fn dispatch(spec: &RunSpec) -> Map<String, Value> {
    let mut fields = run(spec);
    fields.extend(object(json!({
        "class": spec.plugin.class,
        "args_sha256": args_sha256(&spec.args, |n| spec.masked.reference(n).map(str::to_owned)),
        "timeout_s": spec.timeout.as_secs(),
    })));
    fields
}

/// The record of a run's result.
pub fn result(spec: &RunSpec, envelope: &ResultEnvelope) -> Map<String, Value> {
    let mut fields = run(spec);
    let error = envelope.error.as_deref().map(|e| crate::engine::truncate(e, MAX_ERROR_CHARS));
    fields.extend(object(json!({
        "outcome": envelope.status,
        "exit_code": envelope.exit_code,
        "duration_ms": envelope.duration_ms,
        "changed": envelope.output.as_ref().and_then(|o| o.get("changed")).cloned(),
        "error": error,
    })));
    fields
}

/// The record of a request refused before anything ran (`rune run` with a bad argument, an unknown host…).
pub fn refusal(
    source: &str,
    operator: &str,
    action: &str,
    hosts: &[String],
    problems: &[String],
) -> Map<String, Value> {
    let problems: Vec<String> = problems.iter().map(|p| crate::engine::truncate(p, MAX_ERROR_CHARS)).collect();
    object(json!({
        "source": source,
        "operator": operator,
        "action": action,
        "hosts": hosts,
        "outcome": "refused",
        "problems": problems,
    }))
}

/// The record of a webhook payload an endpoint refused (bad credentials, a malformed payload, the sink
/// unavailable…): the endpoint, the peer, the HTTP status and the error, bounded.
pub fn webhook_refusal(format: &str, peer: Option<&str>, status: u16, error: &str) -> Map<String, Value> {
    object(json!({
        "source": format!("webhook:{format}"),
        "operator": format!("webhook:{format}"),
        "peer": peer,
        "status": status,
        "outcome": "refused",
        "problems": [crate::engine::truncate(error, MAX_ERROR_CHARS)],
    }))
}

/// A decision of the rules engine (its published record): who, what, where, and the verdict. The arguments are
/// hashed as published (secret ones are references there).
pub fn decision(record: &Value) -> Map<String, Value> {
    let field = |name: &str| record.get(name).cloned().unwrap_or(Value::Null);
    let args = record.get("args").map(|a| hex::encode(Sha256::digest(a.to_string().as_bytes())));
    object(json!({
        "source": field("source"),
        "operator": field("operator"),
        "rule": field("rule"),
        "event_id": field("event_id"),
        "correlation_id": field("correlation_id"),
        "fingerprint": field("fingerprint"),
        "action": field("action"),
        "args_sha256": args,
        "host": field("host"),
        "outcome": field("decision"),
        "reason": field("reason"),
        "detail": field("detail"),
    }))
}

/// Writes the records around runs, and decides what a run may do when the trail cannot be written: a
/// remediation never runs unaudited (fail closed); a diagnostic (or a dry run) runs anyway unless
/// `refuse_diagnostics` — it is said loudly either way.
#[derive(Debug, Clone)]
pub struct Auditor {
    log: AuditLog,
    refuse_diagnostics: bool,
}

impl Auditor {
    pub fn new(log: AuditLog, refuse_diagnostics: bool) -> Auditor {
        Auditor { log, refuse_diagnostics }
    }

    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Writes the dispatch record and waits for the disk. Err(why) when the run must not start.
    pub async fn before_run(&self, spec: &RunSpec) -> Result<(), String> {
        let Err(e) = self.log.append("dispatch", dispatch(spec)).await else { return Ok(()) };
        let changes_things = spec.plugin.class == SafetyClass::Remediation && !spec.dry_run;
        if changes_things || self.refuse_diagnostics {
            tracing::error!(run_id = %spec.run_id, host = %spec.host.name, action = %spec.action, error = %e, "run refused: the audit trail cannot be written (fail closed)");
            return Err(unwritable(&e, changes_things));
        }
        tracing::error!(run_id = %spec.run_id, host = %spec.host.name, action = %spec.action, error = %e, "diagnostic runs UNAUDITED: the audit trail cannot be written");
        Ok(())
    }

    /// Queues the result record.
    pub async fn after_run(&self, spec: &RunSpec, envelope: &ResultEnvelope) {
        self.log.record("result", result(spec, envelope)).await;
    }
}

fn unwritable(e: &AuditError, remediation: bool) -> String {
    let what = if remediation { "remediations" } else { "runs (audit.refuse_diagnostics)" };
    format!("the audit trail cannot be written ({e}): {what} do not run unaudited")
}

/// A sink of the bridge's publishers that records every decision in the trail (queued, not waited for: a storm
/// of suppressions must not wait on the disk; runs are recorded — and waited for — by the [`Auditor`]).
/// Results are left to the [`Auditor`], which sees every run whatever asked for it.
pub struct DecisionAudit(pub AuditLog);

impl crate::results::publish::Publish for DecisionAudit {
    fn result<'a>(
        &'a self,
        _envelope: &'a ResultEnvelope,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::results::publish::PublishError>> {
        Box::pin(async { Ok(()) })
    }

    fn decision<'a>(
        &'a self,
        _rule: &'a str,
        record: &'a Value,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::results::publish::PublishError>> {
        Box::pin(async move {
            self.0.record("decision", decision(record)).await;
            Ok(())
        })
    }
}
