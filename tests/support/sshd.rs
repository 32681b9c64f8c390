//! Starts real OpenSSH `sshd` daemons on loopback ports as disposable "hosts" for integration tests and benchmarks.
//!
//! [`SshdFleet::start`] gives each host its own ed25519 host key, its own port on 127.0.0.1 and its own
//! generated `sshd_config`; the fleet shares one client key (in one `authorized_keys`) and one `known_hosts`.
//! Everything lives in one temporary directory that is removed on drop, after every daemon (and every
//! session process it forked) has been killed. Only loopback addresses are ever used.
//!
//! Needs root (sshd must switch to the login user), `/usr/sbin/sshd` and `ssh-keygen`; see
//! [`ensure_prerequisites`]. Facts this module relies on (checked on Debian bookworm, OpenSSH 9.2):
//! - With `UsePAM no`, sshd refuses key logins to locked accounts and `useradd` creates locked accounts, so
//!   the test user's password field is set to `*`.
//! - sshd wants `/run/sshd` (privilege separation directory) and an absolute path to its binary (re-exec).
//! - sshd's defaults (`MaxSessions 10`, `MaxStartups 10:30:100`) drop parallel handshakes; the generated
//!   config raises them. Real fleets may not: tests of those limits can lower them via
//!   [`FleetOptions::extra_config`].
//! - Every daemon announces a per-fleet token in its banner (`VersionAddendum`), so readiness is only declared
//!   when *this* daemon answers — not some other process that won the race for a freshly freed port.
//! - Every session gets `RUNE_TEST_HOST=host-NN` in its environment, so one stub directory can behave
//!   differently per host.
//! - Daemons are spawned from one long-lived thread under `setpriv --pdeathsig KILL` (when `setpriv` exists),
//!   so they die with the test process even when `Drop` never runs (ctrl-c, timeout, `abort`, a fleet kept in
//!   a `static`; the temporary directory stays behind then). The death signal follows the *spawning thread*,
//!   which is why spawning never happens on a short-lived thread.
//! - Root fleets: sshd runs the command through root's shell, which reads root's `~/.bashrc`; on these
//!   machines that prepends pyenv and cargo directories *before* the stub directory (and costs ~0.3 s per
//!   command). Stubs named like something in those directories (`python3`, `pip`) lose there.
//! - Zombie `[sshd] <defunct>` processes under PID 1 after tests are sshd's own orphans (a connection's
//!   processes outlive their parent); in containers whose PID 1 reaps lazily they linger for a while.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// sshd re-executes itself per connection and therefore must be started by absolute path.
const SSHD: &str = "/usr/sbin/sshd";
const SSH_KEYGEN: &str = "ssh-keygen";
const SETPRIV: &str = "/usr/bin/setpriv";
/// Dedicated non-root login user: root's `~/.bashrc` on these machines is slow (pyenv), and most plugins must
/// not need root.
pub const TEST_USER: &str = "runetest";
/// Named in prerequisite panics; keep in step with the README's test command.
const TEST_COMMAND: &str = "scripts/test.sh";
const LOOPBACK: &str = "127.0.0.1";
/// Attempts to find a free port when sshd loses the race for the port it was given.
const MAX_BIND_ATTEMPTS: u32 = 10;
/// Set to `1` to keep the fleet directory (configs, keys, sshd logs) after the fleet is dropped.
const KEEP_DIR_ENV: &str = "RUNE_TEST_KEEP_SSHD_DIR";

/// Which account the fleet's `authorized_keys` logs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoginUser {
    /// The dedicated user [`TEST_USER`], created on first use.
    #[default]
    TestUser,
    /// `root`, for plugins that need it. Root's shell start-up files run on every command.
    Root,
}

impl LoginUser {
    pub fn name(self) -> &'static str {
        match self {
            LoginUser::TestUser => TEST_USER,
            LoginUser::Root => "root",
        }
    }
}

