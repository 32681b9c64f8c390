//! The `local` transport: runs the runner program as a subprocess on the machine running RUNE.

use std::ffi::OsString;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{BoxFuture, Invocation, OutputSink, RawOutcome, Transport, TransportError};
use crate::inventory::{Host, TransportKind};

/// The only variables a local run inherits from RUNE's environment.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Runs plugins on this machine. Each run is its own process group, killed whole at the deadline.
#[derive(Debug, Clone, Default)]
pub struct LocalTransport {
    /// Variables set over the inherited ones. Empty for every real run; `rune plugin test` ([`crate::golden`])
    /// sets its own `PATH` (stub commands first) and the stubs' state dir here, for the runs of one test case.
    overrides: Vec<(String, OsString)>,
}

impl LocalTransport {
    /// A local transport whose runs get `overrides` on top of the inherited variables (`rune plugin test` only).
    pub fn with_env(overrides: Vec<(String, OsString)>) -> LocalTransport {
        LocalTransport { overrides }
    }
}

impl Transport for LocalTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Local
    }

    fn execute<'a>(
        &'a self,
        _host: &'a Host,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<RawOutcome, TransportError>> {
        Box::pin(run_local(invocation, &self.overrides))
    }
}

async fn run_local(invocation: &Invocation, overrides: &[(String, OsString)]) -> Result<RawOutcome, TransportError> {
    let mut command = Command::new("bash");
    // Plugins get a clean environment: RUNE's own (agent socket, future credentials) is not theirs to read.
    command.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    for (name, value) in overrides {
        command.env(name, value);
    }
    // The runner leads a new session (and so its own process group): killing the group, or the runner's
    // session sweep after a timeout, can never reach RUNE itself.
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of this process; nothing else runs in the
    // child between fork and exec.
    unsafe {
        command.pre_exec(|| if libc::setsid() == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = command
        .args(["--noprofile", "--norc", "-c", &format!("exec {}", invocation.command)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TransportError::Spawn(format!("bash: {e}")))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().ok_or_else(|| TransportError::Spawn("no stdin pipe".into()))?;
    let mut stdout = child.stdout.take().ok_or_else(|| TransportError::Spawn("no stdout pipe".into()))?;
    let mut stderr = child.stderr.take().ok_or_else(|| TransportError::Spawn("no stderr pipe".into()))?;
    let mut sink = OutputSink::new(invocation);
    let mut outcome = RawOutcome::default();

    let work = async {
        let feed = async {
            // A runner that exits early closes its stdin; that is not an error here.
            let _ = stdin.write_all(&invocation.stdin).await;
            drop(stdin);
        };
        // Returns true when the output overflowed its caps and the run must be ended.
        let drain = async {
            let mut out_buf = vec![0u8; 16 * 1024];
            let mut err_buf = vec![0u8; 8 * 1024];
            let (mut out_open, mut err_open) = (true, true);
            while (out_open || err_open) && !sink.overflowed() {
                tokio::select! {
                    r = stdout.read(&mut out_buf), if out_open => match r {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => sink.stdout(&out_buf[..n]),
                    },
                    r = stderr.read(&mut err_buf), if err_open => match r {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => sink.stderr(&err_buf[..n]),
                    },
                }
            }
            sink.overflowed()
        };
        let waiter = child.wait();
        tokio::pin!(feed);
        tokio::pin!(drain);
        tokio::pin!(waiter);
        let (mut fed, mut status, mut lingered) = (false, None, false);
        let mut grace_until = tokio::time::Instant::now() + invocation.deadline;
        loop {
            tokio::select! {
                _ = &mut feed, if !fed => fed = true,
                r = &mut waiter, if status.is_none() => {
                    status = Some(r);
                    // Output held open by something the plugin left behind gets a short grace, not the deadline.
                    grace_until = tokio::time::Instant::now() + super::EXIT_DRAIN_GRACE;
                }
                overflowed = &mut drain => {
                    // Only before the runner is reaped: afterwards its pid could belong to someone else.
                    if overflowed && status.is_none() {
                        // The plugin runs in timeout's own group: the cleanup command kills that group too and
                        // removes the run dir; then the runner's group.
                        let _ = run_cleanup(&invocation.cleanup).await;
                        kill_group(pid);
                    }
                    break;
                }
                _ = tokio::time::sleep_until(grace_until), if status.is_some() => {
                    lingered = true;
                    break;
                }
            }
        }
        let status = match status {
            Some(s) => s,
            None => waiter.await,
        };
        (status, lingered)
    };
    let finished = tokio::time::timeout(invocation.deadline, work).await;
    match finished {
        Ok((Ok(status), lingered)) => {
            outcome.output_lingered = lingered;
            use std::os::unix::process::ExitStatusExt;
            outcome.exit_code = status.code();
            outcome.exit_signal = status.signal().map(|s| format!("signal {s}"));
            if lingered || outcome.exit_signal.is_some() {
                // The runner was killed (by the plugin, say) or left something holding its output: it could not
                // end the plugin's group itself. The cleanup command checks the pids it reads against the run.
                let _ = run_cleanup(&invocation.cleanup).await;
            }
        }
        Ok((Err(e), _)) => return Err(TransportError::Spawn(format!("wait: {e}"))),
        Err(_) => {
            outcome.deadline_hit = true;
            // The runner has not been reaped yet, so its pid (= its group's id) cannot have been reused.
            kill_group(pid);
            let _ = run_cleanup(&invocation.cleanup).await;
        }
    }
    sink.finish(&mut outcome);
    Ok(outcome)
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group; it has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

async fn run_cleanup(cleanup: &str) -> std::io::Result<()> {
    let mut child = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", cleanup])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
    Ok(())
}
