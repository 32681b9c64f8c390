//! The SSM transport's requests through the real SDK against moto's server (`support::moto`): what `rune run
//! --use-ssm` sends (document, comment, execution timeout, the script carrying data only as base64). moto does
//! not execute commands — `support::ssm` does, in `tests/ssm/`. And Parameter Store, which moto serves for
//! real: secret arguments, the secrets cache filled by path, and the settings' secrets given by reference
//! (`rune config check`, `rune serve`).

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

    // A plugin that echoes the value back: the result shows `<redacted>` in its place.
    let echo = ["run", "echo-args", "--host", "localhost", "--output", "json", "--arg", "text=ssm:/rune/test/token"];
    let out = rune(&echo, dir.path(), &vars);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(CANARY), "an echoed value leaked into the result or the log: {all}");
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    assert_eq!(envelope["output"]["data"]["text"], "<redacted>", "{envelope}");

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

// ---- secrets named by reference in the settings (`*_ref: ssm:/…`), and the prefetch by path ----

const NATS_CANARY: &str = "canary-nats-5d1e0b";
const HOOK_CANARY: &str = "canary-hook-93a4c7";

/// A settings folder: `rune.yaml` holding `yaml`, beside empty `rules/` and `plugins/` folders.
fn settings_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("rune.yaml"), yaml).unwrap();
    dir
}

fn with_vars<'a>(env: &'a [(String, String)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend_from_slice(extra);
    vars
}

#[test]
fn config_check_reads_secret_references_and_shows_the_reference_never_the_value() {
    let moto = MotoServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = moto.ssm_client();
    put_secure(&client, &runtime, "/rune/test/nats-token", NATS_CANARY);
    put_secure(&client, &runtime, "/rune/test/hooks/generic", HOOK_CANARY);
    let dir = settings_dir(
        "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    token_ref: ssm:/rune/test/nats-token\n\
         webhook:\n  generic:\n    hmac_secret_ref: ssm:/rune/test/hooks/generic\n",
    );
    let env = moto.aws_env();
    let vars = with_vars(&env, &[("RUNE_LOG", "debug")]);

    let out = rune(&["config", "check", "--config", "rune.yaml"], dir.path(), &vars);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(NATS_CANARY) && !all.contains(HOOK_CANARY), "a value leaked: {all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().next().unwrap().ends_with("; 2 secret(s) read from Parameter Store)"), "{stdout}");
    let token = stdout.lines().find(|l| l.starts_with("nats.auth.token = ")).unwrap();
    assert!(token.contains("\"<redacted>\"") && token.ends_with("# ssm:/rune/test/nats-token (nats.auth.token_ref)"));
    let hmac = stdout.lines().find(|l| l.starts_with("webhook.generic.secret = ")).unwrap();
    assert!(
        hmac.contains("\"<redacted>\"")
            && hmac.ends_with("# ssm:/rune/test/hooks/generic (webhook.generic.hmac_secret_ref)")
    );

    // The same through the variable layer, as JSON.
    let dir = settings_dir("nats:\n  urls: [nats://127.0.0.1:4222]\n");
    let vars = with_vars(
        &env,
        &[
            ("RUNE_NATS__AUTH__TOKEN_REF", "ssm:/rune/test/nats-token"),
            ("RUNE_WEBHOOK__GENERIC__HMAC_SECRET_REF", "ssm:/rune/test/hooks/generic"),
        ],
    );
    let out = rune(&["config", "check", "--config", "rune.yaml", "--output", "json"], dir.path(), &vars);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(NATS_CANARY) && !all.contains(HOOK_CANARY), "a value leaked: {all}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    assert_eq!(doc["settings"]["nats"]["auth"], serde_json::json!({"method": "token", "token": "<redacted>"}));
    assert_eq!(
        doc["secret_refs"][0],
        serde_json::json!({"field": "nats.auth.token_ref", "key": "nats.auth.token",
                           "reference": "ssm:/rune/test/nats-token", "resolved": true})
    );
    assert_eq!(doc["secret_refs"][1]["reference"], "ssm:/rune/test/hooks/generic");
}