/// sshd `LogLevel`; the log of host `i` is [`SshdFleet::sshd_log`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SshdLogLevel {
    Quiet,
    Fatal,
    #[default]
    Error,
    Info,
    Verbose,
    Debug1,
    Debug2,
    Debug3,
}

impl SshdLogLevel {
    fn keyword(self) -> &'static str {
        match self {
            SshdLogLevel::Quiet => "QUIET",
            SshdLogLevel::Fatal => "FATAL",
            SshdLogLevel::Error => "ERROR",
            SshdLogLevel::Info => "INFO",
            SshdLogLevel::Verbose => "VERBOSE",
            SshdLogLevel::Debug1 => "DEBUG1",
            SshdLogLevel::Debug2 => "DEBUG2",
            SshdLogLevel::Debug3 => "DEBUG3",
        }
    }
}

/// How to start a fleet; `FleetOptions::default()` is the test user, no stubs, `LogLevel ERROR`, 20 s.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub user: LoginUser,
    /// Directory put first on the sessions' `PATH` (via sshd `SetEnv`), e.g. holding a fake `systemctl`.
    /// It must be readable and searchable by the login user (0755 directories, 0755 scripts).
    pub stub_path: Option<PathBuf>,
    pub log_level: SshdLogLevel,
    /// Bound on waiting for all daemons to accept TCP and send their banner.
    pub startup_timeout: Duration,
    /// Extra `sshd_config` lines, written *before* the generated ones. sshd keeps the first value it reads
    /// for most keywords, so these override the defaults (e.g. `"MaxSessions 2"`). Do not set `Port`,
    /// `ListenAddress`, `HostKey` or `VersionAddendum`, and no `Match` blocks.
    pub extra_config: Vec<String>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            user: LoginUser::TestUser,
            stub_path: None,
            log_level: SshdLogLevel::Error,
            startup_timeout: Duration::from_secs(20),
            extra_config: Vec::new(),
        }
    }
}

/// One sshd "host" of a fleet.
#[derive(Clone, Debug)]
pub struct SshHost {
    /// `host-00`, `host-01`, …
    pub name: String,
    /// Always `127.0.0.1`.
    pub addr: String,
    pub port: u16,
    /// `ssh-ed25519 AAAA…` (no comment).
    pub host_public_key: String,
    /// PID of the listening sshd; stale after [`SshdFleet::kill_host`].
    pid: u32,
}

impl SshHost {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}", self.addr, self.port, self.host_public_key)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Files and process of one daemon.
struct Daemon {
    config: PathBuf,
    log: PathBuf,
    /// Sent in the banner (`VersionAddendum`): proves the answering daemon is this one.
    banner_token: String,
    /// The running sshd. `Some` from spawn until `kill_host` or `Drop`, which kill and reap it.
    child: Option<Child>,
    /// How many ports this daemon has tried during the current start.
    bind_attempts: u32,
}

/// Running sshd daemons on loopback; see the module documentation.
pub struct SshdFleet {
    hosts: Vec<SshHost>,
    daemons: Vec<Daemon>,
    user: LoginUser,
    options: FleetOptions,
    client_key: PathBuf,
    known_hosts: PathBuf,
    authorized_keys: PathBuf,
    /// Declared last: removed only after `Drop::drop` has killed every daemon.
    dir: tempfile::TempDir,
}

