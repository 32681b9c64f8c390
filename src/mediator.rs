//! The mediator: one plugin run on one host. Builds the runner program (BPCS input, no shell interpolation of
//! data), runs it through a [`Transport`] under a timeout that also ends the remote process tree, caps output,
//! and validates the plugin's BPCS output into a [`ResultEnvelope`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use crate::bpcs::{self, ArgValue, BPCS_VERSION, PluginInput, PluginRef, PluginStatus, SafetyClass, runner_exit};
use crate::inventory::{Host, Sudo, TransportKind};
use crate::plugins::{LibFile, Plugin};
use crate::results::{PluginIdentity, RecordKind, ResultEnvelope, Status};
use crate::transport::{
    Invocation, RawOutcome, SessionFile, SessionRun, Transport, TransportError, push_printf_literal,
};

/// The runner template, after the sweeps it shares with the session shell.
const RUNNER_TEMPLATE: &str = concat!(include_str!("sweep.sh"), include_str!("exec.sh"), include_str!("runner.sh"));

/// Seconds between the polite TERM at the timeout and the KILL of the plugin's process group.
pub const KILL_AFTER_SECS: u64 = 5;
/// Extra client-side time past timeout + kill-after before the transport gives up and cleans up itself.
pub const CLIENT_GRACE_SECS: u64 = 10;

/// Everything needed for one run on one host. Arguments are already validated against the header.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub run_id: String,
    pub correlation_id: String,
    pub action: String,
    pub plugin: Arc<Plugin>,
    pub lib: Arc<Vec<LibFile>>,
    pub args: Arc<BTreeMap<String, ArgValue>>,
    pub host: Arc<Host>,
    pub dry_run: bool,
    pub timeout: Duration,
    pub operator: String,
    pub trigger: Arc<Value>,
    /// Sweep run dirs left by killed runners on this host first (the orchestrator asks once per host).
    pub sweep_stale: bool,
    /// Values of secret arguments: hidden wherever the result would show them.
    pub masked: Masked,
}

/// Values a run's result must not show (resolved secrets): the plugin gets them, but every occurrence in its
/// output (string values of the BPCS result), the error and the stderr tail becomes `<redacted>`. Values shorter
/// than [`Masked::MIN_CHARS`] are not masked (masking `ab` everywhere would garble the output, and hides little).
/// A plugin that prints a secret transformed (base64, a prefix) is not caught: don't.
#[derive(Clone, Default)]
pub struct Masked {
    values: Arc<[String]>,
    /// The secret arguments by name, as their references (`ssm:/path`): what records show in their place.
    references: Arc<BTreeMap<String, String>>,
}

impl Masked {
    pub const MIN_CHARS: usize = 4;

    /// From the secret arguments: (name, reference, value).
    pub fn new(secrets: impl IntoIterator<Item = (String, String, String)>) -> Masked {
        let mut values = Vec::new();
        let mut references = BTreeMap::new();
        for (name, reference, value) in secrets {
            references.insert(name, reference);
            if value.chars().count() >= Self::MIN_CHARS {
                values.push(value);
            }
        }
        // Longest first: a secret that contains another is replaced whole.
        values.sort_unstable_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Masked { values: values.into(), references: Arc::new(references) }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The reference a secret argument was given as; None for other arguments.
    pub fn reference(&self, name: &str) -> Option<&str> {
        self.references.get(name).map(String::as_str)
    }

    pub fn text(&self, text: &mut String) {
        for value in self.values.iter() {
            if text.contains(value.as_str()) {
                *text = text.replace(value.as_str(), crate::config::REDACTED);
            }
        }
    }

    /// Every string in `value`, object keys included.
    pub fn json(&self, value: &mut Value) {
        match value {
            Value::String(s) => self.text(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            Value::Object(map) => {
                let hit = map.keys().any(|k| self.values.iter().any(|v| k.contains(v.as_str())));
                if hit {
                    let entries = std::mem::take(map);
                    for (mut k, v) in entries {
                        self.text(&mut k);
                        map.insert(k, v);
                    }
                }
                map.values_mut().for_each(|v| self.json(v));
            }
            _ => {}
        }
    }
}

impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masked({} values)", self.values.len())
    }
}

impl RunSpec {
    pub(crate) fn timeout_secs(&self) -> u64 {
        self.timeout.as_secs().max(1)
    }

    /// True when this run goes through `sudo -n`.
    fn uses_sudo(&self) -> bool {
        self.plugin.needs_root && !self.runs_as_root() && !self.host.sudo.is_off()
    }

