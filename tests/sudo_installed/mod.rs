//! `sudo: installed` (docs/security.md, "Least-privilege deployment"): `rune plugin bundle` writes the installed
//! runner, the helpers, the root plugins and a sudoers drop-in with one line per plugin; the test installs them
//! on this machine as an operator would (root-owned files, the drop-in checked with `visudo -cf`) and runs the
//! plugins over a real sshd as the unprivileged test user. That user gets no `sudo bash`: only the bundled
//! plugins run as root, each only as the copy RUNE expects, with hostile argument values as data, and whatever
//! a root plugin leaves running is swept by the root runner.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rune::inventory::Inventory;
use rune::orchestrator::Orchestrator;
use rune::plugins::Registry;
use rune::results::Status;
use rune::transport::ssh::SshTransport;
use serde_json::Value;

use crate::support::sshd::TEST_USER;
use crate::{data, expect_failure, fleet, hostile_values, inventory_yaml, processes_left, repo, run_one, which};

const ROOT_ECHO: &str = r#"#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: root-echo
# version: 0.1.0
# description: Test fixture — needs root, returns its argument and uid through the helpers
# class: diagnostic
# needs_root: true
# timeout: 30
# args:
#   text:
#     type: string
#     required: true
# ---
. "$RUNE_LIB/bpcs.sh"
bpcs_finish ok "echoed" false "$(bpcs_obj text "$(bpcs_json_str "$RUNE_ARG_text")" uid "$EUID" lib "$(bpcs_json_str "$RUNE_LIB")")"
"#;

const ROOT_DAEMON: &str = r#"#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: root-daemon
# version: 0.1.0
# description: Test fixture — needs root, leaves a daemon in a session of its own, then reports ok or hangs
# class: diagnostic
# needs_root: true
# timeout: 2
# args:
#   marker:
#     type: string
#     required: true
#     pattern: "^[a-z0-9-]{1,64}$"
#   hang:
#     type: boolean
#     default: false
# ---
setsid -f bash -c 'exec -a "rune-daemon-$1-root" sleep 300' _ "$RUNE_ARG_marker" </dev/null >/dev/null 2>&1
if [ "$RUNE_ARG_hang" = true ]; then exec -a "rune-daemon-$RUNE_ARG_marker-parent" sleep 1000; fi
echo '{"bpcs":"0.1","status":"ok","summary":"daemon started","data":{},"changed":false}'
"#;

/// A root plugin that is not in the bundle: the user's sudo has no line for it.
const NOT_BUNDLED: &str = r#"#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: not-bundled
# version: 0.1.0
# description: Test fixture — needs root, never installed
# class: diagnostic
# needs_root: true
# timeout: 30
# ---
echo '{"bpcs":"0.1","status":"ok","summary":"ran","data":{},"changed":false}'
"#;

/// The bundle installed on this machine: root-owned files in `dir`, the sudoers drop-in in /etc/sudoers.d/.
/// Drop removes the drop-in (the dirs are temp dirs).
struct Installed {
    plugins: tempfile::TempDir,
    _bundle: tempfile::TempDir,
    dir: tempfile::TempDir,
    sudoers: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sudoers);
    }
}