impl SshdFleet {
    /// Starts `n` daemons and waits until each one accepts TCP and sends its `SSH-2.0` banner.
    ///
    /// Panics with a clear message (including the daemon's log) when a daemon cannot start; daemons already
    /// started are killed on the way out.
    pub fn start(n: usize, opts: &FleetOptions) -> SshdFleet {
        ensure_prerequisites();
        ensure_privilege_separation_dir();
        if opts.user == LoginUser::TestUser {
            ensure_test_user();
        }
        if let Some(stub) = &opts.stub_path {
            assert!(stub.is_absolute(), "FleetOptions::stub_path must be absolute, got {}", stub.display());
            assert!(stub.is_dir(), "FleetOptions::stub_path {} is not a directory", stub.display());
        }

        let mut dir = tempfile::Builder::new().prefix("rune-sshd-").tempdir().unwrap_or_else(|e| {
            panic!("cannot create the sshd fleet directory in {}: {e}", std::env::temp_dir().display())
        });
        if std::env::var_os(KEEP_DIR_ENV).is_some_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("sshd fleet: keeping {} ({KEEP_DIR_ENV}=1)", dir.path().display());
        }
        let root = dir.path().to_path_buf();
        // The login user reads authorized_keys (sshd drops to the user for that) and traverses the directory.
        set_mode(&root, 0o755);
        let fleet_id = root
            .file_name()
            .and_then(|name| name.to_str())
            .map(|name| name.replace(|c: char| !c.is_ascii_alphanumeric(), ""))
            .unwrap_or_default();

        let names: Vec<String> = (0..n).map(|i| format!("host-{i:02}")).collect();
        let client_key = root.join("client_ed25519");
        let mut key_files = vec![(client_key.clone(), "rune-test client".to_string())];
        for name in &names {
            let host_dir = root.join(name);
            create_dir(&host_dir);
            set_mode(&host_dir, 0o755);
            key_files.push((host_dir.join("ssh_host_ed25519_key"), format!("rune-test {name}")));
        }
        generate_keys(&key_files);

        let client_public_key = read_public_key(&pub_path(&client_key));
        let authorized_keys = root.join("authorized_keys");
        write_file(&authorized_keys, &format!("{client_public_key}\n"));
        set_mode(&authorized_keys, 0o644);
        set_mode(&pub_path(&client_key), 0o644);

        // From here on a panic drops `fleet`, which kills every daemon spawned so far.
        let mut fleet = SshdFleet {
            hosts: Vec::with_capacity(n),
            daemons: Vec::with_capacity(n),
            user: opts.user,
            options: opts.clone(),
            client_key,
            known_hosts: root.join("known_hosts"),
            authorized_keys,
            dir,
        };
        for (i, name) in names.into_iter().enumerate() {
            let host_dir = root.join(&name);
            let host_key = host_dir.join("ssh_host_ed25519_key");
            fleet.hosts.push(SshHost {
                addr: LOOPBACK.to_string(),
                port: 0,
                host_public_key: read_public_key(&pub_path(&host_key)),
                pid: 0,
                name: name.clone(),
            });
            fleet.daemons.push(Daemon {
                config: host_dir.join("sshd_config"),
                log: host_dir.join("sshd.log"),
                banner_token: format!("rune-test-{fleet_id}-{name}"),
                child: None,
                bind_attempts: 0,
            });
            fleet.spawn_on_new_port(i);
        }
        fleet.wait_until_ready(&(0..n).collect::<Vec<_>>(), PortPolicy::PickAnother);

