//! The `ssh` transport: russh client with strict known_hosts checking, key and agent auth, and a connection
//! pool so repeated runs on a host reuse one authenticated connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{self, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, kex};
use tokio::sync::{Mutex, Semaphore};

use super::session::{self, Shell};
use super::{BoxFuture, Invocation, OutputSink, RawOutcome, Transport, TransportError};
use crate::inventory::{Host, HostKeyPolicy, TransportKind};

/// Settings of the SSH transport that are not per host.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Channels opened at once on one pooled connection (sshd's `MaxSessions` defaults to 10).
    pub max_channels_per_connection: usize,
    /// Keepalive probe interval; a connection that misses `keepalive_max` probes is dropped.
    pub keepalive_interval: Duration,
    pub keepalive_max: usize,
    /// Agent socket whose keys are tried after the configured key (default: `$SSH_AUTH_SOCK`; `None` disables).
    pub agent_socket: Option<PathBuf>,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            max_channels_per_connection: 8,
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 3,
            agent_socket: std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from),
        }
    }
}

/// Preferred key exchanges: curve25519 first (fast and widely supported), post-quantum hybrid next.
const KEX_ORDER: &[kex::Name] = &[
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::MLKEM768X25519_SHA256,
    kex::DH_GEX_SHA256,
    kex::DH_G16_SHA512,
    kex::DH_G14_SHA256,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

/// The key exchange RUNE prefers; reported by the benchmark.
pub const PREFERRED_KEX: &str = "curve25519-sha256";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    address: String,
    port: u16,
    user: String,
    known_hosts: PathBuf,
}

/// One authenticated connection; cloneable handle, channels capped by a semaphore.
struct Connection {
    handle: Handle<ClientHandler>,
    /// Caps concurrent runs on this connection below the server's MaxSessions; permits end with each run.
    /// Idle session shells hold a channel without a permit: there are never more shells than runs were at
    /// once, and a run that needs a channel of its own closes an idle shell first.
    channels: Arc<Semaphore>,
    /// Session shells waiting for the next run.
    idle_shells: StdMutex<Vec<Shell>>,
}

impl Connection {
    fn take_idle_shell(&self) -> Option<Shell> {
        self.idle_shells.lock().ok().and_then(|mut shells| shells.pop())
    }

    fn put_idle_shell(&self, shell: Shell) {
        if let Ok(mut shells) = self.idle_shells.lock() {
            shells.push(shell);
        }
    }
}

/// The pool entry for one host: the lock serialises connecting, so concurrent runs share one handshake.
#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Arc<Connection>>>,
}

/// SSH transport with a per-host connection pool. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct SshTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<client::Config>,
    settings: SshSettings,
    slots: StdMutex<HashMap<PoolKey, Arc<Slot>>>,
    keys: StdMutex<HashMap<PathBuf, Arc<PrivateKey>>>,
}

impl Default for SshTransport {
    fn default() -> Self {
        SshTransport::new(SshSettings::default())
    }
}