impl Installed {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn plugin(&self, name: &str) -> PathBuf {
        self.path().join("plugins").join(format!("{name}.sh"))
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn sh(script: &str) -> std::process::Output {
    Command::new("bash").args(["-c", script]).output().unwrap_or_else(|e| panic!("bash -c {script}: {e}"))
}

/// Writes the test plugins, runs `rune plugin bundle` for three of them and installs the result.
fn install() -> Installed {
    let plugins = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for (name, text) in [("root-echo", ROOT_ECHO), ("root-daemon", ROOT_DAEMON), ("not-bundled", NOT_BUNDLED)] {
        write(&plugins.path().join(format!("{name}.sh")), text, 0o644);
    }
    let fixture = repo().join("tests/fixtures/plugins/whoami-root.sh");
    std::fs::copy(&fixture, plugins.path().join("whoami-root.sh")).unwrap_or_else(|e| panic!("copy fixture: {e}"));
    let lib = plugins.path().join("lib");
    std::fs::create_dir(&lib).unwrap_or_else(|e| panic!("mkdir lib: {e}"));
    std::fs::copy(repo().join("plugins/lib/bpcs.sh"), lib.join("bpcs.sh")).unwrap_or_else(|e| panic!("copy: {e}"));

    // The install dir: root-owned, readable by all (a temp dir is 0700), as `install -d -m 0755` makes it.
    let dir = tempfile::Builder::new().prefix("rune-installed-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
    let bundle = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out = bundle.path().join("b");
    let made = Command::new(env!("CARGO_BIN_EXE_rune"))
        .args(["plugin", "bundle", "whoami-root", "root-echo", "root-daemon", "--user", TEST_USER, "--output", "json"])
        .arg("--plugins-dir")
        .arg(plugins.path())
        .arg("--out")
        .arg(&out)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("rune plugin bundle: {e}"));
    assert!(made.status.success(), "rune plugin bundle: {}", String::from_utf8_lossy(&made.stderr));
    let report: Value = serde_json::from_slice(&made.stdout).unwrap_or_else(|e| panic!("bundle report: {e}"));
    assert_eq!(report["plugins"].as_array().map(Vec::len), Some(3), "{report}");

    // What the operator does (the commands `rune plugin bundle` prints).
    let (o, d) = (out.display(), dir.path().display());
    let copied = sh(&format!(
        "cp -R {o}/run {o}/lib {o}/plugins {d}/ && chown -R root:root {d} && cd / && sha256sum -c --quiet {o}/SHA256SUMS"
    ));
    assert!(copied.status.success(), "install: {}", String::from_utf8_lossy(&copied.stderr));
    let checked = Command::new("visudo").arg("-cf").arg(out.join("sudoers")).output().unwrap_or_else(|e| panic!("{e}"));
    assert!(checked.status.success(), "visudo -cf: {}", String::from_utf8_lossy(&checked.stdout));
    // Named after the install dir (one per test); no dot in the name: sudo skips drop-ins whose name holds one.
    let name = dir.path().file_name().unwrap_or_else(|| panic!("temp dir name")).to_string_lossy().into_owned();
    assert!(!name.contains('.'), "{name}");
    let sudoers = Path::new("/etc/sudoers.d").join(name);
    std::fs::copy(out.join("sudoers"), &sudoers).unwrap_or_else(|e| panic!("install the drop-in: {e}"));
    std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440)).unwrap_or_else(|e| panic!("{e}"));
    Installed { plugins, _bundle: bundle, dir, sudoers }
}