    fn runs_as_root(&self) -> bool {
        match self.host.transport {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            TransportKind::Local => unsafe { libc::geteuid() == 0 },
            TransportKind::Ssh => self.host.user == "root",
            // The SSM agent runs Run Command documents as root.
            TransportKind::Ssm => true,
        }
    }
}

/// Builds the runner program and the fixed command that starts it.
pub fn build_invocation(spec: &RunSpec) -> Result<Invocation, String> {
    let plugin = &spec.plugin;
    let input = PluginInput {
        bpcs: BPCS_VERSION,
        run_id: &spec.run_id,
        correlation_id: &spec.correlation_id,
        action: &spec.action,
        plugin: PluginRef { name: &plugin.name, version: &plugin.version.to_string() },
        host: &spec.host.name,
        dry_run: spec.dry_run,
        timeout_s: spec.timeout_secs(),
        args: &spec.args,
        trigger: &spec.trigger,
    };
    let input_value = serde_json::to_value(&input).map_err(|e| format!("cannot encode input: {e}"))?;
    bpcs::validate_input(&input_value).map_err(|e| format!("input does not match the BPCS input schema: {e}"))?;
    let input_json = serde_json::to_vec(&input_value).map_err(|e| format!("cannot encode input: {e}"))?;
    let deadline = Duration::from_secs(spec.timeout_secs() + KILL_AFTER_SECS + CLIENT_GRACE_SECS);

    // Over SSH a run goes to a session shell, except through sudo: the session shell runs as the login user and
    // could not end a root plugin's process group, so such a run gets a session (and the runner) of its own.
    if spec.host.transport == TransportKind::Ssh && !spec.uses_sudo() {
        return Ok(Invocation {
            command: String::new(),
            stdin: Vec::new(),
            deadline,
            stdout_cap: bpcs::MAX_STDOUT_BYTES,
            stderr_tail: bpcs::STDERR_TAIL_BYTES,
            stderr_budget: bpcs::MAX_STDERR_BYTES,
            start_marker: Vec::new(),
            cleanup: String::new(),
            comment: comment(spec),
            session: Some(session_run(spec, input_json)),
        });
    }

    if let (true, Sudo::Installed(dir)) = (spec.uses_sudo(), &spec.host.sudo) {
        let (command, stdin, cleanup) = crate::installed::command(spec, dir, &input_json);
        return Ok(runner_invocation(spec, command, stdin, cleanup, deadline));
    }

    let mut put = String::with_capacity(plugin.source.len() + input_json.len() + 4096);
    for lib in spec.lib.iter() {
        // Names were validated by the registry ([A-Za-z0-9._+-]).
        let _ = write!(put, "  printf '%b' '");
        push_printf_literal(&mut put, &lib.source);
        let _ = writeln!(put, "' >\"$rune_dir/lib/{}\" || rune_fail 'cannot write {}'", lib.name, lib.name);
    }
    for (file, bytes) in [("plugin.sh", &plugin.source[..]), ("input.json", &input_json[..])] {
        put.push_str("  printf '%b' '");
        push_printf_literal(&mut put, bytes);
        let _ = writeln!(put, "' >\"$rune_dir/{file}\" || rune_fail 'cannot write {file}'");
    }

    let mut env = String::new();
    each_data_var(spec, |name, value| {
        // printf -v decodes into the variable without a fork; the name is a validated identifier.
        let _ = write!(env, "  printf -v {name} '%b' '");
        push_printf_literal(&mut env, value);
        let _ = writeln!(env, "' && export {name}");
    });

    let timeout = spec.timeout_secs().to_string();
    let kill_after = KILL_AFTER_SECS.to_string();
    let requires = plugin.requires.join(" ");
    let program = render(RUNNER_TEMPLATE, |name| match name {
        "PUT_FILES" => Some(put.trim_end_matches('\n')),
        "ENV_VARS" => Some(env.trim_end_matches('\n')),
        "REQUIRES" => Some(&requires),
        "NEEDS_ROOT" => Some(if plugin.needs_root { "1" } else { "0" }),
        "DRY_RUN" => Some(if spec.dry_run { "1" } else { "0" }),
        "TIMEOUT" => Some(&timeout),
        "KILL_AFTER" => Some(&kill_after),
        "RUN_ID" => Some(&spec.run_id),
        "SWEEP_STALE" => Some(if spec.sweep_stale { "1" } else { "0" }),
        _ => None,
    })?;

    // Only the run id (a UUID we generated) varies in these two texts; neither holds a single quote.
    // The boot makes the private run dir (mkdir fails on an existing path, so nobody can plant one), records its
    // pid (which becomes the runner's through exec), stores the runner there and runs it: bash reads a script on
    // a pipe one byte per read(2), a file in blocks.
    let boot = format!(
        "umask 077; d=\"${{TMPDIR:-/tmp}}/rune-{id}\"; mkdir -m 700 -- \"$d\" \"$d/lib\" || exit 125; echo $$ >\"$d/pid\"; cat >\"$d/runner.sh\" || exit 125; exec bash --noprofile --norc \"$d/runner.sh\"",
        id = spec.run_id
    );
    // Kills the plugin's group (timeout's), the runner and its group, then removes the dir.
    // Pids are checked first: a dir left by a killed run may name pids reused since (`ours_check`).
    let kill = format!(
        "d=\"${{TMPDIR:-/tmp}}/rune-{id}\"; if [ -d \"$d\" ] && [ -O \"$d\" ]; then {ours}g=$(cat \"$d/pgid\" 2>/dev/null); p=$(cat \"$d/pid\" 2>/dev/null); [ -n \"$g\" ] && o \"$g\" && kill -KILL -- \"-$g\" 2>/dev/null; [ -n \"$p\" ] && o \"$p\" && kill -KILL -- \"$p\" \"-$p\" 2>/dev/null; rm -rf -- \"$d\"; fi",
        id = spec.run_id,
        ours = crate::transport::ours_check(&spec.run_id),
    );
    let sudo = if spec.uses_sudo() { "sudo -n " } else { "" };
    let command = format!("{sudo}bash --noprofile --norc -c '{boot}'");
    let cleanup = format!("{sudo}bash --noprofile --norc -c '{kill}'");
    Ok(runner_invocation(spec, command, program.into_bytes(), cleanup, deadline))
}

