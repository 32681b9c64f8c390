//! Transports: how a runner program reaches a host and its output comes back. One trait, several kinds.

pub mod local;
pub mod session;
pub mod ssh;
pub mod ssm;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::inventory::{Host, TransportKind};

/// What the mediator asks a transport to run. Nothing in it comes from an alert or an operator unvalidated:
/// `command` and `cleanup` are fixed text built from validated names and numbers; all data travels in `stdin`.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The shell command line that starts the runner (SSH: given to the login shell; local: `bash -c`).
    /// Empty when the run is a `session` request.
    pub command: String,
    /// The runner program, fed on stdin. Empty when the run is a `session` request.
    pub stdin: Vec<u8>,
    /// Client-side limit for the whole exec; past it the transport gives up and runs `cleanup`.
    pub deadline: Duration,
    /// Bytes of stdout to keep; one more marks the output truncated and ends the run.
    pub stdout_cap: usize,
    /// Bytes of stderr tail to keep.
    pub stderr_tail: usize,
    /// Total stderr bytes accepted; past it the run is ended as a flood.
    pub stderr_budget: usize,
    /// The line the runner prints on stdout before anything else (empty: none expected).
    pub start_marker: Vec<u8>,
    /// Fixed command that kills the run's process group and removes its temp dir, for the deadline path.
    pub cleanup: String,
    /// Names the run where the transport can label it (SSM's command comment, at most 100 characters): the run
    /// and correlation ids, which are validated ASCII.
    pub comment: String,
    /// The run as a request to a session shell (see [`session`]): set for SSH runs that do not go through
    /// `sudo -n`; the SSH transport then uses it instead of `command`, `stdin`, `start_marker` and `cleanup`.
    pub session: Option<SessionRun>,
}

/// One run as a request to a session shell: data only; [`session`] renders it as shell text.
#[derive(Debug, Clone)]
pub struct SessionRun {
    pub run_id: String,
    /// Random per run; ends the run's output on both streams. Never shown to the plugin.
    pub nonce: String,
    /// Files the run needs, relative to the session dir (`lib/<name>`, `p-<sha256>.sh`); a shell that already
    /// holds a file with the same contents is not sent it again.
    pub files: Vec<SessionFile>,
    /// Session-dir name of the plugin among `files`.
    pub plugin_file: String,
    pub input_json: Vec<u8>,
    /// `RUNE_*` variables of the run (names are validated identifiers), besides the fixed ones the shell sets.
    pub vars: Vec<(String, Vec<u8>)>,
    pub timeout_secs: u64,
    pub kill_after_secs: u64,
    pub needs_root: bool,
    pub sweep_stale: bool,
    /// Commands that must exist on the host (validated plain names).
    pub requires: Vec<String>,
}

/// A file a session run needs on the host.
#[derive(Debug, Clone)]
pub struct SessionFile {
    /// Relative to the session dir; built from validated names and hex digests only.
    pub path: String,
    pub contents: std::sync::Arc<[u8]>,
}

/// Feeds a channel's input while draining its output, until the drain ends. When the feed ends first it is not
/// polled again; when the channel closes first (the far end exited without reading all its input), the feed is
/// dropped: waiting for window space that will never come would only run into the deadline.
pub async fn feed_while_draining(feed: impl Future<Output = ()>, drain: impl Future<Output = ()>) {
    tokio::pin!(feed);
    tokio::pin!(drain);
    let mut fed = false;
    loop {
        tokio::select! {
            _ = &mut feed, if !fed => fed = true,
            _ = &mut drain => break,
        }
    }
}

/// Appends `bytes` as the body of a single-quoted `printf %b` argument: printable ASCII and newlines as they
/// are, everything else (and `'`, `\\` and `@`) as `\xHH`. The result holds no quote and no backslash but those of
/// the escapes, so the shell takes it literally and only the printf builtin decodes it, byte for byte.
/// Callers guarantee there is no NUL (bash strings cannot hold one): arguments and plugin files are checked.
pub fn push_printf_literal(out: &mut String, bytes: &[u8]) {
    push_escaped(out, bytes, true);
}

/// The same on one line: newlines escaped as well (the installed runner's request has one field per line).
pub fn push_printf_line_literal(out: &mut String, bytes: &[u8]) {
    push_escaped(out, bytes, false);
}

fn push_escaped(out: &mut String, bytes: &[u8], keep_newlines: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        match b {
            b'\'' | b'\\' | b'@' => push_hex(out, b, HEX),
            b'\n' if keep_newlines => out.push('\n'),
            0x20..=0x7e => out.push(char::from(b)),
            _ => push_hex(out, b, HEX),
        }
    }
}

