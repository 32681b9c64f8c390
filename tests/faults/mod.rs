//! Fault injection (issue 6, point 4) against real servers started by the harness: an sshd host that crashes
//! while its runs are in flight, a host that drops every packet (black hole), listeners that accept and never
//! finish a handshake (no task or socket may leak per run), plugins that kill the shell running them, plugins
//! that leave daemons behind, and plugins that write without end. Over SSH (session shells) and, where the
//! runner differs, through the local transport (the runner program, as for `sudo -n` and SSM).
//!
//! The plugins run on this machine (loopback sshd), so what a run leaves behind is found with a `/proc` scan for
//! a marker in the command line (`processes_left`).

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rune::orchestrator::Orchestrator;
use rune::results::Status;

use crate::support::sshd::SilentListener;
use crate::{fleet, orchestrator, orchestrator_with, processes_left, processes_matching, request, run};

/// Bound on waiting for something that happens within a second or two when things work.
const PATIENCE: Duration = Duration::from_secs(20);

/// A marker for process names, unique to this test process and `what`.
fn marker(what: &str) -> String {
    format!("{what}-{}", std::process::id())
}

/// An orchestrator whose only host, `localhost`, is this machine through the local transport (the runner).
fn local_orchestrator() -> Orchestrator {
    orchestrator_with("hosts:\n  localhost:\n    transport: local\n")
}

async fn run_on(orch: &Orchestrator, host: &str, action: &str, args: &[(&str, &str)]) -> rune::results::ResultEnvelope {
    let mut results = run(orch, request(action, &[host], args)).await;
    assert_eq!(results.len(), 1, "one host, one result");
    results.remove(0)
}

/// Polls `check` until it holds or `PATIENCE` runs out; false then.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// A private dir the test user (`runetest`, who runs the plugins over SSH) can write a ledger into.
fn ledger_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.path().display()));
    dir
}

/// Peak resident memory of this test process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_else(|e| panic!("/proc/self/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/self/status"))
}

/// Open file descriptors of this process that are TCP sockets whose far end is `port` on loopback. The whole
/// `/proc/self/fd` count is no measure here: the other tests of this binary run at the same time, in this
/// process, opening and closing their own descriptors.
fn sockets_to(port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let (Some(remote), Some(inode)) = (fields.get(2), fields.get(9)) else { continue };
            let remote_port = remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let fds = std::fs::read_dir("/proc/self/fd").unwrap_or_else(|e| panic!("/proc/self/fd: {e}"));
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| inodes.contains(&target.to_string_lossy().into_owned()))
        .count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

// ---- 1. sshd killed mid-run ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_crashing_mid_run_fails_that_host_alone_and_the_pool_reconnects_after_restart() {
    let mut fleet = fleet(3);
    let orch = orchestrator(&fleet);
    let marker = marker("crash");
    let mut req = request("slow-marked", &[], &[("marker", &marker), ("seconds", "4")]);
    req.groups = vec!["fleet".into()];
    let started = Instant::now();
    let crash = async {
        // All three runs in flight (each host's plugin is sleeping), then host-00 dies whole.
        let in_flight =
            eventually(|| (0..3).all(|i| !processes_matching(&format!("rune-slow-{marker}-host-0{i}")).is_empty()))
                .await;
        assert!(in_flight, "the runs never got going");
        fleet.crash_host(0);
    };
    let (results, ()) = tokio::join!(run(&orch, req), crash);
    let elapsed = started.elapsed();
    assert_eq!(results.len(), 3);
    let crashed = &results[0];
    assert!(matches!(crashed.status, Status::Unreachable | Status::Error), "host-00 crashed mid-run: {crashed:?}");
    let error = crashed.error.as_deref().unwrap_or("");
    assert!(error.contains("connection lost while the plugin ran"), "a clear error: {crashed:?}");
    assert!(crashed.output.is_none(), "{crashed:?}");
    for r in &results[1..] {
        assert_eq!(r.status, Status::Ok, "the other hosts are unaffected: {r:?}");
    }
    // The plugin's timeout is 30 s: the failed host must not be waited for that long.
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let left = processes_left(&format!("rune-slow-{marker}-host-00"));
    assert!(left.is_empty(), "the crashed host's plugin survived:\n{left}");

    fleet.restart_host(0);
    let mut again = request("slow-marked", &[], &[("marker", &marker), ("seconds", "0")]);
    again.groups = vec!["fleet".into()];
    for r in run(&orch, again).await {
        assert_eq!(r.status, Status::Ok, "after the restart every host answers: {r:?}");
    }
    assert_eq!(orch.ssh().open_connections().await, 3, "the dead connection was replaced");
}