        let mut known_hosts = String::new();
        for host in &fleet.hosts {
            let _ = writeln!(known_hosts, "{}", host.known_hosts_line());
        }
        write_file(&fleet.known_hosts, &known_hosts);
        set_mode(&fleet.known_hosts, 0o644);
        fleet
    }

    pub fn hosts(&self) -> &[SshHost] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &SshHost {
        self.hosts.get(i).unwrap_or_else(|| panic!("sshd fleet has {} hosts, no host {i}", self.hosts.len()))
    }

    /// Private key (0600, owned by root) accepted by every host for [`SshdFleet::user`].
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// `known_hosts` with the right key of every host.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Login user name (`runetest` or `root`).
    pub fn user(&self) -> &str {
        self.user.name()
    }

    /// The fleet's temporary directory (removed on drop unless `RUNE_TEST_KEEP_SSHD_DIR=1`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The sshd log (stderr, `-e`) of host `i`.
    pub fn sshd_log(&self, i: usize) -> String {
        read_log(&self.daemon(i).log)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.daemon(i).child.is_some()
    }

    /// Writes a `known_hosts` naming every host with one freshly generated ed25519 key that no host has:
    /// a client checking host keys must refuse every host ("changed host key").
    pub fn write_known_hosts_with_wrong_key(&self, path: &Path) {
        let wrong_dir = tempfile::Builder::new()
            .prefix("wrong-key-")
            .tempdir_in(self.dir())
            .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", self.dir().display()));
        let wrong_key = wrong_dir.path().join("wrong_ed25519");
        generate_keys(&[(wrong_key.clone(), "rune-test wrong key".to_string())]);
        let wrong_public_key = read_public_key(&pub_path(&wrong_key));
        let mut text = String::new();
        for host in &self.hosts {
            let _ = writeln!(text, "[{}]:{} {}", host.addr, host.port, wrong_public_key);
        }
        write_file(path, &text);
    }

    /// Writes an empty `known_hosts`: every host is unknown.
    pub fn write_empty_known_hosts(&self, path: &Path) {
        write_file(path, "");
    }

    /// Kills host `i` with SIGKILL and reaps it, together with every session process it forked (so existing
    /// connections to it drop too). The port is then closed; no-op if the host is already down.
    pub fn kill_host(&mut self, i: usize) {
        if let Some(child) = self.daemon_mut(i).child.take() {
            kill_daemons(vec![child]);
        }
    }

    /// Kills host `i` the way a crash would, while its sessions run: SIGKILL to the listening sshd and to every
    /// process under it (each connection's sshd processes, the sessions, whatever they run) in one pass, parents
    /// first, so that nothing answers a client once the first signal is out. Unlike [`SshdFleet::kill_host`],
    /// nothing gets a chance to react between generations (a plugin whose `sleep` was killed could print its
    /// result). Only the listener is reaped; the rest are reparented to PID 1 (see the module notes on zombies).
    /// The port is then closed; no-op if the host is already down.
    pub fn crash_host(&mut self, i: usize) {
        let Some(mut listener) = self.daemon_mut(i).child.take() else { return };
        let mut pids = vec![listener.id()];
        pids.extend(descendant_generations(&[listener.id()]).into_iter().flatten());
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions; these pids are this host's processes,
                // found under our own child a moment ago.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = listener.wait();
    }

    /// Starts host `i` again on the same port with the same host key (killing it first if it runs). Retries
    /// while the port is still taken, up to [`FleetOptions::startup_timeout`], then panics.
    pub fn restart_host(&mut self, i: usize) {
        self.kill_host(i);
        self.daemon_mut(i).bind_attempts = 0;
        self.spawn(i);
        self.wait_until_ready(&[i], PortPolicy::KeepSame);
    }

    /// An OpenSSH client command for host `i` that checks the host key against [`SshdFleet::known_hosts`],
    /// logs in with the fleet key and runs `remote_command` (a shell string, run by the user's login shell).
    pub fn openssh_command(&self, i: usize, remote_command: &str) -> Command {
        let host = self.host(i);
        let mut command = Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "KexAlgorithms=curve25519-sha256"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.client_key)
            .args(["-p", &host.port.to_string()])
            .arg(format!("{}@{}", self.user(), host.addr))
            .arg(remote_command)
            .stdin(Stdio::null());
        command
    }

    fn daemon(&self, i: usize) -> &Daemon {
        self.daemons.get(i).unwrap_or_else(|| panic!("sshd fleet has {} hosts, no host {i}", self.daemons.len()))
    }

    fn daemon_mut(&mut self, i: usize) -> &mut Daemon {
        let len = self.daemons.len();
        self.daemons.get_mut(i).unwrap_or_else(|| panic!("sshd fleet has {len} hosts, no host {i}"))
    }

    fn spawn_on_new_port(&mut self, i: usize) {
        self.hosts[i].port = free_port();
        self.daemons[i].bind_attempts += 1;
        self.spawn(i);
    }

    /// Writes host `i`'s config for its current port and spawns sshd on it.
    fn spawn(&mut self, i: usize) {
        let config = self.render_config(i);
        let daemon = &mut self.daemons[i];
        write_file(&daemon.config, &config);
        let log = fs::File::create(&daemon.log)
            .unwrap_or_else(|e| panic!("cannot create sshd log {}: {e}", daemon.log.display()));
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", SSHD]);
                command
            }
            None => Command::new(SSHD),
        };
        command.args(["-D", "-e", "-f"]).arg(&daemon.config);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = spawn_from_long_lived_thread(command)
            .unwrap_or_else(|e| panic!("cannot spawn {SSHD} for {}: {e}", self.hosts[i].name));
        self.hosts[i].pid = child.id();
        daemon.child = Some(child);
    }

    fn render_config(&self, i: usize) -> String {
        let host = &self.hosts[i];
        let daemon = &self.daemons[i];
        let host_key = daemon.config.with_file_name("ssh_host_ed25519_key");
        let mut set_env = vec![format!("RUNE_TEST_HOST={}", host.name)];
        if let Some(stub) = &self.options.stub_path {
            // Root keeps the sbin directories it normally has on PATH; the stubs come first either way.
            let system_path = match self.user {
                LoginUser::TestUser => "/usr/local/bin:/usr/bin:/bin",
                LoginUser::Root => "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            };
            set_env.push(format!("PATH={}:{system_path}", stub.display()));
        }
        let set_env: Vec<String> = set_env.iter().map(|s| quote(s)).collect();

        let mut text = format!("# Generated by tests/support/sshd.rs for {}.\n", host.name);
        for line in &self.options.extra_config {
            let _ = writeln!(text, "{line}");
        }
        let _ = write!(
            text,
            "Port {port}\n\
             ListenAddress {LOOPBACK}\n\
             AddressFamily inet\n\
             HostKey {host_key}\n\
             PidFile none\n\
             AuthorizedKeysFile {authorized_keys}\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {user}\n\
             MaxSessions 100\n\
             MaxStartups 1000:30:1000\n\
             LogLevel {log_level}\n\
             VersionAddendum {token}\n\
             SetEnv {set_env}\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             PrintLastLog no\n",
            port = host.port,
            host_key = quote(&host_key.display().to_string()),
            authorized_keys = quote(&self.authorized_keys.display().to_string()),
            user = self.user.name(),
            log_level = self.options.log_level.keyword(),
            token = daemon.banner_token,
            set_env = set_env.join(" "),
        );
        // From OpenSSH 9.8 sshd penalises sources that fail auth or crash sessions; every test client is
        // 127.0.0.1, so one negative test would lock out the others.
        if sshd_version() >= (9, 8) {
            text.push_str("PerSourcePenalties no\n");
        }
        text
    }

    /// Waits until every daemon in `pending` sends its own banner, respawning on a lost port race; panics
    /// with the daemon's log on failure or after the startup timeout.
    fn wait_until_ready(&mut self, pending: &[usize], policy: PortPolicy) {
        let timeout = self.options.startup_timeout;
        let deadline = Instant::now() + timeout;
        let mut pending = pending.to_vec();
        loop {
            let mut still_pending = Vec::new();
            for i in pending {
                if !self.poll_ready(i, policy, deadline) {
                    still_pending.push(i);
                }
            }
            pending = still_pending;
            if pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let mut message = format!(
                    "{} of {} sshd daemons did not send their banner within {timeout:?}:",
                    pending.len(),
                    self.hosts.len()
                );
                if policy == PortPolicy::KeepSame {
                    message.push_str(
                        " (a restarted host keeps its port, which known_hosts names; is another process holding it?)",
                    );
                }
                for &i in pending.iter().take(5) {
                    let host = &self.hosts[i];
                    let _ = write!(
                        message,
                        "\n--- {} (port {}, pid {}) log:\n{}",
                        host.name,
                        host.port,
                        host.pid,
                        self.sshd_log(i)
                    );
                }
                panic!("{message}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// One readiness check of daemon `i`; true once it answered with its own banner.
    fn poll_ready(&mut self, i: usize, policy: PortPolicy, deadline: Instant) -> bool {
        let exited = match self.daemons[i].child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(format!("wait failed: {e}")),
            None => Some("not running".to_string()),
        };
        if let Some(status) = exited {
            self.daemons[i].child = None;
            let log = self.sshd_log(i);
            let lost_port = log.contains("Address already in use");
            match policy {
                PortPolicy::PickAnother if lost_port && self.daemons[i].bind_attempts < MAX_BIND_ATTEMPTS => {
                    self.spawn_on_new_port(i);
                    return false;
                }
                PortPolicy::KeepSame if lost_port && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                    self.spawn(i);
                    return false;
                }
                _ => {
                    let host = &self.hosts[i];
                    panic!(
                        "sshd for {} (port {}, {} port attempt(s)) exited during start-up ({status}); config {}; log:\n{log}",
                        host.name,
                        host.port,
                        self.daemons[i].bind_attempts,
                        self.daemons[i].config.display()
                    );
                }
            }
        }
        let host = &self.hosts[i];
        let Ok(mut stream) = TcpStream::connect_timeout(&host.socket_addr(), Duration::from_millis(500)) else {
            return false;
        };
        let banner = read_banner(&mut stream);
        // Another daemon's banner means our sshd lost the port; its exit shows up on the next poll.
        banner.starts_with("SSH-2.0-") && banner.contains(&self.daemons[i].banner_token)
    }
}

impl Drop for SshdFleet {
    fn drop(&mut self) {
        kill_daemons(self.daemons.iter_mut().filter_map(|daemon| daemon.child.take()).collect());
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PortPolicy {
    /// First start: a lost port race moves the daemon to another free port.
    PickAnother,
    /// Restart: the port is part of the host's identity (`known_hosts`), so wait for it.
    KeepSame,
}

/// A loopback port that nothing listens on (at the moment of the call): connections are refused.
pub fn closed_port() -> u16 {
    free_port()
}

/// Panics with a clear message unless this process can run sshd test hosts.
pub fn ensure_prerequisites() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let hint = format!(
            "install it with `apt-get install openssh-server openssh-client`, then run the README's test \
             command (`{TEST_COMMAND}`) as root"
        );
        assert!(Path::new(SSHD).is_file(), "sshd test hosts need {SSHD} (OpenSSH server), which is missing: {hint}");
        assert!(
            find_in_path(SSH_KEYGEN).is_some(),
            "sshd test hosts need `{SSH_KEYGEN}` on PATH, which is missing: {hint}"
        );
        assert!(
            effective_uid() == Some(0),
            "sshd test hosts need root (sshd must switch to the login user): run the README's test command \
             (`{TEST_COMMAND}`) as root"
        );
    });
}

