//! The SSM transport end to end: the real `rune` binary and the real SDK against the SSM-compatible test endpoint
//! (`support::ssm`), which executes the commands on this machine. Every shipped plugin gives the same envelope
//! through SSM as through the local transport (the endpoint runs them here, as root, like the local transport in
//! this suite); faults map to the same statuses as over SSH.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::support::moto::aws_env;
use crate::support::ssm::{InstanceBehavior, SsmEndpoint};
use crate::support::{rune, text};

const INSTANCE: &str = "i-0123456789abcdef0";
const SLOW: &str = "i-0aaaaaaaaaaaaaaa1";
const GONE: &str = "i-0bbbbbbbbbbbbbbb2";

fn inventory(dir: &Path) {
    let hosts = [("app-1", INSTANCE), ("app-slow", SLOW), ("app-gone", GONE)]
        .iter()
        .map(|(name, id)| format!("  {name}:\n    transport: local\n    ssm: {{ instance_id: {id} }}\n"))
        .collect::<String>();
    std::fs::write(dir.join("inventory.yaml"), format!("hosts:\n{hosts}")).unwrap();
}

fn run_json(endpoint: &SsmEndpoint, dir: &Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let env = aws_env(&endpoint.url());
    let root = env!("CARGO_MANIFEST_DIR");
    let plugins = format!("{root}/plugins:{root}/tests/fixtures/plugins");
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.push(("RUNE_PLUGINS_DIR", &plugins));
    let mut all = vec!["run", "--inventory", "inventory.yaml", "--output", "json"];
    all.extend_from_slice(args);
    let out = rune(&all, dir, &vars);
    let envelope = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), envelope, text(&out))
}

/// The envelope without what differs between two runs of the same thing.
fn stable(mut envelope: Value) -> Value {
    if let Some(map) = envelope.as_object_mut() {
        for volatile in
            ["run_id", "@timestamp", "started_at", "finished_at", "duration_ms", "transport", "correlation_id"]
        {
            map.remove(volatile);
        }
    }
    envelope
}

#[test]
fn rune_run_use_ssm_prints_the_same_envelope_as_the_local_transport() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let dir = tempfile::tempdir().unwrap();
    inventory(dir.path());
    let started = Instant::now();
    let (code, ssm, all) =
        run_json(&endpoint, dir.path(), &["noop", "--host", "app-1", "--use-ssm", "--arg", "message=hi $(id) 'x'"]);
    let wall = started.elapsed();
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(ssm["transport"], "ssm", "{ssm}");
    assert_eq!(ssm["status"], "ok", "{ssm}");
    assert_eq!(ssm["output"]["data"]["message"], "hi $(id) 'x'", "the argument arrived as data: {ssm}");
    let (code, local, all) =
        run_json(&endpoint, dir.path(), &["noop", "--host", "app-1", "--arg", "message=hi $(id) 'x'"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(local["transport"], "local");
    let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(keys(&ssm), keys(&local), "same envelope fields");
    assert_eq!(stable(ssm.clone()), stable(local), "same envelope but for ids, times and transport");
    let sends = endpoint.request_bodies(crate::support::ssm::Operation::SendCommand);
    let polls = endpoint.request_bodies(crate::support::ssm::Operation::GetCommandInvocation);
    eprintln!(
        "ssm noop: {} ms in the envelope, {:?} wall for the whole CLI call, {} SendCommand, {} GetCommandInvocation",
        ssm["duration_ms"],
        wall,
        sends.len(),
        polls.len()
    );
    assert_eq!(sends.len(), 1);
    assert_eq!(
        sends[0]["Comment"],
        format!("rune {} {}", ssm["run_id"].as_str().unwrap(), ssm["correlation_id"].as_str().unwrap())
    );
}

#[test]
fn every_shipped_plugin_gives_the_same_result_through_ssm_as_locally() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let dir = tempfile::tempdir().unwrap();
    inventory(dir.path());
    let shipped: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".sh").map(str::to_owned))
        .collect();
    assert!(shipped.len() >= 4, "{shipped:?}");
    for plugin in &shipped {
        // Dry runs: the remediations report their plan and change nothing on this machine.
        let (_, ssm, all) = run_json(&endpoint, dir.path(), &[plugin, "--host", "app-1", "--use-ssm", "--dry-run"]);
        let (_, local, _) = run_json(&endpoint, dir.path(), &[plugin, "--host", "app-1", "--dry-run"]);
        assert_eq!(ssm["transport"], "ssm", "{plugin}: {all}");
        assert_eq!(ssm["status"], local["status"], "{plugin}: {ssm} vs {local}");
        assert_eq!(ssm["output"]["status"], local["output"]["status"], "{plugin}");
        assert_eq!(ssm["output"]["changed"], local["output"]["changed"], "{plugin}");
        assert_eq!(ssm["error"], local["error"], "{plugin}");
    }
}

