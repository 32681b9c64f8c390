//! The bridge on a real nats-server: alerts in on NATS subjects (core and JetStream), plugins run (local
//! transport), decisions and results out on NATS with the alert's correlation id; chatops request/reply;
//! dead letters; a server restart mid-stream loses no alert and runs none twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use rune::bridge::{Bridge, BridgeOptions};
use rune::engine::Engine;
use rune::event::Limits;
use rune::inventory::Inventory;
use rune::metrics::Metrics;
use rune::orchestrator::Orchestrator;
use rune::plugins::Registry;
use rune::results::nats::{CORRELATION_HEADER, NatsPublisher};
use rune::sources::nats::{JetStreamIntake, run_core, run_jetstream, run_requests};
use rune::transport::ssh::SshTransport;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::nats::{NatsServer, test_intake};

const RULES: &str = "
policy:
  rate_limit:
    global: { count: 100000, per: 1s }
    host: { count: 100000, per: 1s }
  chatops:
    allowed_actions: [noop]
rules:
  - name: hello
    match: { labels: { alertname: Hello } }
    target: { host_from: \"{{ labels.instance | strip_port }}\" }
    action: noop
    args: { message: \"{{ labels.alertname }} {{ labels.n | default('') }}\" }
    dedup: { window: 1h }
";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn bridge(client: &async_nats::Client) -> Bridge {
    bridge_with(client, None)
}

/// With `results_stream`, results are published through JetStream (acknowledged, retried across a reconnection),
/// as `rune serve` does when a results stream is configured.
fn bridge_with(client: &async_nats::Client, results_stream: Option<async_nats::jetstream::Context>) -> Bridge {
    let registry = Arc::new(Registry::load(&[repo().join("plugins")]));
    let inventory = Arc::new(Inventory::embedded_default().unwrap_or_else(|e| panic!("{e:?}")));
    let files = vec![(PathBuf::from("rules.yaml"), RULES.to_owned())];
    let set = rune::rules::parse_files(&files, &registry, &inventory).unwrap_or_else(|e| panic!("{e:?}"));
    let engine = Engine::new(set, registry.clone(), inventory.clone());
    let orchestrator = Orchestrator::new(registry, inventory, SshTransport::default());
    let publisher = Arc::new(NatsPublisher::new(client.clone(), results_stream, "rune.results", "rune.decisions"));
    let options =
        BridgeOptions { rules_dir: repo().join("rules"), max_in_flight: 8, shutdown_grace: Duration::from_secs(30) };
    Bridge::new(engine, orchestrator, publisher, Metrics::new(), options)
}

/// One Alertmanager v4 payload with one firing alert.
fn alertmanager(fingerprint: &str, instance: &str, n: usize) -> Bytes {
    Bytes::from(
        json!({
            "version": "4", "groupKey": "{}:{alertname=\"Hello\"}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "rune", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "Hello", "instance": instance, "n": n.to_string()},
                "annotations": {}, "startsAt": "2026-11-24T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090", "fingerprint": fingerprint
            }]
        })
        .to_string(),
    )
}

