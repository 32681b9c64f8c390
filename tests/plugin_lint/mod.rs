//! `rune plugin lint` as a plugin author runs it: the shipped plugins pass, a directory of broken plugins fails
//! with every finding at its file and line, an unreadable path is a usage error, shellcheck is used when present.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rune(args: &[&str], dir: &Path, vars: &[(&str, &str)]) -> Output {
    crate::support::rune(args, dir, vars)
}

const HEADER: &str = "#!/usr/bin/env bash\n# ---\n# bpcs: \"0.1\"\n# name: NAME\n# version: 1.0.0\n# description: d\n# class: diagnostic\n# timeout: 30\n# ---\n";

/// Writes `<name>.sh` with the header above (lines 1..=9) and `body` from line 10.
fn write_plugin(dir: &Path, name: &str, header: &str, body: &str) {
    let text = format!("{}{body}", header.replace("NAME", name));
    std::fs::write(dir.join(format!("{name}.sh")), text).unwrap_or_else(|e| panic!("{e}"));
}

/// A directory of plugins, each broken in one way, and the findings expected of each (file, line, code).
fn bad_plugins(dir: &Path) -> Vec<(&'static str, u64, &'static str)> {
    let ok_start = ". \"$RUNE_LIB/bpcs.sh\"\n";
    write_plugin(
        dir,
        "bad-version",
        &HEADER.replace("1.0.0", "1.0"),
        &format!("{ok_start}bpcs_finish ok s false ''\n"),
    );
    write_plugin(dir, "traced", HEADER, &format!("{ok_start}set -x\nbpcs_finish ok s false ''\n"));
    write_plugin(dir, "reserved", HEADER, &format!("{ok_start}exit 124\n"));
    write_plugin(dir, "undeclared", HEADER, &format!("{ok_start}bpcs_finish ok \"$RUNE_ARG_who\" false ''\n"));
    write_plugin(dir, "meddler", HEADER, &format!("{ok_start}systemctl restart nginx\nbpcs_finish ok s true ''\n"));
    // A helper in lib/ is not a plugin: not linted on its own (it has no header).
    std::fs::create_dir_all(dir.join("lib")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("lib/helper.sh"), "echo helper\n").unwrap_or_else(|e| panic!("{e}"));
    vec![
        ("bad-version.sh", 5, "header"),
        ("meddler.sh", 11, "missing-requires"),
        ("meddler.sh", 11, "mutating-diagnostic"),
        ("meddler.sh", 11, "needs-root"),
        ("reserved.sh", 9, "no-finish"),
        ("reserved.sh", 11, "reserved-exit"),
        ("traced.sh", 11, "xtrace"),
        ("undeclared.sh", 11, "undeclared-arg"),
    ]
}

fn has_shellcheck() -> bool {
    std::process::Command::new("shellcheck").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn shipped_plugins_lint_clean() {
    let out = rune(&["plugin", "lint"], &repo(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty(), "no finding at all, warnings included: {}", String::from_utf8_lossy(&out.stdout));
    let shipped = std::fs::read_dir(repo().join("plugins"))
        .unwrap_or_else(|e| panic!("plugins/: {e}"))
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sh")))
        .count();
    assert!(stderr.contains(&format!("{shipped} file(s) checked: 0 error(s), 0 warning(s)")), "{stderr}");
    // The same through --output json, with shellcheck when this machine has it (CI installs it).
    let out = rune(&["plugin", "lint", "plugins", "--output", "json"], &repo(), &[]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["warnings"], 0, "{v}");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(shipped), "lib/ helpers are not plugins: {v}");
    let expected = if has_shellcheck() { "ran" } else { "not_installed" };
    assert_eq!(v["shellcheck"], expected, "{v}");
}

#[test]
fn broken_plugins_fail_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let expected = bad_plugins(dir.path());
    let path = dir.path().to_string_lossy().into_owned();
    let out = rune(&["plugin", "lint", "--no-shellcheck", "--output", "json", &path], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["shellcheck"], "disabled");
    let mut got: Vec<(String, u64, String)> = v["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let file =
                Path::new(f["path"].as_str().unwrap_or_default()).file_name().map(|n| n.to_string_lossy().into_owned());
            (
                file.unwrap_or_default(),
                f["line"].as_u64().unwrap_or(0),
                f["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, u64, String)> =
        expected.iter().map(|(f, l, c)| ((*f).to_owned(), *l, (*c).to_owned())).collect();
    assert_eq!(got, want, "{v:#}");
    // Pretty output: `file:line: severity: code: message`, one finding per line.
    let out = rune(&["plugin", "lint", "--no-shellcheck", &path], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let traced = format!("{}:11: error: xtrace: ", dir.path().join("traced.sh").display());
    assert!(stdout.lines().any(|l| l.starts_with(&traced)), "{stdout}");
    let meddler = format!("{}:11: warning: needs-root: ", dir.path().join("meddler.sh").display());
    assert!(stdout.lines().any(|l| l.starts_with(&meddler)), "{stdout}");
    // Only warnings: exit 0.
    let meddler = dir.path().join("meddler.sh").to_string_lossy().into_owned();
    let out = rune(&["plugin", "lint", "--no-shellcheck", &meddler], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn plugins_dir_setting_and_unreadable_paths() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    bad_plugins(dir.path());
    let path = dir.path().to_string_lossy().into_owned();
    // No PATH: the plugin directories (RUNE_PLUGINS_DIR like the other commands).
    let out = rune(&["plugin", "lint", "--no-shellcheck"], &repo(), &[("RUNE_PLUGINS_DIR", &path)]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // A path that does not exist: exit 2, nothing linted.
    let missing = dir.path().join("no-such-plugin.sh").to_string_lossy().into_owned();
    let out = rune(&["plugin", "lint", "plugins", &missing], &repo(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-plugin.sh: cannot read"), "{out:?}");
    // No ./plugins where it runs: exit 2 too.
    let out = rune(&["plugin", "lint"], dir.path().join("lib").as_path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn shellcheck_findings_are_mapped_and_its_absence_is_a_note() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // SC2086 (unquoted expansion) is a shellcheck finding none of RUNE's own checks makes.
    write_plugin(
        dir.path(),
        "unquoted",
        HEADER,
        ". \"$RUNE_LIB/bpcs.sh\"\nx=\"a b\"\nbpcs_log INFO $x\nbpcs_finish ok s false ''\n",
    );
    let file = dir.path().join("unquoted.sh").to_string_lossy().into_owned();
    if has_shellcheck() {
        let out = rune(&["plugin", "lint", &file], dir.path(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("{file}:12:")) && stdout.contains("SC2086"), "{stdout}");
        assert_eq!(out.status.code(), Some(0), "shellcheck's info level is a warning: {stdout}");
    } else {
        eprintln!("shellcheck is not installed: only its absence is tested");
    }
    // Without shellcheck on PATH: one note, the rest of the lint as usual.
    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = empty.path().to_string_lossy().into_owned();
    let out = rune(&["plugin", "lint", &file], dir.path(), &[("PATH", &path)]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shellcheck is not installed"), "{out:?}");
}