#[test]
fn ssm_faults_map_to_the_statuses_ssh_faults_do() {
    let endpoint = SsmEndpoint::builder()
        .instance(INSTANCE, InstanceBehavior { not_found_polls: 3, throttle_first: 2, ..InstanceBehavior::default() })
        .instance(SLOW, InstanceBehavior::default())
        .instance(GONE, InstanceBehavior { undeliverable: true, ..InstanceBehavior::default() })
        .start();
    let dir = tempfile::tempdir().unwrap();
    inventory(dir.path());
    // Not visible at first and throttled: still ok.
    let (code, env, all) = run_json(&endpoint, dir.path(), &["noop", "--host", "app-1", "--use-ssm"]);
    assert_eq!((code, env["status"].as_str()), (Some(0), Some("ok")), "{all}");
    // Undeliverable: unreachable, like a host whose sshd does not answer.
    let (code, env, all) = run_json(&endpoint, dir.path(), &["noop", "--host", "app-gone", "--use-ssm"]);
    assert_eq!((code, env["status"].as_str()), (Some(1), Some("unreachable")), "{all}");
    // Not a managed instance (unknown to the endpoint): unreachable too.
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "hosts:\n  stray:\n    transport: ssm\n    ssm: { instance_id: i-0ccccccccccccccc3 }\n",
    )
    .unwrap();
    let (code, env, all) = run_json(&endpoint, dir.path(), &["noop", "--host", "stray"]);
    assert_eq!((code, env["status"].as_str()), (Some(1), Some("unreachable")), "{all}");
    assert!(env["error"].as_str().unwrap_or("").contains("not a managed instance"), "{env}");
    // A plugin past its timeout: `timeout`, and nothing of it left running.
    inventory(dir.path());
    // hang-nested leaves the plugin's process group (a nested `timeout`): the runner's sweep of its session
    // finds it, as over SSH.
    for (action, prefix) in [("hang", "rune-hang(-child)?-"), ("hang-nested", "rune-nested-")] {
        let marker = format!("m{}", std::process::id());
        let arg = format!("marker={marker}");
        let (code, env, all) = run_json(
            &endpoint,
            dir.path(),
            &[action, "--host", "app-slow", "--use-ssm", "--timeout", "2s", "--arg", &arg],
        );
        assert_eq!((code, env["status"].as_str()), (Some(1), Some("timeout")), "{action}: {all}");
        let left = std::process::Command::new("pgrep").args(["-f", &format!("{prefix}{marker}")]).output().unwrap();
        assert!(left.stdout.is_empty(), "{action} left running: {}", String::from_utf8_lossy(&left.stdout));
    }
}

/// Opt-in, against real AWS: skipped unless `RUNE_TEST_AWS_SSM_INSTANCE` names a managed instance (`i-…`/`mi-…`)
/// that the standard AWS credentials in the environment may run `AWS-RunShellScript` on (region from
/// `RUNE_TEST_AWS_REGION` or the AWS environment). Never runs in CI; see docs/transports.md, "Testing against AWS".
#[test]
fn real_aws_noop_when_an_instance_is_given() {
    let Ok(instance) = std::env::var("RUNE_TEST_AWS_SSM_INSTANCE") else {
        eprintln!("skipped: set RUNE_TEST_AWS_SSM_INSTANCE (and AWS credentials) to run against real SSM");
        return;
    };
    let region = std::env::var("RUNE_TEST_AWS_REGION").map(|r| format!(", region: {r}")).unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        format!("hosts:\n  real:\n    transport: ssm\n    ssm: {{ instance_id: {instance}{region} }}\n"),
    )
    .unwrap();
    let plugins = format!("{}/plugins", env!("CARGO_MANIFEST_DIR"));
    let out = rune(
        &[
            "run",
            "noop",
            "--host",
            "real",
            "--inventory",
            "inventory.yaml",
            "--output",
            "json",
            "--arg",
            "message=rune",
        ],
        dir.path(),
        &[("RUNE_PLUGINS_DIR", plugins.as_str())],
    );
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    eprintln!("real SSM: {envelope}");
    assert_eq!(
        (envelope["transport"].as_str(), envelope["status"].as_str()),
        (Some("ssm"), Some("ok")),
        "{}",
        text(&out)
    );
}

