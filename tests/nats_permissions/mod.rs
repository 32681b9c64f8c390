//! The NATS permissions of docs/security.md ("Least-privilege deployment"), taken from the page as written and
//! given to a real nats-server: `rune serve` (JetStream, results stream, chatops) works as user `rune`; an alert
//! relay, a chat bot and a SIEM reader can each do their part and nothing else.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::nats::NatsServer;

/// The `authorization { … }` block of docs/security.md, passwords filled in.
fn documented_authorization() -> String {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/security.md"))
        .unwrap_or_else(|e| panic!("{e}"));
    let start = page.find("authorization {").unwrap_or_else(|| panic!("no authorization block in docs/security.md"));
    let end = start + page[start..].find("\n}\n").unwrap_or_else(|| panic!("unterminated authorization block"));
    page[start..end + 2]
        .replace("$RUNE_NATS_PASSWORD", "\"rune-pw\"")
        .replace("$PROM_NATS_PASSWORD", "\"prom-pw\"")
        .replace("$BOT_NATS_PASSWORD", "\"bot-pw\"")
        .replace("$SIEM_NATS_PASSWORD", "\"siem-pw\"")
}

async fn connect(server: &NatsServer, user: &str, password: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// The next message on `subscriber` within `within`, as JSON.
async fn next(subscriber: &mut async_nats::Subscriber, within: Duration) -> Option<(String, Value)> {
    let message = tokio::time::timeout(within, subscriber.next()).await.ok()??;
    Some((message.subject.to_string(), serde_json::from_slice(&message.payload).unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nats_permissions_let_each_role_do_its_part_and_nothing_else() {
    let server = tokio::task::spawn_blocking(|| NatsServer::start_with_config(Some(&documented_authorization())))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        rules.join("perm.yaml"),
        "policy:\n  chatops:\n    allowed_actions: [noop]\n\
         rules:\n  - name: docker-noop\n    match: { labels: { alertname: DockerDown } }\n    target: { host: localhost }\n    \
         action: noop\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    std::fs::write(
        &config,
        format!(
            "nats:\n  urls: [\"{}\"]\n  auth:\n    user: rune\n    password_env: RUNE_TEST_NATS_PASSWORD\n  \
             jetstream:\n    enabled: true\n    results_stream: {{ enabled: true }}\n\
             chatops:\n  enabled: true\nwebhook:\n  listen: 127.0.0.1:0\n\
             paths:\n  rules_dir: rules\n  plugins_dirs: [{}]\nresults:\n  stdout: false\n\
             audit:\n  file: audit/rune-audit.jsonl\n",
            server.url(),
            repo.join("plugins").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (daemon, _) = tokio::task::spawn_blocking({
        let (dir, config) = (dir.path().to_owned(), config.clone());
        move || Daemon::start(&dir, &config, &[("RUNE_TEST_NATS_PASSWORD", "rune-pw")])
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The SIEM reader sees results, decisions and the audit copy.
    let siem = connect(&server, "siem", "siem-pw").await;
    let mut results = siem.subscribe("rune.results.>").await.unwrap_or_else(|e| panic!("{e}"));
    let mut decisions = siem.subscribe("rune.decisions.>").await.unwrap_or_else(|e| panic!("{e}"));
    let mut audit = siem.subscribe("rune.audit").await.unwrap_or_else(|e| panic!("{e}"));
    siem.flush().await.unwrap_or_else(|e| panic!("{e}"));

    // The relay publishes an alert (core publish into the alerts stream's subject): RUNE runs its rule.
    let relay = connect(&server, "alerts-prom", "prom-pw").await;
    let body = std::fs::read(repo.join("tests/fixtures/events/alertmanager-docker-down.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    relay.publish("rune.alerts.alertmanager.perm", body.into()).await.unwrap_or_else(|e| panic!("{e}"));
    relay.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let (subject, result) = next(&mut results, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no result reached the SIEM user:\n{}", daemon.stderr()));
    assert_eq!((subject.as_str(), result["status"].as_str()), ("rune.results.noop.localhost", Some("ok")), "{result}");
    let (_, decision) = next(&mut decisions, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no decision"));
    assert_eq!(decision["rule"], "docker-noop", "{decision}");
    assert!(next(&mut audit, Duration::from_secs(10)).await.is_some(), "no audit copy");

    // The bot asks for a run and gets RUNE's answer on its inbox.
    let bot = connect(&server, "chatbot", "bot-pw").await;
    let request = json!({"action": "noop", "target": "localhost", "requester": "alice"}).to_string();
    let reply =
        tokio::time::timeout(Duration::from_secs(30), bot.request("rune.requests.noop", request.clone().into()))
            .await
            .unwrap_or_else(|_| panic!("no reply"))
            .unwrap_or_else(|e| panic!("request: {e}"));
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    assert_eq!(reply["accepted"], true, "{reply}");

    // Nobody else may speak for RUNE or for the alert sources: a forged result, a forged alert from the SIEM
    // reader, a request from the relay — none arrives anywhere.
    let drain = Instant::now() + Duration::from_secs(30);
    while next(&mut results, Duration::from_secs(3)).await.is_some() {
        assert!(Instant::now() < drain, "results keep coming");
    }
    while next(&mut decisions, Duration::from_secs(1)).await.is_some() {}
    let _ = relay.publish("rune.results.noop.forged", "{\"status\":\"ok\"}".into()).await;
    let _ = relay.publish("rune.requests.noop", request.clone().into()).await;
    let _ = relay.flush().await;
    let _ = siem.publish("rune.alerts.alertmanager.forged", "{}".into()).await;
    let _ = siem.flush().await;
    let _ = bot.publish("rune.results.noop.forged", "{}".into()).await;
    let _ = bot.flush().await;
    assert_eq!(next(&mut results, Duration::from_secs(3)).await, None, "a forged result or a relay's request ran");
    assert_eq!(next(&mut decisions, Duration::from_secs(1)).await, None, "a forged alert or request was decided");
    assert!(!daemon.stderr().contains("Permissions Violation"), "RUNE lacks a permission:\n{}", daemon.stderr());
    // The server said so, for each of the four, and never for RUNE.
    let refused = [
        ("alerts-prom", "rune.results.noop.forged"),
        ("alerts-prom", "rune.requests.noop"),
        ("siem", "rune.alerts.alertmanager.forged"),
        ("chatbot", "rune.results.noop.forged"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        let said = |(user, subject): &(&str, &str)| {
            log.lines().any(|l| {
                l.contains(&format!("user:{user}\"")) && l.contains(&format!("Violation - Subject \"{subject}\""))
            })
        };
        if refused.iter().all(said) {
            assert!(!log.contains("user:rune\""), "RUNE was refused something:\n{log}");
            break;
        }
        assert!(Instant::now() < deadline, "the server did not refuse all of {refused:?}:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
