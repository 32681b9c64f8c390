//! The SSM transport's requests through the real SDK against moto's server (`support::moto`): what `rune run
//! --use-ssm` sends (document, comment, execution timeout, the script carrying data only as base64). moto does
//! not execute commands — `support::ssm` does, in `tests/ssm/`.

use base64::Engine as _;
use serde_json::Value;

use crate::support::moto::MotoServer;
use crate::support::{rune, text};

const INSTANCE: &str = "i-0123456789abcdef0";

#[test]
fn rune_run_use_ssm_sends_one_command_whose_script_carries_data_only_as_base64() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        format!("hosts:\n  app-1:\n    address: 127.0.0.1\n    user: ops\n    ssm: {{ instance_id: {INSTANCE} }}\n"),
    )
    .unwrap();
    let plugins = format!("{}/plugins", env!("CARGO_MANIFEST_DIR"));
    let hostile = "$(touch /tmp/pwned) `id` ' \" ; a.> *";
    let env = moto.aws_env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.push(("RUNE_PLUGINS_DIR", &plugins));
    let message = format!("message={hostile}");
    let out = rune(
        &[
            "run",
            "noop",
            "--use-ssm",
            "--host",
            "app-1",
            "--inventory",
            "inventory.yaml",
            "--output",
            "json",
            "--arg",
            &message,
            "--correlation-id",
            "moto-1",
            "--timeout",
            "20s",
        ],
        dir.path(),
        &vars,
    );
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(envelope["transport"], "ssm", "{envelope}");
    assert_eq!(envelope["host"], "app-1");
    // moto answers Success with no output: no runner start marker, so the run is an error, never `ok`.
    assert_eq!(envelope["status"], "error", "{envelope}");

    let client = moto.ssm_client();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let commands = runtime.block_on(client.list_commands().send()).unwrap_or_else(|e| panic!("{e:?}"));
    let [command] = commands.commands() else { panic!("one command expected: {commands:?}") };
    assert_eq!(command.document_name(), Some("AWS-RunShellScript"));
    assert_eq!(command.instance_ids(), [INSTANCE.to_owned()]);
    let run_id = envelope["run_id"].as_str().unwrap();
    assert_eq!(command.comment(), Some(format!("rune {run_id} moto-1").as_str()));
    let params = command.parameters().unwrap();
    assert_eq!(params["executionTimeout"], ["35".to_owned()], "20 s + kill-after 5 s + grace 10 s");
    let [script] = params["commands"].as_slice() else { panic!("one script: {params:?}") };
    assert!(!script.contains("touch /tmp/pwned") && !script.contains("`id`"), "alert data in clear: {script}");
    // The two single-quoted literals are base64; the runner's decodes to a program holding the input.
    let literals: Vec<&str> = script.split('\'').skip(1).step_by(2).filter(|l| l.len() > 8).collect();
    assert_eq!(literals.len(), 2, "{script}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrapper = String::from_utf8(b64.decode(literals[0]).unwrap()).unwrap();
    assert!(wrapper.contains("rune-ssm-frame 1"), "{wrapper}");
    let runner = String::from_utf8(b64.decode(literals[1]).unwrap()).unwrap();
    assert!(runner.contains(run_id), "the runner carries the run id");
    assert!(!runner.contains(hostile), "even decoded, the argument is printf-escaped, never shell text");
}

const CANARY: &str = "canary-7f3a9c-Zx";

fn put_secure(client: &aws_sdk_ssm::Client, runtime: &tokio::runtime::Runtime, name: &str, value: &str) {
    runtime
        .block_on(
            client
                .put_parameter()
                .name(name)
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .send(),
        )
        .unwrap_or_else(|e| panic!("put {name}: {e:?}"));
}

