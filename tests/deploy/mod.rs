//! The compose stack's files as the containers use them (docker-compose.yml, Dockerfile, deploy/): the exact
//! `deploy/rune.yaml` through `rune config check`, laid out as in the rune container's `/etc/rune/`; the
//! inventory; the example alert for the target through the shipped rules; and the Elasticsearch template
//! against docs/results.md. No Docker here: what the containers are given is checked, not the containers.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{rune, text};

const CANARY: &str = "canary-d3f1a7-deploy-secret-must-never-be-printed";
/// Where the rune image and docker-compose.yml put deploy/rune.yaml.
const CONTAINER_CONFIG_DIR: &str = "/etc/rune";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A copy of the rune container's `/etc/rune/` in a temporary folder: deploy/rune.yaml and deploy/inventory.yaml
/// byte for byte, the secret file the settings name (as deploy/secrets/README.md makes it: 0600), and the
/// shipped rules and plugins the image copies there.
fn container_config_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let etc = dir.path().join("etc/rune");
    std::fs::create_dir_all(etc.join("secrets")).unwrap_or_else(|e| panic!("{e}"));
    for name in ["rune.yaml", "inventory.yaml"] {
        std::fs::copy(repo().join("deploy").join(name), etc.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let token = etc.join("secrets/webhook.token");
    std::fs::write(&token, format!("{CANARY}\n")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
    for name in ["rules", "plugins"] {
        std::os::unix::fs::symlink(repo().join(name), etc.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    (dir, etc)
}

#[test]
fn deploy_settings_load_as_the_rune_container_reads_them() {
    let (_dir, etc) = container_config_dir();
    let config = etc.join("rune.yaml");
    let config = config.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"));
    // NATS_TOKEN as compose's env_file (deploy/secrets/nats.env) gives it.
    let vars = [("NATS_TOKEN", CANARY)];
    let out = rune(&["config", "check", "--config", config], &etc, &vars);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "deploy/rune.yaml must load:\n{all}");
    assert!(!all.contains("warning"), "deploy/rune.yaml loads without warnings:\n{all}");
    assert!(!all.contains(CANARY), "a secret was printed:\n{all}");

    let out = rune(&["config", "check", "--config", config, "--output", "json"], &etc, &vars);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(CANARY), "a secret was printed:\n{all}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    assert_eq!(report["from_env"], serde_json::json!([]), "every value comes from the file: {report}");
    let s = &report["settings"];
    // NATS: the compose service, token auth, JetStream with the results stream.
    assert_eq!(s["nats"]["urls"], serde_json::json!(["nats://nats:4222"]), "{s}");
    assert_eq!(s["nats"]["auth"]["method"], "token", "{s}");
    assert!(s["nats"]["jetstream"].is_object(), "JetStream on: {s}");
    assert_eq!(s["nats"]["jetstream"]["results_stream"]["subjects"], serde_json::json!(["rune.results.>"]), "{s}");
    // Webhooks on every interface of the container (compose publishes 127.0.0.1:9300 only), all authenticated.
    assert_eq!(s["webhook"]["listen"], "0.0.0.0:9300", "{s}");
    for endpoint in ["alertmanager", "grafana", "generic"] {
        assert_eq!(s["webhook"][endpoint]["method"], "bearer", "{endpoint}: {s}");
    }
    assert_eq!(s["webhook"]["publish_to_nats"], true, "{s}");
    assert_eq!(s["chatops"]["enabled"], true, "{s}");
    assert_eq!((&s["results"]["stdout"], &s["results"]["nats"]), (&Value::Bool(true), &Value::Bool(true)), "{s}");
    // Relative paths resolve beside the file, i.e. into /etc/rune/ in the container.
    let under_etc = |v: &Value| -> String {
        let p = Path::new(v.as_str().unwrap_or_else(|| panic!("not a path: {v}")));
        let rel = p.strip_prefix(&etc).unwrap_or_else(|_| panic!("{} is not beside rune.yaml", p.display()));
        format!("{CONTAINER_CONFIG_DIR}/{}", rel.display())
    };
    let mut needed = vec![under_etc(&s["paths"]["rules_dir"]), under_etc(&s["paths"]["inventory"])];
    for dir in s["paths"]["plugins_dirs"].as_array().into_iter().flatten() {
        needed.push(under_etc(dir));
    }
    // The secret files the file names (the settings report only `<redacted>`).
    let file = yaml("deploy/rune.yaml");
    for endpoint in ["alertmanager", "grafana", "generic"] {
        if let Some(rel) = file["webhook"][endpoint]["bearer_token_file"].as_str() {
            needed.push(format!("{CONTAINER_CONFIG_DIR}/{rel}"));
        }
    }
    let provided = container_paths();
    for path in needed {
        assert!(
            provided.iter().map(|p| p.trim_end_matches('/')).any(|p| path == p || path.starts_with(&format!("{p}/"))),
            "{path} (named by deploy/rune.yaml) is neither copied by the Dockerfile nor mounted by docker-compose.yml: \
             {provided:?}"
        );
    }
}

/// Paths under /etc/rune that the rune image (Dockerfile COPY) or its compose service (volumes) provide.
fn container_paths() -> Vec<String> {
    let mut paths = Vec::new();
    for line in read("Dockerfile").lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"COPY") || words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let (Some(dest), sources) = (words.last(), &words[1..words.len() - 1]) else { continue };
        if dest.ends_with('/') && sources.len() > 1 {
            for src in sources {
                let name = Path::new(src).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                paths.push(format!("{dest}{name}"));
            }
        } else {
            paths.push((*dest).to_owned());
        }
    }
    let compose = yaml("docker-compose.yml");
    for volume in compose["services"]["rune"]["volumes"].as_array().into_iter().flatten() {
        match volume {
            Value::String(short) => paths.push(short.split(':').nth(1).unwrap_or_default().to_owned()),
            long => paths.push(long["target"].as_str().unwrap_or_default().to_owned()),
        }
    }
    paths.retain(|p| p.starts_with(CONTAINER_CONFIG_DIR));
    paths
}

#[test]
fn compose_serves_the_image_command_config_and_binds_ports_to_loopback_only() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().unwrap_or_else(|| panic!("no services"));
    // The config file the image runs with is the one compose mounts, read-only.
    let dockerfile = read("Dockerfile");
    let cmd = format!(r#"CMD ["serve", "--config", "{CONTAINER_CONFIG_DIR}/rune.yaml"]"#);
    assert!(dockerfile.lines().any(|l| l == cmd), "Dockerfile: {cmd}");
    let mounts: Vec<&str> =
        services["rune"]["volumes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(mounts.contains(&"./deploy/rune.yaml:/etc/rune/rune.yaml:ro"), "{mounts:?}");
    // Every published port is on 127.0.0.1.
    let mut published = 0;
    for (name, service) in services {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().unwrap_or_else(|| panic!("{name}: write ports as \"127.0.0.1:HOST:CONTAINER\""));
            assert!(port.starts_with("127.0.0.1:"), "{name} publishes {port} beyond loopback");
            published += 1;
        }
    }
    assert!(published >= 2, "rune and nats at least");
    // The inventory's key and known_hosts live in the volume the keys service writes.
    let inventory = rune::inventory::Inventory::load(&repo().join("deploy/inventory.yaml"))
        .unwrap_or_else(|e| panic!("deploy/inventory.yaml: {e:?}"));
    let hosts: Vec<_> = inventory.hosts().collect();
    assert_eq!(hosts.len(), 1, "only the demo target");
    let target = hosts[0];
    assert_eq!((target.name.as_str(), target.address.as_str(), target.user.as_str()), ("target", "target", "rune"));
    assert_eq!(target.transport, rune::inventory::TransportKind::Ssh);
    assert_eq!(target.host_key_policy, rune::inventory::HostKeyPolicy::Strict, "strict host keys");
    assert!(services.contains_key(&target.address), "the target's address is a compose service");
    let ssh_mount = mounts
        .iter()
        .find(|m| m.starts_with("rune-ssh:"))
        .and_then(|m| m.split(':').nth(1))
        .unwrap_or_else(|| panic!("rune mounts the rune-ssh volume: {mounts:?}"));
    for file in [target.key.clone().unwrap_or_default(), target.known_hosts.clone()] {
        assert_eq!(file.parent(), Some(Path::new(ssh_mount)), "{} is in the rune-ssh volume", file.display());
    }
}

#[test]
fn the_example_alert_for_the_target_runs_gather_logs_on_it() {
    let args = [
        "rules",
        "test",
        "--event",
        "examples/alert-target.json",
        "--inventory",
        "deploy/inventory.yaml",
        "--output",
        "json",
    ];
    let out = rune(&args, &repo(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let decisions: Vec<(String, String, String)> = report["events"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["decisions"].as_array().cloned().unwrap_or_default())
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
            (s("rule"), s("host"), s("decision"))
        })
        .collect();
    assert_eq!(
        decisions,
        [("critical-gather-logs".to_owned(), "target".to_owned(), "admitted".to_owned())],
        "{report}"
    );
}

/// Extracts the first ```json block after `heading` in a Markdown text.
fn json_block_after(markdown: &str, heading: &str) -> Value {
    let rest = markdown.split_once(heading).map(|(_, r)| r).unwrap_or_else(|| panic!("no `{heading}`"));
    let block = rest.split_once("```json\n").and_then(|(_, r)| r.split_once("\n```")).map(|(b, _)| b);
    serde_json::from_str(block.unwrap_or_else(|| panic!("no JSON block after `{heading}`")))
        .unwrap_or_else(|e| panic!("{heading}: {e}"))
}

#[test]
fn the_elasticsearch_template_is_the_one_docs_results_md_shows() {
    let documented = json_block_after(&read("docs/results.md"), "### Elasticsearch (index template)");
    let shipped: Value = serde_json::from_str(&read("deploy/elasticsearch/rune-template.json"))
        .unwrap_or_else(|e| panic!("deploy/elasticsearch/rune-template.json: {e}"));
    assert_eq!(shipped, documented, "deploy/elasticsearch/rune-template.json differs from docs/results.md");
    assert_eq!(shipped["index_patterns"], serde_json::json!(["rune-*"]));
    // Vector's index names must fall under the template.
    let sink = yaml("deploy/vector/elasticsearch.yaml");
    let index = sink["sinks"]["elasticsearch"]["bulk"]["index"].as_str().unwrap_or_default();
    assert!(index.starts_with("rune-"), "Vector writes to `{index}`, outside rune-*");
}
