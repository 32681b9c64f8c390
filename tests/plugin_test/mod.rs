//! `rune plugin test` as a plugin author runs it: every shipped golden case passes (locally, stubs on PATH), a
//! case that differs or a plugin that breaks BPCS is named precisely with exit 1, and a case runs on a real sshd
//! host with `--host`.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

use crate::support::sshd::{FleetOptions, SshdFleet};
use crate::support::{rune, text};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(out)))
}

fn write(path: &Path, contents: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The golden cases shipped in plugins/tests/, counted from the files.
fn shipped_cases() -> usize {
    let mut n = 0;
    for plugin in std::fs::read_dir(repo().join("plugins/tests")).unwrap_or_else(|e| panic!("plugins/tests: {e}")) {
        let plugin = plugin.unwrap_or_else(|e| panic!("{e}")).path();
        if plugin.ends_with("stubs") || !plugin.is_dir() {
            continue;
        }
        n += std::fs::read_dir(&plugin)
            .unwrap_or_else(|e| panic!("{}: {e}", plugin.display()))
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".input.json")))
            .count();
    }
    n
}

#[test]
fn every_shipped_golden_case_passes() {
    let out = rune(&["plugin", "test", "--all", "--output", "json"], &repo(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = report(&out);
    let cases = doc["cases"].as_array().unwrap_or_else(|| panic!("no cases: {doc}"));
    assert_eq!(cases.len(), shipped_cases(), "every case file ran: {doc}");
    assert!(cases.len() >= 16, "4 plugins x (ok, dry-run, precondition, bad args): {}", cases.len());
    assert_eq!(doc["passed"], json!(cases.len()), "{}", text(&out));
    for plugin in ["noop", "gather-logs", "restart-docker", "restart-nomad"] {
        for kind in ["ok", "dry-run", "bad-args"] {
            assert!(
                cases.iter().any(|c| c["plugin"] == plugin && c["case"] == kind && c["verdict"] == "pass"),
                "{plugin}/{kind} missing or not passing"
            );
        }
    }
    // The stubs ran, not the machine's systemctl: their calls are in the result.
    let ok = cases.iter().find(|c| c["plugin"] == "restart-docker" && c["case"] == "ok").expect("restart-docker/ok");
    assert!(ok["actual"]["stub_calls"].as_array().is_some_and(|c| c.contains(&json!("systemctl restart -- docker"))));
}

#[test]
fn a_differing_case_and_a_contract_breach_are_named_precisely() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plugins = dir.path().join("plugins");
    // A case whose expectation is wrong on one field, and one whose plugin logs on stdout.
    write(&plugins.join("tests/noop/wrong.input.json"), r#"{"args": {"message": "bye"}}"#);
    write(
        &plugins.join("tests/noop/wrong.expect.json"),
        r#"{"status": "ok", "output": {"status": "ok", "data": {"message": "hello"}}, "ignore": ["/output/summary"]}"#,
    );
    write(
        &plugins.join("noisy.sh"),
        "#!/usr/bin/env bash\n# ---\n# bpcs: \"0.1\"\n# name: noisy\n# version: 0.1.0\n# description: logs on stdout\n\
         # class: diagnostic\n# ---\n. \"$RUNE_LIB/bpcs.sh\"\necho 'restarting things'\nbpcs_finish ok done false '{}'\n",
    );
    write(&plugins.join("tests/noisy/ok.input.json"), "{}");
    write(&plugins.join("tests/noisy/ok.expect.json"), r#"{"status": "ok"}"#);
    let dirs = format!("{}:{}", plugins.display(), repo().join("plugins").display());

    let out = rune(&["plugin", "test", "noop", "--plugins-dir", &dirs], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL   noop/wrong"), "{stdout}");
    assert!(stdout.contains(r#"/output/data/message: expected "hello", got "bye""#), "{stdout}");
    assert!(stdout.contains("pass   noop/ok"), "the shipped noop cases ran too: {stdout}");

    let out = rune(&["plugin", "test", "noisy", "--plugins-dir", &dirs, "--output", "json"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let case = &report(&out)["cases"][0];
    assert_eq!(case["differences"][0]["pointer"], "/status", "{case}");
    assert_eq!(case["differences"][0]["actual"], "protocol_error", "{case}");
    let error = case["actual"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(r#"text before the JSON object (the object starts at byte 18): "restarting things\n""#)
            && error.contains("log lines belong on stderr"),
        "{error}"
    );

    // A plugin file given by path, no expectation: a second JSON object fails the run, said so.
    let two = repo().join("tests/fixtures/plugins/two-json.sh");
    let out = rune(&["plugin", "test", &two.display().to_string()], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("more than one JSON value: a second one starts at byte"), "{}", text(&out));

    // Bad usage and unreadable cases: 2.
    let out = rune(&["plugin", "test", "--all", "--arg", "a=b"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    write(&plugins.join("tests/noop/broken.input.json"), r#"{"argz": {}}"#);
    write(&plugins.join("tests/noop/broken.expect.json"), "{}");
    let out = rune(&["plugin", "test", "noop", "--plugins-dir", &dirs], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown field `argz`"), "{}", text(&out));
    // A case file outside <plugins dir>/tests/<plugin>/, by absolute path too (it used to name the parent dir
    // as the plugin, and pass as a refusal under an empty expectation).
    let stray = dir.path().join("stray.input.json");
    write(&stray, "{}");
    let out = rune(&["plugin", "test", &stray.display().to_string(), "--expect", "/dev/null"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("a case file lives in <plugins dir>/tests/<plugin>/"), "{}", text(&out));
}

#[test]
fn a_case_runs_on_an_sshd_host_and_stub_cases_are_skipped_there() {
    let fleet = SshdFleet::start(1, &FleetOptions::default());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let inventory = dir.path().join("inventory.yaml");
    write(&inventory, &crate::inventory_yaml(&fleet, fleet.known_hosts(), ""));
    let expect = dir.path().join("on-host.expect.json");
    write(
        &expect,
        r#"{"status": "ok", "host": "host-00", "transport": "ssh",
            "output": {"data": {"message": "hello \"world\" $(touch /tmp/pwned) `id`\nline 2", "host": "host-00"}}}"#,
    );
    let input = repo().join("plugins/tests/noop/ok.input.json");
    let inv = inventory.display().to_string();
    let args =
        ["plugin", "test", "noop", "--input", &input.display().to_string(), "--expect", &expect.display().to_string()];
    let out =
        rune(&[&args[..], &["--host", "host-00", "--inventory", &inv, "--output", "json"]].concat(), &repo(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report(&out)["passed"], 1, "{}", text(&out));

    let out = rune(&["plugin", "test", "restart-docker", "--host", "host-00", "--inventory", &inv], &repo(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skip   restart-docker/ok") && stdout.contains("0 failed"), "{stdout}");
}

/// `rune plugin new` as docs/plugins.md starts: both classes scaffolded into an empty plugin dir (with RUNE's
/// helpers beside), and what it wrote passes lint (no finding at all, shellcheck included) and its own cases.
#[test]
fn a_new_plugin_passes_lint_and_its_golden_cases_as_scaffolded() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let plugins = dir.path().join("plugins");
    let lib = plugins.join("lib");
    std::fs::create_dir_all(&lib).unwrap_or_else(|e| panic!("mkdir: {e}"));
    std::fs::copy(repo().join("plugins/lib/bpcs.sh"), lib.join("bpcs.sh")).unwrap_or_else(|e| panic!("copy: {e}"));
    for (name, class) in [("disk-check", "diagnostic"), ("disk-fix", "remediation")] {
        let out = rune(&["plugin", "new", name, "--class", class], dir.path(), &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(plugins.join(format!("{name}.sh")).is_file() && plugins.join("tests").join(name).is_dir());
    }
    let again = rune(&["plugin", "new", "disk-check"], dir.path(), &[]);
    assert_eq!(again.status.code(), Some(2), "an existing plugin is not overwritten: {}", text(&again));
    let bad = rune(&["plugin", "new", "Disk_Check"], dir.path(), &[]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    let lint = rune(&["plugin", "lint", "--output", "json"], dir.path(), &[]);
    assert_eq!(lint.status.code(), Some(0), "{}", text(&lint));
    let findings = report(&lint);
    assert_eq!(findings["findings"], json!([]), "a scaffold has nothing to fix: {findings}");
    let test = rune(&["plugin", "test", "--all", "--output", "json"], dir.path(), &[]);
    assert_eq!(test.status.code(), Some(0), "{}", text(&test));
    let doc = report(&test);
    assert_eq!((doc["passed"].as_u64(), doc["failed"].as_u64()), (Some(6), Some(0)), "{doc}");
}

/// docs/plugins.md's worked example is the shipped plugin and its cases, verbatim: the guide cannot drift from
/// what `rune plugin lint` and `--all` check.
#[test]
fn the_guides_worked_example_is_the_shipped_disk_usage_plugin_verbatim() {
    let guide = std::fs::read_to_string(repo().join("docs/plugins.md")).unwrap_or_else(|e| panic!("{e}"));
    let plugin = std::fs::read_to_string(repo().join("plugins/disk-usage.sh")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        guide.contains(&format!("```bash\n{plugin}```\n")),
        "docs/plugins.md must show plugins/disk-usage.sh whole"
    );
    let cases = repo().join("plugins/tests/disk-usage");
    for entry in std::fs::read_dir(&cases).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("`plugins/tests/disk-usage/{name}`:\n\n```json\n{text}```\n");
        assert!(guide.contains(&shown), "docs/plugins.md must show {name} whole");
    }
}

/// A case can give the plugin files to work on (`files`, with ages), name their directory in `args` and in the
/// expect file as `@CASE_DIR@`, and check what is left (`files_after`): a remediation that removes old files.
#[test]
fn a_case_gives_the_plugin_files_and_checks_what_is_left() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let plugins = dir.path().join("plugins");
    write(
        &plugins.join("lib/bpcs.sh"),
        &std::fs::read_to_string(repo().join("plugins/lib/bpcs.sh")).unwrap_or_default(),
    );
    write(
        &plugins.join("prune-old.sh"),
        r#"#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: prune-old
# version: 0.1.0
# description: Test plugin — removes files older than a day from a directory
# class: remediation
# timeout: 30
# args:
#   dir:
#     type: string
#     required: true
#     pattern: "^/[A-Za-z0-9._/-]{1,200}$"
# ---
set -euo pipefail
. "$RUNE_LIB/bpcs.sh"
dir=$(bpcs_arg dir)
if bpcs_dry_run; then bpcs_finish ok "dry run" false ""; fi
n=0
while IFS= read -r -d '' f; do rm -f -- "$f"; n=$((n + 1)); done < <(find "$dir" -type f -mmin +1440 -print0)
d=''
bpcs_json_str -v d "$dir"
bpcs_finish ok "removed $n" "$([ "$n" -gt 0 ] && echo true || echo false)" "$(bpcs_obj dir "$d" removed "$n")"
"#,
    );
    write(
        &plugins.join("tests/prune-old/ok.input.json"),
        r#"{"args": {"dir": "@CASE_DIR@/logs"}, "files": {"logs/old.log": {"content": "x", "age_s": 172800},
            "logs/sub/older.log": {"age_s": 864000}, "logs/new.log": {"content": "keep"}, "other.txt": {"age_s": 864000}}}"#,
    );
    write(
        &plugins.join("tests/prune-old/ok.expect.json"),
        r#"{"status": "ok", "output": {"summary": "removed 2", "data": {"dir": "@CASE_DIR@/logs", "removed": 2}, "changed": true},
            "files_after": ["logs/new.log", "other.txt"]}"#,
    );
    let out = rune(&["plugin", "test", "prune-old", "--output", "json"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The same case expecting the old file kept fails, naming files_after.
    write(
        &plugins.join("tests/prune-old/ok.expect.json"),
        r#"{"files_after": ["logs/new.log", "logs/old.log", "other.txt"]}"#,
    );
    let out = rune(&["plugin", "test", "prune-old"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("/files_after"), "{}", text(&out));
}
