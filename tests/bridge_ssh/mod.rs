//! Alert in, plugin run on the sshd host the alert names, result out on NATS with the alert's correlation id —
//! end to end over the SSH transport (issue 4, point 8): a real nats-server with JetStream, a fleet of real sshd
//! daemons on loopback with pinned host keys, the bridge wired as `rune serve` wires it, alerts coming in on the
//! JetStream alerts stream and through each webhook (`/hooks/alertmanager`, `/hooks/grafana`, `/hooks/generic`,
//! in-process mode), and a bad token refused with 401 before anything runs.
//!
//! Where a run happened is proven by the plugin itself: `where-am-i` (tests/fixtures/plugins) reports the server
//! port of its SSH connection, which only the sshd of the host the alert named listens on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull;
use bytes::Bytes;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use rune::bridge::{Bridge, BridgeOptions};
use rune::engine::Engine;
use rune::event::Limits;
use rune::inventory::Inventory;
use rune::metrics::Metrics;
use rune::orchestrator::Orchestrator;
use rune::plugins::Registry;
use rune::results::nats::{CORRELATION_HEADER, NatsPublisher, encode_token};
use rune::sources::nats::run_jetstream;
use rune::sources::webhook::{self, BridgeSink, EndpointAuth, HookAuth, Secret, WebhookConfig};
use rune::transport::ssh::SshTransport;
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::nats::{NatsServer, test_intake};
use crate::support::sshd::{FleetOptions, SshdFleet};

/// One rule: the alert's `instance` label names the host, `where-am-i` runs there. Limits far above anything
/// here, so that only the inventory and dedup decide.
const RULES: &str = "
policy:
  rate_limit:
    global: { count: 100000, per: 1s }
    host: { count: 100000, per: 1s }
