//! Session shells: one long-lived `bash` per pooled SSH session channel (`src/session.sh`) that runs plugin runs
//! one after another. A warm run then costs the host no new SSH session, login shell, temp dir or coreutils
//! process: only the plugin's own `bash` and a watchdog fork. Runs through `sudo -n` keep a session each.
//!
//! Framing, both ways: a request is a decimal byte count on a line, then that many bytes of shell text rendered
//! here from a [`SessionRun`] (fixed words, numbers, validated names, `printf %b` literals). A run's output is
//! `rune-run-start <run id>` on stdout, the plugin's stdout and stderr as they come, then
//! `rune-run-end <nonce> <code>` (exit code, 3 digits) on both streams. A shell that says anything outside a run
//! (something a plugin left behind still writing) is retired after the run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use russh::client::{self, Handle};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use super::{Invocation, OutputSink, RawOutcome, SessionRun, TransportError, push_printf_literal};

/// The session shell program, after the sweeps it shares with the runner.
const PROGRAM: &str = concat!(include_str!("../sweep.sh"), include_str!("../session.sh"));

/// Fixed-width tail of an end marker after its prefix: three digits and a newline.
const END_CODE_LEN: usize = 4;

/// The command that starts a session shell (given to the login shell); only the session id (a UUID) varies.
/// It makes the private dir (mkdir refuses an existing path), records its pid, reads the program and runs it.
pub fn boot_command(sid: &str) -> String {
    format!(
        "bash --noprofile --norc -c 'umask 077; rune_dir=\"${{TMPDIR:-/tmp}}/rune-s-{sid}\"; mkdir -m 700 -- \"$rune_dir\" \"$rune_dir/lib\" \"$rune_dir/work\" || exit 125; echo $$ >\"$rune_dir/pid\"; IFS= read -r n && [[ $n =~ ^[0-9]{{1,7}}$ ]] && IFS= read -r -N \"$n\" p && eval \"$p\" && rune_session; exit 125'"
    )
}

/// Kills the run's process group, the shell and the rest of its session (its watchdog, a run's leftovers), and
/// what the shell's runs left elsewhere (processes carrying `RUNE_LIB=<session dir>/lib` in their environment),
/// then removes the session dir: for the deadline and flood paths, and a shell that died mid-run.
pub fn cleanup_command(sid: &str) -> String {
    // Pids are checked first: a dir left by a killed shell may name pids reused since (`ours_check`). The session
    // id is the shell's pid; once that passed the check, its session's members are the shell's. Three rounds: a
    // leftover may fork while it is being killed.
    format!(
        "bash --noprofile --norc -c 'd=\"${{TMPDIR:-/tmp}}/rune-s-{sid}\"; if [ -d \"$d\" ] && [ -O \"$d\" ]; then {ours}g=$(cat \"$d/pgid\" 2>/dev/null); p=$(cat \"$d/pid\" 2>/dev/null); s=; [ -n \"$g\" ] && o \"$g\" && kill -KILL -- \"-$g\" 2>/dev/null; [ -n \"$p\" ] && o \"$p\" && s=$p && kill -KILL -- \"$p\" 2>/dev/null; {sweep}rm -rf -- \"$d\"; fi'",
        ours = super::ours_check(sid),
        sweep = "for r in 1 2 3; do k=0; for q in /proc/[0-9]*; do [ \"${q#/proc/}\" = $$ ] && continue; t=; read -r -d \"\" t <\"$q/stat\" 2>/dev/null; read -ra f <<<\"${t##*) }\"; if [ -z \"$s\" ] || [ \"${f[3]}\" != \"$s\" ]; then mapfile -d \"\" -t e <\"$q/environ\" 2>/dev/null || continue; m=0; for x in \"${e[@]}\"; do [ \"$x\" = \"RUNE_LIB=$d/lib\" ] && m=1 && break; done; [ $m = 1 ] || continue; fi; kill -KILL \"${q#/proc/}\" 2>/dev/null && k=1; done; [ $k = 1 ] || break; done; ",
    )
}

fn frame(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 12);
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(text.as_bytes());
    out
}

/// A running session shell on one channel.
pub struct Shell {
    pub sid: String,
    read: ChannelReadHalf,
    write: ChannelWriteHalf<client::Msg>,
    /// Files the shell holds, by session-dir path.
    sent: HashMap<String, Arc<[u8]>>,
    /// Runs served so far; the first may be preceded by a login shell's output.
    runs: u64,
}