/// A run through a runner of its own (sent with the run, or installed on the host): `command` starts it with
/// `stdin`, it prints the start marker first, and `cleanup` ends it when RUNE gives up on the run.
fn runner_invocation(
    spec: &RunSpec,
    command: String,
    stdin: Vec<u8>,
    cleanup: String,
    deadline: Duration,
) -> Invocation {
    Invocation {
        command,
        stdin,
        deadline,
        stdout_cap: bpcs::MAX_STDOUT_BYTES,
        stderr_tail: bpcs::STDERR_TAIL_BYTES,
        stderr_budget: bpcs::MAX_STDERR_BYTES,
        start_marker: format!("rune-runner-start {}\n", spec.run_id).into_bytes(),
        cleanup,
        comment: comment(spec),
        session: None,
    }
}

/// The run's `RUNE_*` variables that carry data, in the order every runner sets them: the host, the action,
/// the correlation id and each argument (`RUNE_ARG_<name>`). The runners set the others (dry run, timeout,
/// paths) themselves.
pub(crate) fn each_data_var(spec: &RunSpec, mut var: impl FnMut(&str, &[u8])) {
    var("RUNE_HOST", spec.host.name.as_bytes());
    var("RUNE_ACTION", spec.action.as_bytes());
    var("RUNE_CORRELATION_ID", spec.correlation_id.as_bytes());
    for (name, value) in spec.args.iter() {
        // Arg names were validated against ^[a-z][a-z0-9_]{0,62}$ when the header loaded.
        var(&format!("RUNE_ARG_{name}"), value.as_env_string().as_bytes());
    }
}

/// `rune <run id> <correlation id>`, cut to the 100 characters an SSM command comment may have.
fn comment(spec: &RunSpec) -> String {
    let mut c = format!("rune {} {}", spec.run_id, spec.correlation_id);
    c.truncate(100);
    c
}