rules:
  - name: where
    match:
      labels:
        alertname: { one_of: [HostDiskFull, DockerDown] }
        instance: { present: true }
    target: { host_from: \"{{ labels.instance | strip_port }}\" }
    action: where-am-i
    args: { alert: \"{{ source }} {{ labels.alertname }}\" }
    dedup: { window: 1h }
";
const ACTION: &str = "where-am-i";
const RULE: &str = "where";
/// Bound on waiting for one message; never reached when things work.
const WAIT: Duration = Duration::from_secs(30);
/// How long to keep listening for messages that must not come (a second run, a run after a 401).
const QUIET: Duration = Duration::from_secs(1);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An event sample of tests/fixtures/events with each `(from, to)` replaced (each `from` must occur): real
/// payloads, renamed to point at the fleet's hosts.
fn fixture(name: &str, replace: &[(&str, &str)]) -> Vec<u8> {
    let path = repo().join("tests/fixtures/events").join(name);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replace {
        assert!(text.contains(from), "{name} has no `{from}` to replace");
        text = text.replace(from, to);
    }
    text.into_bytes()
}

/// The running pieces of one test: daemons, the bridge, and a handle on its SSH pool. Dropped in declaration
/// order: the bridge and clients before the nats-server and the sshd fleet they talk to.
struct Bed {
    bridge: Bridge,
    /// A clone of the orchestrator's transport: clones share the pool, so it counts the bridge's connections.
    ssh: SshTransport,
    client: async_nats::Client,
    /// Kept running for the test; stopped on drop.
    _nats: NatsServer,
    fleet: SshdFleet,
}

impl Bed {
    /// `hosts` sshd hosts (`host-00`, …) in the inventory, SSH only, host keys checked against the fleet's
    /// known_hosts; results on `rune.results`, decisions on `rune.decisions`.
    async fn start(hosts: usize) -> Bed {
        let fleet = SshdFleet::start(hosts, &FleetOptions::default());
        let nats = NatsServer::start();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(nats.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", nats.url()));
        let mut text = format!(
            "defaults:\n  transport: ssh\n  user: {}\n  key: {}\n  known_hosts: {}\n  connect_timeout_s: 10\nhosts:\n",
            fleet.user(),
            fleet.client_key().display(),
            fleet.known_hosts().display()
        );
        for h in fleet.hosts() {
            text.push_str(&format!("  {}:\n    address: {}\n    port: {}\n", h.name, h.addr, h.port));
        }
        let inventory = Arc::new(
            Inventory::parse(&text, "bridge_ssh inventory", None).unwrap_or_else(|e| panic!("inventory: {e:?}")),
        );
        let registry = Arc::new(Registry::load(&[repo().join("plugins"), repo().join("tests/fixtures/plugins")]));
        let files = vec![(PathBuf::from("rules.yaml"), RULES.to_owned())];
        let set = rune::rules::parse_files(&files, &registry, &inventory).unwrap_or_else(|e| panic!("rules: {e:?}"));
        let engine = Engine::new(set, registry.clone(), inventory.clone());
        let ssh = SshTransport::default();
        let orchestrator = Orchestrator::new(registry, inventory, ssh.clone());
        let publisher = Arc::new(NatsPublisher::new(client.clone(), None, "rune.results", "rune.decisions"));
        let options = BridgeOptions {
            rules_dir: repo().join("rules"),
            max_in_flight: 8,
            shutdown_grace: Duration::from_secs(30),
        };
        let bridge = Bridge::new(engine, orchestrator, publisher, Metrics::new(), options);
        Bed { bridge, ssh, client, _nats: nats, fleet }
    }

    async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let sub = self.client.subscribe(subject.to_owned()).await.unwrap_or_else(|e| panic!("{subject}: {e}"));
        self.client.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        sub
    }

    /// `rune_events_received_total` by source: what reached the bridge.
    fn events_received(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for line in self.bridge.metrics().encode().lines() {
            let Some(rest) = line.strip_prefix("rune_events_received_total{source=\"") else { continue };
            let Some((source, value)) = rest.split_once("\"} ") else { continue };
            let value = value.trim().parse().unwrap_or_else(|e| panic!("metric line {line:?}: {e}"));
            counts.insert(source.to_owned(), value);
        }
        counts
    }
}

async fn next_json(sub: &mut async_nats::Subscriber, what: &str) -> (async_nats::Message, Value) {
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: subscription ended"));
    let value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    (msg, value)
}

/// Every message that arrives within [`QUIET`] of the last one (for messages that must not come at all).
async fn stragglers(sub: &mut async_nats::Subscriber) -> Vec<Value> {
    let mut late = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(QUIET, sub.next()).await {
        late.push(serde_json::from_slice(&msg.payload).unwrap_or(Value::Null));
    }
    late
}

fn header(msg: &async_nats::Message, name: &str) -> Option<String> {
    msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned())
}

/// What one admitted alert must have led to.
struct Expected<'a> {
    /// Index of the fleet host the alert named.
    host: usize,
    correlation_id: &'a str,
    source: &'a str,
    alertname: &'a str,
    /// The intake subject the event came in on.
    subject: &'a str,
}

/// Asserts that `result` (on `msg`) is the run `expected` describes, done by the sshd of the named host.
fn assert_ran_on_named_host(fleet: &SshdFleet, msg: &async_nats::Message, result: &Value, expected: &Expected) {
    let host = fleet.host(expected.host);
    let context = format!("{} alert for {}: {result}", expected.source, host.name);
    assert_eq!(msg.subject.as_str(), format!("rune.results.{ACTION}.{}", encode_token(&host.name)), "{context}");
    assert_eq!(header(msg, CORRELATION_HEADER).as_deref(), Some(expected.correlation_id), "{context}");
    assert_eq!(header(msg, "Nats-Msg-Id").as_deref(), result["run_id"].as_str(), "{context}");
    assert_eq!(result["status"], "ok", "{context}");
    assert_eq!(result["transport"], "ssh", "{context}");
    assert_eq!(result["stderr_tail"], "", "where-am-i writes nothing to stderr: {context}");
    assert_eq!(result["host"], host.name.as_str(), "{context}");
    assert_eq!(result["correlation_id"], expected.correlation_id, "{context}");
    assert_eq!(result["trigger"]["rule"], RULE, "{context}");
    assert_eq!(result["trigger"]["source"], expected.source, "{context}");
    assert_eq!(result["trigger"]["subject"], expected.subject, "{context}");
    // What the plugin saw on the host: the sshd it was started by (only the named host's daemon listens on
    // that port), its inventory name, the correlation id, and the rule's arguments rendered from the alert.
    let data = &result["output"]["data"];
    assert_eq!(data["ssh_server_port"], host.port.to_string(), "ran under another sshd: {context}");
    assert_eq!(data["ssh_server_address"], host.addr.as_str(), "{context}");
    assert_eq!(data["host"], host.name.as_str(), "{context}");
    assert_eq!(data["correlation_id"], expected.correlation_id, "{context}");
    assert_eq!(data["alert"], format!("{} {}", expected.source, expected.alertname), "{context}");
}