fn push_hex(out: &mut String, b: u8, hex: &[u8; 16]) {
    out.push_str("\\x");
    out.push(char::from(hex[usize::from(b >> 4)]));
    out.push(char::from(hex[usize::from(b & 0x0f)]));
}

/// What came back from the host.
#[derive(Debug, Clone, Default)]
pub struct RawOutcome {
    pub exit_code: Option<i32>,
    pub exit_signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_tail: Vec<u8>,
    /// The client-side deadline passed before the command finished.
    pub deadline_hit: bool,
    /// The runner's start marker arrived: the runner itself started (sudo, the shell and bash worked).
    pub runner_started: bool,
    /// stderr passed its budget and the run was ended.
    pub stderr_flooded: bool,
    /// The runner exited but something on the host kept its output open past [`EXIT_DRAIN_GRACE`].
    pub output_lingered: bool,
    /// The output was whole on the host but only part of it came back (SSM's inline limit): its size in bytes.
    pub inline_limit: Option<u64>,
    /// Why the full output could not be read from the SSM output bucket (with `inline_limit`).
    pub full_output_error: Option<String>,
}

/// Bash for a cleanup command (single-quoted there, so no `'`): defines `o PID`, false when PID now belongs to
/// another program. The pids a cleanup reads come from a dir a killed run left, and may have been reused since:
/// a process of the run has `id` (a UUID) in its command line (the run dir's path, or the session shell's
/// text); no command line at all (gone, a zombie, a kernel thread) is safe to signal.
pub(crate) fn ours_check(id: &str) -> String {
    format!(
        "o() {{ local c; c=$(tr \"\\0\" \" \" <\"/proc/$1/cmdline\" 2>/dev/null); [ -z \"$c\" ] || [[ $c == *{id}* ]]; }}; "
    )
}

/// Most stdout accepted before the runner's start marker (a login shell's rc files may print).
pub const MAX_PRELUDE_BYTES: usize = 64 * 1024;

/// How long output may keep flowing after the runner's exit status arrived.
pub const EXIT_DRAIN_GRACE: Duration = Duration::from_secs(3);

/// Why a transport could not run the command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("host key for {host} is not in {known_hosts} (strict host key checking)")]
    HostKeyUnknown { host: String, known_hosts: String },
    #[error("host key for {host} does not match {known_hosts} line {line}: possible man-in-the-middle")]
    HostKeyChanged { host: String, known_hosts: String, line: usize },
    #[error("cannot check the host key of {host}: {message}")]
    HostKeyUnverifiable { host: String, message: String },
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The session died after the command started: the plugin may or may not have run to the end.
    #[error("{0}")]
    LostMidRun(String),
    #[error("ssh protocol error: {0}")]
    Protocol(String),
    #[error("cannot start command: {0}")]
    Spawn(String),
}

/// A boxed future, so transports can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way to run an [`Invocation`] on a [`Host`].
pub trait Transport: Send + Sync {
    /// The kind reported in results.
    fn kind(&self) -> TransportKind;
    /// Runs the invocation and collects its output.
    fn execute<'a>(
        &'a self,
        host: &'a Host,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<RawOutcome, TransportError>>;
}

/// Collects stdout up to a cap and the tail of stderr, as chunks arrive.
#[derive(Debug)]
pub struct OutputSink {
    /// The line the runner prints first; stdout before it (login-shell noise) is dropped.
    start_marker: Vec<u8>,
    started: bool,
    /// stdout seen before the marker, bounded by [`MAX_PRELUDE_BYTES`].
    prelude: Vec<u8>,
    /// How many stdout bytes came before the marker (and were dropped).
    skipped: usize,
    stdout: Vec<u8>,
    stdout_cap: usize,
    truncated: bool,
    stderr: std::collections::VecDeque<u8>,
    stderr_tail: usize,
    stderr_seen: usize,
    stderr_budget: usize,
}

impl OutputSink {
    pub fn new(invocation: &Invocation) -> OutputSink {
        OutputSink::with_marker(invocation, invocation.start_marker.clone())
    }