/// The same run as a request to a session shell (`src/session.sh`).
fn session_run(spec: &RunSpec, input_json: Vec<u8>) -> SessionRun {
    let plugin = &spec.plugin;
    let plugin_file = format!("p-{}.sh", plugin.sha256);
    let mut files: Vec<SessionFile> = spec
        .lib
        .iter()
        .map(|lib| SessionFile { path: format!("lib/{}", lib.name), contents: lib.source.clone() })
        .collect();
    files.push(SessionFile { path: plugin_file.clone(), contents: plugin.source.clone() });
    let mut vars: Vec<(String, Vec<u8>)> = Vec::with_capacity(spec.args.len() + 4);
    each_data_var(spec, |name, value| vars.push((name.to_owned(), value.to_vec())));
    vars.push(("RUNE_DRY_RUN".into(), if spec.dry_run { b"1".to_vec() } else { b"0".to_vec() }));
    SessionRun {
        run_id: spec.run_id.clone(),
        nonce: uuid::Uuid::new_v4().simple().to_string(),
        files,
        plugin_file,
        input_json,
        vars,
        timeout_secs: spec.timeout_secs(),
        kill_after_secs: KILL_AFTER_SECS,
        needs_root: plugin.needs_root,
        sweep_stale: spec.sweep_stale,
        requires: plugin.requires.clone(),
    }
}

/// Fills `@NAME@` placeholders in one pass over the template: substituted text is never scanned again, so data
/// that happens to contain `@NAME@` stays data. An unknown placeholder is a build bug, reported as an error.
pub(crate) fn render<'a>(template: &str, value: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 4096);
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('@').map(|end| &after[..end]) {
            Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
                out.push_str(value(name).ok_or_else(|| format!("runner template: unknown placeholder @{name}@"))?);
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// What the mediator concluded from a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl Verdict {
    /// A run that was not started for `why` (`precondition_failed`): the audit trail refused it.
    pub fn not_run(why: String) -> Verdict {
        Verdict { status: Status::PreconditionFailed, output: None, error: Some(why) }
    }
}

/// Runs one spec on its host and returns the envelope. Never fails: every problem becomes a status.
pub async fn run(spec: &RunSpec, transport: &dyn Transport) -> ResultEnvelope {
    let started = Started::now();
    let (verdict, raw) = match prepare(spec) {
        Err(verdict) => (verdict, RawOutcome::default()),
        Ok(invocation) => judge(spec, transport.execute(&spec.host, &invocation).await),
    };
    finish(spec, started, verdict, raw)
}

/// When a run started, for its envelope.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    at: chrono::DateTime<Utc>,
    clock: Instant,
}

impl Started {
    pub fn now() -> Started {
        Started { at: Utc::now(), clock: Instant::now() }
    }
}

/// The invocation for a spec, or the verdict that ends it before anything is sent (root needed without sudo, a
/// runner that cannot be built).
pub fn prepare(spec: &RunSpec) -> Result<Invocation, Verdict> {
    if spec.plugin.needs_root && !spec.runs_as_root() && spec.host.sudo.is_off() {
        let error = format!(
            "plugin {} needs root; host {} logs in as {} without `sudo: true` or `sudo: installed` in the inventory",
            spec.plugin.name, spec.host.name, spec.host.user
        );
        return Err(Verdict { status: Status::PreconditionFailed, output: None, error: Some(error) });
    }
    build_invocation(spec).map_err(|e| Verdict { status: Status::Error, output: None, error: Some(e) })
}

/// What a transport brought back, judged.
pub fn judge(spec: &RunSpec, outcome: Result<RawOutcome, TransportError>) -> (Verdict, RawOutcome) {
    match outcome {
        Ok(raw) => (interpret(spec, &raw), raw),
        Err(e) => (transport_verdict(e), RawOutcome::default()),
    }
}