// ---- NATS (JetStream) intake ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_on_the_jetstream_alerts_subject_runs_its_plugin_on_the_sshd_host_it_names() {
    let bed = Bed::start(2).await;
    let stop = CancellationToken::new();
    let settings = test_intake();
    let intake =
        tokio::spawn(run_jetstream(bed.client.clone(), settings, bed.bridge.clone(), Limits::default(), stop.clone()));
    let js = async_nats::jetstream::new(bed.client.clone());
    let mut stream_ready = false;
    for _ in 0..100 {
        if js.get_stream("RUNE_ALERTS").await.is_ok() {
            stream_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stream_ready, "the intake did not create the alerts stream");
    let mut results = bed.subscribe("rune.results.>").await;
    let mut decisions = bed.subscribe("rune.decisions.>").await;
    let mut dead = bed.subscribe("rune.dead_letter").await;

    // A real Alertmanager payload naming host-01 (the second host: not the first the inventory lists).
    let publish = |payload: Vec<u8>, correlation_id: &'static str| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(CORRELATION_HEADER, correlation_id);
            let ack = js
                .publish_with_headers("rune.alerts.alertmanager", headers, Bytes::from(payload))
                .await
                .unwrap_or_else(|e| panic!("publish {correlation_id}: {e}"));
            ack.await.unwrap_or_else(|e| panic!("stream ack {correlation_id}: {e}"));
        }
    };
    publish(fixture("alertmanager-critical-disk.json", &[("db-1:9100", "host-01:9100")]), "corr-js-disk").await;
    let (msg, decision) = next_json(&mut decisions, "decision").await;
    assert_eq!(msg.subject.as_str(), format!("rune.decisions.{RULE}"));
    assert_eq!(decision["decision"], "admitted", "{decision}");
    assert_eq!(decision["host"], "host-01", "{decision}");
    assert_eq!(decision["correlation_id"], "corr-js-disk", "{decision}");
    let (msg, result) = next_json(&mut results, "result").await;
    let disk = Expected {
        host: 1,
        correlation_id: "corr-js-disk",
        source: "alertmanager",
        alertname: "HostDiskFull",
        subject: "rune.alerts.alertmanager",
    };
    assert_ran_on_named_host(&bed.fleet, &msg, &result, &disk);
    assert_eq!(bed.ssh.open_connections().await, 1, "only the named host was connected to");

    // The host follows the alert: one payload with a firing alert naming host-00 and a resolved one naming
    // host-01. The firing one runs on host-00; the resolved one only clears its dedup key (a published decision).
    publish(
        fixture("alertmanager-docker-down.json", &[("web-1:9100", "host-00:9100"), ("web-2:9100", "host-01:9100")]),
        "corr-js-docker",
    )
    .await;
    let (_, decision) = next_json(&mut decisions, "decision on the firing alert").await;
    assert_eq!(decision["decision"], "admitted", "{decision}");
    assert_eq!(decision["host"], "host-00", "{decision}");
    let (_, decision) = next_json(&mut decisions, "decision on the resolved alert").await;
    assert_eq!(decision["decision"], "cleared", "{decision}");
    assert_eq!(decision["host"], "host-01", "{decision}");
    assert_eq!(decision["correlation_id"], "corr-js-docker", "{decision}");
    let (msg, result) = next_json(&mut results, "result").await;
    let docker = Expected {
        host: 0,
        correlation_id: "corr-js-docker",
        source: "alertmanager",
        alertname: "DockerDown",
        subject: "rune.alerts.alertmanager",
    };
    assert_ran_on_named_host(&bed.fleet, &msg, &result, &docker);

    // The alerts were acknowledged (recorded, not left for redelivery), and nothing else ran.
    let mut consumer = js
        .get_stream("RUNE_ALERTS")
        .await
        .unwrap_or_else(|e| panic!("stream: {e}"))
        .get_consumer::<pull::Config>("rune")
        .await
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut settled = None;
    for _ in 0..100 {
        let info = consumer.info().await.unwrap_or_else(|e| panic!("consumer info: {e}"));
        settled = Some((info.num_pending, info.num_ack_pending));
        if settled == Some((0, 0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(settled, Some((0, 0)), "(pending, waiting for ack) on the alerts consumer");
    let late = stragglers(&mut results).await;
    assert!(late.is_empty(), "runs nobody asked for: {late:?}");
    let late = stragglers(&mut decisions).await;
    assert!(late.is_empty(), "decisions nobody asked for: {late:?}");
    let late = stragglers(&mut dead).await;
    assert!(late.is_empty(), "dead letters: {late:?}");
    assert_eq!(bed.ssh.open_connections().await, 2, "one pooled connection per host that ran something");

    stop.cancel();
    let _ = intake.await;
    assert_eq!(bed.bridge.shutdown().await, 0, "runs left in flight");
}

// ---- webhooks (in-process) -----------------------------------------------------------------------------------

const TOKEN: &str = "hook-token-3f9c2a";
const HMAC_KEY: &str = "grafana-signing-key-81d0";
/// Grafana's default signature header.
const SIGNATURE_HEADER: &str = "x-grafana-alerting-signature";

/// Serves `auth` on a fresh loopback port with the bridge as sink; stops when `stop` is cancelled.
async fn serve_hooks(
    bridge: &Bridge,
    auth: HookAuth,
    stop: &CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local address: {e}"));
    let router = webhook::router(WebhookConfig::new(auth), Arc::new(BridgeSink(bridge.clone())));
    let stop = stop.clone();
    let task = tokio::spawn(webhook::serve(
        listener,
        router,
        webhook::ListenerOptions::new(Duration::from_secs(10)),
        async move {
            stop.cancelled().await;
        },
    ));
    (addr, task)
}

/// An HTTP answer: status, header block (lowercased), body as JSON.
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

/// POSTs `body` as JSON to `path` on `addr` over a fresh connection.
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    // A refusal before the body is read may close the connection under a slow write: the answer still counts.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "POST {path}: no answer within {WAIT:?}");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) =
        response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("POST {path}: no HTTP answer: {response:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("POST {path}: answer body not JSON ({e}): {body:?}"));
    Answer { status, head: head.to_ascii_lowercase(), body }
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap_or_else(|e| panic!("HMAC key: {e}"));
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// One webhook delivery of the test: where to, what, with which credentials, and what it must lead to.
struct Delivery<'a> {
    addr: SocketAddr,
    path: &'a str,
    body: Vec<u8>,
    /// `X-Correlation-Id`, if the sender sets one.
    correlation_header: Option<&'a str>,
    /// Good credentials for the endpoint (a bearer token, or a signature).
    credentials: (&'a str, String),
    /// Credentials the endpoint must refuse.
    bad_credentials: (&'a str, String),
    /// Events in the payload (202's `accepted`).
    events: usize,
    expected: Expected<'a>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webhook_runs_its_plugin_on_the_sshd_host_its_alert_names_and_a_bad_token_runs_nothing() {
    let bed = Bed::start(3).await;
    let stop = CancellationToken::new();
    let bearer = || Some(EndpointAuth::Bearer(Secret::new(TOKEN).unwrap_or_else(|e| panic!("{e}"))));
    let (bearer_addr, bearer_server) =
        serve_hooks(&bed.bridge, HookAuth { alertmanager: bearer(), grafana: bearer(), generic: bearer() }, &stop)
            .await;
    // Grafana signs its webhooks with HMAC when told to: a second listener, the grafana endpoint only.
    let hmac = EndpointAuth::Hmac {
        secret: Secret::new(HMAC_KEY).unwrap_or_else(|e| panic!("{e}")),
        header: axum::http::HeaderName::from_static(SIGNATURE_HEADER),
    };
    let (hmac_addr, hmac_server) =
        serve_hooks(&bed.bridge, HookAuth { alertmanager: None, grafana: Some(hmac), generic: None }, &stop).await;
    let mut results = bed.subscribe("rune.results.>").await;
    let mut decisions = bed.subscribe("rune.decisions.>").await;

    let good_bearer = ("Authorization", format!("Bearer {TOKEN}"));
    let bad_bearer = ("Authorization", format!("Bearer {TOKEN}-wrong"));
    let grafana_docker = fixture("grafana-docker-down.json", &[("web-1:9100", "host-01:9100")]);
    let deliveries = [
        Delivery {
            addr: bearer_addr,
            path: "/hooks/alertmanager",
            body: fixture("alertmanager-critical-disk.json", &[("db-1:9100", "host-02:9100")]),
            correlation_header: Some("corr-hook-am"),
            credentials: good_bearer.clone(),
            bad_credentials: bad_bearer.clone(),
            events: 1,
            expected: Expected {
                host: 2,
                correlation_id: "corr-hook-am",
                source: "alertmanager",
                alertname: "HostDiskFull",
                subject: "hooks.alertmanager",
            },
        },
        // Two alerts: the firing one names host-01; the resolved one names host-00 and matches no rule.
        Delivery {
            addr: bearer_addr,
            path: "/hooks/grafana",
            body: fixture("grafana-critical.json", &[("db-1:9100", "host-01:9100"), ("web-2:4646", "host-00:4646")]),
            correlation_header: Some("corr-hook-grafana"),
            credentials: good_bearer.clone(),
            bad_credentials: bad_bearer.clone(),
            events: 2,
            expected: Expected {
                host: 1,
                correlation_id: "corr-hook-grafana",
                source: "grafana",
                alertname: "HostDiskFull",
                subject: "hooks.grafana",
            },
        },
        // No header: the correlation id is the payload's own `correlation_id` field.
        Delivery {
            addr: bearer_addr,
            path: "/hooks/generic",
            body: fixture("generic-event.json", &[("web-1:9100", "host-00:9100")]),
            correlation_header: None,
            credentials: good_bearer.clone(),
            bad_credentials: bad_bearer.clone(),
            events: 1,
            expected: Expected {
                host: 0,
                correlation_id: "ticket-4711",
                source: "generic",
                alertname: "DockerDown",
                subject: "hooks.generic",
            },
        },
        Delivery {
            addr: hmac_addr,
            path: "/hooks/grafana",
            credentials: (SIGNATURE_HEADER, hmac_hex(HMAC_KEY, &grafana_docker)),
            bad_credentials: (SIGNATURE_HEADER, hmac_hex("not-the-key", &grafana_docker)),
            body: grafana_docker,
            correlation_header: Some("corr-hook-grafana-signed"),
            events: 1,
            expected: Expected {
                host: 1,
                correlation_id: "corr-hook-grafana-signed",
                source: "grafana",
                alertname: "DockerDown",
                subject: "hooks.grafana",
            },
        },
    ];

    // First the same payloads with bad credentials: 401, and nothing reaches the bridge or any host. (Had one
    // run, its good twin below would be a duplicate instead of a run.)
    for d in &deliveries {
        let mut headers = vec![(d.bad_credentials.0, d.bad_credentials.1.clone())];
        headers.extend(d.correlation_header.map(|c| ("X-Correlation-Id", format!("bad-{c}"))));
        let answer = post(d.addr, d.path, &headers, &d.body).await;
        let context = format!("{} with bad credentials: {} {}", d.path, answer.status, answer.body);
        assert_eq!(answer.status, 401, "{context}");
        assert!(answer.body["error"].as_str().is_some_and(|e| !e.is_empty()), "{context}");
        if d.bad_credentials.0 == "Authorization" {
            assert!(
                answer.head.contains("www-authenticate: bearer realm=\"rune\", error=\"invalid_token\""),
                "{context}"
            );
        } else {
            assert!(answer.body["error"].as_str().is_some_and(|e| e.contains("does not match")), "{context}");
        }
    }
    assert!(bed.events_received().is_empty(), "events reached the bridge: {:?}", bed.events_received());
    assert_eq!(bed.ssh.open_connections().await, 0, "a host was connected to");

    // Then with good credentials: 202 with the event ids, each alert's run on the host it names.
    let mut event_ids = BTreeMap::new();
    for d in &deliveries {
        let mut headers = vec![(d.credentials.0, d.credentials.1.clone())];
        headers.extend(d.correlation_header.map(|c| ("X-Correlation-Id", c.to_owned())));
        let answer = post(d.addr, d.path, &headers, &d.body).await;
        let context = format!("{}: {} {}", d.path, answer.status, answer.body);
        assert_eq!(answer.status, 202, "{context}");
        assert_eq!(answer.body["accepted"], d.events, "{context}");
        let ids: Vec<&str> =
            answer.body["event_ids"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert_eq!(ids.len(), d.events, "{context}");
        assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()), "{context}");
        let correlation_ids = answer.body["correlation_ids"].as_array().cloned().unwrap_or_default();
        assert_eq!(correlation_ids, vec![Value::from(d.expected.correlation_id); d.events], "{context}");
        // The first alert of each payload is the firing one the rule acts on.
        event_ids.insert(d.expected.correlation_id, ids[0].to_owned());
    }
    let mut seen = BTreeMap::new();
    for _ in &deliveries {
        let (msg, result) = next_json(&mut results, "result").await;
        let correlation_id = result["correlation_id"].as_str().unwrap_or("").to_owned();
        let d = deliveries
            .iter()
            .find(|d| d.expected.correlation_id == correlation_id)
            .unwrap_or_else(|| panic!("a result nobody asked for: {result}"));
        assert_ran_on_named_host(&bed.fleet, &msg, &result, &d.expected);
        assert_eq!(result["trigger"]["event_id"].as_str(), event_ids.get(correlation_id.as_str()).map(String::as_str));
        *seen.entry(correlation_id).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), deliveries.len(), "one result per delivery: {seen:?}");
    let late = stragglers(&mut results).await;
    assert!(late.is_empty(), "runs nobody asked for: {late:?}");
    // One decision per delivery, each admitted, for the host its alert named; none for the resolved alert.
    let mut decided = BTreeMap::new();
    for _ in &deliveries {
        let (_, decision) = next_json(&mut decisions, "decision").await;
        assert_eq!(decision["decision"], "admitted", "{decision}");
        let correlation_id = decision["correlation_id"].as_str().unwrap_or("").to_owned();
        decided.insert(correlation_id, decision["host"].as_str().unwrap_or("").to_owned());
    }
    let expected_decisions: BTreeMap<String, String> = deliveries
        .iter()
        .map(|d| (d.expected.correlation_id.to_owned(), bed.fleet.host(d.expected.host).name.clone()))
        .collect();
    assert_eq!(decided, expected_decisions, "correlation id -> host of each admitted decision");
    let late = stragglers(&mut decisions).await;
    assert!(late.is_empty(), "decisions nobody asked for: {late:?}");
    let expected_sources =
        BTreeMap::from([("alertmanager".to_owned(), 1), ("generic".to_owned(), 1), ("grafana".to_owned(), 3)]);
    assert_eq!(bed.events_received(), expected_sources, "events that reached the bridge");
    assert_eq!(bed.ssh.open_connections().await, 3, "one pooled connection per host");

    stop.cancel();
    let _ = bearer_server.await;
    let _ = hmac_server.await;
    assert_eq!(bed.bridge.shutdown().await, 0, "runs left in flight");
}