impl SshTransport {
    pub fn new(settings: SshSettings) -> SshTransport {
        let config = client::Config {
            keepalive_interval: Some(settings.keepalive_interval),
            keepalive_max: settings.keepalive_max,
            nodelay: true,
            preferred: russh::Preferred { kex: std::borrow::Cow::Borrowed(KEX_ORDER), ..Default::default() },
            ..Default::default()
        };
        SshTransport {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                settings,
                slots: StdMutex::new(HashMap::new()),
                keys: StdMutex::new(HashMap::new()),
            }),
        }
    }

    /// Number of open pooled connections (for tests and benchmarks).
    pub async fn open_connections(&self) -> usize {
        let slots: Vec<Arc<Slot>> = match self.inner.slots.lock() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return 0,
        };
        let mut n = 0;
        for slot in slots {
            if slot.conn.lock().await.as_ref().is_some_and(|c| !c.handle.is_closed()) {
                n += 1;
            }
        }
        n
    }

    /// Closes every pooled connection.
    pub async fn close_all(&self) {
        let slots: Vec<Arc<Slot>> = match self.inner.slots.lock() {
            Ok(mut s) => s.drain().map(|(_, v)| v).collect(),
            Err(_) => return,
        };
        for slot in slots {
            if let Some(conn) = slot.conn.lock().await.take() {
                let _ = conn.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
            }
        }
    }

    fn slot(&self, host: &Host) -> Arc<Slot> {
        let key = PoolKey {
            address: host.address.clone(),
            port: host.port,
            user: host.user.clone(),
            known_hosts: host.known_hosts.clone(),
        };
        match self.inner.slots.lock() {
            Ok(mut slots) => slots.entry(key).or_default().clone(),
            Err(poisoned) => poisoned.into_inner().entry(key).or_default().clone(),
        }
    }

    /// A live pooled connection to `host`, connecting if there is none (or it died).
    async fn connection(&self, host: &Host, slot: &Slot) -> Result<Arc<Connection>, TransportError> {
        let mut guard = slot.conn.lock().await;
        if let Some(conn) = guard.as_ref()
            && !conn.handle.is_closed()
        {
            return Ok(conn.clone());
        }
        *guard = None;
        let conn = tokio::time::timeout(host.connect_timeout, self.connect(host)).await.map_err(|_| {
            TransportError::Unreachable(format!(
                "no SSH session with {}:{} within {}s",
                host.address,
                host.port,
                host.connect_timeout.as_secs()
            ))
        })??;
        let conn = Arc::new(conn);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self, host: &Host) -> Result<Connection, TransportError> {
        let verdict = Arc::new(StdMutex::new(None));
        let handler = ClientHandler {
            address: host.address.clone(),
            port: host.port,
            known_hosts: host.known_hosts.clone(),
            policy: host.host_key_policy,
            verdict: verdict.clone(),
        };
        let addr = (host.address.as_str(), host.port);
        let socket =
            tokio::net::TcpStream::connect(addr).await.map_err(|e| TransportError::Unreachable(e.to_string()))?;
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(host = %host.name, error = %e, "cannot set TCP_NODELAY");
        }
        // russh runs the connection in a task of its own from the server's version line on; a connect given up
        // (the timeout, a refused key) drops the handle, but a task still in the key exchange would wait on a
        // server that never answers for as long as the socket stays open: one task and one socket per attempt.
        // The guard shuts the socket down unless the connection is handed out, which ends that task.
        let (socket, guard) = guarded(socket).map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let connected = client::connect_stream(self.inner.config.clone(), socket, handler).await;
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                let seen = verdict.lock().ok().and_then(|mut v| v.take());
                return Err(match seen {
                    Some(KeyVerdict::Unknown) => TransportError::HostKeyUnknown {
                        host: format!("{}:{}", host.address, host.port),
                        known_hosts: host.known_hosts.display().to_string(),
                    },
                    Some(KeyVerdict::Changed(line)) => TransportError::HostKeyChanged {
                        host: format!("{}:{}", host.address, host.port),
                        known_hosts: host.known_hosts.display().to_string(),
                        line,
                    },
                    Some(KeyVerdict::Unusable(message)) => TransportError::HostKeyUnverifiable {
                        host: format!("{}:{}", host.address, host.port),
                        message: format!("{} ({message})", host.known_hosts.display()),
                    },
                    None => map_connect_error(e),
                });
            }
        };
        self.authenticate(host, &mut handle).await?;
        guard.disarm();
        Ok(Connection {
            handle,
            channels: Arc::new(Semaphore::new(self.inner.settings.max_channels_per_connection.max(1))),
            idle_shells: StdMutex::new(Vec::new()),
        })
    }

    fn load_key(&self, path: &Path) -> Result<Arc<PrivateKey>, String> {
        if let Ok(keys) = self.inner.keys.lock()
            && let Some(k) = keys.get(path)
        {
            return Ok(k.clone());
        }
        let key = Arc::new(
            keys::load_secret_key(path, None).map_err(|e| format!("cannot load key {}: {e}", path.display()))?,
        );
        if let Ok(mut keys) = self.inner.keys.lock() {
            keys.insert(path.to_owned(), key.clone());
        }
        Ok(key)
    }

    async fn authenticate(&self, host: &Host, handle: &mut Handle<ClientHandler>) -> Result<(), TransportError> {
        let mut tried = Vec::new();
        let candidates: Vec<PathBuf> = match &host.key {
            Some(k) => vec![k.clone()],
            None => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                ["id_ed25519", "id_ecdsa", "id_rsa"]
                    .iter()
                    .map(|n| home.join(".ssh").join(n))
                    .filter(|p| p.exists())
                    .collect()
            }
        };
        for path in candidates {
            let key = match self.load_key(&path) {
                Ok(k) => k,
                Err(e) => {
                    tried.push(e);
                    continue;
                }
            };
            let hash = rsa_hash(handle, key.algorithm().is_rsa()).await;
            let result =
                match handle.authenticate_publickey(host.user.clone(), PrivateKeyWithHashAlg::new(key, hash)).await {
                    Ok(r) => r,
                    // sshd drops the connection after MaxAuthTries refusals: that is a refusal, not an outage.
                    Err(e) if !tried.is_empty() => {
                        tried.push(format!("then the server closed the connection ({e})"));
                        return Err(TransportError::AuthFailed(format!("user {}: {}", host.user, tried.join("; "))));
                    }
                    Err(e) => {
                        return Err(TransportError::Unreachable(format!("connection lost during authentication: {e}")));
                    }
                };
            if result.success() {
                return Ok(());
            }
            tried.push(format!("key {} refused", path.display()));
        }
        if let Some(socket) = &self.inner.settings.agent_socket {
            match keys::agent::client::AgentClient::connect_uds(socket).await {
                Ok(mut agent) => {
                    let identities = agent.request_identities().await.unwrap_or_default();
                    let mut offered = 0;
                    for identity in identities {
                        let keys::agent::AgentIdentity::PublicKey { key, .. } = identity else { continue };
                        offered += 1;
                        let hash = rsa_hash(handle, key.algorithm().is_rsa()).await;
                        match handle.authenticate_publickey_with(host.user.clone(), key, hash, &mut agent).await {
                            Ok(r) if r.success() => return Ok(()),
                            Ok(_) => {}
                            // The server gave up on us (MaxAuthTries) or the agent failed: stop offering keys.
                            Err(_) if handle.is_closed() => break,
                            Err(_) => {}
                        }
                    }
                    tried.push(format!("{offered} agent key(s) refused"));
                }
                Err(e) => tried.push(format!("agent unavailable: {e}")),
            }
        }
        if tried.is_empty() {
            tried.push("no key configured and none found in ~/.ssh".into());
        }
        Err(TransportError::AuthFailed(format!("user {}: {}", host.user, tried.join("; "))))
    }
}