#[test]
fn config_check_names_the_field_and_reference_of_a_missing_parameter() {
    let moto = MotoServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    put_secure(&moto.ssm_client(), &runtime, "/rune/test/hooks/generic", HOOK_CANARY);
    let dir = settings_dir(
        "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    token_ref: ssm:/rune/test/missing\n\
         webhook:\n  generic:\n    bearer_token_ref: ssm:/rune/test/hooks/generic\n",
    );
    let env = moto.aws_env();
    let out = rune(&["config", "check", "--config", "rune.yaml"], dir.path(), &with_vars(&env, &[]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(out.stdout.is_empty(), "{all}");
    assert!(
        all.contains("error: rune.yaml:4:16: nats.auth.token_ref: secret ssm:/rune/test/missing: no such parameter"),
        "{all}"
    );
    assert!(all.contains("1 error(s); the settings were not loaded"), "the other reference was read: {all}");
    assert!(!all.contains(HOOK_CANARY), "{all}");

    // --offline checks the syntax only: valid, the references shown as not read.
    let out = rune(&["config", "check", "--config", "rune.yaml", "--offline"], dir.path(), &with_vars(&env, &[]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("# ssm:/rune/test/missing (nats.auth.token_ref), not read"), "{all}");

    // No credentials at all: as clear, and as early.
    let no_credentials: Vec<(String, String)> =
        env.iter().filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET")).cloned().collect();
    let out = rune(&["config", "check", "--config", "rune.yaml"], dir.path(), &with_vars(&no_credentials, &[]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("nats.auth.token_ref: secret ssm:/rune/test/missing:"), "{all}");
    assert!(all.contains("webhook.generic.bearer_token_ref: secret ssm:/rune/test/hooks/generic:"), "{all}");
}

/// Runs `rune serve` until it exits (at most 60 s); stdout and stderr as text, and the exit code.
fn serve_until_exit(dir: &std::path::Path, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rune"));
    command.args(["serve", "--config", "rune.yaml"]).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().to_ascii_uppercase().starts_with("RUNE_") {
            command.env_remove(key);
        }
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    command.envs(vars.iter().copied()).stdout(log.reopen().unwrap()).stderr(log.reopen().unwrap());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run rune serve: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rune serve did not exit: {}", std::fs::read_to_string(log.path()).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(log.path()).unwrap_or_default())
}

#[test]
fn serve_with_a_missing_secret_reference_exits_before_connecting_to_anything() {
    let moto = MotoServer::start();
    // Stands for the NATS server: it must never see a connection.
    let nats = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    nats.set_nonblocking(true).unwrap();
    let dir = settings_dir(&format!(
        "nats:\n  urls: [nats://{}]\n  auth:\n    token_ref: ssm:/rune/test/missing\n\
         ssm:\n  secrets_prefetch: [/rune/test/]\n",
        nats.local_addr().unwrap()
    ));
    let env = moto.aws_env();
    let port = crate::support::sshd::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (code, output) = serve_until_exit(dir.path(), &with_vars(&env, &[("RUNE_WEBHOOK__LISTEN", &listen)]));
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("error: rune.yaml:4:16: nats.auth.token_ref: secret ssm:/rune/test/missing: no such parameter"),
        "{output}"
    );
    assert!(output.contains("1 error(s) in the settings"), "{output}");
    assert!(!output.contains("listening"), "{output}");
    assert!(matches!(nats.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "NATS was contacted");
}

#[test]
fn serve_reads_a_webhook_token_by_reference_at_start_and_checks_requests_against_it() {
    use std::io::{Read as _, Write as _};
    let moto = MotoServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = moto.ssm_client();
    put_secure(&client, &runtime, "/rune/serve/am-token", HOOK_CANARY);
    put_secure(&client, &runtime, "/rune/serve/other", "unused");
    let dir = settings_dir(
        "webhook:\n  alertmanager:\n    bearer_token_ref: ssm:/rune/serve/am-token\n\
         ssm:\n  secrets_prefetch: [/rune/serve/]\n",
    );
    let port = crate::support::sshd::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rune"));
    command.args(["serve", "--config", "rune.yaml"]).current_dir(dir.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().to_ascii_uppercase().starts_with("RUNE_") {
            command.env_remove(key);
        }
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    let env = moto.aws_env();
    command
        .envs(with_vars(&env, &[("RUNE_WEBHOOK__LISTEN", &listen), ("RUNE_LOG", "debug")]))
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run rune serve: {e}"));
    let output = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !output().contains("rune serve: listening") {
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("rune serve did not start: {}", output());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Delete the parameter: the token was read at start, so requests are still checked against it.
    runtime.block_on(client.delete_parameter().name("/rune/serve/am-token").send()).unwrap();
    let post = |token: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let body = br#"{"version":"4","status":"firing","alerts":[]}"#;
        let request = format!(
            "POST /hooks/alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0)
    };
    assert_eq!(post("wrong"), 401, "{}", output());
    let accepted = post(HOOK_CANARY);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    let all = output();
    assert!((200..300).contains(&accepted), "the token from Parameter Store was not accepted ({accepted}): {all}");
    assert_eq!(status.code(), Some(0), "{all}");
    assert!(all.contains("secrets prefetched"), "{all}");
    assert!(!all.contains(HOOK_CANARY), "the token leaked into the logs: {all}");
}