fn orchestrator(inventory: &str, installed: &Installed) -> Orchestrator {
    let inventory = Inventory::parse(inventory, "test inventory", None).unwrap_or_else(|e| panic!("inventory: {e:?}"));
    let registry = Registry::load(&[installed.plugins.path().to_owned()]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    Orchestrator::new(std::sync::Arc::new(registry), std::sync::Arc::new(inventory), SshTransport::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_root_plugins_run_through_their_own_sudoers_lines_and_nothing_else_does() {
    assert!(which("sudo") && which("visudo"), "sudo is missing: scripts/test.sh installs it");
    let fleet = fleet(1);
    let installed = install();
    let extra = format!("    sudo: installed\n    installed_dir: {}\n", installed.path().display());
    let orch = orchestrator(&inventory_yaml(&fleet, fleet.known_hosts(), &extra), &installed);

    let r = run_one(&orch, "whoami-root", &[]).await;
    assert_eq!(r.status, Status::Ok, "{r:?}");
    assert_eq!(data(&r)["uid"], 0, "ran as root through its sudoers line: {r:?}");

    // Hostile values reach the root plugin as data, byte for byte.
    let canary_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let canary = canary_dir.path().join("pwned");
    for text in hostile_values(&canary) {
        let r = run_one(&orch, "root-echo", &[("text", &text)]).await;
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!(data(&r)["text"], Value::String(text.clone()), "round trip");
        assert_eq!(data(&r)["uid"], 0);
        assert!(data(&r)["lib"].as_str().is_some_and(|l| l.starts_with("/tmp/rune-")), "the run dir's lib: {r:?}");
    }
    assert!(!canary.exists(), "an argument value was executed by a root shell");

    // A root plugin without a line of its own is refused by sudo, before anything runs.
    let r = run_one(&orch, "not-bundled", &[]).await;
    expect_failure(&r, Status::PreconditionFailed, "sudo -n refused", "not bundled");
    expect_failure(&r, Status::PreconditionFailed, "with its sudoers line for not-bundled", "not bundled");

    // Whatever a root plugin leaves running is swept by the root runner, after an ok run and after a timeout.
    let marker = format!("inst-{}", std::process::id());
    let r = run_one(&orch, "root-daemon", &[("marker", &marker)]).await;
    assert_eq!(r.status, Status::Ok, "{r:?}");
    assert!(r.stderr_tail.contains("killed 1 process(es)"), "reported: {r:?}");
    let left = processes_left(&format!("rune-daemon-{marker}"));
    assert!(left.is_empty(), "a root daemon survived an ok run:\n{left}");
    let r = run_one(&orch, "root-daemon", &[("marker", &marker), ("hang", "true")]).await;
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    let left = processes_left(&format!("rune-daemon-{marker}"));
    assert!(left.is_empty(), "root processes survived a timeout:\n{left}");
    let dirs = sh("ls -d /tmp/rune-*/ 2>/dev/null | xargs -r -n1 stat -c '%U %n' | grep '^root ' || true");
    let root_dirs = String::from_utf8_lossy(&dirs.stdout).into_owned();
    assert!(!root_dirs.contains(&r.run_id), "the root run dir was left: {root_dirs}");

    // The installed copy must be the one RUNE has: a changed copy or none at all is refused, not run.
    let copy = installed.plugin("whoami-root");
    let original = std::fs::read_to_string(&copy).unwrap_or_else(|e| panic!("{e}"));
    write(&copy, &format!("{original}# changed on the host\n"), 0o644);
    let r = run_one(&orch, "whoami-root", &[]).await;
    expect_failure(&r, Status::PreconditionFailed, "has sha256", "changed copy");
    std::fs::remove_file(&copy).unwrap_or_else(|e| panic!("{e}"));
    let r = run_one(&orch, "whoami-root", &[]).await;
    expect_failure(&r, Status::PreconditionFailed, "whoami-root is not installed", "no copy");
    write(&copy, &original, 0o644);
    let r = run_one(&orch, "whoami-root", &[]).await;
    assert_eq!(r.status, Status::Ok, "restored: {r:?}");
}

/// Runs the installed runner as root (as sudo would) with `stdin`; its exit code and stderr.
fn runner(installed: &Installed, arg: &str, stdin: &str) -> (i32, String) {
    let mut child = Command::new(installed.path().join("run"))
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run: {e}"));
    let mut input = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("wait: {e}"));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_installed_runner_refuses_requests_it_cannot_trust() {
    crate::support::sshd::ensure_test_user();
    let installed = install();
    let sha = rune::plugins::load_plugin(&installed.plugins.path().join("root-echo.sh"))
        .unwrap_or_else(|e| panic!("{e:?}"))
        .sha256;
    let id = "0b6e5c1e-4a4b-4c4d-8e8f-0123456789ab";
    let run = format!("run {id} {sha} 5 5 0 0\n");
    let tail = "input {}\nend\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("../../../bin/sh", format!("{run}{tail}"), "not a plugin name"),
        ("root-echo", format!("run ../../etc {sha} 5 5 0 0\n{tail}"), "malformed run line"),
        ("root-echo", format!("run {id} {sha} 5; 5 0 0\n{tail}"), "malformed run line"),
        ("root-echo", format!("{run}var BASH_ENV /tmp/x\n{tail}"), "malformed var line"),
        ("root-echo", format!("{run}var RUNE_LIB /tmp/evil\n{tail}"), "malformed var line"),
        ("root-echo", format!("{run}var PATH /tmp\n{tail}"), "malformed var line"),
        ("root-echo", format!("{run}requires $(id)\n{tail}"), "not a command name"),
        ("root-echo", format!("{run}eval id\n{tail}"), "unknown request line"),
        ("root-echo", run.clone(), "incomplete request"),
        ("root-echo", String::new(), "no request"),
        ("root-echo", format!("run {id} {} 5 5 0 0\n{tail}", "0".repeat(64)), "has sha256"),
    ];
    for (arg, stdin, expected) in cases {
        let (code, stderr) = runner(&installed, arg, &stdin);
        assert!(code == 125 || code == 123, "{arg} {stdin:?}: exit {code}: {stderr}");
        assert!(stderr.contains(expected), "{arg} {stdin:?}: wanted {expected:?} in {stderr}");
    }
    let left = Path::new("/tmp").join(format!("rune-{id}"));
    assert!(!left.exists(), "a refused request left its run dir");

    // The cleanup line: RUNE's user ends what carries a run's id, through sudo, and nothing else.
    let daemon = Command::new("bash")
        .args(["-c", &format!("RUNE_RUN_ID={id} exec -a rune-daemon-cleanup-{} sleep 300", std::process::id())])
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = daemon.id();
    let script = format!("printf '%s\\n' {id} | sudo -n {}/run --cleanup", installed.path().display());
    let done = Command::new("runuser")
        .args(["-u", TEST_USER, "--", "bash", "-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("runuser: {e}"));
    let mut daemon = daemon;
    let mut status = None;
    for _ in 0..200 {
        status = daemon.try_wait().unwrap_or_else(|e| panic!("wait {pid}: {e}"));
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    assert!(done.status.success(), "cleanup: {}", String::from_utf8_lossy(&done.stderr));
    assert!(status.is_some_and(|s| !s.success()), "the process carrying the run id was killed: {status:?}");
}
