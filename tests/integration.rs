//! Integration tests against real OpenSSH sshd daemons on loopback (started by `support::sshd`), the local
//! transport, and the KV gates against a real nats-server (`support::nats`, tests in `nats_kv`). One binary: every
//! test starts the servers it needs and they die with it (Drop).

mod audit;
mod bridge_nats;
mod bridge_ssh;
mod cli_config;
mod cli_rules;
mod cli_serve;
mod deploy;
mod faults;
mod hostile;
mod nats_kv;
mod nats_permissions;
mod plugin_lint;
mod plugin_test;
mod soak;
mod ssm_endpoint;
mod ssm_moto;
mod ssm_transport;
mod sudo_installed;
mod support;
mod webhook_listener;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rune::bpcs::RawArg;
use rune::inventory::Inventory;
use rune::orchestrator::{Orchestrator, RunRequest};
use rune::plugins::Registry;
use rune::results::{ResultEnvelope, Status};
use rune::transport::ssh::{SshSettings, SshTransport};
use serde_json::{Value, json};
use support::sshd::{FleetOptions, LoginUser, SshdFleet};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn plugin_dirs() -> Vec<PathBuf> {
    vec![repo().join("plugins"), repo().join("tests/fixtures/plugins")]
}

/// Inventory text for a fleet: host-00.. on their loopback ports, with the fleet's key and known_hosts.
fn inventory_yaml(fleet: &SshdFleet, known_hosts: &Path, extra: &str) -> String {
    let mut s = format!(
        "defaults:\n  transport: ssh\n  user: {}\n  key: {}\n  known_hosts: {}\n  connect_timeout_s: 5\nhosts:\n",
        fleet.user(),
        fleet.client_key().display(),
        known_hosts.display()
    );
    for h in fleet.hosts() {
        s.push_str(&format!(
            "  {}:\n    address: {}\n    port: {}\n    groups: [fleet]\n{extra}",
            h.name, h.addr, h.port
        ));
    }
    s
}

fn orchestrator_with(inventory: &str) -> Orchestrator {
    let inventory = Inventory::parse(inventory, "test inventory", None).expect("test inventory is valid");
    Orchestrator::new(Arc::new(Registry::load(&plugin_dirs())), Arc::new(inventory), SshTransport::default())
}

fn orchestrator(fleet: &SshdFleet) -> Orchestrator {
    orchestrator_with(&inventory_yaml(fleet, fleet.known_hosts(), ""))
}

