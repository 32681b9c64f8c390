//! The bridge on a real nats-server: alerts in on NATS subjects (core and JetStream), plugins run (local
//! transport), decisions and results out on NATS with the alert's correlation id; chatops request/reply;
//! dead letters; a server restart mid-stream loses no alert and runs none twice; a server killed for longer than
//! the old retry budget loses no result; what core NATS does with results published while disconnected.

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
use rune::results::ResultEnvelope;
use rune::results::nats::{CORRELATION_HEADER, NatsPublisher};
use rune::results::outbox::OutboxSettings;
use rune::results::publish::Publish;
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
    let publisher = NatsPublisher::new(client.clone(), results_stream, "rune.results", "rune.decisions");
    bridge_of(RULES, Arc::new(publisher), Metrics::new(), 8)
}

/// The bridge with `rules`, the shipped plugins and the test fixtures, on the embedded inventory (localhost).
fn bridge_of(rules: &str, publisher: Arc<NatsPublisher>, metrics: Metrics, max_in_flight: usize) -> Bridge {
    let registry = Arc::new(Registry::load(&[repo().join("plugins"), repo().join("tests/fixtures/plugins")]));
    let inventory = Arc::new(Inventory::embedded_default().unwrap_or_else(|e| panic!("{e:?}")));
    let files = vec![(PathBuf::from("rules.yaml"), rules.to_owned())];
    let set = rune::rules::parse_files(&files, &registry, &inventory).unwrap_or_else(|e| panic!("{e:?}"));
    let engine = Engine::new(set, registry.clone(), inventory.clone());
    let orchestrator = Orchestrator::new(registry, inventory, SshTransport::default());
    let options =
        BridgeOptions { rules_dir: repo().join("rules"), max_in_flight, shutdown_grace: Duration::from_secs(30) };
    Bridge::new(engine, orchestrator, publisher, metrics, options)
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

/// The results stream the tests count results in (`RUNE_RESULTS` on `rune.results.>`), with `duplicate_window`.
async fn results_stream(js: &async_nats::jetstream::Context, duplicate_window: Duration) {
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "RUNE_RESULTS".into(),
        subjects: vec!["rune.results.>".into()],
        duplicate_window,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("results stream: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_intake_survives_a_server_restart_without_losing_or_doubling_an_alert() {
    let mut server = NatsServer::start();
    let client = connect(&server).await;
    // Results through a results stream: a result published while the server restarts is retried, not lost (core
    // NATS would drop it, and a subscriber would miss it). The stream is what the test counts.
    let js = async_nats::jetstream::new(client.clone());
    results_stream(&js, Duration::from_secs(120)).await;
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
    wait_until_stored(&mut stream, 20).await;
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

/// Waits (60 s at most) until `stream` holds at least `n` messages.
async fn wait_until_stored(stream: &mut async_nats::jetstream::stream::Stream, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        if stored >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {stored} of {n} results stored within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times each line occurs in a ledger file written by the `mark-run` fixture (one line per plugin start).
fn ledger_counts(path: &std::path::Path) -> BTreeMap<String, usize> {
    let mut runs = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *runs.entry(line.to_owned()).or_default() += 1;
    }
    runs
}

/// The value of an unlabelled metric (panics when it is not exposed).
fn metric(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.encode();
    let line = text.lines().find(|l| l.split(' ').next() == Some(name));
    line.and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Every message of `stream`, parsed.
async fn stream_records(stream: &mut async_nats::jetstream::stream::Stream) -> Vec<Value> {
    let last = stream.info().await.unwrap_or_else(|e| panic!("stream info: {e}")).state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else { continue };
        out.push(serde_json::from_slice(&msg.payload).unwrap_or_default());
    }
    out
}

/// Issue 6 (4): nats-server SIGKILLed while alerts flow and runs are in flight, kept down for longer than a
/// result's old retry budget (five tries, ~12 s), then restarted on the same port and store. The results of the
/// runs that finished during the outage are kept (not given up after five tries) and published after the
/// reconnection: every distinct alert runs exactly once (the plugin's own ledger), every result is in the results
/// stream exactly once, and the consumer has nothing left unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_runs_finished_during_a_long_nats_outage_are_published_once_it_is_back() {
    const DISTINCT: usize = 30;
    let mut server = NatsServer::start();
    let client = connect(&server).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ledger = dir.path().join("ledger");
    std::fs::write(&ledger, "").unwrap_or_else(|e| panic!("{e}"));
    let js = async_nats::jetstream::new(client.clone());
    results_stream(&js, Duration::from_secs(300)).await;
    // mark-run appends its n to the ledger as it starts and takes 0.4 s; four run slots, so runs are in flight
    // whenever alerts are coming.
    let rules = format!(
        "
policy:
  rate_limit:
    global: {{ count: 100000, per: 1s }}
    host: {{ count: 100000, per: 1s }}
rules:
  - name: mark
    match: {{ labels: {{ alertname: Hello }} }}
    target: {{ host: localhost }}
    action: mark-run
    args: {{ n: \"{{{{ labels.n }}}}\", ledger: \"{}\" }}
    dedup: {{ window: 1h }}
",
        ledger.display()
    );
    let metrics = Metrics::new();
    let outbox = OutboxSettings { retry_for: Duration::from_secs(300), max_pending: 1000 };
    let publisher = Arc::new(
        NatsPublisher::new(client.clone(), Some(js.clone()), "rune.results", "rune.decisions")
            .with_outbox(outbox, metrics.clone()),
    );
    let b = bridge_of(&rules, publisher.clone(), metrics.clone(), 4);
    let stop = CancellationToken::new();
    let settings = JetStreamIntake { ack_wait: Duration::from_secs(10), concurrency: 32, ..test_intake() };
    let intake = tokio::spawn(run_jetstream(client.clone(), settings, b.clone(), Limits::default(), stop.clone()));
    for _ in 0..100 {
        if js.get_stream("RUNE_ALERTS").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The alert source: each alert twice, one alert every 100 ms; each copy is retried until the stream
    // acknowledges it (as Alertmanager retries a webhook), so alerts keep coming across the outage.
    let source = tokio::spawn({
        let js = js.clone();
        async move {
            for n in 0..DISTINCT {
                for copy in 0..2 {
                    let id = format!("alert-{n}-{copy}");
                    loop {
                        let mut headers = HeaderMap::new();
                        headers.insert("Nats-Msg-Id", id.as_str());
                        let body = alertmanager(&format!("fp-{n}"), "localhost", n);
                        let sent = async {
                            let ack = js
                                .publish_with_headers(format!("rune.alerts.alertmanager.{n}"), headers, body)
                                .await
                                .map_err(|e| e.to_string())?;
                            ack.await.map_err(|e| e.to_string())
                        };
                        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), sent).await {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // Mid-flow, with runs in flight: SIGKILL the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ledger_counts(&ledger).len() < 6 || b.in_flight() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the flow never got going: {:?}", ledger_counts(&ledger));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| server.stop());
    let ran_before_kill = ledger_counts(&ledger).len();
    // Down for longer than the five tries (~12 s) a result used to get before it was dropped.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let pending_at_restart = publisher.pending_results();
    tokio::task::block_in_place(|| server.restart());
    source.await.unwrap_or_else(|e| panic!("alert source: {e}"));
    // Everything settles: every alert ran, every result is acknowledged, the consumer has nothing outstanding.
    let mut stream = js.get_stream("RUNE_RESULTS").await.unwrap_or_else(|e| panic!("{e}"));
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream("rune", "RUNE_ALERTS").await.unwrap_or_else(|e| panic!("{e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stored = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        let info = consumer.info().await.ok().map(|i| (i.num_ack_pending, i.num_pending));
        let ran = ledger_counts(&ledger).len();
        assert_eq!(metric(&metrics, "rune_results_given_up_total"), 0.0, "a result was given up");
        if ran >= DISTINCT && stored >= DISTINCT as u64 && info == Some((0, 0)) && publisher.pending_results() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled within 120 s: ran {ran}, stored {stored}, consumer (ack pending, pending) {info:?}, results \
             pending {}",
            publisher.pending_results()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A moment more: a run or a result that came late would be a second one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = ledger_counts(&ledger);
    assert_eq!(runs.len(), DISTINCT, "{runs:?}");
    assert!(runs.values().all(|&c| c == 1), "an alert ran twice: {runs:?}");
    let results = stream_records(&mut stream).await;
    let mut by_n = BTreeMap::<String, usize>::new();
    for r in &results {
        *by_n.entry(r["output"]["data"]["n"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    assert_eq!(results.len(), DISTINCT, "results stored: {by_n:?}");
    assert_eq!(by_n.keys().cloned().collect::<Vec<_>>(), runs.keys().cloned().collect::<Vec<_>>());
    assert!(by_n.values().all(|&c| c == 1), "a result was stored twice: {by_n:?}");
    // The outage mattered: runs finished while the server was down (ran {ran_before_kill} before the kill), and
    // their results were still waiting for it after more than the old budget of five tries.
    assert!(pending_at_restart >= 1, "no result was waiting at the restart (ran before the kill: {ran_before_kill})");
    assert_eq!(metric(&metrics, "rune_results_pending"), 0.0);
    assert_eq!(metric(&metrics, "rune_results_given_up_total"), 0.0);
    stop.cancel();
    let _ = intake.await;
    let report = b.shutdown_report().await;
    assert_eq!((report.runs_in_flight, report.unpublished_results.len()), (0, 0), "{report:?}");
}

/// One result envelope for `n` (what a `noop` run on localhost publishes).
fn envelope(n: usize) -> ResultEnvelope {
    serde_json::from_value(json!({
        "record": "result", "@timestamp": "2026-11-24T00:00:01Z", "run_id": format!("run-{n}"),
        "correlation_id": format!("corr-{n}"), "action": "noop",
        "plugin": {"name": "noop", "version": "1.0.0", "sha256": "00"}, "host": "localhost", "transport": "local",
        "started_at": "2026-11-24T00:00:00Z", "finished_at": "2026-11-24T00:00:01Z", "duration_ms": 1000,
        "status": "ok", "outcome": "success", "exit_code": 0, "output": null, "error": null, "stderr_tail": "",
        "truncated": false, "dry_run": false, "operator": "rule:hello", "trigger": {"source": "test"}
    }))
    .unwrap_or_else(|e| panic!("envelope: {e}"))
}

/// Core NATS results (no results stream) are best-effort; this pins down what async-nats 0.51 does with results
/// published while the connection is down and the client knows it: `publish` returns at once (the message waits
/// in the client's command queue) and the queue is sent once the client has reconnected. So such results reach
/// the server after the outage — here a stream on the results subjects, which is subscribed all along; a plain
/// subscriber sees them only if it has resubscribed before they arrive. (What is *not* kept — messages written
/// to the dead connection before the client noticed, a queue longer than the client's capacity, a client that
/// gives up reconnecting — is documented in docs/results.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_results_published_while_disconnected_are_sent_after_the_reconnection() {
    let mut server = NatsServer::start();
    let client = connect(&server).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut observed = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "OBSERVED".into(),
            subjects: vec!["rune.results.>".into()],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("observer stream: {e}"));
    let publisher = NatsPublisher::new(client.clone(), None, "rune.results", "rune.decisions");
    tokio::task::block_in_place(|| server.stop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.connection_state() == async_nats::connection::State::Connected {
        assert!(tokio::time::Instant::now() < deadline, "the client never noticed the server was gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..5 {
        let published = tokio::time::timeout(Duration::from_secs(10), publisher.result(&envelope(n))).await;
        assert_eq!(published.ok().map(|r| r.is_ok()), Some(true), "publish {n} while disconnected did not return Ok");
    }
    tokio::task::block_in_place(|| server.restart());
    wait_until_stored(&mut observed, 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = stream_records(&mut observed).await;
    let ids: Vec<&str> = records.iter().filter_map(|r| r["run_id"].as_str()).collect();
    assert_eq!(ids, ["run-0", "run-1", "run-2", "run-3", "run-4"], "sent once each, in order");
}