// ---- 2. black hole, silent and stalling hosts: bounded, and nothing leaks per run ------------------------

/// A loopback port whose SYNs go unanswered, like a host behind a firewall that drops packets: a listener with
/// backlog 0 whose accept queue is full (one handshake completed and never accepted). Linux then drops every
/// further SYN (`net.ipv4.tcp_abort_on_overflow = 0`, the default; 1 would answer with a reset), and the client
/// retransmits until it gives up. No privileges and no firewall rule needed, nothing outside this process.
struct BlackHole {
    listener: TcpListener,
    /// Connections that filled the queue; held until the black hole is dropped.
    _queued: Vec<TcpStream>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let abort = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_abort_on_overflow").unwrap_or_default();
        assert_eq!(abort.trim(), "0", "net.ipv4.tcp_abort_on_overflow must be 0 for a local black hole");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        // SAFETY: listen(2) on a socket we own; a second listen on a listening socket only changes its backlog.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(rc, 0, "listen(fd, 0): {}", std::io::Error::last_os_error());
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        let mut queued = Vec::new();
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(stream) => queued.push(stream),
                Err(e) if e.kind() == ErrorKind::TimedOut && !queued.is_empty() => break,
                Err(e) => panic!("filling the black hole's accept queue: {e} after {} connections", queued.len()),
            }
            assert!(queued.len() < 16, "the accept queue never filled: SYNs are not being dropped here");
        }
        BlackHole { listener, _queued: queued }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("local_addr: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_and_mute_hosts_are_unreachable_within_the_connect_timeout_and_leak_nothing() {
    let fleet = fleet(1);
    let hole = BlackHole::start();
    // Accepts and says nothing; sends an SSH banner and then nothing (russh has started its session task).
    let silent = [SilentListener::start(), SilentListener::start()];
    let stalling =
        [SilentListener::speaking(b"SSH-2.0-OpenSSH_9.2 stalls\r\n"), SilentListener::speaking(b"SSH-2.0-x\r\n")];
    let healthy = fleet.host(0);
    let mut inventory = format!(
        "defaults:\n  user: {}\n  key: {}\n  known_hosts: {}\n  connect_timeout_s: 1\nhosts:\n  healthy:\n    address: 127.0.0.1\n    port: {}\n  hole:\n    address: 127.0.0.1\n    port: {}\n",
        fleet.user(),
        fleet.client_key().display(),
        fleet.known_hosts().display(),
        healthy.port,
        hole.port()
    );
    let mute: Vec<(String, u16)> = silent
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("silent-{i}"), l.port()))
        .chain(stalling.iter().enumerate().map(|(i, l)| (format!("stalling-{i}"), l.port())))
        .collect();
    for (name, port) in &mute {
        inventory.push_str(&format!("  {name}:\n    address: 127.0.0.1\n    port: {port}\n"));
    }
    let orch = orchestrator_with(&inventory);
    // The healthy host's pooled connection (and its task) is part of the baseline.
    assert_eq!(run_on(&orch, "healthy", "noop", &[]).await.status, Status::Ok);
    let tasks_before = alive_tasks();
    let ports: Vec<u16> = std::iter::once(hole.port()).chain(mute.iter().map(|(_, p)| *p)).collect();
    let sockets_before: Vec<usize> = ports.iter().map(|p| sockets_to(*p)).collect();

    let mut hosts = vec!["healthy", "hole"];
    hosts.extend(mute.iter().map(|(n, _)| n.as_str()));
    // Five rounds, every host at once: 5 black-hole runs, 20 runs against mute listeners.
    for round in 0..5 {
        let results = run(&orch, request("noop", &hosts, &[])).await;
        assert_eq!(results.len(), hosts.len());
        for r in &results {
            if r.host == "healthy" {
                assert_eq!(r.status, Status::Ok, "round {round}: {r:?}");
                continue;
            }
            assert_eq!(r.status, Status::Unreachable, "round {round}: {r:?}");
            assert!(r.error.as_deref().unwrap_or("").contains("within 1s"), "round {round}: {r:?}");
            // connect_timeout_s is 1: an upper bound of 4x, for a loaded machine.
            assert!(r.duration_ms < 4_000, "round {round}: {} took {} ms", r.host, r.duration_ms);
        }
    }
    let settled = eventually(|| alive_tasks() <= tasks_before).await;
    assert!(settled, "tokio tasks leaked: {} alive, {tasks_before} before the runs", alive_tasks());
    for (port, before) in ports.iter().zip(&sockets_before) {
        let settled = eventually(|| sockets_to(*port) <= *before).await;
        assert!(settled, "sockets to port {port} leaked: {} open, {before} before", sockets_to(*port));
    }
    assert_eq!(orch.ssh().open_connections().await, 1, "only the healthy host's connection is pooled");
    for (i, l) in silent.iter().chain(&stalling).enumerate() {
        assert_eq!(l.accepted(), 5, "mute listener {i} saw one connection per round");
    }
}

