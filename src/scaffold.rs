//! `rune plugin new`: a new plugin that passes `rune plugin lint` and `rune plugin test` as written — a complete
//! BPCS header, one declared argument read through the helpers, dry-run handling, the result through
//! `bpcs_finish` — and its first golden cases (ok, dry-run, bad arguments). The author then replaces the work
//! in the middle and the cases follow (docs/plugins.md).

use std::path::{Path, PathBuf};

use crate::bpcs::SafetyClass;

/// A file the scaffold writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

const HEADER: &str = r#"#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: @NAME@
# version: 0.1.0
# description: @NAME@ — @WHAT@ (say in one line what it does)
# tags: [@CLASS@]
# class: @CLASS@
# needs_root: false
# timeout: 60
# requires: []                          # commands a host may lack (not bash or coreutils), e.g. [systemctl]
# args:
#   target:
#     type: string
#     required: false
#     default: example
#     pattern: "^[A-Za-z0-9._-]{1,64}$"
#     description: What the plugin looks at (replace with your own arguments; every one is declared here)
# ---
# @NAME@.sh — what it does, how, and what it reports in `data`. Logs go to stderr (bpcs_log); stdout carries the
# one JSON result only, printed by bpcs_finish.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib/bpcs.sh
. "$RUNE_LIB/bpcs.sh"

# Arguments arrive checked against the header (type, pattern, default) as RUNE_ARG_<name>.
target=$(bpcs_arg target)
target_json=''
bpcs_json_str -v target_json "$target"
"#;

const DIAGNOSTIC_BODY: &str = r#"
# A diagnostic changes nothing, so a dry run (RUNE_DRY_RUN=1) does the same check: no dry-run branch needed.
# The work. Replace it with yours: command output into variables or to stderr, never to stdout.
bpcs_log INFO "looking at $target"
kernel=$(uname -r)

kernel_json='' data=''
bpcs_json_str -v kernel_json "$kernel"
bpcs_obj -v data target "$target_json" kernel "$kernel_json"
bpcs_finish ok "looked at $target" false "$data"
"#;

const REMEDIATION_BODY: &str = r#"
if bpcs_dry_run; then
  # A dry run reports what a real run would change and changes nothing: `changed` must be false.
  bpcs_finish ok "dry run: would fix $target" false "$(bpcs_obj target "$target_json" would_change true)"
fi

# The fix. Replace it with yours: check the state first, change only what needs it, then verify, and report
# changed=true only when something was changed. A failed fix is `bpcs_finish error …` (exit 1).
bpcs_log INFO "fixing $target on $(uname -n)"
changed=false

data=''
bpcs_obj -v data target "$target_json" changed "$changed"
bpcs_finish ok "$target: nothing needed fixing" "$changed" "$data"
"#;

/// The plugin file and its first cases, for plugin dir `dir`. `name` must be a valid plugin name.
pub fn files(dir: &Path, name: &str, class: SafetyClass) -> Vec<NewFile> {
    let (class_word, what, body) = match class {
        SafetyClass::Diagnostic => ("diagnostic", "reports on something", DIAGNOSTIC_BODY),
        SafetyClass::Remediation => ("remediation", "fixes something", REMEDIATION_BODY),
    };
    let script =
        format!("{HEADER}{body}").replace("@NAME@", name).replace("@CLASS@", class_word).replace("@WHAT@", what);
    let (ok_summary, ok_data, dry_summary) = match class {
        SafetyClass::Diagnostic => ("looked at example", r#"{"target": "example"}"#, "looked at example"),
        SafetyClass::Remediation => (
            "example: nothing needed fixing",
            r#"{"target": "example", "changed": false}"#,
            "dry run: would fix example",
        ),
    };
    let cases = dir.join("tests").join(name);
    let case = |file: &str, text: String| NewFile { path: cases.join(file), contents: text, mode: 0o644 };
    vec![
        NewFile { path: dir.join(format!("{name}.sh")), contents: script, mode: 0o755 },
        case("ok.input.json", "{\n  \"description\": \"the default target\",\n  \"args\": {\"target\": \"example\"}\n}\n".into()),
        case(
            "ok.expect.json",
            format!(
                "{{\n  \"status\": \"ok\",\n  \"exit_code\": 0,\n  \"error\": null,\n  \"output\": {{\n    \"status\": \"ok\",\n    \"summary\": \"{ok_summary}\",\n    \"data\": {ok_data},\n    \"changed\": false\n  }}\n}}\n"
            ),
        ),
        case("dry-run.input.json", "{\n  \"description\": \"a dry run changes nothing\",\n  \"args\": {\"target\": \"example\"},\n  \"dry_run\": true\n}\n".into()),
        case(
            "dry-run.expect.json",
            format!(
                "{{\n  \"status\": \"dry_run\",\n  \"output\": {{\"status\": \"ok\", \"summary\": \"{dry_summary}\", \"changed\": false}}\n}}\n"
            ),
        ),
        case(
            "bad-args.input.json",
            "{\n  \"description\": \"RUNE refuses a target outside the pattern before running\",\n  \"args\": {\"target\": \"../etc/passwd\"}\n}\n".into(),
        ),
        case(
            "bad-args.expect.json",
            "{\n  \"error\": \"invalid_request\",\n  \"problems\": [\"argument `target`: value does not match the declared pattern `^[A-Za-z0-9._-]{1,64}$`\"],\n  \"ran\": false\n}\n".into(),
        ),
    ]
}

/// Writes `files`, none of which may exist yet; on a failure what was written is removed again.
pub fn write(files: &[NewFile]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(f) = files.iter().find(|f| f.path.symlink_metadata().is_ok()) {
        return Err(format!("{}: exists; pick another name or remove it", f.path.display()));
    }
    let mut written: Vec<&Path> = Vec::new();
    let mut made_dir: Option<PathBuf> = None;
    for f in files {
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = f.path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
                std::fs::create_dir_all(parent)?;
                made_dir.get_or_insert_with(|| parent.to_owned());
            }
            std::fs::write(&f.path, &f.contents)?;
            std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(f.mode))
        })();
        if let Err(e) = result {
            written.iter().for_each(|p| drop(std::fs::remove_file(p)));
            if let Some(dir) = &made_dir {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(format!("{}: cannot write: {e}", f.path.display()));
        }
        written.push(&f.path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_plugin_loads_with_its_header_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, class) in [("check-thing", SafetyClass::Diagnostic), ("fix-thing", SafetyClass::Remediation)] {
            let files = files(dir.path(), name, class);
            write(&files).expect("written");
            let plugin = crate::plugins::load_plugin(&dir.path().join(format!("{name}.sh"))).expect("valid header");
            assert_eq!((plugin.name.as_str(), plugin.class), (name, class));
            assert!(plugin.args.contains_key("target"));
            for f in &files[1..] {
                if f.path.extension().is_some_and(|e| e == "json") {
                    serde_json::from_str::<serde_json::Value>(&f.contents).expect("valid JSON");
                }
            }
            assert!(write(&files).expect_err("exists").contains("exists"));
        }
    }
}
