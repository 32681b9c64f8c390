//! The audit trail end to end through the real `rune` binary: CLI runs and refusals recorded and verified, a
//! tampered trail caught by `rune audit verify`, and a full disk (a real tmpfs) refusing remediations while
//! diagnostics run, loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{rune, text};

fn plugins() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!("{root}/plugins:{root}/tests/fixtures/plugins")
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn cli_runs_and_refusals_are_recorded_and_a_tampered_trail_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.jsonl");
    let trail_arg = trail.to_str().unwrap();
    let plugins = plugins();
    let vars = [("RUNE_PLUGINS_DIR", plugins.as_str())];
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--audit-file", trail_arg, "--output", "json", "--operator", "alice"];
        all.extend_from_slice(args);
        rune(&all, dir.path(), &vars)
    };
    let out = run(&["echo-args", "--host", "localhost", "--arg", "text=hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = run(&["echo-args", "--host", "nowhere", "--arg", "text=hello"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let all = records(&trail);
    let kinds: Vec<&str> = all.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["start", "dispatch", "result", "stop", "start", "refusal", "stop"], "{all:?}");
    let (dispatch, result, refusal) = (&all[1], &all[2], &all[5]);
    assert_eq!(dispatch["run_id"], envelope["run_id"]);
    assert_eq!((dispatch["operator"].as_str(), dispatch["host"].as_str()), (Some("alice"), Some("localhost")));
    assert_eq!(dispatch["plugin"]["sha256"], envelope["plugin"]["sha256"]);
    assert_eq!(dispatch["args_sha256"].as_str().map(str::len), Some(64));
    assert!(!all.iter().any(|r| r.to_string().contains("hello")), "argument values stay out of the trail");
    assert_eq!(
        (result["outcome"].as_str(), result["correlation_id"].clone()),
        (Some("ok"), envelope["correlation_id"].clone())
    );
    assert_eq!(refusal["hosts"][0], "nowhere");
    assert!(refusal["problems"][0].as_str().unwrap_or("").contains("unknown host"), "{refusal}");

    let verify = |expect: i32| {
        let out = rune(&["audit", "verify", "--file", trail_arg], dir.path(), &[]);
        assert_eq!(out.status.code(), Some(expect), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(verify(0).contains("intact: 7 record(s)"));
    let out =
        rune(&["audit", "query", "--file", trail_arg, "--kind", "result", "--host", "localhost"], dir.path(), &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "{}", text(&out));
    // Someone turns the result into a success it was not, and removes the refusal.
    let original = std::fs::read_to_string(&trail).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    let forged = lines[2].replace("\"outcome\":\"ok\"", "\"outcome\":\"warn\"");
    lines[2] = &forged;
    lines.remove(5);
    std::fs::write(&trail, lines.join("\n") + "\n").unwrap();
    let report = verify(1);
    assert!(report.contains(":3 (record 3): its hash does not match"), "{report}");
    assert!(report.contains(":6 (record 7): records 6..=6 are missing"), "{report}");
}

/// A tmpfs of 64 KiB mounted for the test, unmounted on drop (also when the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"]).arg(at).status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "cannot mount a tmpfs at {} ({status:?}): this test needs root (CAP_SYS_ADMIN), as the suite's sshd tests do",
            at.display()
        );
        Tmpfs(at.to_owned())
    }

    /// Fills the file system: the next write gets ENOSPC.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = Command::new("sh").arg("-c").arg(format!("cat /dev/zero > {}", filler.display())).status();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_audit_disk_refuses_remediations_and_lets_diagnostics_run_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("audit"));
    let filler = disk.fill();
    let trail = disk.0.join("audit.jsonl");
    let trail_arg = trail.to_str().unwrap();
    let ledger = dir.path().join("ledger");
    let plugins = plugins();
    let vars = [("RUNE_PLUGINS_DIR", plugins.as_str())];
    let ledger_arg = format!("ledger={}", ledger.display());
    let remediation = ["run", "mark-fix", "--host", "localhost", "--arg", "n=1", "--arg", &ledger_arg];
    let mut args = remediation.to_vec();
    args.extend(["--audit-file", trail_arg, "--output", "json"]);
    let out = rune(&args, dir.path(), &vars);
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(envelope["status"], "precondition_failed", "{envelope}");
    assert!(envelope["error"].as_str().unwrap_or("").contains("remediations do not run unaudited"), "{envelope}");
    assert!(!ledger.exists(), "the remediation ran although it could not be recorded");
    assert!(
        text(&out).contains("AUDIT TRAIL UNWRITABLE") || text(&out).contains("audit trail cannot be written"),
        "{}",
        text(&out)
    );

    let out =
        rune(&["run", "noop", "--host", "localhost", "--audit-file", trail_arg, "--output", "json"], dir.path(), &vars);
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(envelope["status"], "ok", "a diagnostic runs: {envelope}");
    assert!(text(&out).contains("UNAUDITED"), "and says it ran unaudited: {}", text(&out));

    // Space again: the trail on disk is whole (failed writes were cut back off), and records go on.
    std::fs::remove_file(&filler).unwrap();
    let verify = rune(&["audit", "verify", "--file", trail_arg], dir.path(), &[]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let mut args = remediation.to_vec();
    args.extend(["--audit-file", trail_arg, "--output", "json"]);
    let out = rune(&args, dir.path(), &vars);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&ledger).unwrap(), "1\n");
    let verify = rune(&["audit", "verify", "--file", trail_arg], dir.path(), &[]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let kinds: Vec<String> = records(&trail).iter().filter_map(|r| r["kind"].as_str().map(str::to_owned)).collect();
    assert_eq!(kinds, ["start", "dispatch", "result", "stop"], "only the last run's records: {kinds:?}");
}