/// Shuts its socket down when dropped, unless disarmed: see [`SshTransport::connect`].
struct ShutdownGuard(Option<std::net::TcpStream>);

impl ShutdownGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        if let Some(socket) = self.0.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// `socket` and a guard holding a second handle on the same socket.
fn guarded(socket: tokio::net::TcpStream) -> std::io::Result<(tokio::net::TcpStream, ShutdownGuard)> {
    let socket = socket.into_std()?;
    let second = socket.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(socket)?, ShutdownGuard(Some(second))))
}

async fn rsa_hash(handle: &Handle<ClientHandler>, is_rsa: bool) -> Option<HashAlg> {
    if !is_rsa {
        return None;
    }
    handle.best_supported_rsa_hash().await.ok().flatten().flatten()
}

fn map_connect_error(e: russh::Error) -> TransportError {
    match e {
        russh::Error::IO(io) => TransportError::Unreachable(io.to_string()),
        russh::Error::Disconnect | russh::Error::ConnectionTimeout | russh::Error::KeepaliveTimeout => {
            TransportError::Unreachable(format!("connection closed during handshake: {e}"))
        }
        other => TransportError::Protocol(other.to_string()),
    }
}

impl Transport for SshTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Ssh
    }

    fn execute<'a>(
        &'a self,
        host: &'a Host,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<RawOutcome, TransportError>> {
        Box::pin(self.run(host, invocation))
    }
}

impl SshTransport {
    async fn run(&self, host: &Host, invocation: &Invocation) -> Result<RawOutcome, TransportError> {
        let slot = self.slot(host);
        let mut attempt = 0;
        // Pooled shells found dead (their connection or process went away while idle) before one worked.
        let mut dead_shells = 0;
        loop {
            attempt += 1;
            let conn = self.connection(host, &slot).await?;
            let permit = conn
                .channels
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| TransportError::Protocol("pool closed".into()))?;
            if let Some(request) = &invocation.session {
                let shell = match conn.take_idle_shell() {
                    Some(shell) => Ok(shell),
                    None => Shell::open(&conn.handle).await,
                };
                let mut shell = match shell {
                    Ok(shell) => shell,
                    Err(e) => {
                        channel_failed(host, e, attempt, "cannot start a session shell")?;
                        forget(&slot, &conn).await;
                        continue;
                    }
                };
                let ran = shell.run(invocation, request).await;
                if ran.needs_cleanup {
                    // Kill what is left of the run and the shell on the host (a flood, a stuck plugin).
                    cleanup(&conn, &session::cleanup_command(&shell.sid)).await;
                }
                if ran.reusable {
                    conn.put_idle_shell(shell);
                } else {
                    shell.close().await;
                }
                drop(permit);
                if ran.never_started && dead_shells < self.inner.settings.max_channels_per_connection {
                    dead_shells += 1;
                    attempt = 0;
                    continue;
                }
                return ran.result;
            }
            // This run needs a channel of its own: keep the connection's channels within sshd's MaxSessions.
            if let Some(shell) = conn.take_idle_shell() {
                shell.close().await;
            }
            match conn.handle.channel_open_session().await {
                Ok(channel) => {
                    let outcome = exec(&conn, channel, invocation).await;
                    drop(permit);
                    return outcome;
                }
                Err(e) => {
                    channel_failed(host, e, attempt, "cannot open a session channel")?;
                    forget(&slot, &conn).await;
                }
            }
        }
    }
}