async fn next_json(sub: &mut async_nats::Subscriber, what: &str) -> (async_nats::Message, Value) {
    let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 30 s"))
        .unwrap_or_else(|| panic!("{what}: subscription ended"));
    let value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    (msg, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_on_nats_runs_its_plugin_and_decisions_and_results_come_back_on_nats() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let b = bridge(&client);
    let stop = CancellationToken::new();
    let intake = tokio::spawn(run_core(
        client.clone(),
        vec!["rune.alerts.>".into()],
        "rune".into(),
        "rune.dead_letter".into(),
        b.clone(),
        Limits::default(),
        stop.clone(),
    ));
    let mut results = client.subscribe("rune.results.>").await.unwrap_or_else(|e| panic!("{e}"));
    let mut decisions = client.subscribe("rune.decisions.>").await.unwrap_or_else(|e| panic!("{e}"));
    let mut dead = client.subscribe("rune.dead_letter").await.unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await; // the intake's subscription is in place

    let mut headers = HeaderMap::new();
    headers.insert(CORRELATION_HEADER, "corr-nats-1");
    client
        .publish_with_headers("rune.alerts.alertmanager", headers, alertmanager("fp-1", "localhost:9100", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (msg, decision) = next_json(&mut decisions, "decision").await;
    assert_eq!(msg.subject.as_str(), "rune.decisions.hello");
    assert_eq!(decision["decision"], "admitted", "{decision}");
    let (msg, result) = next_json(&mut results, "result").await;
    assert_eq!(msg.subject.as_str(), "rune.results.noop.localhost");
    let header = msg.headers.as_ref().and_then(|h| h.get(CORRELATION_HEADER)).map(|v| v.as_str().to_owned());
    assert_eq!(header.as_deref(), Some("corr-nats-1"));
    let msg_id = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
    assert_eq!(msg_id.as_deref(), result["run_id"].as_str());
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["correlation_id"], "corr-nats-1");
    assert_eq!(result["trigger"]["rule"], "hello");
    assert_eq!(result["output"]["data"]["message"], "Hello 1");

    // The same alert again: a published duplicate. A host outside the inventory: a published refusal.
    client.publish("rune.alerts.alertmanager", alertmanager("fp-1", "localhost:9100", 1)).await.ok();
    let (_, d) = next_json(&mut decisions, "duplicate decision").await;
    assert_eq!((d["decision"].as_str(), d["reason"].as_str()), (Some("suppressed"), Some("duplicate")));
    client.publish("rune.alerts.alertmanager", alertmanager("fp-2", "web-9.example:9100", 2)).await.ok();
    let (_, d) = next_json(&mut decisions, "unknown-target decision").await;
    assert_eq!(d["reason"], "unknown_target", "{d}");
    assert_eq!(d["host"], "web-9.example");

    // A payload RUNE cannot read goes to the dead-letter subject with the parse error.
    client.publish("rune.alerts.alertmanager", Bytes::from_static(b"{\"version\":\"4\",\"alerts\":[{}]}")).await.ok();
    let (_, dl) = next_json(&mut dead, "dead letter").await;
    assert!(dl["error"].as_str().is_some_and(|e| e.contains("alerts[0].status")), "{dl}");

    stop.cancel();
    let _ = intake.await;
    assert_eq!(b.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatops_requests_get_a_reply_and_their_result_follows() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let b = bridge(&client);
    let stop = CancellationToken::new();
    let intake = tokio::spawn(run_requests(
        client.clone(),
        "rune.requests".into(),
        "rune".into(),
        "rune.results".into(),
        b.clone(),
        Limits::default(),
        stop.clone(),
    ));
    let mut results = client.subscribe("rune.results.>").await.unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ask = |action: &str, body: Value| {
        let client = client.clone();
        let subject = format!("rune.requests.{action}");
        async move {
            let reply = client.request(subject, Bytes::from(body.to_string())).await.unwrap_or_else(|e| panic!("{e}"));
            serde_json::from_slice::<Value>(&reply.payload).unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let reply = ask(
        "noop",
        json!({"action": "noop", "target": "localhost", "args": {"message": "from chat"}, "requester": "alice", "correlation_id": "chat-1"}),
    )
    .await;
    assert_eq!(reply["accepted"], true, "{reply}");
    assert_eq!(reply["results_subject"], "rune.results.noop.localhost");
    let (_, result) = next_json(&mut results, "chatops result").await;
    assert_eq!(result["correlation_id"], "chat-1");
    assert_eq!(result["operator"], "chatops:alice");
    assert_eq!(result["output"]["data"]["message"], "from chat");
    let refused =
        ask("restart-docker", json!({"action": "restart-docker", "target": "localhost", "requester": "bob"})).await;
    assert_eq!(
        (refused["accepted"].as_bool(), refused["reason"].as_str()),
        (Some(false), Some("not_allowed")),
        "{refused}"
    );
    let mismatch = ask("noop", json!({"action": "gather-logs", "target": "localhost", "requester": "bob"})).await;
    assert_eq!(mismatch["reason"], "invalid_request", "{mismatch}");
    stop.cancel();
    let _ = intake.await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_intake_survives_a_server_restart_without_losing_or_doubling_an_alert() {
    let mut server = NatsServer::start();
    let client = connect(&server).await;
    // Results through a results stream: a result published while the server restarts is retried, not lost (core
    // NATS would drop it, and a subscriber would miss it). The stream is what the test counts.
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "RUNE_RESULTS".into(),
        subjects: vec!["rune.results.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("results stream: {e}"));
    let b = bridge_with(&client, Some(js.clone()));
    let stop = CancellationToken::new();
    let settings = JetStreamIntake { ack_wait: Duration::from_secs(10), concurrency: 32, ..test_intake() };
    let intake = tokio::spawn(run_jetstream(client.clone(), settings, b.clone(), Limits::default(), stop.clone()));
    // Wait for the stream the intake creates.
    for _ in 0..100 {
        if js.get_stream("RUNE_ALERTS").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publish = |from: usize, to: usize| {
        let js = js.clone();
        async move {
            for i in from..to {
                // Every alert twice: the copy must be suppressed, never run.
                for _ in 0..2 {
                    let ack = js
                        .publish(
                            format!("rune.alerts.alertmanager.{i}"),
                            alertmanager(&format!("fp-{i}"), "localhost", i),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("publish {i}: {e}"));
                    ack.await.unwrap_or_else(|e| panic!("ack {i}: {e}"));
                }
            }
        }
    };
    publish(0, 10).await;
    server.restart();
    publish(10, 20).await;
    // Every result in the stream, once it holds 20 — and a moment more: anything late would be a double run.
    let mut stream = js.get_stream("RUNE_RESULTS").await.unwrap_or_else(|e| panic!("{e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        if stored >= 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {stored} of 20 results within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = stream.info().await.unwrap_or_else(|e| panic!("{e}")).state.last_sequence;
    let mut seen = BTreeMap::new();
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else { continue };
        let result: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        let n = result["output"]["data"]["message"].as_str().unwrap_or("").to_owned();
        *seen.entry(n).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 20, "{seen:?}");
    assert!(seen.values().all(|&c| c == 1), "an alert ran twice: {seen:?}");
    stop.cancel();
    let _ = intake.await;
    b.shutdown().await;
}