/// A TCP listener on 127.0.0.1 that accepts connections and never sends a byte (or only a banner, see
/// [`SilentListener::speaking`]): for handshake timeouts. Accepted sockets stay open until the listener is dropped.
pub struct SilentListener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Set by `Drop`, which then connects once to wake the blocked `accept`.
    stop: Arc<AtomicBool>,
    /// Accept loop; owns the accepted sockets and closes them when it ends. Joined by `Drop`.
    thread: Option<JoinHandle<()>>,
}

impl SilentListener {
    pub fn start() -> SilentListener {
        SilentListener::speaking(b"")
    }

    /// A listener that sends `banner` on every connection it accepts and then nothing more, e.g. an SSH
    /// version line: the client gets past reading the version and then waits on the key exchange forever.
    pub fn speaking(banner: &'static [u8]) -> SilentListener {
        let listener = TcpListener::bind((LOOPBACK, 0)).unwrap_or_else(|e| panic!("cannot bind {LOOPBACK}:0: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("cannot read the listener's address: {e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("silent-listener".to_string())
            .spawn({
                let accepted = Arc::clone(&accepted);
                let stop = Arc::clone(&stop);
                move || {
                    let mut open = Vec::new();
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(mut stream) = stream {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let _ = io::Write::write_all(&mut stream, banner);
                            open.push(stream);
                        }
                    }
                }
            })
            .unwrap_or_else(|e| panic!("cannot spawn the silent listener thread: {e}"));
        SilentListener { addr, accepted, stop, thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---- processes -------------------------------------------------------------------------------------------

/// Spawns `command` from one thread that lives as long as the process, so `--pdeathsig` (which follows the
/// spawning *thread*) fires only when the test process ends. Shared with the other daemons of `support`.
pub(super) fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("daemon-spawner".to_string())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("cannot spawn the daemon spawner thread: {e}"));
        sender
    });
    let (reply, answer) = mpsc::channel();
    spawner.send((command, reply)).map_err(|_| io::Error::other("daemon spawner thread is gone"))?;
    answer.recv().map_err(|_| io::Error::other("daemon spawner thread is gone"))?
}