#[test]
fn a_fan_out_is_one_send_command_and_one_envelope_per_host() {
    let ids = ["i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c", "i-0000000000000000d"];
    let endpoint = SsmEndpoint::builder()
        .instance(ids[0], InstanceBehavior::default())
        .instance(ids[1], InstanceBehavior { not_found_polls: 2, ..InstanceBehavior::default() })
        .instance(ids[2], InstanceBehavior::default())
        .instance(ids[3], InstanceBehavior { undeliverable: true, ..InstanceBehavior::default() })
        .start();
    let dir = tempfile::tempdir().unwrap();
    let hosts: String = ids
        .iter()
        .enumerate()
        .map(|(n, id)| format!("  h{n}:\n    transport: ssm\n    ssm: {{ instance_id: {id} }}\n"))
        .collect();
    std::fs::write(dir.path().join("inventory.yaml"), format!("hosts:\n{hosts}")).unwrap();
    let env = aws_env(&endpoint.url());
    let root = env!("CARGO_MANIFEST_DIR");
    let plugins = format!("{root}/plugins:{root}/tests/fixtures/plugins");
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.push(("RUNE_PLUGINS_DIR", &plugins));
    let out = rune(
        &[
            "run",
            "where-am-i",
            "--hosts",
            "h0,h1,h2,h3",
            "--parallel",
            "2",
            "--inventory",
            "inventory.yaml",
            "--output",
            "json",
        ],
        dir.path(),
        &vars,
    );
    let envelopes: Vec<Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(envelopes.len(), 4, "{}", text(&out));
    for e in &envelopes {
        let host = e["host"].as_str().unwrap();
        if host == "h3" {
            assert_eq!(e["status"], "unreachable", "{e}");
        } else {
            assert_eq!(e["status"], "ok", "{e}");
            assert_eq!(e["output"]["data"]["host"], host, "each instance ran its own host's run: {e}");
        }
    }
    let sends: Vec<Value> = endpoint
        .request_bodies(crate::support::ssm::Operation::SendCommand)
        .into_iter()
        .filter(|b| b["Comment"].as_str().is_some_and(|c| c.starts_with("rune fan-out ")))
        .collect();
    assert_eq!(sends.len(), 1, "one SendCommand for the run (the undeliverable host then gets its cleanup): {sends:?}");
    assert_eq!(sends[0]["InstanceIds"].as_array().map(Vec::len), Some(4));
    assert_eq!(sends[0]["MaxConcurrency"], "2");
    assert_eq!(sends[0]["MaxErrors"], "4");
    let run_ids: std::collections::BTreeSet<&str> = envelopes.iter().filter_map(|e| e["run_id"].as_str()).collect();
    assert_eq!(run_ids.len(), 4, "one run id per host");
}

/// Issue 5's acceptance: `rune run noop --use-ssm` prints the same envelope as over SSH (a real sshd).
#[test]
fn noop_through_ssm_prints_the_envelope_it_prints_over_ssh() {
    let fleet = crate::fleet(1);
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("    ssm: {{ instance_id: {INSTANCE} }}\n");
    std::fs::write(dir.path().join("inventory.yaml"), crate::inventory_yaml(&fleet, fleet.known_hosts(), &extra))
        .unwrap();
    let host = fleet.hosts()[0].name.clone();
    let args = ["noop", "--host", host.as_str(), "--arg", "message=same $(either) way"];
    let (code, ssh, all) = run_json(&endpoint, dir.path(), &args);
    assert_eq!((code, ssh["transport"].as_str(), ssh["status"].as_str()), (Some(0), Some("ssh"), Some("ok")), "{all}");
    let mut via_ssm = args.to_vec();
    via_ssm.push("--use-ssm");
    let (code, ssm, all) = run_json(&endpoint, dir.path(), &via_ssm);
    assert_eq!((code, ssm["transport"].as_str(), ssm["status"].as_str()), (Some(0), Some("ssm"), Some("ok")), "{all}");
    let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(keys(&ssm), keys(&ssh), "the same fields");
    assert_eq!(stable(ssm), stable(ssh), "the same envelope but for ids, times and transport");
}

/// A plugin that answers and leaves a detached child behind (writing to its stderr for 30 s): with a 5 s timeout
/// the agent's execution timeout is 20 s, so a wrapper that waited for the child would end as `timeout`; the
/// run ends after at most the exit grace instead, `ok`, with a note in `stderr_tail` when the child still held
/// the output then (as over SSH).
#[test]
fn a_child_left_holding_the_output_does_not_hold_the_run() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let dir = tempfile::tempdir().unwrap();
    inventory(dir.path());
    let marker = format!("ssm{}", std::process::id());
    let arg = format!("marker={marker}");
    let started = Instant::now();
    let args = ["lingering-child", "--host", "app-1", "--use-ssm", "--timeout", "5s", "--arg", &arg];
    let (code, env, all) = run_json(&endpoint, dir.path(), &args);
    eprintln!("lingering-child through SSM: {:?}, stderr_tail {:?}", started.elapsed(), env["stderr_tail"]);
    assert_eq!((code, env["status"].as_str()), (Some(0), Some("ok")), "{all}");
}