#[test]
fn secret_arguments_are_resolved_from_parameter_store_and_never_shown() {
    use sha2::Digest as _;
    let moto = MotoServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = moto.ssm_client();
    put_secure(&client, &runtime, "/rune/test/token", CANARY);
    put_secure(&client, &runtime, "/rune/test/bad", "has spaces, breaks the pattern");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        format!("hosts:\n  localhost:\n    transport: local\n    ssm: {{ instance_id: {INSTANCE} }}\n"),
    )
    .unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let plugins = format!("{root}/plugins:{root}/tests/fixtures/plugins");
    let env = moto.aws_env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend([("RUNE_PLUGINS_DIR", plugins.as_str()), ("RUNE_LOG", "debug")]);
    let run = |arg: &str, extra: &[&str]| {
        let mut args = vec!["run", "secret-digest", "--host", "localhost", "--output", "json", "--arg", arg];
        args.extend_from_slice(extra);
        rune(&args, dir.path(), &vars)
    };

    let out = run("token=ssm:/rune/test/token", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(CANARY), "the value leaked into the output or the debug log: {all}");
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    let digest = hex::encode(sha2::Sha256::digest(CANARY.as_bytes()));
    assert_eq!(envelope["output"]["data"]["sha256"], digest.as_str(), "the plugin got the decrypted value");

    let out = run("token=ssm:/rune/test/missing", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("secret ssm:/rune/test/missing: no such parameter"), "{}", text(&out));
    assert!(out.stdout.is_empty(), "nothing ran: {}", text(&out));

    let out = run("token=ssm:/rune/test/bad", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("the value of ssm:/rune/test/bad does not satisfy"), "{}", text(&out));
    assert!(!text(&out).contains("has spaces"), "the refusal shows the value: {}", text(&out));

    let out = run("token=ssm:/rune/test/token", &["--use-ssm"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("are not sent through SSM"), "{}", text(&out));

    let out = run("token=ssm:relative", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not a Parameter Store reference"), "{}", text(&out));
}

// ---- the secrets cache filled by path (`GetParametersByPath`) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_reads_a_whole_path_page_by_page_and_runs_are_served_from_the_cache() {
    use rune::secrets::{ParameterStore, Prefetched, SecretRef};
    use std::time::Duration;
    let moto = MotoServer::start();
    let client = moto.ssm_client();
    let put = |name: String, value: String| {
        let client = client.clone();
        async move {
            client
                .put_parameter()
                .name(&name)
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {name}: {e:?}"));
        }
    };
    // 14 parameters under /rune/pf, nested two levels (more than one page of 10), and one elsewhere.
    for i in 0..7 {
        put(format!("/rune/pf/app/p{i}"), format!("app-{i}")).await;
        put(format!("/rune/pf/db/replica/q{i}"), format!("db-{i}")).await;
    }
    put("/rune/elsewhere/x".into(), "x-value".into()).await;
    let reference = |path: &str| SecretRef::parse(&format!("ssm:{path}")).unwrap().unwrap();

    let store = ParameterStore::with_client(client.clone(), Duration::from_secs(300), 100);
    assert_eq!(store.prefetch("/rune/pf/").await, Ok(Prefetched { cached: 14, truncated: false }));
    assert_eq!(store.cached(), 14, "recursive, every page");
    // Served from the cache: gone from Parameter Store, still there for the runs.
    client.delete_parameter().name("/rune/pf/db/replica/q3").send().await.unwrap();
    assert_eq!(store.get(&reference("/rune/pf/db/replica/q3")).await.unwrap().expose(), "db-3");
    assert_eq!(store.cached(), 14);
    // A miss falls back to GetParameter, as before.
    assert_eq!(store.get(&reference("/rune/elsewhere/x")).await.unwrap().expose(), "x-value");
    assert_eq!(store.cached(), 15);

    // Bounded: a full cache stops the prefetch (nothing evicted), and says so.
    let small = ParameterStore::with_client(client.clone(), Duration::from_secs(300), 4);
    assert_eq!(small.prefetch("/rune/pf").await, Ok(Prefetched { cached: 4, truncated: true }));
    assert_eq!(small.cached(), 4);
    // Nothing under a path is not an error.
    assert_eq!(store.prefetch("/rune/none").await, Ok(Prefetched { cached: 0, truncated: false }));
}