/// Judges a failure to open a channel (or start a session shell on it) on a pooled connection: `Ok` means the
/// connection is unusable and worth one reconnect; `Err` is the run's error.
fn channel_failed(host: &Host, e: russh::Error, attempt: u32, what: &str) -> Result<(), TransportError> {
    match e {
        // The server refused one more channel (its MaxSessions): the connection itself is fine.
        russh::Error::ChannelOpenFailure(reason) => Err(TransportError::Unreachable(format!(
            "the server refused a session channel ({reason:?}); lower --parallel or raise sshd MaxSessions"
        ))),
        // A pooled connection can die between runs (server restart, idle timeout): reconnect once.
        e if attempt == 1 => {
            tracing::debug!(host = %host.name, error = %e, "pooled connection unusable; reconnecting");
            Ok(())
        }
        e => Err(TransportError::Unreachable(format!("{what}: {e}"))),
    }
}

/// Drops `conn` from its slot (if still there), so the next run connects afresh.
async fn forget(slot: &Slot, conn: &Arc<Connection>) {
    let mut guard = slot.conn.lock().await;
    if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
        *guard = None;
    }
}

async fn exec(
    conn: &Connection,
    channel: russh::Channel<client::Msg>,
    invocation: &Invocation,
) -> Result<RawOutcome, TransportError> {
    // `exec` spares the login shell's process; the command holds no caller data.
    let command = format!("exec {}", invocation.command);
    channel.exec(true, command).await.map_err(|e| TransportError::Unreachable(format!("exec request failed: {e}")))?;
    let (mut read, write) = channel.split();
    let mut sink = OutputSink::new(invocation);
    let mut outcome = RawOutcome::default();
    let mut refused = false;
    let mut closed_cleanly = false;
    let work = async {
        let feed = async {
            // The runner may exit before reading all of stdin (e.g. a precondition failed): not an error.
            let _ = write.data(&invocation.stdin[..]).await;
            let _ = write.eof().await;
        };
        let drain = async {
            let mut grace_end: Option<tokio::time::Instant> = None;
            loop {
                // Once the runner has exited, whatever still holds its output (a daemon a plugin left behind)
                // gets one short grace from that moment, not the whole deadline: the exit code is what the
                // result rests on. The grace is not renewed by further output.
                if grace_end.is_none() && (outcome.exit_code.is_some() || outcome.exit_signal.is_some()) {
                    grace_end = Some(tokio::time::Instant::now() + super::EXIT_DRAIN_GRACE);
                }
                let next = if let Some(end) = grace_end {
                    match tokio::time::timeout_at(end, read.wait()).await {
                        Ok(m) => m,
                        Err(_) => {
                            outcome.output_lingered = true;
                            break;
                        }
                    }
                } else {
                    read.wait().await
                };
                let Some(msg) = next else { break };
                match msg {
                    ChannelMsg::Data { data } => sink.stdout(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => sink.stderr(&data),
                    ChannelMsg::ExitStatus { exit_status } => outcome.exit_code = i32::try_from(exit_status).ok(),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        outcome.exit_signal = Some(format!("{signal_name:?}"))
                    }
                    ChannelMsg::Failure => {
                        refused = true;
                        break;
                    }
                    ChannelMsg::Close => {
                        closed_cleanly = true;
                        break;
                    }
                    _ => {}
                }
                if sink.overflowed() {
                    // A flood: stop here; closing the channel closes the plugin's pipes on the host.
                    break;
                }
            }
        };
        super::feed_while_draining(feed, drain).await;
    };
    let deadline_hit = tokio::time::timeout(invocation.deadline, work).await.is_err();
    let _ = write.close().await;
    drop(write);
    drop(read);
    if refused {
        return Err(TransportError::Protocol("the server refused to execute the command".into()));
    }
    if deadline_hit || sink.overflowed() || outcome.output_lingered || outcome.exit_signal.is_some() {
        // Kill what is left of the run on the host (a flooding plugin, a stuck runner, a lingering child, the
        // plugin's group when the runner itself was killed).
        cleanup(conn, &invocation.cleanup).await;
    }
    if deadline_hit {
        outcome.deadline_hit = true;
    } else if !closed_cleanly && outcome.exit_code.is_none() && outcome.exit_signal.is_none() && !sink.overflowed() {
        return Err(TransportError::LostMidRun(
            "connection lost while the plugin ran; it may have changed the host".into(),
        ));
    }
    sink.finish(&mut outcome);
    Ok(outcome)
}