    /// A sink for `invocation` whose stdout starts after `start_marker` instead of the invocation's own.
    pub fn with_marker(invocation: &Invocation, start_marker: Vec<u8>) -> OutputSink {
        OutputSink {
            started: start_marker.is_empty(),
            start_marker,
            prelude: Vec::new(),
            skipped: 0,
            stdout: Vec::new(),
            stdout_cap: invocation.stdout_cap,
            truncated: false,
            stderr: std::collections::VecDeque::new(),
            stderr_tail: invocation.stderr_tail,
            stderr_seen: 0,
            stderr_budget: invocation.stderr_budget,
        }
    }

    /// True once stdout passed its cap or stderr its budget: the transport should end the run.
    pub fn overflowed(&self) -> bool {
        self.truncated || self.stderr_seen > self.stderr_budget
    }

    /// The start marker arrived.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Bytes of stdout that came before the start marker.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    pub fn stdout(&mut self, chunk: &[u8]) {
        if self.started {
            self.push_stdout(chunk);
            return;
        }
        self.skipped += chunk.len();
        // Only the new bytes (and the tail that could hold the start of a split marker) are searched.
        let from = self.prelude.len().saturating_sub(self.start_marker.len().saturating_sub(1));
        self.prelude.extend_from_slice(chunk);
        let marker = &self.start_marker;
        if let Some(pos) = self.prelude[from..].windows(marker.len()).position(|w| w == marker.as_slice()) {
            self.started = true;
            let rest = self.prelude.split_off(from + pos + marker.len());
            self.skipped -= rest.len() + marker.len();
            self.prelude.clear();
            self.push_stdout(&rest);
        } else if self.prelude.len() > MAX_PRELUDE_BYTES {
            // Drop all but what could still be the start of a marker split across chunks.
            let drop = self.prelude.len().saturating_sub(marker.len());
            self.prelude.drain(..drop);
        }
    }

    fn push_stdout(&mut self, chunk: &[u8]) {
        let room = self.stdout_cap.saturating_sub(self.stdout.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.stdout.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    pub fn stderr(&mut self, chunk: &[u8]) {
        self.stderr_seen = self.stderr_seen.saturating_add(chunk.len());
        let keep = &chunk[chunk.len().saturating_sub(self.stderr_tail)..];
        let overflow = (self.stderr.len() + keep.len()).saturating_sub(self.stderr_tail);
        self.stderr.drain(..overflow.min(self.stderr.len()));
        self.stderr.extend(keep);
    }

    pub fn finish(self, outcome: &mut RawOutcome) {
        outcome.runner_started = self.started;
        outcome.stdout = self.stdout;
        outcome.stdout_truncated = self.truncated;
        outcome.stderr_flooded = self.stderr_seen > self.stderr_budget;
        outcome.stderr_tail = self.stderr.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_caps_stdout_and_keeps_stderr_tail() {
        let invocation = Invocation {
            command: String::new(),
            stdin: Vec::new(),
            deadline: Duration::from_secs(1),
            stdout_cap: 5,
            stderr_tail: 4,
            stderr_budget: 6,
            start_marker: b"<go>\n".to_vec(),
            cleanup: String::new(),
            comment: String::new(),
            session: None,
        };
        let mut sink = OutputSink::new(&invocation);
        sink.stdout(b"motd noise<g");
        sink.stdout(b"o>\n");
        sink.stdout(b"abc");
        sink.stdout(b"defg");
        sink.stderr(b"12345");
        sink.stderr(b"67");
        let mut out = RawOutcome::default();
        sink.finish(&mut out);
        assert_eq!(out.stdout, b"abcde");
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr_tail, b"4567");
        assert!(out.stderr_flooded, "7 bytes of stderr passed the budget of 6");
        assert!(out.runner_started, "the marker split across two chunks was found");
    }

    #[test]
    fn marker_is_found_after_more_noise_than_the_prelude_keeps() {
        let invocation = Invocation {
            command: String::new(),
            stdin: Vec::new(),
            deadline: Duration::from_secs(1),
            stdout_cap: 100,
            stderr_tail: 10,
            stderr_budget: 100,
            start_marker: b"rune-runner-start x\n".to_vec(),
            cleanup: String::new(),
            comment: String::new(),
            session: None,
        };
        let mut sink = OutputSink::new(&invocation);
        let noise = vec![b'n'; 1000];
        for _ in 0..(MAX_PRELUDE_BYTES / 1000 + 5) {
            sink.stdout(&noise);
        }
        sink.stdout(b"nnrune-runner-st");
        sink.stdout(b"art x\n{\"a\":1}");
        let mut out = RawOutcome::default();
        sink.finish(&mut out);
        assert!(out.runner_started);
        assert_eq!(out.stdout, b"{\"a\":1}");
    }
}