/// How a run on a shell ended, for the pool.
pub struct ShellRun {
    pub result: Result<RawOutcome, TransportError>,
    /// The shell is idle and clean: it may serve the next run.
    pub reusable: bool,
    /// The run's leftovers (and the shell) must be killed by the cleanup command.
    pub needs_cleanup: bool,
    /// The shell ended before the run started: nothing ran, another shell may try.
    pub never_started: bool,
}

impl Shell {
    /// Opens a channel, starts the shell on it and sends the program. The first run's output tells whether the
    /// shell came up.
    pub async fn open(handle: &Handle<impl client::Handler>) -> Result<Shell, russh::Error> {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let channel = handle.channel_open_session().await?;
        // `exec` spares the login shell's process; the command holds no caller data.
        channel.exec(true, format!("exec {}", boot_command(&sid))).await?;
        let (read, write) = channel.split();
        write.data(&frame(PROGRAM)[..]).await?;
        Ok(Shell { sid, read, write, sent: HashMap::new(), runs: 0 })
    }

    /// The request text for `run`: the files this shell lacks, the run's variables and input, and the call.
    fn request(&self, run: &SessionRun) -> String {
        let mut text = String::with_capacity(run.input_json.len() + 1024);
        for file in &run.files {
            if self.sent.get(&file.path).is_some_and(|held| held[..] == file.contents[..]) {
                continue;
            }
            let _ = write!(text, "rune_put {} '", file.path);
            push_printf_literal(&mut text, &file.contents);
            text.push_str("'\n");
        }
        text.push_str("rune_put input.json '");
        push_printf_literal(&mut text, &run.input_json);
        text.push_str("'\n");
        for (name, value) in &run.vars {
            let _ = write!(text, "rune_var {name} '");
            push_printf_literal(&mut text, value);
            text.push_str("'\n");
        }
        let _ = write!(
            text,
            "rune_run {} {} {} {} {} {} {}",
            run.run_id,
            run.nonce,
            run.plugin_file,
            run.timeout_secs,
            run.kill_after_secs,
            u8::from(run.needs_root),
            u8::from(run.sweep_stale)
        );
        for command in &run.requires {
            text.push(' ');
            text.push_str(command);
        }
        text.push('\n');
        text
    }