/// Runs the fixed cleanup command on a fresh channel: kills the run's process group, removes its temp dir.
async fn cleanup(conn: &Connection, command: &str) {
    let attempt = async {
        let mut channel = conn.handle.channel_open_session().await.ok()?;
        channel.exec(true, command.to_owned()).await.ok()?;
        channel.eof().await.ok()?;
        while let Some(msg) = channel.wait().await {
            if matches!(msg, ChannelMsg::Close) {
                break;
            }
        }
        Some(())
    };
    if tokio::time::timeout(Duration::from_secs(5), attempt).await.is_err() {
        tracing::warn!("cleanup after deadline did not finish within 5s");
    }
}

#[derive(Debug)]
enum KeyVerdict {
    Unknown,
    Changed(usize),
    Unusable(String),
}

/// Checks the server's host key against known_hosts; records why it refused, for a precise status.
struct ClientHandler {
    address: String,
    port: u16,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    verdict: Arc<StdMutex<Option<KeyVerdict>>>,
}

impl ClientHandler {
    fn clone_for_check(&self) -> ClientHandler {
        ClientHandler {
            address: self.address.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
            policy: self.policy,
            verdict: self.verdict.clone(),
        }
    }

    fn record(&self, v: KeyVerdict) {
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(v);
        }
    }

    fn check(&self, key: &PublicKey) -> bool {
        // russh treats an unreadable known_hosts as empty; say what is really wrong instead.
        if let Err(e) = std::fs::File::open(&self.known_hosts)
            && (e.kind() != std::io::ErrorKind::NotFound || self.policy == HostKeyPolicy::Strict)
        {
            self.record(KeyVerdict::Unusable(format!("cannot read it: {e}")));
            return false;
        }
        match keys::check_known_hosts_path(&self.address, self.port, key, &self.known_hosts) {
            Ok(true) => true,
            Ok(false) => match self.policy {
                HostKeyPolicy::Strict => {
                    self.record(KeyVerdict::Unknown);
                    false
                }
                // A host already known by a key of another type is not "new": learning this key would let a
                // man in the middle in, just by presenting a different algorithm.
                HostKeyPolicy::AcceptNew
                    if keys::known_hosts::known_host_keys_path(&self.address, self.port, &self.known_hosts)
                        .map(|k| !k.is_empty())
                        .unwrap_or(true) =>
                {
                    self.record(KeyVerdict::Unusable(
                        "known_hosts holds a key of another type for this host; accept-new refuses to add one".into(),
                    ));
                    false
                }
                HostKeyPolicy::AcceptNew => {
                    match keys::known_hosts::learn_known_hosts_path(&self.address, self.port, key, &self.known_hosts) {
                        Ok(()) => {
                            tracing::warn!(address = %self.address, port = self.port, known_hosts = %self.known_hosts.display(), "accept-new: recorded a new host key");
                            true
                        }
                        Err(e) => {
                            self.record(KeyVerdict::Unusable(format!("cannot record new key: {e}")));
                            false
                        }
                    }
                }
            },
            Err(keys::Error::KeyChanged { line }) => {
                self.record(KeyVerdict::Changed(line));
                false
            }
            Err(e) => {
                self.record(KeyVerdict::Unusable(e.to_string()));
                false
            }
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_public_key {
            keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                // Reading known_hosts (and hashing its hashed entries) is file I/O: keep it off the runtime threads.
                let checker = self.clone_for_check();
                let key = key.clone();
                Ok(tokio::task::spawn_blocking(move || checker.check(&key)).await.unwrap_or(false))
            }
            keys::PublicKeyOrCertificate::Certificate(_) => {
                self.record(KeyVerdict::Unusable("host certificates are not supported".into()));
                Ok(false)
            }
        }
    }
}