/// The result envelope of a run that started at `started`.
pub fn finish(spec: &RunSpec, started: Started, verdict: Verdict, raw: RawOutcome) -> ResultEnvelope {
    let started_at = started.at;
    let finished_at = Utc::now();
    let duration_ms = u64::try_from(started.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(run_id = %spec.run_id, host = %spec.host.name, status = %verdict.status, duration_ms, "run finished");
    let (mut output, mut error, mut stderr_tail) = (verdict.output, verdict.error, stderr_tail(&raw));
    if !spec.masked.is_empty() {
        output.iter_mut().for_each(|o| spec.masked.json(o));
        error.iter_mut().for_each(|e| spec.masked.text(e));
        spec.masked.text(&mut stderr_tail);
    }
    ResultEnvelope {
        record: RecordKind::Result,
        timestamp: finished_at,
        run_id: spec.run_id.clone(),
        correlation_id: spec.correlation_id.clone(),
        action: spec.action.clone(),
        plugin: PluginIdentity {
            name: spec.plugin.name.clone(),
            version: spec.plugin.version.to_string(),
            sha256: spec.plugin.sha256.clone(),
        },
        host: spec.host.name.clone(),
        transport: spec.host.transport,
        started_at,
        finished_at,
        duration_ms,
        status: verdict.status,
        outcome: verdict.status.into(),
        exit_code: raw.exit_code,
        output,
        error,
        stderr_tail,
        truncated: raw.stdout_truncated,
        dry_run: spec.dry_run,
        operator: spec.operator.clone(),
        trigger: (*spec.trigger).clone(),
    }
}

fn stderr_tail(raw: &RawOutcome) -> String {
    let mut tail = String::from_utf8_lossy(&raw.stderr_tail).into_owned();
    if raw.output_lingered {
        if !tail.is_empty() && !tail.ends_with('\n') {
            tail.push('\n');
        }
        tail.push_str("rune: the plugin exited but something it started kept its output open; stopped reading\n");
    }
    tail
}

fn transport_verdict(e: TransportError) -> Verdict {
    let status = match &e {
        TransportError::Unreachable(_) => Status::Unreachable,
        TransportError::HostKeyUnknown { .. }
        | TransportError::HostKeyChanged { .. }
        | TransportError::HostKeyUnverifiable { .. } => Status::HostKeyRejected,
        TransportError::AuthFailed(_) => Status::AuthFailed,
        TransportError::Protocol(_) | TransportError::Spawn(_) | TransportError::LostMidRun(_) => Status::Error,
    };
    Verdict { status, output: None, error: Some(e.to_string()) }
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
}

/// Maps what came back into a status, validating the plugin's output against BPCS.
pub fn interpret(spec: &RunSpec, raw: &RawOutcome) -> Verdict {
    let fail = |status: Status, error: String| Verdict { status, output: None, error: Some(error) };
    // A deadline that passed after the runner reported its exit code only cut off output held open by a
    // leftover: the run itself finished, so it is judged on its exit code and output.
    if raw.deadline_hit && raw.exit_code.is_none() {
        return fail(
            Status::Timeout,
            format!(
                "no answer within {}s; the run's process group on the host was killed",
                spec.timeout_secs() + KILL_AFTER_SECS + CLIENT_GRACE_SECS
            ),
        );
    }
    if !raw.runner_started {
        let why = last_line(&raw.stderr_tail);
        return if spec.uses_sudo() && why.starts_with("sudo:") {
            let hint = match &spec.host.sudo {
                Sudo::Installed(dir) => format!(
                    " (is `rune plugin bundle` installed in {} with its sudoers line for {}?)",
                    dir.display(),
                    spec.plugin.name
                ),
                _ => String::new(),
            };
            fail(Status::PreconditionFailed, format!("sudo -n refused: {why}{hint}"))
        } else {
            fail(Status::Error, format!("the RUNE runner did not start on the host (no bash?): {why}"))
        };
    }
    if let Some(bytes) = raw.inline_limit {
        let full = match &raw.full_output_error {
            Some(why) => format!("; the full copy in the S3 output bucket could not be read: {why}"),
            None => "; set `ssm.output_s3_bucket` in the inventory for full output".to_owned(),
        };
        return fail(
            Status::ProtocolError,
            format!(
                "the plugin ran, but its output ({bytes} bytes) passed the transport's inline limit (SSM returns 24,000 characters) and cannot be read whole{full}"
            ),
        );
    }
    if raw.stdout_truncated {
        return fail(
            Status::ProtocolError,
            format!("stdout passed {} bytes; the run was ended", bpcs::MAX_STDOUT_BYTES),
        );
    }
    if raw.stderr_flooded {
        return fail(Status::Error, format!("stderr passed {} bytes; the run was ended", bpcs::MAX_STDERR_BYTES));
    }
    let Some(code) = raw.exit_code else {
        let signal = raw.exit_signal.clone().unwrap_or_else(|| "unknown cause".into());
        return fail(Status::Error, format!("the runner ended without an exit code ({signal})"));
    };
    match code {
        runner_exit::TIMEOUT => {
            return fail(
                Status::Timeout,
                format!("timed out after {}s; the plugin's process group was killed", spec.timeout_secs()),
            );
        }
        runner_exit::REQUIRES_MISSING => {
            let missing = serde_json::from_slice::<Value>(&raw.stdout)
                .ok()
                .and_then(|v| v.get("missing").cloned())
                .and_then(|m| serde_json::from_value::<Vec<String>>(m).ok())
                .unwrap_or_default();
            return fail(
                Status::PreconditionFailed,
                format!("required commands missing on the host: {}", missing.join(", ")),
            );
        }
        runner_exit::NOT_INSTALLED => {
            let found = serde_json::from_slice::<Value>(&raw.stdout).ok();
            let field =
                |name: &str| found.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str).map(str::to_owned);
            let path = field("path").unwrap_or_default();
            let error = match field("sha256") {
                Some(sha) => format!(
                    "the installed copy {path} has sha256 {sha}, not {} ({} {}): install the current `rune plugin bundle`",
                    spec.plugin.sha256, spec.plugin.name, spec.plugin.version
                ),
                None => format!("plugin {} is not installed on the host ({path})", spec.plugin.name),
            };
            return fail(Status::PreconditionFailed, error);
        }
        runner_exit::NEEDS_ROOT => {
            return fail(Status::PreconditionFailed, "the plugin needs root and the runner is not root".into());
        }
        120..=127 => {
            let why = last_line(&raw.stderr_tail);
            return fail(
                Status::Error,
                if code == runner_exit::RESERVED_BY_PLUGIN {
                    format!("the plugin broke BPCS: {why}")
                } else {
                    format!("the RUNE runner failed (exit {code}): {why}")
                },
            );
        }
        _ => {}
    }
    let output = match bpcs::parse_output(&raw.stdout) {
        Ok(o) => o,
        Err(e) if code >= 128 => {
            return fail(Status::Error, format!("the plugin was killed by signal {} ({e})", code - 128));
        }
        Err(e) => return fail(Status::ProtocolError, format!("BPCS violation: {e} (exit code {code})")),
    };
    let value = serde_json::to_value(&output).ok();
    if let Err(e) = bpcs::check_exit_code(&output, code) {
        return Verdict { status: Status::ProtocolError, output: value, error: Some(format!("BPCS violation: {e}")) };
    }
    if output.changed && (spec.dry_run || spec.plugin.class == SafetyClass::Diagnostic) {
        let why = if spec.dry_run { "in a dry run" } else { "from a diagnostic plugin" };
        let error = format!("BPCS violation: `changed: true` {why}, which must change nothing");
        return Verdict { status: Status::ProtocolError, output: value, error: Some(error) };
    }
    let status = match output.status {
        PluginStatus::Ok if spec.dry_run => Status::DryRun,
        PluginStatus::Ok => Status::Ok,
        PluginStatus::Warn => Status::Warn,
        PluginStatus::Error => Status::Error,
        PluginStatus::Skipped => Status::Skipped,
    };
    Verdict { status, output: value, error: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_values_are_replaced_in_strings_and_keys_longest_first_and_short_ones_are_left() {
        let masked = Masked::new(
            [("a", "hunter2"), ("b", "hunter2-extended"), ("c", "ab")]
                .map(|(n, v)| (n.to_owned(), format!("ssm:/{n}"), v.to_owned())),
        );
        assert_eq!(masked.reference("b"), Some("ssm:/b"));
        assert_eq!(format!("{masked:?}"), "Masked(2 values)", "Debug shows no value");
        let mut text = "pw=hunter2-extended and hunter2; ab stays".to_owned();
        masked.text(&mut text);
        assert_eq!(text, "pw=<redacted> and <redacted>; ab stays");
        let mut value = serde_json::json!({"data": {"list": ["x hunter2 y", 3], "hunter2": true}, "summary": "ok"});
        masked.json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({"data": {"list": ["x <redacted> y", 3], "<redacted>": true}, "summary": "ok"})
        );
    }

    /// Every byte but NUL, in every position, survives the shell and printf %b unchanged.
    #[test]
    fn printf_literal_round_trips_every_byte() {
        let mut bytes: Vec<u8> = (1..=255u8).collect();
        bytes.extend_from_slice(b"\\x41 \\\\ '\\'' $(touch /nonexistent) `id` %s %b \\c after-c\n\n");
        let mut literal = String::new();
        push_printf_literal(&mut literal, &bytes);
        assert!(!literal.contains('\''), "no quote may appear in the literal");
        let script = format!("printf '%b' '{literal}'");
        let out = std::process::Command::new("bash")
            .args(["--noprofile", "--norc", "-c", &script])
            .output()
            .expect("bash runs");
        assert!(out.status.success());
        assert_eq!(out.stdout, bytes);
        let script = format!("printf -v v '%b' '{literal}' && printf '%s' \"$v\"");
        let out = std::process::Command::new("bash")
            .args(["--noprofile", "--norc", "-c", &script])
            .output()
            .expect("bash runs");
        assert_eq!(out.stdout, bytes, "printf -v keeps every byte, trailing newlines included");
    }
}