    /// Runs one request and reads its output up to the end markers (or the deadline, a flood, the shell's end).
    pub async fn run(&mut self, invocation: &Invocation, run: &SessionRun) -> ShellRun {
        let request = frame(&self.request(run));
        for file in &run.files {
            self.sent.insert(file.path.clone(), file.contents.clone());
        }
        let first = self.runs == 0;
        self.runs += 1;
        let marker = format!("rune-run-start {}\n", run.run_id).into_bytes();
        let mut sink = OutputSink::with_marker(invocation, marker);
        let end_prefix = format!("rune-run-end {} ", run.nonce).into_bytes();
        let mut out_end = EndScanner::new(end_prefix.clone());
        let mut err_end = EndScanner::new(end_prefix);
        let mut outcome = RawOutcome::default();
        let mut ended = false; // the shell's channel closed or it exited
        let mut refused = false;
        // The shell exited before its end markers (a plugin killed it) and what it left kept the channel open
        // past the exit grace.
        let mut lingered = false;
        let read = &mut self.read;
        let write = &self.write;
        let work = async {
            let feed = async {
                let _ = write.data(&request[..]).await;
            };
            let drain = async {
                let mut grace_end: Option<tokio::time::Instant> = None;
                loop {
                    // A shell that exited without its end markers (a plugin killed it) leaves the run's processes
                    // holding the channel open: they get the exit grace, as over a runner, not the whole deadline.
                    if grace_end.is_none() && (outcome.exit_code.is_some() || outcome.exit_signal.is_some()) {
                        grace_end = Some(tokio::time::Instant::now() + super::EXIT_DRAIN_GRACE);
                    }
                    let next = match grace_end {
                        Some(end) => match tokio::time::timeout_at(end, read.wait()).await {
                            Ok(next) => next,
                            Err(_) => {
                                lingered = true;
                                break;
                            }
                        },
                        None => read.wait().await,
                    };
                    let Some(msg) = next else {
                        // The channel ended without a Close: the connection is gone.
                        ended = true;
                        break;
                    };
                    match msg {
                        ChannelMsg::Data { data } => out_end.push(&data, |b| sink.stdout(b)),
                        ChannelMsg::ExtendedData { data, ext: 1 } => err_end.push(&data, |b| sink.stderr(b)),
                        ChannelMsg::ExitStatus { exit_status } => {
                            outcome.exit_code = i32::try_from(exit_status).ok();
                            ended = true;
                        }
                        ChannelMsg::ExitSignal { signal_name, .. } => {
                            outcome.exit_signal = Some(format!("{signal_name:?}"));
                            ended = true;
                        }
                        ChannelMsg::Failure => {
                            refused = true;
                            ended = true;
                            break;
                        }
                        ChannelMsg::Close | ChannelMsg::Eof => {
                            ended = true;
                            // Eof: stdout/stderr are done; the exit status may still follow, then Close.
                            if matches!(msg, ChannelMsg::Close) {
                                break;
                            }
                        }
                        _ => {}
                    }
                    if out_end.code.is_some() && err_end.code.is_some() {
                        break;
                    }
                    if sink.overflowed() {
                        break;
                    }
                }
            };
            super::feed_while_draining(feed, drain).await;
        };
        let deadline_hit = tokio::time::timeout(invocation.deadline, work).await.is_err();
        let finished = out_end.code.is_some() && err_end.code.is_some();
        let overflowed = sink.overflowed();
        let stray = out_end.stray + err_end.stray > 0 || (!first && sink.skipped() > 0);
        if stray {
            tracing::warn!(shell = %self.sid, "session shell printed outside a run (a leftover still writing?); retiring it");
        }
        // A pooled shell that died while idle (its connection dropped, sshd restarted): nothing ran.
        let never_started = !first && !sink.started() && ended && !deadline_hit;
        if finished {
            outcome.exit_code = out_end.code;
            outcome.exit_signal = None;
        }
        if refused {
            return ShellRun {
                result: Err(TransportError::Protocol("the server refused to execute the session shell".into())),
                reusable: false,
                needs_cleanup: false,
                never_started: false,
            };
        }
        outcome.deadline_hit = deadline_hit;
        outcome.output_lingered = lingered;
        let lost =
            !finished && !deadline_hit && !overflowed && outcome.exit_code.is_none() && outcome.exit_signal.is_none();
        // The shell was killed mid-run (by the plugin, or by someone on the host): the plugin may have run on.
        let killed = !finished && !deadline_hit && !overflowed && sink.started() && outcome.exit_signal.is_some();
        let signal = outcome.exit_signal.clone().unwrap_or_default();
        sink.finish(&mut outcome);
        let result = if lost && !never_started {
            Err(TransportError::LostMidRun("connection lost while the plugin ran; it may have changed the host".into()))
        } else if killed {
            Err(TransportError::LostMidRun(format!(
                "the session shell running the plugin was killed (signal {signal}) before the plugin finished; it may \
                 have changed the host"
            )))
        } else {
            Ok(outcome)
        };
        ShellRun {
            result,
            reusable: finished && !stray && !overflowed && !deadline_hit && !ended,
            // A shell gone mid-run leaves the run's processes (its watchdog, the plugin's group) and its dir.
            needs_cleanup: deadline_hit || overflowed || (!finished && !never_started && !lost),
            never_started,
        }
    }

    /// Ends the shell: it reads EOF, exits and removes its dir.
    pub async fn close(self) {
        let _ = self.write.eof().await;
        let _ = self.write.close().await;
    }
}

/// Finds the end marker `<prefix><3 digits>\n` in a stream, passing on what comes before it.
struct EndScanner {
    prefix: Vec<u8>,
    /// Bytes that may be the start of a marker split across chunks.
    held: Vec<u8>,
    code: Option<i32>,
    /// Bytes after the marker (nothing should follow it).
    stray: usize,
}

impl EndScanner {
    fn new(prefix: Vec<u8>) -> EndScanner {
        EndScanner { prefix, held: Vec::new(), code: None, stray: 0 }
    }

    fn push(&mut self, chunk: &[u8], mut out: impl FnMut(&[u8])) {
        if self.code.is_some() {
            self.stray += chunk.len();
            return;
        }
        self.held.extend_from_slice(chunk);
        let found = self.held.windows(self.prefix.len()).position(|w| w == self.prefix.as_slice());
        match found {
            Some(pos) if self.held.len() >= pos + self.prefix.len() + END_CODE_LEN => {
                out(&self.held[..pos]);
                let tail = &self.held[pos + self.prefix.len()..pos + self.prefix.len() + END_CODE_LEN];
                // A malformed code (it cannot come from the shell) reads as a runner failure.
                let code =
                    std::str::from_utf8(&tail[..3]).ok().filter(|_| tail[3] == b'\n').and_then(|d| d.parse().ok());
                self.code = Some(code.unwrap_or(125));
                self.stray = self.held.len() - (pos + self.prefix.len() + END_CODE_LEN);
                self.held.clear();
            }
            Some(pos) => {
                out(&self.held[..pos]);
                self.held.drain(..pos);
            }
            None => {
                // Only a tail that could still grow into the marker is held back: anything else (the start
                // marker, a plugin's last line) is passed on at once, even when no more output follows.
                let release = self.held.len() - partial_marker_len(&self.held, &self.prefix);
                out(&self.held[..release]);
                self.held.drain(..release);
            }
        }
    }
}