/// Descendants of `roots` (not the roots) from one scan of `/proc`, by generation: children first.
fn descendant_generations(roots: &[u32]) -> Vec<Vec<u32>> {
    if roots.is_empty() {
        return Vec::new();
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = parent_and_state(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut generations = Vec::new();
    let mut current: Vec<u32> = roots.to_vec();
    loop {
        let next: Vec<u32> = current.iter().flat_map(|pid| children.get(pid).cloned().unwrap_or_default()).collect();
        if next.is_empty() {
            return generations;
        }
        generations.push(next.clone());
        current = next;
    }
}

/// `(ppid, state)` from `/proc/PID/stat`; `None` if the process is gone.
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; the fields after the last ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Kills the listening daemons `listeners` (our children) and every process they forked (sessions).
///
/// Deepest generation first, each reaped by its still-living parent before the parent dies: an orphan would
/// be re-parented to PID 1, and in containers PID 1 often never reaps, leaving zombies behind. Session
/// processes are not our children, so they get SIGKILL via `kill(1)`. Best effort: never panics.
fn kill_daemons(listeners: Vec<Child>) {
    let pids: Vec<u32> = listeners.iter().map(Child::id).collect();
    for generation in descendant_generations(&pids).iter().rev() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(generation.iter().map(u32::to_string))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(1);
        let unreaped = |pid: &u32| match parent_and_state(*pid) {
            None => false,
            // A zombie of PID 1 may never be reaped; nothing to wait for.
            Some((ppid, state)) => !(state == 'Z' && ppid == 1),
        };
        while generation.iter().any(unreaped) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
    for mut listener in listeners {
        let _ = listener.kill();
        let _ = listener.wait();
    }
}

pub(super) fn setpriv() -> Option<&'static str> {
    static FOUND: OnceLock<bool> = OnceLock::new();
    FOUND.get_or_init(|| Path::new(SETPRIV).is_file()).then_some(SETPRIV)
}

/// `(major, minor)` of the installed sshd, from `sshd -V` (`OpenSSH_9.2p1 …`).
fn sshd_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let output = Command::new(SSHD).arg("-V").stdin(Stdio::null()).output();
        let text = output.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
        let version = text.split("OpenSSH_").nth(1).unwrap_or("");
        let mut numbers = version.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok());
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    })
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub(super) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