/// A declared-secret argument (`secret: true`) given to a plugin that prints it everywhere: the result, the
/// logs at debug level and the audit trail never show it; the plugin got it.
#[test]
fn a_declared_secret_never_shows_in_results_logs_or_the_trail() {
    const CANARY: &str = "canary-Zq8v3XkP2m";
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.jsonl");
    std::fs::write(dir.path().join("args.json"), format!(r#"{{"password": "{CANARY}"}}"#)).unwrap();
    let plugins = plugins();
    let vars = [("RUNE_PLUGINS_DIR", plugins.as_str()), ("RUNE_LOG", "debug")];
    let base = ["run", "leaky-secret", "--host", "localhost", "--output", "json", "--audit-file"];
    let mut args = base.to_vec();
    args.extend([trail.to_str().unwrap(), "--args-json", "args.json"]);
    let out = rune(&args, dir.path(), &vars);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    assert_eq!(envelope["output"]["data"]["password"], "<redacted>", "{envelope}");
    assert_eq!(envelope["output"]["summary"], "password is <redacted>", "the plugin got the value: {envelope}");
    assert!(envelope["stderr_tail"].as_str().unwrap_or("").contains("stderr: <redacted>"), "{envelope}");
    assert!(!all.contains(CANARY), "the secret leaked into the result or the debug log: {all}");
    let recorded = std::fs::read_to_string(&trail).unwrap();
    assert!(!recorded.contains(CANARY), "the secret leaked into the audit trail: {recorded}");
    assert!(!all.contains("is secret: given with --arg"), "no warning for --args-json: {all}");

    // While the plugin runs, no process on this machine (RUNE, the runner, the plugin) has it in its arguments;
    // over SSH too (the sshd host is this machine: its session, runner and plugin are in the same table).
    std::fs::write(dir.path().join("hold.json"), format!(r#"{{"password": "{CANARY}", "hold": 2}}"#)).unwrap();
    let fleet = crate::fleet(1);
    // (Not ./inventory.yaml: `rune run` would take it as the default inventory, which has no localhost.)
    let inventory = dir.path().join("sshd-inventory.yaml");
    std::fs::write(&inventory, crate::inventory_yaml(&fleet, fleet.known_hosts(), "")).unwrap();
    for host in ["localhost", "host-00"] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rune"));
        command.args(["run", "leaky-secret", "--host", host, "--output", "json", "--args-json", "hold.json"]);
        if host != "localhost" {
            command.arg("--inventory").arg(&inventory);
        }
        let mut child = command
            .current_dir(dir.path())
            .env("RUNE_PLUGINS_DIR", &plugins)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut looks = 0;
        let mut saw_plugin = false;
        while child.try_wait().unwrap().is_none() {
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
                let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                assert!(!args.contains(CANARY), "{host}: a process shows the secret in its arguments: {args}");
                saw_plugin |= args.contains("plugin.sh") || args.contains("sleep 2");
            }
            looks += 1;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            looks > 10 && saw_plugin,
            "{host}: the process table was looked at while the plugin ran ({looks} looks)"
        );
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(r#""status":"ok""#) && stdout.contains(&format!(r#""host":"{host}""#)), "{stdout}");
        assert!(!stdout.contains(CANARY));
    }

    // Given on the command line: it runs, is hidden the same, and the operator is told about `ps`.
    let password = format!("password={CANARY}");
    let out = rune(
        &["run", "leaky-secret", "--host", "localhost", "--output", "json", "--arg", &password],
        dir.path(),
        &vars,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(CANARY), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("argument `password` is secret"), "{}", text(&out));

    // A plugin header cannot give a secret a default (the default would be in the file for all to read).
    let bad = dir.path().join("plugins");
    std::fs::create_dir(&bad).unwrap();
    let source =
        std::fs::read_to_string(format!("{}/tests/fixtures/plugins/leaky-secret.sh", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    std::fs::write(
        bad.join("leaky-secret.sh"),
        source.replace("#     required: true\n#     secret: true", "#     default: hunter2\n#     secret: true"),
    )
    .unwrap();
    let out = rune(&["plugin-info", "leaky-secret", "--plugins-dir", bad.to_str().unwrap()], dir.path(), &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("is secret: it must be a string without a default"), "{}", text(&out));
}

/// A decision record shows `<redacted>` for an argument the plugin declares secret, whatever filled it.
#[test]
fn a_declared_secret_is_redacted_in_decision_records() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("leak.yaml"),
        "rules:\n  - name: leak\n    match:\n      labels: { alertname: HostDiskFull }\n    target:\n      host: localhost\n    \
         action: leaky-secret\n    args:\n      password: \"{{ labels.mountpoint }}\"\n      user: \"{{ labels.job }}\"\n",
    )
    .unwrap();
    let event = format!("{}/tests/fixtures/events/alertmanager-critical-disk.json", env!("CARGO_MANIFEST_DIR"));
    let plugins = plugins();
    let args = ["rules", "test", "rules", "--plugins-dir", &plugins, "--event", &event, "--output", "json"];
    let out = rune(&args, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let decision = &report["events"][0]["decisions"][0];
    assert_eq!(decision["args"]["password"], "<redacted>", "{decision}");
    assert_eq!(decision["args"]["user"], "node", "other arguments are shown: {decision}");
}