/// Length of the longest tail of `held` that is a proper start of `prefix`.
fn partial_marker_len(held: &[u8], prefix: &[u8]) -> usize {
    let longest = prefix.len().saturating_sub(1).min(held.len());
    (1..=longest).rev().find(|&n| held.ends_with(&prefix[..n])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid left in a session dir is killed only while it is still the run's: one reused by another program
    /// survives the cleanup (the dir goes either way).
    #[test]
    fn cleanup_kills_the_runs_pids_and_spares_reused_ones() {
        use std::os::unix::process::CommandExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let spawn = |arg0: &str| {
            std::process::Command::new("bash")
                .args(["-c", &format!("exec -a {arg0} sleep 1000")])
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let mut stranger = spawn("unrelated-sleeper");
        let mut ours = spawn(&format!("rune-s-{sid}-shell"));
        let cleanup = |g: u32, p: u32| {
            let dir = tmp.path().join(format!("rune-s-{sid}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("pgid"), format!("{g}\n")).unwrap();
            std::fs::write(dir.join("pid"), format!("{p}\n")).unwrap();
            let status = std::process::Command::new("sh")
                .args(["-c", &cleanup_command(&sid)])
                .env("TMPDIR", tmp.path())
                .status()
                .unwrap();
            assert!(status.success());
            assert!(!dir.exists(), "the dir is removed");
        };
        cleanup(stranger.id(), stranger.id());
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(stranger.try_wait().unwrap().is_none(), "a reused pid is spared");
        cleanup(ours.id(), ours.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ours.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "the run's process was not killed");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = stranger.kill();
        let _ = stranger.wait();
    }

    fn scan(chunks: &[&[u8]]) -> (Vec<u8>, Option<i32>, usize) {
        let mut scanner = EndScanner::new(b"rune-run-end abc ".to_vec());
        let mut out = Vec::new();
        for chunk in chunks {
            scanner.push(chunk, |b| out.extend_from_slice(b));
        }
        (out, scanner.code, scanner.stray)
    }

    #[test]
    fn end_marker_split_anywhere_is_found() {
        let whole: &[u8] = b"{\"a\":1}rune-run-end abc 042\n";
        for cut in 0..whole.len() {
            let (out, code, stray) = scan(&[&whole[..cut], &whole[cut..]]);
            assert_eq!(out, b"{\"a\":1}", "cut at {cut}");
            assert_eq!(code, Some(42));
            assert_eq!(stray, 0);
        }
        let (out, code, stray) = scan(&[b"xrune-run-end abd 001\n", b"rune-run-end abc 000\nlate"]);
        assert_eq!(out, b"xrune-run-end abd 001\n", "another nonce is data");
        assert_eq!((code, stray), (Some(0), 4));
        assert_eq!(scan(&[b"rune-run-end abc 0x1\n"]).1, Some(125));
    }

    /// Regression: the scanner held back the last `prefix - 1` bytes of stdout whatever they were, so the run's
    /// start line stayed in it while a plugin wrote only to stderr (a stderr flood was reported as "the runner
    /// did not start").
    #[test]
    fn only_a_possible_start_of_the_end_marker_is_held_back() {
        let (out, code, _) = scan(&[b"rune-run-start 0123456789abcdef0123456789abcdef\n"]);
        assert_eq!(out, b"rune-run-start 0123456789abcdef0123456789abcdef\n");
        assert_eq!(code, None);
        let mut scanner = EndScanner::new(b"rune-run-end abc ".to_vec());
        let mut out = Vec::new();
        scanner.push(b"{}\nrune-run-e", |b| out.extend_from_slice(b));
        assert_eq!(out, b"{}\n", "a tail that may be the marker waits");
        scanner.push(b"nd abc 000\n", |b| out.extend_from_slice(b));
        assert_eq!((out.as_slice(), scanner.code), (&b"{}\n"[..], Some(0)));
    }
}
