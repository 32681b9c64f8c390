//! The real `rune serve` binary as a child process of the soak: started with a settings file, its log in a
//! file, killed on drop (and with the test process, under `setpriv --pdeathsig KILL` when present).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SETPRIV: &str = "/usr/bin/setpriv";
/// Bound on start-up (settings, plugins, rules, NATS, the listener) and on the drain after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Daemon {
    /// The running daemon: `Some` until [`Daemon::terminate`] reaps it or `Drop` kills it.
    child: Option<Child>,
    pid: u32,
    /// stderr of the daemon (its log).
    log: PathBuf,
}

impl Daemon {
    /// Runs `rune serve --config <config>` in `dir` with no inherited `RUNE_*` variable and waits until it
    /// listens. Panics with the log when it does not come up.
    ///
    /// Call it from a thread that outlives the daemon (the test's own): the death signal of `setpriv` follows
    /// the spawning thread.
    pub fn start(config: &Path, dir: &Path) -> Daemon {
        let binary = env!("CARGO_BIN_EXE_rune");
        let log = dir.join("serve.log");
        let stderr = std::fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut command = if Path::new(SETPRIV).is_file() {
            let mut c = Command::new(SETPRIV);
            c.args(["--pdeathsig", "KILL"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        command.args(["serve", "--config"]).arg(config).current_dir(dir);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().to_ascii_uppercase().starts_with("RUNE_") {
                command.env_remove(key);
            }
        }
        // Only the inventory's key: no agent of whoever runs the test.
        command.env_remove("SSH_AUTH_SOCK").stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot run {binary} serve: {e}"));
        let mut daemon = Daemon { pid: child.id(), child: Some(child), log };
        let deadline = Instant::now() + START_TIMEOUT;
        while !daemon.log_text().contains("rune serve: listening") {
            let exited = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("rune serve exited during start-up ({status}):\n{}", daemon.log_tail(40));
            }
            if Instant::now() > deadline {
                panic!("rune serve did not listen within {START_TIMEOUT:?}:\n{}", daemon.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log lines at `WARN` or `ERROR` (text format: the level follows the timestamp), without colours.
    pub fn log_problems(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .map(strip_ansi)
            .filter(|line| line.split_whitespace().nth(1).is_some_and(|level| level == "WARN" || level == "ERROR"))
            .collect()
    }

    /// SIGTERM, then waits for the drain: the exit code, or `None` when it was killed or did not exit in time.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the PID of our own child, not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `line` without ANSI escape sequences (`ESC [ … letter`): the log writes colours even into a file.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip up to and including the final letter of the sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