fn request(action: &str, hosts: &[&str], args: &[(&str, &str)]) -> RunRequest {
    RunRequest {
        action: action.into(),
        args: args.iter().map(|(k, v)| ((*k).to_owned(), RawArg::Text((*v).to_owned()))).collect::<BTreeMap<_, _>>(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        operator: "tester".into(),
        trigger: json!({"source": "test"}),
        ..Default::default()
    }
}

async fn run(orch: &Orchestrator, req: RunRequest) -> Vec<ResultEnvelope> {
    let plan = orch.plan(&req).expect("request is valid");
    let mut results = orch.run_all(plan, 16).await;
    results.sort_by(|a, b| a.host.cmp(&b.host));
    results
}

async fn run_one(orch: &Orchestrator, action: &str, args: &[(&str, &str)]) -> ResultEnvelope {
    let mut r = run(orch, request(action, &["host-00"], args)).await;
    assert_eq!(r.len(), 1);
    r.remove(0)
}

fn data(e: &ResultEnvelope) -> &Value {
    e.output.as_ref().and_then(|o| o.get("data")).unwrap_or(&Value::Null)
}

/// Asserts a run ended with `status` and an `error` that mentions `text` (`context` names the case).
fn expect_failure(r: &ResultEnvelope, status: Status, text: &str, context: &str) {
    assert_eq!(r.status, status, "{context}: {r:?}");
    assert!(r.error.as_deref().unwrap_or("").contains(text), "{context}: {r:?}");
}

fn fleet(n: usize) -> SshdFleet {
    support::sshd::ensure_prerequisites();
    SshdFleet::start(n, &FleetOptions::default())
}

/// Values that must reach the plugin as data and execute nothing.
fn hostile_values(canary: &Path) -> Vec<String> {
    let c = canary.display();
    vec![
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("'; touch {c}; echo '"),
        format!("\"; touch {c}; echo \""),
        format!("$(touch {c})\n\n"),
        format!("a\nb\r\nc\ttab \\ backslash \\n not-a-newline ${{HOME}} $HOME %s %n"),
        "non-ASCII: é ü 漢字 🚀 \u{1}\u{1f}".to_owned(),
        "   leading and trailing spaces   ".to_owned(),
        // Regression: placeholders of the runner template inside data must stay data.
        format!("@ENV_VARS@ $(touch {c}) @RUN_ID@ x@TIMEOUT@y @PUT_FILES@ @NOPE@ @"),
        String::new(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_returns_hostile_messages_byte_for_byte_over_ssh() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    let dir = tempfile::tempdir().expect("tempdir");
    let canary = dir.path().join("pwned");
    for message in hostile_values(&canary) {
        let r = run_one(&orch, "noop", &[("message", &message)]).await;
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!(data(&r)["message"], Value::String(message.clone()), "message must round-trip byte for byte");
        assert_eq!(r.transport.to_string(), "ssh");
    }
    assert!(!canary.exists(), "an argument value was executed by a shell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_dirs_of_killed_runners_are_swept_by_the_next_run() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    // A run dir as a SIGKILLed runner leaves it: owned by the login user, its pid long gone.
    let mut child = Command::new("true").spawn().expect("true runs");
    let dead_pid = child.id();
    child.wait().expect("true exits");
    let stale = PathBuf::from(format!("/tmp/rune-stale-test-{}", std::process::id()));
    let fresh = PathBuf::from(format!("/tmp/rune-starting-test-{}", std::process::id()));
    for dir in [&stale, &fresh] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(stale.join("pid"), format!("{dead_pid}\n")).expect("pid file");
    let uid = Command::new("id").args(["-u", fleet.user()]).output().expect("id");
    let uid: u32 = String::from_utf8_lossy(&uid.stdout).trim().parse().expect("uid");
    for path in [stale.clone(), stale.join("pid"), fresh.clone()] {
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).expect("chown");
    }
    let r = run_one(&orch, "noop", &[]).await;
    assert_eq!(r.status, Status::Ok, "{r:?}");
    let stale_left = stale.exists();
    let fresh_left = fresh.exists();
    let _ = std::fs::remove_dir_all(&stale);
    let _ = std::fs::remove_dir_all(&fresh);
    assert!(!stale_left, "the stale run dir was swept");
    assert!(fresh_left, "a dir without a pid file (a run just starting) is left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_from_the_hosts_shell_start_up_does_not_break_runs() {
    support::sshd::ensure_prerequisites();
    let dir = tempfile::tempdir().expect("tempdir");
    let noise = dir.path().join("noise.sh");
    std::fs::write(&noise, "echo 'Welcome to prod! {\"not\": \"json\"}'\necho 'stderr noise' >&2\n").expect("noise");
    let mut perms = std::fs::metadata(dir.path()).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).expect("chmod");
    let opts =
        FleetOptions { extra_config: vec![format!("SetEnv BASH_ENV={}", noise.display())], ..FleetOptions::default() };
    let fleet = SshdFleet::start(1, &opts);
    let orch = orchestrator(&fleet);
    let r = run_one(&orch, "noop", &[("message", "clean")]).await;
    assert_eq!(r.status, Status::Ok, "{r:?}");
    assert_eq!(data(&r)["message"], "clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_arguments_and_stdin_input_reach_the_plugin() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    // echo-args.sh carries runner placeholders in its body: they must not be substituted.
    let r = run_one(&orch, "echo-args", &[("text", "x y"), ("count", "42"), ("flag", "true")]).await;
    assert_eq!(r.status, Status::Ok, "{r:?}");
    let d = data(&r);
    assert_eq!(d["text"], "x y");
    assert_eq!(d["count"], 42);
    assert_eq!(d["flag"], true);
    assert!(d["stdin_bytes"].as_u64().unwrap_or(0) > 100, "input JSON on stdin: {d}");
    // Over SSH the run goes to a session shell: the private dir is the shell's, its `work` emptied for each run.
    let cwd = d["cwd"].as_str().unwrap_or("");
    assert!(cwd.contains("/rune-s-") && cwd.ends_with("/work"), "runs in its private dir: {d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_sharing_a_session_shell_are_isolated_and_survive_a_timeout() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    let first = run_one(&orch, "session-probe", &[("extra", "one")]).await;
    assert_eq!(first.status, Status::Ok, "{first:?}");
    assert_eq!(data(&first)["extra"], "one");
    // The same shell serves the next runs: nothing of the previous run or of the shell itself is left for them.
    let second = run_one(&orch, "session-probe", &[]).await;
    assert_eq!(second.status, Status::Ok, "{second:?}");
    let d = data(&second);
    assert_eq!(d["extra"], "<unset>", "an argument of the previous run leaked: {d}");
    assert_eq!(d["leaked"], "", "session shell variables (the nonce among them) reached the plugin: {d}");
    assert_eq!(d["files_at_start"], 0, "the working dir was not emptied between runs: {d}");
    assert!(!d["options"].as_str().unwrap_or("m").contains('m'), "job control leaked into the plugin: {d}");
    // A run that times out on the shell does not take the shell (or its watchdog) down with it.
    let mut req = request("hang", &["host-00"], &[("marker", "session-shell")]);
    req.timeout = Some(Duration::from_secs(1));
    let hung = run(&orch, req).await.remove(0);
    expect_failure(&hung, Status::Timeout, "timed out", "hang on a session shell");
    let after = run_one(&orch, "session-probe", &[("extra", "three")]).await;
    assert_eq!(after.status, Status::Ok, "{after:?}");
    assert_eq!(data(&after)["extra"], "three");
    assert_eq!(orch.ssh().open_connections().await, 1, "one pooled connection served every run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_shell_job_notices_stay_out_of_the_runs_stderr() {
    // Regression: the session shell starts each run as a job (`set -m`: its own process group), and bash reported
    // the finished job ("[2]+  Done  ( exec 9>&- ... )", the session shell's own code) on the shell's stderr, which
    // is the run's: every result over SSH carried it in `stderr_tail`.
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    for message in ["first run, new session shell", "second run, same shell"] {
        let r = run_one(&orch, "noop", &[("message", message)]).await;
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!(r.stderr_tail, "", "noop writes nothing to stderr: {r:?}");
    }
    // A run the watchdog kills: its tail says why and carries no job notice ("Killed", "Terminated"), nor does
    // the next run's.
    let mut req = request("hang", &["host-00"], &[("marker", "job-notice")]);
    req.timeout = Some(Duration::from_secs(1));
    let hung = run(&orch, req).await.remove(0);
    expect_failure(&hung, Status::Timeout, "timed out", "hang on a session shell");
    assert!(!hung.stderr_tail.contains("]+ "), "a job notice in the timed-out run's stderr: {hung:?}");
    let after = run_one(&orch, "noop", &[]).await;
    assert_eq!(after.status, Status::Ok, "{after:?}");
    assert_eq!(after.stderr_tail, "", "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fans_out_to_many_hosts_and_reuses_pooled_connections() {
    let fleet = fleet(12);
    let orch = orchestrator(&fleet);
    let mut req = request("noop", &[], &[("message", "fan-out")]);
    req.groups = vec!["fleet".into()];
    req.correlation_id = Some("corr-fanout-1".into());
    let plan = orch.plan(&req).expect("valid");
    let results = orch.run_all(plan, 4).await;
    assert_eq!(results.len(), 12);
    let mut run_ids: Vec<&str> = results.iter().map(|r| r.run_id.as_str()).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    assert_eq!(run_ids.len(), 12, "every run has its own id");
    for r in &results {
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!(r.correlation_id, "corr-fanout-1");
        assert_eq!(r.operator, "tester");
    }
    assert_eq!(orch.ssh().open_connections().await, 12);
    // Second round on the same orchestrator: same connections, no new handshakes.
    let plan = orch.plan(&req).expect("valid");
    let again = orch.run_all(plan, 12).await;
    assert!(again.iter().all(|r| r.status == Status::Ok));
    assert_eq!(orch.ssh().open_connections().await, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_key_is_refused() {
    let fleet = fleet(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("known_hosts");
    fleet.write_empty_known_hosts(&empty);
    let orch = orchestrator_with(&inventory_yaml(&fleet, &empty, ""));
    let r = run_one(&orch, "noop", &[]).await;
    expect_failure(&r, Status::HostKeyRejected, "is not in", "");
    assert!(r.output.is_none());
    // A known_hosts file that is missing is said to be missing, not taken as empty.
    let missing = dir.path().join("no-such-known_hosts");
    let orch = orchestrator_with(&inventory_yaml(&fleet, &missing, ""));
    let r = run_one(&orch, "noop", &[]).await;
    expect_failure(&r, Status::HostKeyRejected, "cannot read it", "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_even_with_accept_new() {
    let fleet = fleet(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("known_hosts");
    fleet.write_known_hosts_with_wrong_key(&wrong);
    for extra in ["", "    host_key_policy: accept-new\n"] {
        let orch = orchestrator_with(&inventory_yaml(&fleet, &wrong, extra));
        let r = run_one(&orch, "noop", &[]).await;
        expect_failure(&r, Status::HostKeyRejected, "does not match", "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_records_an_unknown_key_only_when_opted_in() {
    let fleet = fleet(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let known = dir.path().join("known_hosts");
    fleet.write_empty_known_hosts(&known);
    let orch = orchestrator_with(&inventory_yaml(&fleet, &known, "    host_key_policy: accept-new\n"));
    let r = run_one(&orch, "noop", &[]).await;
    assert_eq!(r.status, Status::Ok, "{r:?}");
    let recorded = std::fs::read_to_string(&known).expect("known_hosts written");
    let key_b64 = fleet.hosts()[0].host_public_key.split_whitespace().nth(1).expect("key text").to_owned();
    assert!(recorded.contains(&key_b64), "the host key was recorded: {recorded}");
    // Now strict checking accepts the learnt key.
    let strict = orchestrator_with(&inventory_yaml(&fleet, &known, ""));
    assert_eq!(run_one(&strict, "noop", &[]).await.status, Status::Ok);

    // A host already known by a key of another type is not "new": accept-new must not add the presented key.
    let other = dir.path().join("ecdsa");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ecdsa", "-N", "", "-f"]).arg(&other).status();
    assert!(made.is_ok_and(|s| s.success()));
    let ecdsa_pub = std::fs::read_to_string(other.with_extension("pub")).expect("ecdsa pub");
    let ecdsa_only = dir.path().join("known_hosts_ecdsa");
    let h = &fleet.hosts()[0];
    let fields: Vec<&str> = ecdsa_pub.split_whitespace().take(2).collect();
    std::fs::write(&ecdsa_only, format!("[{}]:{} {}\n", h.addr, h.port, fields.join(" "))).expect("write");
    let orch = orchestrator_with(&inventory_yaml(&fleet, &ecdsa_only, "    host_key_policy: accept-new\n"));
    let r = run_one(&orch, "noop", &[]).await;
    expect_failure(&r, Status::HostKeyRejected, "another type", "");
    let after = std::fs::read_to_string(&ecdsa_only).expect("read");
    assert_eq!(after.lines().count(), 1, "nothing was added: {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_key_is_auth_failed() {
    let fleet = fleet(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("other_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let inv = inventory_yaml(&fleet, fleet.known_hosts(), &format!("    key: {}\n", key.display()));
    let orch = orchestrator_with(&inv);
    let r = run_one(&orch, "noop", &[]).await;
    assert_eq!(r.status, Status::AuthFailed, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_a_key_held_by_an_ssh_agent() {
    let fleet = fleet(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).spawn().expect("ssh-agent starts");
    for _ in 0..50 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let added =
        Command::new("ssh-add").arg(fleet.client_key()).env("SSH_AUTH_SOCK", &socket).output().expect("ssh-add");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    // The configured key file does not exist: only the agent can authenticate.
    let inv = inventory_yaml(&fleet, fleet.known_hosts(), "").replace(
        &format!("key: {}", fleet.client_key().display()),
        &format!("key: {}", dir.path().join("absent").display()),
    );
    let inventory = Inventory::parse(&inv, "test inventory", None).expect("valid");
    let settings = SshSettings { agent_socket: Some(socket.clone()), ..SshSettings::default() };
    let orch =
        Orchestrator::new(Arc::new(Registry::load(&plugin_dirs())), Arc::new(inventory), SshTransport::new(settings));
    let r = run_one(&orch, "noop", &[]).await;
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(r.status, Status::Ok, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_unreachable_and_silent_port_times_out() {
    let fleet = fleet(1);
    let closed = support::sshd::closed_port();
    let silent = support::sshd::SilentListener::start();
    let inv = format!(
        "defaults:\n  user: {}\n  key: {}\n  known_hosts: {}\n  connect_timeout_s: 1\nhosts:\n  closed:\n    address: 127.0.0.1\n    port: {closed}\n  silent:\n    address: 127.0.0.1\n    port: {}\n",
        fleet.user(),
        fleet.client_key().display(),
        fleet.known_hosts().display(),
        silent.port()
    );
    let orch = orchestrator_with(&inv);
    let results = run(&orch, request("noop", &["closed", "silent"], &[])).await;
    for r in &results {
        assert_eq!(r.status, Status::Unreachable, "{r:?}");
    }
    let silent_result = results.iter().find(|r| r.host == "silent").expect("silent result");
    assert!(silent_result.error.as_deref().unwrap_or("").contains("within 1s"), "{silent_result:?}");
}

fn processes_matching(pattern: &str) -> String {
    let out = Command::new("pgrep").args(["-af", pattern]).output().expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes matching `pattern` still alive after up to 2 s of waiting (empty when all are gone).
fn processes_left(pattern: &str) -> String {
    let mut left = String::new();
    for _ in 0..20 {
        left = processes_matching(pattern);
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_plugin_times_out_and_its_process_tree_is_gone() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    for (action, prefix) in [("hang", "rune-hang-"), ("hang-nested", "rune-nested-")] {
        let marker = format!("m{}", std::process::id());
        let mut req = request(action, &["host-00"], &[("marker", &marker)]);
        req.timeout = Some(Duration::from_secs(2));
        let r = run(&orch, req).await.remove(0);
        assert_eq!(r.status, Status::Timeout, "{action}: {r:?}");
        // The runner's own timeout ended it (not the client-side deadline, whose message is "no answer within").
        assert!(r.error.as_deref().unwrap_or("").contains("process group was killed"), "{action}: {r:?}");
        // The plugin and its children ran on this machine (loopback sshd): none may survive.
        let left = processes_left(&format!("{prefix}.*{marker}"));
        assert!(left.is_empty(), "{action}: processes survived the timeout:\n{left}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_plugin_is_capped_and_marked_truncated() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    let r = run_one(&orch, "flood", &[]).await;
    assert_eq!(r.status, Status::ProtocolError, "{r:?}");
    assert!(r.truncated, "{r:?}");
    assert!(r.output.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_breaches_are_protocol_errors() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    for (action, expect) in [
        ("not-json", "not valid JSON"),
        ("no-output", "no JSON object"),
        ("two-json", "more than one JSON value"),
        ("exit-mismatch", "disagrees with status"),
    ] {
        let r = run_one(&orch, action, &[]).await;
        expect_failure(&r, Status::ProtocolError, expect, action);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_exit_codes_and_dry_run_changes_are_caught() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    let r = run_one(&orch, "reserved-exit", &[]).await;
    expect_failure(&r, Status::Error, "reserved for the runner", "");
    let mut req = request("dry-run-liar", &["host-00"], &[]);
    req.dry_run = true;
    let r = run(&orch, req).await.remove(0);
    expect_failure(&r, Status::ProtocolError, "dry run", "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_left_holding_stdout_does_not_turn_success_into_timeout() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    let marker = format!("k{}", std::process::id());
    let r = run_one(&orch, "lingering-child", &[("marker", &marker)]).await;
    let _ = Command::new("pkill").args(["-f", &format!("rune-linger-{marker}")]).status();
    assert_eq!(r.status, Status::Ok, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmet_requires_is_precondition_failed() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    let r = run_one(&orch, "needs-tool", &[]).await;
    expect_failure(&r, Status::PreconditionFailed, "rune-definitely-missing-tool", "");
}

/// A fleet logged in as root with stub systemctl/docker/nomad first on PATH, each host its own stub state.
fn stub_fleet() -> (SshdFleet, tempfile::TempDir) {
    support::sshd::ensure_prerequisites();
    let stubs = tempfile::tempdir().expect("tempdir");
    for name in ["systemctl", "docker", "nomad"] {
        let from = repo().join("plugins/tests/stubs").join(name);
        let to = stubs.path().join(name);
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    std::fs::create_dir_all(stubs.path().join("state")).expect("state dir");
    let opts =
        FleetOptions { user: LoginUser::Root, stub_path: Some(stubs.path().to_owned()), ..FleetOptions::default() };
    (SshdFleet::start(1, &opts), stubs)
}

fn calls(stubs: &Path) -> String {
    std::fs::read_to_string(stubs.join("state/calls.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_plugins_restart_verify_and_honour_dry_run() {
    let (fleet, stubs) = stub_fleet();
    let orch = orchestrator(&fleet);
    for (action, service) in [("restart-docker", "docker"), ("restart-nomad", "nomad")] {
        let mut req = request(action, &["host-00"], &[("verify_timeout", "5")]);
        req.dry_run = true;
        let r = run(&orch, req).await.remove(0);
        assert_eq!(r.status, Status::DryRun, "{action}: {r:?}");
        assert_eq!(r.output.as_ref().and_then(|o| o.get("changed")), Some(&Value::Bool(false)));
        assert!(!calls(stubs.path()).contains(&format!("restart -- {service}")), "dry run restarted {service}");

        let r = run_one(&orch, action, &[("verify_timeout", "5")]).await;
        assert_eq!(r.status, Status::Ok, "{action}: {r:?}");
        assert_eq!(r.output.as_ref().and_then(|o| o.get("changed")), Some(&Value::Bool(true)), "{r:?}");
        assert!(
            calls(stubs.path()).contains(&format!("restart -- {service}")),
            "{action} did not call systemctl restart"
        );
        assert!(data(&r).get("before").is_some() && data(&r).get("after").is_some(), "{r:?}");
    }
    // A service that never comes back healthy is an error, reported as such.
    std::fs::write(stubs.path().join("state/docker.unhealthy"), "").expect("mark unhealthy");
    let r = run_one(&orch, "restart-docker", &[("verify_timeout", "2")]).await;
    assert_eq!(r.status, Status::Error, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_plugin_without_root_or_sudo_is_refused_before_connecting() {
    let fleet = fleet(1);
    let orch = orchestrator(&fleet);
    let r = run_one(&orch, "restart-docker", &[]).await;
    expect_failure(&r, Status::PreconditionFailed, "needs root", "");
}

/// Grants the test user passwordless sudo for bash while alive; removes the grant on drop (also on panic).
struct SudoGrant(PathBuf);

impl SudoGrant {
    fn install() -> SudoGrant {
        let path = PathBuf::from("/etc/sudoers.d/rune-integration-test");
        let rule = format!("{} ALL=(root) NOPASSWD: /usr/bin/bash, /bin/bash\n", support::sshd::TEST_USER);
        std::fs::write(&path, rule).expect("write sudoers drop-in (tests run as root)");
        let mut perms = std::fs::metadata(&path).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o440);
        std::fs::set_permissions(&path, perms).expect("chmod 0440");
        let ok = Command::new("visudo").args(["-cf"]).arg(&path).output().map(|o| o.status.success()).unwrap_or(false);
        assert!(ok, "visudo rejected the test rule");
        SudoGrant(path)
    }
}

impl Drop for SudoGrant {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_plugin_runs_through_sudo_n_and_a_refusal_is_precondition_failed() {
    support::sshd::ensure_prerequisites();
    assert!(which("sudo"), "sudo is missing: scripts/test.sh installs it");
    let fleet = fleet(1);
    let inv = inventory_yaml(&fleet, fleet.known_hosts(), "    sudo: true\n");
    let orch = orchestrator_with(&inv);
    {
        let _grant = SudoGrant::install();
        let r = run_one(&orch, "whoami-root", &[]).await;
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!(data(&r)["uid"], 0, "ran as root through sudo -n: {r:?}");
    }
    let r = run_one(&orch, "whoami-root", &[]).await;
    expect_failure(&r, Status::PreconditionFailed, "sudo -n refused", "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_plugin_reports_missing_commands() {
    // Root login, stubs on PATH except nomad, which this machine does not have either.
    let (fleet, stubs) = stub_fleet();
    std::fs::remove_file(stubs.path().join("nomad")).expect("remove nomad stub");
    let orch = orchestrator(&fleet);
    let r = run_one(&orch, "restart-nomad", &[("verify_timeout", "1")]).await;
    if which("nomad") {
        eprintln!("nomad is installed on this machine; skipping the missing-command assertion");
    } else {
        expect_failure(&r, Status::PreconditionFailed, "nomad", "");
        assert!(!calls(stubs.path()).contains("restart"), "nothing may run when a required command is missing");
    }
}

fn which(cmd: &str) -> bool {
    Command::new("bash")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gather_logs_runs_over_ssh_and_respects_its_cap() {
    let (fleet, _stubs) = stub_fleet();
    let orch = orchestrator(&fleet);
    let r = run_one(&orch, "gather-logs", &[("since", "10m"), ("max_bytes", "4096")]).await;
    assert!(matches!(r.status, Status::Ok | Status::Warn), "{r:?}");
    let total = data(&r)["total_bytes"].as_u64().expect("total_bytes");
    assert!(total <= 4096, "cap respected: {total}");
    let refused = orch.plan(&request("gather-logs", &["host-00"], &[("since", "1h; reboot")]));
    assert!(refused.is_err(), "a pattern-breaking argument is refused before anything runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_recovers_when_sshd_comes_back() {
    let mut fleet = fleet(2);
    let orch = orchestrator(&fleet);
    let all = || {
        let mut r = request("noop", &[], &[]);
        r.groups = vec!["fleet".into()];
        r
    };
    assert!(run(&orch, all()).await.iter().all(|r| r.status == Status::Ok));
    fleet.kill_host(0);
    let results = run(&orch, all()).await;
    assert_eq!(results[0].status, Status::Unreachable, "{:?}", results[0]);
    assert_eq!(results[1].status, Status::Ok, "other hosts are unaffected: {:?}", results[1]);
    fleet.restart_host(0);
    assert!(run(&orch, all()).await.iter().all(|r| r.status == Status::Ok));
}

// ---- the `rune` binary: local transport, exit codes, refusals ----

fn rune(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rune"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUNE_INVENTORY")
        .env_remove("RUNE_PLUGINS_DIR")
        .env("USER", "cli-tester")
        .output()
        .expect("rune runs")
}

fn plugins_arg() -> String {
    plugin_dirs().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
}

#[test]
fn cli_runs_noop_on_localhost_with_the_embedded_inventory() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dirs = plugins_arg();
    let out = rune(
        &["run", "noop", "--host", "localhost", "--arg", "message=héllo\n", "--output", "json", "--plugins-dir", &dirs],
        cwd.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line per host: {text}");
    let v: Value = serde_json::from_str(lines[0]).expect("JSON line");
    for field in [
        "run_id",
        "correlation_id",
        "action",
        "plugin",
        "host",
        "transport",
        "started_at",
        "finished_at",
        "duration_ms",
        "status",
        "exit_code",
        "output",
        "stderr_tail",
        "truncated",
        "dry_run",
        "operator",
    ] {
        assert!(v.get(field).is_some(), "missing field {field}: {v}");
    }
    assert_eq!(v["status"], "ok");
    assert_eq!(v["transport"], "local");
    assert_eq!(v["operator"], "cli-tester");
    assert_eq!(v["plugin"]["name"], "noop");
    assert_eq!(v["plugin"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(v["output"]["data"]["message"], "héllo\n");
}

#[test]
fn cli_refuses_bad_input_with_exit_2_and_runs_nothing() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dirs = plugins_arg();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "noop", "--host", "evil.example.com"], "unknown host"),
        (vec!["run", "noop", "--host", "localhost", "--arg", "colour=red"], "unknown argument"),
        (vec!["run", "echo-args", "--host", "localhost"], "missing required argument"),
        (
            vec!["run", "echo-args", "--host", "localhost", "--arg", "text=x", "--arg", "count=many"],
            "expected an integer",
        ),
        (vec!["run", "gather-logs", "--host", "localhost", "--arg", "since=$(reboot)"], "pattern"),
        (vec!["run", "no-such-plugin", "--host", "localhost"], "unknown action"),
        (vec!["run", "noop"], "no target"),
        (vec!["run", "noop", "--host", "localhost", "--arg", "novalue"], "KEY=VALUE"),
        (vec!["run", "noop", "--host", "localhost", "--parallel", "18446744073709551615"], "--parallel"),
        (vec!["run", "restart-docker", "--host", "localhost", "--arg", "service=reboot.target"], "pattern"),
    ];
    for (args, expect) in cases {
        let mut full = args.clone();
        full.extend(["--plugins-dir", &dirs]);
        let out = rune(&full, cwd.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing may run");
        assert!(stderr.contains(expect), "{args:?}: expected `{expect}` in: {stderr}");
    }
}

#[test]
fn cli_local_flood_is_capped() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dirs = plugins_arg();
    let out = rune(&["run", "flood", "--host", "localhost", "--output", "json", "--plugins-dir", &dirs], cwd.path());
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["status"], "protocol_error", "{v}");
    assert_eq!(v["truncated"], true, "{v}");
}

#[test]
fn cli_exit_code_is_1_when_a_run_fails() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dirs = plugins_arg();
    let out = rune(&["run", "not-json", "--host", "localhost", "--output", "json", "--plugins-dir", &dirs], cwd.path());
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["status"], "protocol_error");
}

#[test]
fn cli_local_lingering_child_is_bounded() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dirs = plugins_arg();
    let marker = format!("c{}", std::process::id());
    let arg = format!("marker={marker}");
    let out = rune(
        &["run", "lingering-child", "--host", "localhost", "--arg", &arg, "--output", "json", "--plugins-dir", &dirs],
        cwd.path(),
    );
    let _ = Command::new("pkill").args(["-f", &format!("rune-linger-{marker}")]).status();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["status"], "ok", "{v}");
}

#[test]
fn cli_local_timeout_kills_the_process_tree() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dirs = plugins_arg();
    let marker = format!("l{}", std::process::id());
    let arg = format!("marker={marker}");
    for (action, prefix) in [("hang", "rune-hang-"), ("hang-nested", "rune-nested-")] {
        let args = [
            "run",
            action,
            "--host",
            "localhost",
            "--arg",
            &arg,
            "--timeout",
            "1s",
            "--output",
            "json",
            "--plugins-dir",
            &dirs,
        ];
        let out = rune(&args, cwd.path());
        assert_eq!(out.status.code(), Some(1), "{action}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(v["status"], "timeout", "{action}: {v}");
        let left = processes_left(&format!("{prefix}.*{marker}"));
        assert!(left.is_empty(), "{action}: processes survived:\n{left}");
    }
}

#[test]
fn cli_lists_actions_and_reports_broken_headers_with_file_and_line() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dirs = plugins_arg();
    let out = rune(&["list-actions", "--plugins-dir", &dirs], cwd.path());
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["noop", "gather-logs", "restart-docker", "restart-nomad"] {
        assert!(stdout.contains(name), "{name} listed: {stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken-header.sh:5"), "file and line of the bad header: {stderr}");

    let out = rune(&["list-actions", "--output", "json", "--plugins-dir", &dirs], cwd.path());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v["actions"].as_array().is_some_and(|a| a.iter().any(|p| p["name"] == "noop")));
    assert!(v["problems"].as_array().is_some_and(|a| !a.is_empty()));

    let out = rune(&["plugin-info", "restart-docker", "--output", "json", "--plugins-dir", &dirs], cwd.path());
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["plugin"]["class"], "remediation");
    assert_eq!(v["plugin"]["needs_root"], true);
    let out = rune(&["plugin-info", "nope", "--plugins-dir", &dirs], cwd.path());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_shipped_plugin_has_a_valid_header() {
    let registry = Registry::load(&[repo().join("plugins")]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    let names: Vec<&str> = registry.latest().map(|p| p.name.as_str()).collect();
    for expected in ["disk-usage", "gather-logs", "noop", "restart-docker", "restart-nomad"] {
        assert!(names.contains(&expected), "{expected} shipped: {names:?}");
    }
}
