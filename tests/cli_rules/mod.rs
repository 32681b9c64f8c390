//! `rune rules check | list | test | schema` as a user runs them: the shipped rules against real Alertmanager,
//! Grafana, generic and chatops payloads from `tests/fixtures/events/`.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const INVENTORY: &str = "
hosts:
  web-1: { transport: local, groups: [web] }
  web-2: { transport: local, groups: [web] }
  db-1: { transport: local, groups: [db] }
";

fn rune(args: &[&str], dir: &Path) -> Output {
    crate::support::rune(args, dir, &[])
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (rule, host, decision) of one decision.
type Seen = (String, String, String);

/// (rule, host, decision) for every decision of every event of a fixture.
fn decisions(fixture: &str) -> Vec<Vec<Seen>> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(&inventory, INVENTORY).unwrap_or_else(|e| panic!("{e}"));
    let event = repo().join("tests/fixtures/events").join(fixture);
    let args = [
        "rules",
        "test",
        "--event",
        event.to_str().unwrap_or_default(),
        "--inventory",
        inventory.to_str().unwrap_or_default(),
        "--output",
        "json",
    ];
    let out = rune(&args, &repo());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let events = report["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .map(|e| {
            e["decisions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
                    let verdict = match d["reason"].as_str() {
                        Some(r) => format!("suppressed:{r}"),
                        None => s("decision"),
                    };
                    (s("rule"), s("host"), verdict)
                })
                .collect()
        })
        .collect()
}

fn d(rule: &str, host: &str, verdict: &str) -> Seen {
    (rule.to_owned(), host.to_owned(), verdict.to_owned())
}

#[test]
fn shipped_rules_decide_as_intended_on_real_payloads() {
    let cases: Vec<(&str, Vec<Vec<Seen>>)> = vec![
        (
            "alertmanager-docker-down.json",
            vec![
                vec![d("critical-gather-logs", "web-1", "admitted"), d("docker-down", "web-1", "admitted")],
                vec![d("critical-gather-logs", "web-2", "cleared"), d("docker-down", "web-2", "cleared")],
            ],
        ),
        (
            "grafana-docker-down.json",
            vec![vec![d("critical-gather-logs", "web-1", "admitted"), d("docker-down", "web-1", "admitted")]],
        ),
        (
            "alertmanager-nomad-client-down.json",
            vec![vec![d("critical-gather-logs", "web-2", "admitted"), d("nomad-client-down", "web-2", "admitted")]],
        ),
        ("alertmanager-critical-disk.json", vec![vec![d("critical-gather-logs", "db-1", "admitted")]]),
        (
            "grafana-critical.json",
            vec![
                vec![d("critical-gather-logs", "db-1", "admitted")],
                vec![d("critical-gather-logs", "web-2", "cleared"), d("nomad-client-down", "web-2", "cleared")],
            ],
        ),
        ("alertmanager-truncated.json", vec![vec![], vec![]]),
        ("generic-event.json", vec![vec![d("critical-gather-logs", "web-1", "admitted")]]),
        ("chatops-request.json", vec![vec![d("chatops", "web-1", "admitted")]]),
    ];
    for (fixture, want) in cases {
        assert_eq!(decisions(fixture), want, "{fixture}");
    }
}

#[test]
fn an_alert_naming_a_host_outside_the_inventory_is_suppressed_not_run() {
    // The embedded default inventory knows only localhost.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let event = repo().join("tests/fixtures/events/alertmanager-critical-disk.json");
    let rules = repo().join("rules");
    let plugins = repo().join("plugins");
    let args = [
        "rules",
        "test",
        rules.to_str().unwrap_or_default(),
        "--plugins-dir",
        plugins.to_str().unwrap_or_default(),
        "--event",
        event.to_str().unwrap_or_default(),
        "--output",
        "json",
    ];
    let out = rune(&args, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let decision = &report["events"][0]["decisions"][0];
    assert_eq!(decision["reason"], "unknown_target", "{decision}");
    assert_eq!(decision["gates"]["target"], "suppressed");
}

#[test]
fn rules_check_lists_every_error_with_its_position_and_exits_2() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - name: a\n    match: { labels: { alertname: { regex: \"(\" } } }\n    target: { host: localhost }\n    action: noop\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("b.yml"),
        "rules:\n  - name: b\n    match: {}\n    target: { host: localhost }\n    action: restart-everything\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plugins = repo().join("plugins");
    let args = ["rules", "check", ".", "--plugins-dir", plugins.to_str().unwrap_or_default()];
    let out = rune(&args, dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("./a.yaml:3:35: rule `a`: match.labels.alertname: invalid regex"), "{stderr}");
    assert!(stderr.contains("./b.yml:5:13: rule `b`: action: unknown action `restart-everything`"), "{stderr}");
    assert!(stderr.contains("2 error(s)"), "{stderr}");
    let mut json_args = args.to_vec();
    json_args.extend(["--output", "json"]);
    let report = json(&rune(&json_args, dir.path()));
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(2));

    let out = rune(&["rules", "check"], &repo());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 rule(s) in 3 file(s) valid"));
}

#[test]
fn rules_list_shows_the_shipped_rules() {
    let report = json(&rune(&["rules", "list", "--output", "json"], &repo()));
    let names: Vec<&str> =
        report["rules"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["critical-gather-logs", "docker-down", "nomad-client-down"]);
    assert_eq!(report["rules"][1]["blast_radius"]["max_hosts"], 3);
    assert_eq!(report["policy"]["host"]["per"], "10m");
}

#[test]
fn the_committed_rules_schema_is_the_generated_one() {
    let out = rune(&["rules", "schema"], &repo());
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo().join("docs/schemas/rules.schema.json")).unwrap_or_default();
    assert_eq!(
        committed.trim_end(),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "docs/schemas/rules.schema.json is stale: regenerate it with `rune rules schema > docs/schemas/rules.schema.json`"
    );
}
