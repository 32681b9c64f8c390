//! `rune serve` as a user runs it: the real binary, real HTTP on loopback, real plugin runs (local transport),
//! and — with NATS configured — a real nats-server with JetStream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::support::nats::NatsServer;
use crate::support::sshd::free_port;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running `rune serve`; killed on drop. Its stdout lines (JSON records) arrive on `lines`.
struct Serve {
    child: Child,
    /// Its own audit trail (one writer per trail; every instance here starts in the repo).
    _audit: tempfile::TempDir,
    port: u16,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Serve {
    fn start(config: Option<&Path>, extra_env: &[(&str, String)]) -> Serve {
        let port = free_port();
        let audit = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rune"));
        cmd.arg("serve")
            .current_dir(repo())
            .env("RUNE_AUDIT__FILE", audit.path().join("rune-audit.jsonl"))
            .env_remove("RUNE_CONFIG")
            .env("RUNE_WEBHOOK__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUNE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn rune serve: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let sink = stderr_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("rune serve: listening") {
                    let _ = ready_tx.send(());
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&line);
                sink.lock().unwrap_or_else(|e| e.into_inner()).push('\n');
            }
        });
        let s = Serve { child, _audit: audit, port, lines, stderr: stderr_text };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("rune serve did not start:\n{}", s.stderr());
        }
        s
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// POSTs `body` to `path`; returns (status, response body).
    fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap_or_else(|e| panic!("connect: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
        stream.write_all(body).unwrap_or_else(|e| panic!("write: {e}"));
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    /// GETs `path`; returns (status, response body).
    fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap_or_else(|e| panic!("connect: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    /// Runs executing now, from its `/metrics`.
    fn runs_in_flight(&self) -> u64 {
        let (_, body) = self.get("/metrics");
        let line = body.lines().find(|l| l.starts_with("rune_runs_in_flight "));
        line.and_then(|l| l.split(' ').nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The next stdout record whose `record` field is `kind`.
    fn next_record(&self, kind: &str) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no {kind} record within 60 s; stderr:\n{}", self.stderr()));
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["record"] == kind
            {
                return v;
            }
        }
    }

    /// SIGTERM, then the exit code.
    /// The records of its audit trail so far.
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self._audit.path().join("rune-audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then its exit code and its audit trail's records.
    fn terminate_audited(mut self) -> (Option<i32>, Vec<Value>) {
        let status = self.stop();
        (status, self.audit())
    }

    fn terminate(mut self) -> Option<i32> {
        self.stop()
    }

    fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example_alert() -> Vec<u8> {
    std::fs::read(repo().join("examples/alert-localhost.json")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn embedded_default_handles_a_real_alertmanager_payload_end_to_end() {
    let serve = Serve::start(None, &[]);
    let (status, body) =
        serve.post("/hooks/alertmanager", &example_alert(), &[("X-Correlation-Id", "readme-quick-start")]);
    assert_eq!(status, 202, "{body}");
    let decision = serve.next_record("decision");
    assert_eq!(decision["rule"], "critical-gather-logs");
    assert_eq!(decision["decision"], "admitted", "{decision}");
    let result = serve.next_record("result");
    assert_eq!(result["action"], "gather-logs");
    assert_eq!(result["host"], "localhost");
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["correlation_id"], "readme-quick-start");
    // A second copy is a published duplicate; a bad payload is a 400 naming the field.
    let (status, _) = serve.post("/hooks/alertmanager", &example_alert(), &[]);
    assert_eq!(status, 202);
    assert_eq!(serve.next_record("decision")["reason"], "duplicate");
    let (status, body) = serve.post("/hooks/alertmanager", br#"{"version":"4","alerts":[{"status":"firing"}]}"#, &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("alerts[0].labels"), "{body}");
    let (code, audit) = serve.terminate_audited();
    assert_eq!(code, Some(0));
    // The trail: the admitted decision, the run's dispatch and result, the duplicate; start and stop around them.
    let kinds: Vec<&str> = audit.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"stop"), "{kinds:?}");
    let of = |kind: &str| audit.iter().filter(|r| r["kind"] == kind).cloned().collect::<Vec<Value>>();
    let decisions = of("decision");
    assert_eq!(decisions.len(), 2, "{audit:?}");
    assert_eq!(
        (decisions[0]["outcome"].as_str(), decisions[1]["reason"].as_str()),
        (Some("admitted"), Some("duplicate"))
    );
    assert_eq!(decisions[0]["operator"], "rule:critical-gather-logs");
    let (dispatch, result) = (&of("dispatch")[0], &of("result")[0]);
    assert_eq!(
        (dispatch["run_id"].clone(), dispatch["correlation_id"].as_str()),
        (result["run_id"].clone(), Some("readme-quick-start"))
    );
    assert_eq!(
        (dispatch["source"].as_str(), dispatch["rule"].as_str()),
        (Some("alertmanager"), Some("critical-gather-logs"))
    );
    assert_eq!(result["outcome"], "ok");
}

#[test]
fn a_bad_token_gets_401_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    let text = format!(
        "paths:\n  rules_dir: {}\n  plugins_dirs: [{}]\nwebhook:\n  alertmanager: {{ bearer_token_file: token }}\n",
        repo().join("rules").display(),
        repo().join("plugins").display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let serve = Serve::start(Some(&config), &[]);
    let (status, _) = serve.post("/hooks/alertmanager", &example_alert(), &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401);
    let (status, _) = serve.post("/hooks/alertmanager", &example_alert(), &[]);
    assert_eq!(status, 401);
    let (status, _) = serve.post("/hooks/grafana", &example_alert(), &[]);
    assert_eq!(status, 404, "an endpoint left out of the settings is not served");
    assert!(serve.lines.recv_timeout(Duration::from_millis(500)).is_err(), "nothing was decided or run");
    let (status, body) =
        serve.post("/hooks/alertmanager", &example_alert(), &[("Authorization", "Bearer s3cret-token")]);
    assert_eq!(status, 202, "{body}");
    assert_eq!(serve.next_record("result")["status"], "ok");
    assert!(!serve.stderr().contains("s3cret-token"), "the token leaked into the logs");
    assert_eq!(serve.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_and_jetstream_an_alert_published_on_nats_runs_and_its_result_is_published() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    let text = format!(
        "nats:\n  urls: [\"{}\"]\n  jetstream:\n    enabled: true\n    results_stream: {{ enabled: true }}\n\
         paths:\n  rules_dir: {}\n  plugins_dirs: [{}]\nresults:\n  stdout: true\n\
         webhook:\n  alertmanager: {{ none: true }}\n  publish_to_nats: true\n",
        server.url(),
        repo().join("rules").display(),
        repo().join("plugins").display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let serve =
        tokio::task::spawn_blocking(move || Serve::start(Some(&config), &[])).await.unwrap_or_else(|e| panic!("{e}"));
    let client = async_nats::connect(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    let mut results = client.subscribe("rune.results.>").await.unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.ok();
    // Through the webhook, which publishes into the alerts stream; the JetStream consumer decides it.
    let post = tokio::task::block_in_place(|| {
        serve.post("/hooks/alertmanager", &example_alert(), &[("X-Correlation-Id", "via-nats")])
    });
    assert_eq!(post.0, 202, "{}", post.1);
    let msg = tokio::time::timeout(Duration::from_secs(60), results.next())
        .await
        .unwrap_or_else(|_| panic!("no result on NATS; stderr:\n{}", serve.stderr()))
        .unwrap_or_else(|| panic!("subscription ended"));
    assert_eq!(msg.subject.as_str(), "rune.results.gather-logs.localhost");
    let result: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
    assert_eq!(result["correlation_id"], "via-nats", "{result}");
    assert_eq!(result["status"], "ok");
    // The results stream kept it for replay.
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("RUNE_RESULTS").await.unwrap_or_else(|e| panic!("{e}"));
    let info = stream.info().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(info.state.messages >= 1);
    let code = tokio::task::spawn_blocking(move || serve.terminate()).await.unwrap_or(None);
    assert_eq!(code, Some(0));
}

/// Publishes `distinct` one-alert Alertmanager payloads (`alertname: Burst`, label `n`) three times over into the
/// alerts stream, each publish acknowledged by JetStream.
async fn publish_burst(js: &async_nats::jetstream::Context, distinct: usize) {
    for copy in 0..3 {
        for n in 0..distinct {
            let body = serde_json::json!({
                "version": "4", "groupKey": "g", "status": "firing", "receiver": "rune",
                "alerts": [{"status": "firing", "labels": {"alertname": "Burst", "n": n.to_string()},
                            "fingerprint": format!("burst-{n}")}]
            });
            let ack = js
                .publish("rune.alerts.alertmanager", body.to_string().into())
                .await
                .unwrap_or_else(|e| panic!("publish {n}/{copy}: {e}"));
            ack.await.unwrap_or_else(|e| panic!("ack {n}/{copy}: {e}"));
        }
    }
}

/// Cluster mode: three `rune serve` instances on one JetStream, a burst of alerts each sent three times: every
/// distinct alert runs exactly once (cluster-wide dedup on JetStream KV), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_run_each_distinct_alert_of_a_burst_exactly_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        rules.join("burst.yaml"),
        "policy:\n  rate_limit:\n    global: { count: 100000, per: 1s }\n    host: { count: 100000, per: 1s }\n\
         rules:\n  - name: burst\n    match: { labels: { alertname: Burst } }\n    target: { host: localhost }\n    \
         action: noop\n    args: { message: \"{{ labels.n }}\" }\n    dedup: { window: 1h }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    let text = format!(
        "nats:\n  urls: [\"{}\"]\n  jetstream:\n    enabled: true\n    consumer: {{ ack_wait: 5s }}\n\
         paths:\n  rules_dir: {}\n  plugins_dirs: [{}]\nresults:\n  stdout: true\n",
        server.url(),
        rules.display(),
        repo().join("plugins").display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let instances = tokio::task::spawn_blocking({
        let config = config.clone();
        move || (0..3).map(|_| Serve::start(Some(&config), &[])).collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let client = async_nats::connect(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    let mut results = client.subscribe("rune.results.>").await.unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.ok();
    let js = async_nats::jetstream::new(client.clone());
    const DISTINCT: usize = 30;
    publish_burst(&js, DISTINCT).await;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    while seen.len() < DISTINCT {
        let msg = tokio::time::timeout(Duration::from_secs(60), results.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {DISTINCT} alerts ran: {seen:?}", seen.len()))
            .unwrap_or_else(|| panic!("subscription ended"));
        let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        *seen.entry(v["output"]["data"]["message"].as_str().unwrap_or("").to_owned()).or_default() += 1;
    }
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(3), results.next()).await {
        let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        *seen.entry(v["output"]["data"]["message"].as_str().unwrap_or("").to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), DISTINCT, "{seen:?}");
    assert!(seen.values().all(|&c| c == 1), "an alert ran twice: {seen:?}");
    let codes = tokio::task::spawn_blocking(move || instances.into_iter().map(Serve::terminate).collect::<Vec<_>>())
        .await
        .unwrap_or_default();
    assert_eq!(codes, [Some(0), Some(0), Some(0)]);
}

/// `n` instances of `rune serve` on `config`, and a JetStream context on `server` to publish with.
async fn start_instances(config: &Path, n: usize, server: &NatsServer) -> (Vec<Serve>, async_nats::jetstream::Context) {
    let config = config.to_owned();
    let instances = tokio::task::spawn_blocking(move || (0..n).map(|_| Serve::start(Some(&config), &[])).collect())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = async_nats::connect(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    (instances, async_nats::jetstream::new(client))
}

/// How often each alert ran, from a `mark-run`/`mark-fix` ledger (one line per run).
fn ledger_runs(ledger: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut runs = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(ledger).unwrap_or_default().lines() {
        *runs.entry(line.to_owned()).or_default() += 1;
    }
    runs
}

/// Waits (90 s at most) until `distinct` alerts ran after `event`, then `settle` more for a late redelivery to run
/// one a second time, and asserts each ran exactly once.
async fn each_ran_once(ledger: &Path, distinct: usize, event: &str, settle: Duration) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while ledger_runs(ledger).len() < distinct {
        let runs = ledger_runs(ledger);
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {distinct} alerts ran after {event}: {runs:?}",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle).await;
    let runs = ledger_runs(ledger);
    assert_eq!(runs.len(), distinct, "{runs:?}");
    assert!(runs.values().all(|&c| c == 1), "an alert ran twice: {runs:?}");
}

/// Cluster mode, the hard case: three instances, a burst with duplicates, runs slower than the burst (two run
/// slots each, so messages wait unacked with decided, pending dedup claims — and, for a remediation, held host
/// leases), and one instance SIGKILLed mid-burst. Its unacked messages are redelivered to the others, which take
/// over the pending claims and leases: every distinct alert starts its plugin exactly once (the plugin's own
/// ledger says so), none is lost. Each alert names its own inventory host `h<n>` (local transport), so the host
/// lock of a remediation only ever meets the alert's own copies.
async fn kill_one_of_three_mid_burst(action: &str) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ledger = dir.path().join("ledger");
    std::fs::write(&ledger, "").unwrap_or_else(|e| panic!("{e}"));
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        rules.join("burst.yaml"),
        format!(
            "policy:\n  rate_limit:\n    global: {{ count: 100000, per: 1s }}\n    host: {{ count: 100000, per: 1s }}\n  \
             defaults:\n    blast_radius: {{ max_hosts: 1000, window: 1m }}\n\
             rules:\n  - name: burst\n    match: {{ labels: {{ alertname: Burst }} }}\n    \
             target: {{ host_from: \"h{{{{ labels.n }}}}\" }}\n    \
             action: {action}\n    args: {{ n: \"{{{{ labels.n }}}}\", ledger: \"{}\" }}\n    dedup: {{ window: 1h }}\n",
            ledger.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // One local host per alert.
    let inventory = dir.path().join("inventory.yaml");
    let hosts: String = (0..40).map(|n| format!("  h{n}:\n    transport: local\n")).collect();
    std::fs::write(&inventory, format!("hosts:\n{hosts}")).unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    let text = format!(
        "nats:\n  urls: [\"{}\"]\n  jetstream:\n    enabled: true\n    consumer: {{ ack_wait: 3s }}\n\
         paths:\n  rules_dir: {}\n  inventory: {}\n  plugins_dirs: [{}, {}]\nresults:\n  stdout: false\n\
         limits:\n  max_in_flight_runs: 2\n",
        server.url(),
        rules.display(),
        inventory.display(),
        repo().join("plugins").display(),
        repo().join("tests/fixtures/plugins").display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let (mut instances, js) = start_instances(&config, 3, &server).await;
    const DISTINCT: usize = 40;
    publish_burst(&js, DISTINCT).await;
    let read_ledger = || ledger_runs(&ledger);
    // Mid-burst: some runs have started, most alerts are still waiting somewhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read_ledger().len() < 6 {
        assert!(std::time::Instant::now() < deadline, "the burst never started: {:?}", read_ledger());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = instances.remove(0);
    tokio::task::spawn_blocking(move || drop(killed)).await.unwrap_or_else(|e| panic!("{e}")); // SIGKILL
    let at_kill = read_ledger();
    // Settling long enough for any late redelivery (ack_wait 3 s) to have run a second time if it were going to.
    each_ran_once(&ledger, DISTINCT, "the kill", Duration::from_secs(8)).await;
    // The kill mattered: the consumer redelivered what the dead instance held.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream("rune", "RUNE_ALERTS").await.unwrap_or_else(|e| panic!("{e}"));
    let info = consumer.info().await.unwrap_or_else(|e| panic!("{e}"));
    // (Deliveries beyond the messages published are redeliveries.)
    let published = 3 * DISTINCT as u64;
    assert!(
        info.delivered.consumer_sequence > published,
        "nothing was redelivered (ran at the kill: {}): {info:?}",
        at_kill.len()
    );
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    let codes = tokio::task::spawn_blocking(move || instances.into_iter().map(Serve::terminate).collect::<Vec<_>>())
        .await
        .unwrap_or_default();
    assert_eq!(codes, [Some(0), Some(0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_instances_mid_burst_loses_no_alert_and_runs_none_twice() {
    kill_one_of_three_mid_burst("mark-run").await;
}

/// The same with a remediation plugin: the dead instance's host leases are taken over by the redeliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_instances_mid_burst_loses_no_remediation_and_runs_none_twice() {
    kill_one_of_three_mid_burst("mark-fix").await;
}

/// Graceful shutdown: SIGTERM while a run is in flight — the run finishes, its result is published, exit 0.
#[test]
fn sigterm_lets_the_run_in_flight_finish_and_publish_its_result() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        rules.join("slow.yaml"),
        "rules:\n  - name: slow\n    match: { labels: { alertname: HostDiskFull } }\n    target: { host: localhost }\n    action: slow-ok\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    let text = format!(
        "paths:\n  rules_dir: {}\n  plugins_dirs: [{}, {}]\nwebhook:\n  alertmanager: {{ none: true }}\nlimits:\n  shutdown_grace: 30s\n",
        rules.display(),
        repo().join("plugins").display(),
        repo().join("tests/fixtures/plugins").display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let serve = Serve::start(Some(&config), &[]);
    let (status, body) = serve.post("/hooks/alertmanager", &example_alert(), &[("X-Correlation-Id", "drain-1")]);
    assert_eq!(status, 202, "{body}");
    assert_eq!(serve.next_record("decision")["decision"], "admitted");
    // SIGTERM while slow-ok sleeps: the daemon must wait for it.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(serve.child.id() as i32, libc::SIGTERM);
    }
    let result = serve.next_record("result");
    assert_eq!(result["action"], "slow-ok");
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["correlation_id"], "drain-1");
    assert_eq!(serve.terminate(), Some(0));
}

/// Issue 6 (4), SIGTERM under load: two instances on one JetStream, a burst of slow alerts (40, each three times)
/// far beyond their run slots (two each), and one instance SIGTERMed mid-burst. It finishes the runs it had
/// started — their results published to the results stream — hands back the messages it held but had not started
/// (nak), writes its audit trail's `stop` record and exits 0 within its grace; the other instance runs what was
/// handed back. Every distinct alert runs exactly once (the plugin's ledger), every result is in the results
/// stream exactly once, and the consumer ends with nothing unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_its_runs_and_hands_the_rest_to_the_other_instance() {
    const DISTINCT: usize = 40;
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ledger = dir.path().join("ledger");
    std::fs::write(&ledger, "").unwrap_or_else(|e| panic!("{e}"));
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        rules.join("burst.yaml"),
        format!(
            "policy:\n  rate_limit:\n    global: {{ count: 100000, per: 1s }}\n    host: {{ count: 100000, per: 1s }}\n\
             rules:\n  - name: burst\n    match: {{ labels: {{ alertname: Burst }} }}\n    target: {{ host: localhost }}\n    \
             action: mark-run\n    args: {{ n: \"{{{{ labels.n }}}}\", ledger: \"{}\" }}\n    dedup: {{ window: 1h }}\n",
            ledger.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    // A long ack_wait: what the stopped instance held -- in its lanes or still in its pull buffer -- must be handed
    // back at the SIGTERM (nak), not left to come back after ack_wait (the consumer must settle well before it).
    let text = format!(
        "nats:\n  urls: [\"{}\"]\n  jetstream:\n    enabled: true\n    consumer: {{ ack_wait: 120s }}\n    \
         results_stream: {{ enabled: true }}\n\
         paths:\n  rules_dir: {}\n  plugins_dirs: [{}, {}]\nresults:\n  stdout: false\n\
         limits:\n  max_in_flight_runs: 2\n  shutdown_grace: 30s\n",
        server.url(),
        rules.display(),
        repo().join("plugins").display(),
        repo().join("tests/fixtures/plugins").display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let (mut instances, js) = start_instances(&config, 2, &server).await;
    publish_burst(&js, DISTINCT).await;
    let read_ledger = || ledger_runs(&ledger);
    // Mid-burst, while the instance to stop has runs in flight (each takes 0.4 s; the signal follows at once).
    let stopped = instances.remove(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let busy = tokio::task::block_in_place(|| stopped.runs_in_flight());
        if read_ledger().len() >= 6 && busy > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the burst never started: {:?}", read_ledger());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGTERM; `terminate_audited` waits up to 30 s (the grace) for the exit.
    let (code, audit, stderr) = tokio::task::spawn_blocking(move || {
        let stderr = stopped.stderr.clone();
        let (code, audit) = stopped.terminate_audited();
        let text = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (code, audit, text)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, Some(0), "the SIGTERMed instance did not exit 0 within its grace:\n{stderr}");
    // Runs in flight at the signal finished after it.
    let drained = stderr.find("shutting down").map(|at| &stderr[at..]);
    assert!(drained.is_some_and(|d| d.contains("run finished")), "no run finished after the SIGTERM:\n{stderr}");
    each_ran_once(&ledger, DISTINCT, "the SIGTERM", Duration::from_secs(5)).await;

    // The stopped instance: every run it started has its result record, the trail ends with `stop`, nothing was
    // left in flight or unpublished.
    let of = |kind: &str| audit.iter().filter(|r| r["kind"] == kind).cloned().collect::<Vec<Value>>();
    let stop = audit.last().cloned().unwrap_or_default();
    assert_eq!(stop["kind"], "stop", "{audit:?}");
    assert_eq!((stop["in_flight"].as_u64(), stop["unpublished_results"].as_array().map(Vec::len)), (Some(0), Some(0)));
    let started: std::collections::BTreeSet<String> =
        of("dispatch").iter().filter_map(|r| r["run_id"].as_str().map(str::to_owned)).collect();
    let finished: std::collections::BTreeSet<String> =
        of("result").iter().filter_map(|r| r["run_id"].as_str().map(str::to_owned)).collect();
    assert!(!started.is_empty(), "the stopped instance ran nothing: {audit:?}");
    assert_eq!(started, finished, "a run of the stopped instance has no result record");
    // What it had admitted but not started went to the other instance.
    let dispatched_events: std::collections::BTreeSet<String> =
        of("dispatch").iter().filter_map(|r| r["event_id"].as_str().map(str::to_owned)).collect();
    let handed_back: Vec<String> = of("decision")
        .iter()
        .filter(|r| r["outcome"] == "admitted")
        .filter(|r| !r["event_id"].as_str().is_some_and(|e| dispatched_events.contains(e)))
        .filter_map(|r| r["fingerprint"].as_str().map(str::to_owned))
        .collect();
    let other = instances.remove(0);
    let other_audit = other.audit();
    let other_events: std::collections::BTreeMap<String, String> = other_audit
        .iter()
        .filter(|r| r["kind"] == "decision" && r["outcome"] == "admitted")
        .filter_map(|r| Some((r["event_id"].as_str()?.to_owned(), r["fingerprint"].as_str()?.to_owned())))
        .collect();
    let other_ran: std::collections::BTreeSet<String> = other_audit
        .iter()
        .filter(|r| r["kind"] == "dispatch")
        .filter_map(|r| other_events.get(r["event_id"].as_str()?).cloned())
        .collect();
    for fingerprint in &handed_back {
        assert!(other_ran.contains(fingerprint), "{fingerprint}, handed back at the SIGTERM, never ran on the other");
    }

    // Every result is in the results stream once, those of the stopped instance's runs included.
    let mut stream = js.get_stream("RUNE_RESULTS").await.unwrap_or_else(|e| panic!("{e}"));
    let last = stream.info().await.unwrap_or_else(|e| panic!("{e}")).state.last_sequence;
    let mut stored = std::collections::BTreeMap::<String, usize>::new();
    let mut stored_runs = std::collections::BTreeSet::new();
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else { continue };
        let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        *stored.entry(v["output"]["data"]["n"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        stored_runs.insert(v["run_id"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(stored.len(), DISTINCT, "{stored:?}");
    assert!(stored.values().all(|&c| c == 1), "a result was stored twice: {stored:?}");
    assert!(started.is_subset(&stored_runs), "a result of the stopped instance is missing from the stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream("rune", "RUNE_ALERTS").await.unwrap_or_else(|e| panic!("{e}"));
    let info = consumer.info().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");
    let code = tokio::task::spawn_blocking(move || other.terminate()).await.unwrap_or(None);
    assert_eq!(code, Some(0));
}

/// Issue 6 (4), SIGTERM while NATS is down: a result the results stream has not acknowledged is waited for within
/// the grace — published if NATS comes back in time — and otherwise reported when the daemon exits: an error log
/// line with its run id, and the audit trail's `stop` record listing it. (A rule without dedup runs while NATS is
/// down: its alert comes in on the webhook, and nothing of its decision needs JetStream KV.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nats_down_waits_for_kept_results_and_reports_those_never_published() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        rules.join("nodedup.yaml"),
        "rules:\n  - name: nodedup\n    match: { labels: { alertname: HostDiskFull } }\n    target: { host: localhost }\n    \
         action: noop\n    dedup: { mode: off }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("rune.yaml");
    let text = format!(
        "nats:\n  urls: [\"{}\"]\n  jetstream:\n    enabled: true\n    results_stream: {{ enabled: true }}\n\
         paths:\n  rules_dir: {}\n  plugins_dirs: [{}]\nresults:\n  stdout: true\n\
         webhook:\n  alertmanager: {{ none: true }}\n",
        server.url(),
        rules.display(),
        repo().join("plugins").display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    // Starts an instance (NATS up), stops NATS, runs one alert: its result is kept, waiting for the stream.
    let run_with_nats_down = |server: &mut NatsServer, grace: &str| -> (Serve, String) {
        let serve = Serve::start(Some(&config), &[("RUNE_LIMITS__SHUTDOWN_GRACE", grace.to_owned())]);
        server.stop();
        let (status, body) = serve.post("/hooks/alertmanager", &example_alert(), &[]);
        assert_eq!(status, 202, "{body}");
        let result = serve.next_record("result");
        assert_eq!(result["status"], "ok", "{result}");
        let run_id = result["run_id"].as_str().unwrap_or_default().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, metrics) = serve.get("/metrics");
            if metrics.lines().any(|l| l == "rune_results_pending 1") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the result was not kept:\n{metrics}");
            std::thread::sleep(Duration::from_millis(50));
        }
        (serve, run_id)
    };

    // NATS comes back within the grace: the result is published before the exit.
    let (serve, published) = tokio::task::block_in_place(|| run_with_nats_down(&mut server, "60s"));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(serve.child.id() as i32, libc::SIGTERM);
    }
    tokio::task::block_in_place(|| server.restart());
    let (code, audit) = tokio::task::spawn_blocking(move || serve.terminate_audited()).await.unwrap_or_default();
    assert_eq!(code, Some(0));
    let stop = audit.last().cloned().unwrap_or_default();
    assert_eq!((stop["kind"].as_str(), stop["unpublished_results"].clone()), (Some("stop"), serde_json::json!([])));
    let client = async_nats::connect(server.url()).await.unwrap_or_else(|e| panic!("{e}"));
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("RUNE_RESULTS").await.unwrap_or_else(|e| panic!("{e}"));
    let last = stream.info().await.unwrap_or_else(|e| panic!("{e}")).state.last_sequence;
    let mut stored = Vec::new();
    for seq in 1..=last {
        if let Ok(msg) = stream.get_raw_message(seq).await {
            let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            stored.push(v["run_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(stored, [published], "the result kept through the SIGTERM is in the stream once");

    // NATS stays down past the grace: the exit says which result it could not publish.
    let (serve, lost) = tokio::task::block_in_place(|| run_with_nats_down(&mut server, "2s"));
    let stderr = serve.stderr.clone();
    let (code, audit) = tokio::task::spawn_blocking(move || serve.terminate_audited()).await.unwrap_or_default();
    let stderr = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(code, Some(0), "{stderr}");
    let said = stderr.lines().find(|l| l.contains("exiting with results not acknowledged"));
    assert!(said.is_some_and(|l| l.contains("ERROR") && l.contains(&lost)), "no error naming {lost}:\n{stderr}");
    let stop = audit.last().cloned().unwrap_or_default();
    assert_eq!((stop["kind"].as_str(), stop["unpublished_results"].clone()), (Some("stop"), serde_json::json!([lost])));
}