/// Output past SSM's 24,000-character inline limit comes whole from the S3 output bucket (moto's S3, where the
/// test endpoint uploads like the agent), for a single run and a fan-out; without a bucket, or when the copy
/// cannot be read, the result is a truncated `protocol_error` that says why.
#[test]
fn output_past_the_inline_limit_comes_whole_from_the_s3_output_bucket() {
    let moto = crate::support::moto::MotoServer::start();
    let s3 = crate::support::ssm::s3_client(&moto.url());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(s3.create_bucket().bucket("rune-output").send()).unwrap();
    let ids = ["i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c", "i-0000000000000000d"];
    let endpoint = ids
        .iter()
        .fold(SsmEndpoint::builder(), |b, id| b.instance(id, InstanceBehavior::default()))
        .s3_output(&moto.url())
        .start();
    let dir = tempfile::tempdir().unwrap();
    let bucket = "output_s3_bucket: rune-output, output_s3_key_prefix: rune/runs";
    let sections = [bucket, bucket, "document_version: $LATEST", "output_s3_bucket: no-such-bucket"];
    let hosts: String = ids
        .iter()
        .zip(sections)
        .enumerate()
        .map(|(n, (id, extra))| format!("  h{n}:\n    transport: ssm\n    ssm: {{ instance_id: {id}, {extra} }}\n"))
        .collect();
    std::fs::write(dir.path().join("inventory.yaml"), format!("hosts:\n{hosts}")).unwrap();
    let mut env = aws_env(&endpoint.url());
    env.push(("AWS_ENDPOINT_URL_S3".into(), moto.url()));
    let root = env!("CARGO_MANIFEST_DIR");
    let plugins = format!("{root}/plugins:{root}/tests/fixtures/plugins");
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.push(("RUNE_PLUGINS_DIR", &plugins));
    let args = ["run", "big-result", "--hosts", "h0,h1,h2,h3", "--inventory", "inventory.yaml", "--output", "json"];
    let out = rune(&args, dir.path(), &vars);
    let envelopes: std::collections::BTreeMap<String, Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Value>(l).unwrap())
        .map(|e| (e["host"].as_str().unwrap_or_default().to_owned(), e))
        .collect();
    assert_eq!(envelopes.len(), 4, "{}", text(&out));
    for host in ["h0", "h1"] {
        let e = &envelopes[host];
        assert_eq!((e["status"].as_str(), e["truncated"].as_bool()), (Some("ok"), Some(false)), "{e}");
        let blob = e["output"]["data"]["blob"].as_str().unwrap_or_default();
        assert!(blob.len() > 50_000, "{host}: {} characters", blob.len());
        let digest = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), blob.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        let digest = String::from_utf8_lossy(&digest.stdout);
        assert_eq!(Some(digest.split(' ').next().unwrap_or_default()), e["output"]["data"]["sha256"].as_str());
    }
    let plain = &envelopes["h2"];
    assert_eq!((plain["status"].as_str(), plain["truncated"].as_bool()), (Some("protocol_error"), Some(true)));
    assert!(plain["error"].as_str().unwrap_or("").contains("set `ssm.output_s3_bucket`"), "{plain}");
    let missing = &envelopes["h3"];
    assert_eq!((missing["status"].as_str(), missing["truncated"].as_bool()), (Some("protocol_error"), Some(true)));
    assert!(missing["error"].as_str().unwrap_or("").contains("NoSuchBucket"), "{missing}");
    eprintln!("without a bucket: {}\nmissing bucket: {}", plain["error"], missing["error"]);
    let sends = endpoint.request_bodies(crate::support::ssm::Operation::SendCommand);
    let fan_out: Vec<&Value> =
        sends.iter().filter(|b| b["Comment"].as_str().is_some_and(|c| c.starts_with("rune fan-out "))).collect();
    assert_eq!(fan_out.len(), 1, "h0 and h1 share the bucket: one SendCommand: {sends:?}");
    let pinned: Vec<&Value> = sends.iter().filter(|b| b["DocumentVersion"] == "$LATEST").collect();
    assert_eq!(pinned.len(), 1, "h2's run, and only it, names its document version: {sends:?}");
    assert_eq!(pinned[0]["InstanceIds"][0], ids[2]);
    assert_eq!(
        (fan_out[0]["OutputS3BucketName"].as_str(), fan_out[0]["OutputS3KeyPrefix"].as_str()),
        (Some("rune-output"), Some("rune/runs"))
    );
    let listed = runtime.block_on(s3.list_objects_v2().bucket("rune-output").prefix("rune/runs/").send()).unwrap();
    assert!(
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .any(|k| k.ends_with(&format!("/{}/awsrunShellScript/0.awsrunShellScript/stdout", ids[0])))
    );
}