// ---- one-time machine set-up -----------------------------------------------------------------------------

fn ensure_privilege_separation_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        // Another test process may create it at the same time: only the end state matters.
        if let Err(e) = fs::create_dir_all(dir)
            && !dir.is_dir()
        {
            panic!("sshd needs {}, which cannot be created: {e}", dir.display());
        }
        set_mode(dir, 0o755);
    }
}

/// Creates [`TEST_USER`] if absent and unlocks it for key login (password field `*`). Safe against other
/// test processes doing the same at the same time (`/etc/passwd` lock contention is retried).
pub fn ensure_test_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        retry_account_change("create", || {
            user_exists() || run(Command::new("useradd").args(["-m", "-s", "/bin/bash", TEST_USER])).status.success()
        });
        retry_account_change("unlock", || {
            shadow_password_field().as_deref() == Some("*")
                || run(Command::new("usermod").args(["-p", "*", TEST_USER])).status.success()
        });
    });
}

fn retry_account_change(what: &str, mut attempt: impl FnMut() -> bool) {
    for _ in 0..50 {
        if attempt() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot {what} the test user {TEST_USER} (useradd/usermod kept failing; is /etc/passwd locked?)");
}

fn user_exists() -> bool {
    run(Command::new("id").args(["-u", TEST_USER])).status.success()
}

fn shadow_password_field() -> Option<String> {
    let shadow = fs::read_to_string("/etc/shadow").ok()?;
    shadow
        .lines()
        .find_map(|line| line.strip_prefix(TEST_USER)?.strip_prefix(':'))
        .and_then(|rest| rest.split(':').next())
        .map(str::to_string)
}

// ---- files and keys --------------------------------------------------------------------------------------

/// Generates ed25519 keypairs (no passphrase) for `(path, comment)`, all `ssh-keygen` runs in parallel.
fn generate_keys(keys: &[(PathBuf, String)]) {
    // Bounded batches: 100 hosts must not mean 100 simultaneous processes on a 2-core runner.
    for batch in keys.chunks(32) {
        let children: Vec<(PathBuf, Child)> = batch
            .iter()
            .map(|(path, comment)| {
                let child = Command::new(SSH_KEYGEN)
                    .args(["-t", "ed25519", "-N", "", "-q", "-C", comment, "-f"])
                    .arg(path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {SSH_KEYGEN}: {e}"));
                (path.clone(), child)
            })
            .collect();
        for (path, child) in children {
            let output = child.wait_with_output().unwrap_or_else(|e| panic!("cannot wait for {SSH_KEYGEN}: {e}"));
            assert!(
                output.status.success(),
                "{SSH_KEYGEN} -t ed25519 -f {} failed ({}): {}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

fn pub_path(private_key: &Path) -> PathBuf {
    let mut name = private_key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// `ssh-ed25519 AAAA…` from a `.pub` file, without the comment.
fn read_public_key(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read public key {}: {e}", path.display()));
    let fields: Vec<&str> = text.split_whitespace().take(2).collect();
    assert!(fields.len() == 2 && fields[0] == "ssh-ed25519", "unexpected public key in {}: {text:?}", path.display());
    fields.join(" ")
}

fn read_log(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => "(empty)".to_string(),
        Ok(text) => text,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// First line the server sends (its banner), or what arrived before the timeout.
fn read_banner(stream: &mut TcpStream) -> String {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut banner = Vec::new();
    let mut byte = [0u8; 1];
    while banner.len() < 256 {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => banner.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&banner).trim_end().to_string()
}

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap_or_else(|e| panic!("cannot bind {LOOPBACK}:0: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("cannot read the address of a fresh listener: {e}")).port()
}

/// Double-quotes an `sshd_config` argument (paths may contain spaces; sshd has no escape for `"`).
fn quote(value: &str) -> String {
    assert!(!value.contains('"') && !value.contains('\n'), "cannot put {value:?} into an sshd_config");
    format!("\"{value}\"")
}

fn create_dir(path: &Path) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {mode:o} {}: {e}", path.display()));
}