// ---- 3. a plugin that kills the shell running it ---------------------------------------------------------

/// Runs `kill-own-shell` with `target` on `host` and checks the result, that nothing of it is left running and
/// that the next run on the host works and its private dir is gone.
async fn kill_own_shell(orch: &Orchestrator, host: &str, target: &str, expect: &str) {
    let ledgers = ledger_dir();
    let ledger = ledgers.path().join("dir");
    let marker = marker(&format!("ks-{target}"));
    let args = [("marker", marker.as_str()), ("target", target), ("ledger", &ledger.display().to_string())];
    let r = run_on(orch, host, "kill-own-shell", &args).await;
    let context = format!("{host}, target {target}");
    assert_eq!(r.status, Status::Error, "{context}: {r:?}");
    assert!(r.error.as_deref().unwrap_or("").contains(expect), "{context}: expected `{expect}`: {r:?}");
    // Far below the plugin's 30 s timeout: the end of the shell is noticed, not waited out.
    assert!(r.duration_ms < 20_000, "{context}: took {} ms", r.duration_ms);
    let left = processes_left(&format!("rune-orphan-{marker}"));
    assert!(left.is_empty(), "{context}: the plugin's child survived:\n{left}");
    let run_dir = std::fs::read_to_string(&ledger).unwrap_or_else(|e| panic!("{context}: ledger: {e}"));
    let run_dir = Path::new(run_dir.trim());
    let next = run_on(orch, host, "noop", &[]).await;
    assert_eq!(next.status, Status::Ok, "{context}: the next run works: {next:?}");
    assert!(eventually(|| !run_dir.exists()).await, "{context}: {} was not swept", run_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_killing_its_session_shell_is_an_error_and_leaves_nothing_over_ssh() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    // The session shell dies; sshd reports its signal.
    kill_own_shell(&orch, "host-00", "session", "session shell running the plugin was killed").await;
    // $PPID of a session shell is sshd's process of the connection: the whole connection goes.
    kill_own_shell(&orch, "host-00", "parent", "connection lost while the plugin ran").await;
    assert_eq!(orch.ssh().open_connections().await, 1, "the pool reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_killing_its_runner_is_an_error_and_leaves_nothing_locally() {
    let orch = local_orchestrator();
    kill_own_shell(&orch, "localhost", "session", "the runner ended without an exit code").await;
    // $PPID under the runner is `timeout`.
    kill_own_shell(&orch, "localhost", "parent", "killed by signal 9").await;
}

// ---- 4. a plugin that leaves daemons behind --------------------------------------------------------------

/// Runs `daemonize` on `host` (ends well, then hangs into its timeout) and checks that none of its daemons
/// survive and that the next run works.
async fn daemons_are_killed(orch: &Orchestrator, host: &str) {
    let marker = marker(&format!("dm-{host}"));
    let r = run_on(orch, host, "daemonize", &[("marker", &marker)]).await;
    assert_eq!(r.status, Status::Ok, "{host}: the plugin's own result stands: {r:?}");
    assert!(r.stderr_tail.contains("killed 4 process(es) the plugin left running"), "{host}: reported: {r:?}");
    let left = processes_left(&format!("rune-daemon-{marker}"));
    assert!(left.is_empty(), "{host}: daemons survived a run that ended well:\n{left}");

    let mut req = request("daemonize", &[host], &[("marker", &marker), ("hang", "true")]);
    req.timeout = Some(Duration::from_secs(2));
    let r = run(orch, req).await.remove(0);
    assert_eq!(r.status, Status::Timeout, "{host}: {r:?}");
    let left = processes_left(&format!("rune-daemon-{marker}"));
    assert!(left.is_empty(), "{host}: daemons survived a timeout:\n{left}");

    let next = run_on(orch, host, "noop", &[]).await;
    assert_eq!(next.status, Status::Ok, "{host}: {next:?}");
    assert_eq!(next.stderr_tail, "", "{host}: nothing left to report: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_a_plugin_leaves_are_killed_after_its_run_over_ssh() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    daemons_are_killed(&orch, "host-00").await;
    assert_eq!(orch.ssh().open_connections().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_a_plugin_leaves_are_killed_after_its_run_locally() {
    daemons_are_killed(&local_orchestrator(), "localhost").await;
}

// ---- 5. a plugin that writes gigabytes -------------------------------------------------------------------

/// Runs `gigabytes` on `host` for both streams: bounded results, bounded memory here, nothing left running.
async fn floods_are_bounded(orch: &Orchestrator, host: &str) {
    let peak_before = peak_rss_kib();
    for (stream, status, error) in
        [("stderr", Status::Error, "stderr passed"), ("stdout", Status::ProtocolError, "stdout passed")]
    {
        let marker = marker(&format!("gb-{stream}"));
        let r = run_on(orch, host, "gigabytes", &[("marker", &marker), ("stream", stream)]).await;
        let context = format!("{host}, {stream}");
        assert_eq!(r.status, status, "{context}: {r:?}");
        assert!(r.error.as_deref().unwrap_or("").contains(error), "{context}: {r:?}");
        assert_eq!(r.truncated, stream == "stdout", "{context}: {r:?}");
        assert!(r.output.is_none(), "{context}");
        // 8 KiB of the plugin's stderr, and RUNE's own notes.
        assert!(r.stderr_tail.len() <= 8 * 1024 + 512, "{context}: stderr_tail of {} bytes", r.stderr_tail.len());
        let left = processes_left(&format!("rune-flood-{marker}"));
        assert!(left.is_empty(), "{context}: the writer survived:\n{left}");
        let next = run_on(orch, host, "noop", &[]).await;
        assert_eq!(next.status, Status::Ok, "{context}: {next:?}");
    }
    let growth_mib = peak_rss_kib().saturating_sub(peak_before) / 1024;
    assert!(growth_mib < 256, "{host}: this process's peak RSS grew by {growth_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_cut_with_bounded_memory_over_ssh() {
    let fleet = fleet(1);
    floods_are_bounded(&orchestrator(&fleet), "host-00").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_cut_with_bounded_memory_locally() {
    floods_are_bounded(&local_orchestrator(), "localhost").await;
}

/// Through SSM (the test endpoint runs the agent's commands on this machine, as root): the wrapper starts the
/// runner, whose sweep is the local transport's. The `rune` binary, as an operator would run it.
#[test]
fn daemons_a_plugin_leaves_are_killed_after_its_run_through_ssm() {
    const INSTANCE: &str = "i-0123456789abcdef0";
    let endpoint = crate::support::ssm::SsmEndpoint::start(&[INSTANCE]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let inventory = format!("hosts:\n  app-1:\n    transport: ssm\n    ssm: {{ instance_id: {INSTANCE} }}\n");
    std::fs::write(dir.path().join("inventory.yaml"), inventory).unwrap_or_else(|e| panic!("inventory: {e}"));
    let env = crate::support::moto::aws_env(&endpoint.url());
    let root = env!("CARGO_MANIFEST_DIR");
    let plugins = format!("{root}/plugins:{root}/tests/fixtures/plugins");
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.push(("RUNE_PLUGINS_DIR", &plugins));
    let marker = marker("dm-ssm");
    let marker_arg = format!("marker={marker}");
    for (hang, status) in [(false, "ok"), (true, "timeout")] {
        let hang_arg = format!("hang={hang}");
        let args = [
            "run",
            "daemonize",
            "--host",
            "app-1",
            "--inventory",
            "inventory.yaml",
            "--output",
            "json",
            "--arg",
            &marker_arg,
            "--arg",
            &hang_arg,
            "--timeout",
            "3s",
        ];
        let out = crate::support::rune(&args, dir.path(), &vars);
        let all = crate::support::text(&out);
        let envelope: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(envelope["status"], status, "hang {hang}: {all}");
        assert_eq!(envelope["transport"], "ssm", "{all}");
        if !hang {
            let tail = envelope["stderr_tail"].as_str().unwrap_or("");
            assert!(tail.contains("killed 4 process(es) the plugin left running"), "reported: {all}");
        }
        let left = processes_left(&format!("rune-daemon-{marker}"));
        assert!(left.is_empty(), "hang {hang}: daemons survived a run through SSM:\n{left}");
    }
}
