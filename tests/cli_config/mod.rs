//! `rune config check` as a user runs it: exit codes, every error on stderr, and no secret in any output.

use std::os::unix::fs::PermissionsExt as _;

use crate::support::{rune, text};

const CANARY: &str = "canary-5e8b21-must-never-be-printed";

#[test]
fn config_check_valid_settings_exit_0_and_never_print_secrets() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("webhook.token");
    std::fs::write(&token, format!("{CANARY}\n")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("rune.yaml"),
        "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    token_env: NATS_TOKEN\n\
         webhook:\n  alertmanager:\n    bearer_token_file: webhook.token\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let vars = [("NATS_TOKEN", CANARY), ("RUNE_CONFIG", "rune.yaml"), ("RUNE_LIMITS__PARALLEL", "3")];
    for output in ["pretty", "json"] {
        let out = rune(&["config", "check", "--output", output], dir.path(), &vars);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(0), "{all}");
        assert!(!all.contains(CANARY), "a secret was printed:\n{all}");
        assert!(all.contains("<redacted>"), "{all}");
        assert!(all.contains("RUNE_LIMITS__PARALLEL"), "{all}");
    }
}

#[test]
fn config_check_lists_every_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("rune.toml"),
        "[webhook]\nlisten = \"nowhere\"\ngrafana = {}\n\n[nats.auth]\ntoken = \"secret-in-clear\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = rune(&["config", "check", "--config", "rune.toml"], dir.path(), &[("RUNE_METRICS__ENABLED", "maybe")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    for want in [
        "rune.toml:2:10: webhook.listen: `nowhere` is not a socket address",
        "rune.toml:3:1: webhook.grafana: no authentication chosen",
        "rune.toml:6:1: nats.auth.token: unknown field `token`",
        "env RUNE_METRICS__ENABLED: metrics.enabled: invalid type",
        "4 error(s); the settings were not loaded",
    ] {
        assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");
    }
    assert!(!stderr.contains("secret-in-clear"), "{stderr}");
}
