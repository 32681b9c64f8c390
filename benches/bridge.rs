//! Bridge benchmark: the daemon's path through a real nats-server — alert published on NATS → intake → engine →
//! run → result on `rune.results.>` — with the in-process `Bridge` wired like `rune serve`, and the real
//! `rune serve` binary for its memory.
//!
//! Run: `cargo bench --bench bridge` (~2 minutes). Env knobs:
//! - `RUNE_BENCH_RATE=100`, `RUNE_BENCH_SECONDS=10`: the steady rate and duration of the latency passes;
//! - `RUNE_BENCH_ALERTS=20000`: alerts of the decision-pipeline passes (30 % repeats of earlier alerts);
//! - `RUNE_BENCH_RUN_ALERTS=3000`: alerts of the passes in which every admitted alert runs `noop`;
//! - `RUNE_BENCH_DAEMON_ALERTS=2000`: alerts sent to the real `rune serve` between its two memory readings;
//! - `RUNE_BENCH_CONCURRENCY=1,32`: consumer concurrencies of the extra storm passes (besides the default 256);
//! - `RUNE_BENCH_AUDIT=1`: the in-process bridge keeps the audit trail as `rune serve` does (0: without it);
//! - `RUNE_BENCH_PARTS=latency,ssh,throughput,kv,daemon`: which parts run (`ssh` starts one loopback sshd, root
//!   only, and adds the SSH passes).
//!
//! Parts:
//! 1. latency at a steady rate, core NATS intake (`run_core`, in-process dedup) and JetStream intake
//!    (`run_jetstream`, `KvDedup` + `KvLocks`), `noop` on localhost (local transport) and on one loopback sshd
//!    (warm pool): publish → decision received, → run started (`started_at`), → result received;
//! 2. throughput through JetStream: the alerts stream is loaded, then the intake starts; decisions/s and runs/s,
//!    with every admitted alert running `noop` (a message is acked once its run has *started*, so the runs are
//!    the ceiling), and two alert storms — the decision pipeline alone: the rule's rate limit suppressing the
//!    runs (after its first refusal the limit answers early: one dedup read per alert, no claim), and repeats of
//!    1,000 alerts acted on within the window (keys claimed in KV beforehand; one dedup read per alert) — at the consumer's default concurrency (256
//!    lanes) and, for the rate-limited storm, at others (`RUNE_BENCH_CONCURRENCY`; 1 = one message at a time);
//! 3. `KvDedup` round trips alone (sequential, and with claims in flight);
//! 4. memory: this process idle, and `rune serve` (the release binary) idle and after a load.
//!
//! Prints tables; figures are recorded in BENCHMARKS.md. Nothing here asserts a time.
//!
//! Every pass gets a fresh nats-server (JetStream, file store, on loopback), started and stopped by the harness
//! in `tests/support/nats.rs`. The bridge runs on its own 2-worker tokio runtime (as `rune serve` on this
//! 2-core machine); the load generator (publisher and subscribers, on their own NATS connection) on a 1-worker
//! runtime in the same process.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::{alertmanager_payload, machine_cpu, mib, own_cpu, percentile, pid_cpu, status_kib};
use futures::StreamExt;
use rune::audit::records::DecisionAudit;
use rune::audit::{AuditLog, AuditOptions, Auditor};
use rune::bridge::{Bridge, BridgeOptions};
use rune::engine::Engine;
use rune::event::Limits;
use rune::gate::dedup::DedupStore;
use rune::gate::kv::{KvDedup, KvDedupSettings, KvLockSettings, KvLocks};
use rune::inventory::Inventory;
use rune::metrics::Metrics;
use rune::orchestrator::Orchestrator;
use rune::plugins::Registry;
use rune::results::nats::{CORRELATION_HEADER, NatsPublisher};
use rune::results::publish::{Publish, Publishers};
use rune::sources::nats::{JetStreamIntake, run_core, run_jetstream};
use rune::transport::ssh::SshTransport;
use support::nats::NatsServer;
use support::sshd::{FleetOptions, SshdFleet};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// Share of the alerts of a throughput pass that repeat an earlier alert (same fingerprint).
const REPEAT_PERCENT: u64 = 30;
/// JetStream publishes in flight (acks not yet received) while the alerts stream is loaded.
const PUBLISH_WINDOW: usize = 256;
/// Runs executing at once: `limits.max_in_flight_runs`' default.
const MAX_IN_FLIGHT: usize = 64;
/// Runs of the rule that `rate_limit` lets through in the storm pass.
const STORM_RUNS: usize = 10;
/// Distinct alerts in the duplicates storm (all acted on within the window already).
const REPEATED_ALERTS: usize = 1000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name` with everything but ASCII letters and digits as `-` (file names, fingerprints).
fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

// ---- rules, plugins, inventory ---------------------------------------------------------------------------------

/// Limits far above any rate here: only the rule's own gates decide.
const POLICY: &str =
    "policy:\n  rate_limit:\n    global: { count: 1000000, per: 1s }\n    host: { count: 1000000, per: 1s }\n";

/// The benchmark's rule: `noop` on the host the alert's `instance` names, dedup per alert for an hour.
fn bench_rule(extra: &str) -> String {
    format!(
        "  - name: bench\n    match: {{ labels: {{ alertname: Bench }} }}\n    target: {{ host_from: \"{{{{ labels.instance | strip_port }}}}\" }}\n    \
         action: noop\n    args: {{ message: \"{{{{ labels.alertname }}}} {{{{ labels.n }}}}\" }}\n    dedup: {{ window: 1h }}\n{extra}"
    )
}

fn rules_plain() -> String {
    format!("{POLICY}rules:\n{}", bench_rule(""))
}

/// The rule lets [`STORM_RUNS`] runs through per hour; the rest is `rate_limited`.
fn rules_storm() -> String {
    format!(
        "{POLICY}rules:\n{}",
        bench_rule(&format!("    rate_limit:\n      rule: {{ count: {STORM_RUNS}, per: 1h }}\n"))
    )
}

fn inventory(fleet: Option<&SshdFleet>) -> Inventory {
    let mut s = String::new();
    if let Some(fleet) = fleet {
        let _ = write!(
            s,
            "defaults:\n  user: {}\n  key: {}\n  known_hosts: {}\n  connect_timeout_s: 30\n",
            fleet.user(),
            fleet.client_key().display(),
            fleet.known_hosts().display()
        );
    }
    s.push_str("hosts:\n  localhost:\n    transport: local\n");
    if let Some(fleet) = fleet {
        for h in fleet.hosts() {
            let _ = write!(s, "  {}:\n    address: {}\n    port: {}\n", h.name, h.addr, h.port);
        }
    }
    Inventory::parse(&s, "bench", None).unwrap_or_else(|e| panic!("bench inventory: {e:?}"))
}

// ---- alerts ----------------------------------------------------------------------------------------------------

/// The benchmark's alert payload (`n` as the 8th label).
fn payload(alertname: &str, instance: &str, fingerprint: &str, n: usize) -> Bytes {
    Bytes::from(alertmanager_payload(alertname, instance, fingerprint, ("n", &n.to_string())))
}

/// The alert as published: subject, headers (correlation id `b<seq>`), payload.
struct Alert {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

fn alert(seq: usize, tag: &str, instance: &str, fingerprint_of: usize) -> Alert {
    let mut headers = HeaderMap::new();
    headers.insert(CORRELATION_HEADER, format!("b{seq}").as_str());
    Alert {
        subject: "rune.alerts.alertmanager".into(),
        headers,
        payload: payload("Bench", instance, &format!("{tag}-{fingerprint_of:08}"), fingerprint_of),
    }
}

/// `n` alerts on `instance`: each is a repeat of an earlier one (same fingerprint) with probability
/// [`REPEAT_PERCENT`], else a new one. Returns the alerts and the number of distinct ones.
fn mixed_alerts(n: usize, tag: &str, instance: &str) -> (Vec<Alert>, usize) {
    let mut next = common::xorshift();
    let mut distinct = 0usize;
    let alerts = (0..n)
        .map(|seq| {
            let r = next();
            let of = if distinct > 0 && r % 100 < REPEAT_PERCENT {
                ((r >> 8) as usize) % distinct
            } else {
                distinct += 1;
                distinct - 1
            };
            alert(seq, tag, instance, of)
        })
        .collect();
    (alerts, distinct)
}

fn seq_of(message: &async_nats::Message) -> Option<usize> {
    let value = message.headers.as_ref()?.get(CORRELATION_HEADER)?;
    value.as_str().strip_prefix('b')?.parse().ok()
}

/// `"key":"value"` of a compact JSON record, without parsing it (the subscriber must stay cheap).
fn field<'a>(payload: &'a [u8], key: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(payload).ok()?;
    let pattern = format!("\"{key}\":\"");
    let start = text.find(&pattern)? + pattern.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

// ---- measurements ----------------------------------------------------------------------------------------------

/// CPU used during a phase: this process, the nats-server, the whole machine.
struct Cpu {
    own: Duration,
    nats: Duration,
    machine: Duration,
}

struct CpuMark {
    own: Duration,
    nats: Duration,
    machine: Duration,
    nats_pid: Option<u32>,
}

impl CpuMark {
    fn now(nats_pid: Option<u32>) -> CpuMark {
        CpuMark { own: own_cpu(), nats: pid_cpu(nats_pid), machine: machine_cpu(), nats_pid }
    }
    fn since(&self) -> Cpu {
        Cpu {
            own: own_cpu().saturating_sub(self.own),
            nats: pid_cpu(self.nats_pid).saturating_sub(self.nats),
            machine: machine_cpu().saturating_sub(self.machine),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---- the bridge, wired like `rune serve` -----------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Intake {
    /// `run_core`, in-process dedup (`rune serve` without JetStream).
    Core,
    /// `run_jetstream`, `KvDedup` + `KvLocks` (`rune serve` with JetStream).
    JetStreamKv,
    /// `run_jetstream` with the in-process dedup: not a `rune serve` configuration, for attribution only.
    JetStreamMemory,
}

/// `nats.jetstream.consumer.concurrency`'s default.
const CONCURRENCY: usize = 256;

fn js_intake() -> JetStreamIntake {
    // `rune serve`'s defaults (config::model).
    JetStreamIntake {
        stream: "RUNE_ALERTS".into(),
        subjects: vec!["rune.alerts.>".into()],
        max_age: Duration::from_secs(24 * 3600),
        max_bytes: 1024 * 1024 * 1024,
        durable: "rune".into(),
        max_deliver: 5,
        ack_wait: Duration::from_secs(30),
        backoff: Vec::new(),
        dead_letter_subject: "rune.dead_letter".into(),
        concurrency: CONCURRENCY,
    }
}

struct Shared {
    registry: Arc<Registry>,
    inventory: Arc<Inventory>,
    /// Holds the rules folders of the passes.
    dir: tempfile::TempDir,
}

/// A bridge running on its own runtime, fed by one intake.
struct Running {
    runtime: Runtime,
    cancel: CancellationToken,
    intake: tokio::task::JoinHandle<()>,
    shutdown: Box<dyn FnOnce(&Runtime) -> usize>,
}

impl Running {
    /// Stops the intake and waits for the runs in flight (graceful, like SIGTERM), or drops them with the
    /// runtime (`drain = false`).
    fn stop(self, drain: bool) -> usize {
        self.cancel.cancel();
        let Running { runtime, intake, shutdown, .. } = self;
        let _ = runtime.block_on(intake);
        let left = if drain { shutdown(&runtime) } else { 0 };
        runtime.shutdown_timeout(Duration::from_secs(2));
        left
    }
}

/// How alerts reach the bridge.
#[derive(Clone, Copy)]
struct Feed {
    intake: Intake,
    /// Messages the JetStream intake decides at once (`nats.jetstream.consumer.concurrency`, 256 by default).
    concurrency: usize,
}

fn start_bridge(shared: &Shared, url: &str, feed: Feed, rules: &str, max_in_flight: usize, pass: &str) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bridge")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let rules_dir = shared.dir.path().join(format!("rules-{}", slug(pass)));
    std::fs::create_dir_all(&rules_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(rules_dir.join("bench.yaml"), rules).unwrap_or_else(|e| panic!("{e}"));
    let files = rune::rules::load_dir(&rules_dir).unwrap_or_else(|e| panic!("{e:?}"));
    let set = rune::rules::parse_files(&files, &shared.registry, &shared.inventory)
        .unwrap_or_else(|e| panic!("bench rules: {e:?}"));
    let stop = CancellationToken::new();
    let options = BridgeOptions { rules_dir, max_in_flight, shutdown_grace: Duration::from_secs(30) };
    let (intake_task, shutdown) = runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .name("rune-bench-bridge")
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("bridge connect: {e}"));
        let registry = shared.registry.clone();
        let inventory = shared.inventory.clone();
        match feed.intake {
            Intake::Core | Intake::JetStreamMemory => {
                let engine = Engine::new(set, registry.clone(), inventory.clone());
                launch(client, engine, registry, inventory, options, feed, stop.clone()).await
            }
            Intake::JetStreamKv => {
                let store = KvDedup::open(client.clone(), &KvDedupSettings::default())
                    .await
                    .unwrap_or_else(|e| panic!("dedup store: {e}"));
                let settings = KvLockSettings {
                    bucket: "rune_locks".into(),
                    lease_ttl: Duration::from_secs(600),
                    renew_every: Duration::from_secs(200),
                    ..KvLockSettings::default()
                };
                let locks = KvLocks::open(client.clone(), "rune-bench", &settings)
                    .await
                    .unwrap_or_else(|e| panic!("host locks: {e}"));
                let engine =
                    Engine::with_store(set, registry.clone(), inventory.clone(), store).with_cluster_locks(locks);
                launch(client, engine, registry, inventory, options, feed, stop.clone()).await
            }
        }
    });
    Running { runtime, cancel: stop, intake: intake_task, shutdown }
}

type Launched = (tokio::task::JoinHandle<()>, Box<dyn FnOnce(&Runtime) -> usize>);

/// Builds the bridge and starts its intake.
async fn launch<D: DedupStore>(
    client: async_nats::Client,
    engine: Engine<D>,
    registry: Arc<Registry>,
    inventory: Arc<Inventory>,
    options: BridgeOptions,
    Feed { intake, concurrency }: Feed,
    stop: CancellationToken,
) -> Launched {
    // The audit trail as `rune serve` keeps it (on by default): a file on this machine's disk, every record
    // copied to `rune.audit`; the orchestrator records each run's dispatch (waited for) and result, the
    // publishers every decision.
    let trail = tempfile::Builder::new().prefix("rune-bench-audit-").tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = trail.path().join("audit.jsonl");
    let mirror = rune::audit::nats_mirror(client.clone(), "rune.audit".into());
    let audit = AuditLog::open(AuditOptions { mirror: Some(mirror), ..AuditOptions::new(path) })
        .unwrap_or_else(|e| panic!("audit trail: {e}"));
    let audited = env_usize("RUNE_BENCH_AUDIT", 1) != 0;
    let mut orchestrator = Orchestrator::new(registry, inventory, SshTransport::default());
    // Results and decisions on core NATS (`rune serve` without a results stream, its default).
    let mut sinks: Vec<Arc<dyn Publish>> =
        vec![Arc::new(NatsPublisher::new(client.clone(), None, "rune.results", "rune.decisions"))];
    if audited {
        orchestrator = orchestrator.with_audit(Auditor::new(audit.clone(), false));
        sinks.push(Arc::new(DecisionAudit(audit)));
    }
    let publisher: Arc<dyn Publish> = Arc::new(Publishers(sinks));
    let interval = Duration::from_secs(1);
    let bridge = Bridge::new(engine, orchestrator, publisher, Metrics::new(), options);
    bridge.start_deferred_timer();
    bridge.start_rule_watch(interval);
    let task = match intake {
        Intake::Core => {
            let f = run_core(
                client,
                vec!["rune.alerts.>".into()],
                "rune".into(),
                "rune.dead_letter".into(),
                bridge.clone(),
                Limits::default(),
                stop,
            );
            tokio::spawn(async move {
                if let Err(e) = f.await {
                    eprintln!("core intake: {e}");
                }
            })
        }
        Intake::JetStreamKv | Intake::JetStreamMemory => {
            let settings = JetStreamIntake { concurrency, ..js_intake() };
            let f = run_jetstream(client, settings, bridge.clone(), Limits::default(), stop);
            tokio::spawn(async move {
                if let Err(e) = f.await {
                    eprintln!("JetStream intake: {e}");
                }
            })
        }
    };
    // The trail's folder goes with the bridge.
    let shutdown = Box::new(move |rt: &Runtime| {
        let left = rt.block_on(bridge.shutdown());
        drop(trail);
        left
    });
    (task, shutdown)
}

// ---- the load generator ----------------------------------------------------------------------------------------

fn load_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name("rune-bench-load")
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// When each alert's decision and result arrived (index = the alert's sequence number).
struct Marks {
    times: Mutex<Vec<Option<Instant>>>,
    count: AtomicUsize,
    /// Arrival of the first and the last message.
    first_last: Mutex<Option<(Instant, Instant)>>,
    /// Decisions by kind (`admitted`, or the suppression reason).
    kinds: Mutex<BTreeMap<String, usize>>,
    /// Results: when the orchestrator started the run (`started_at`, wall clock).
    started: Mutex<Vec<Option<DateTime<Utc>>>>,
}

impl Marks {
    fn new(n: usize) -> Arc<Marks> {
        Arc::new(Marks {
            times: Mutex::new(vec![None; n]),
            count: AtomicUsize::new(0),
            first_last: Mutex::new(None),
            kinds: Mutex::new(BTreeMap::new()),
            started: Mutex::new(vec![None; n]),
        })
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn times(&self) -> Vec<Option<Instant>> {
        self.times.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn last(&self) -> Option<Instant> {
        self.first_last.lock().unwrap_or_else(|e| e.into_inner()).map(|(_, l)| l)
    }

    fn kinds(&self) -> BTreeMap<String, usize> {
        self.kinds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn started(&self) -> Vec<Option<DateTime<Utc>>> {
        self.started.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What [`watch`] reads from each message besides its arrival.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Nothing,
    /// Decisions: their kind.
    Kind,
    /// Results: `started_at`.
    StartedAt,
}

/// Records, for every message on `subject` carrying a bench correlation id, when it arrived, and what `read`
/// asks for.
async fn watch(client: &async_nats::Client, subject: &str, marks: Arc<Marks>, read: Read) {
    let mut sub = client.subscribe(subject.to_owned()).await.unwrap_or_else(|e| panic!("subscribe: {e}"));
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let now = Instant::now();
            let Some(seq) = seq_of(&message) else { continue };
            {
                let mut times = marks.times.lock().unwrap_or_else(|e| e.into_inner());
                match times.get_mut(seq) {
                    Some(slot @ None) => *slot = Some(now),
                    _ => continue,
                }
            }
            {
                let mut fl = marks.first_last.lock().unwrap_or_else(|e| e.into_inner());
                *fl = Some(fl.map_or((now, now), |(f, _)| (f, now)));
            }
            if read == Read::StartedAt
                && let Some(at) = field(&message.payload, "started_at").and_then(|t| t.parse::<DateTime<Utc>>().ok())
                && let Some(slot) = marks.started.lock().unwrap_or_else(|e| e.into_inner()).get_mut(seq)
            {
                *slot = Some(at);
            }
            if read == Read::Kind {
                let kind = match field(&message.payload, "decision") {
                    Some("suppressed") => field(&message.payload, "reason").unwrap_or("suppressed"),
                    Some(other) => other,
                    None => "?",
                };
                *marks.kinds.lock().unwrap_or_else(|e| e.into_inner()).entry(kind.to_owned()).or_default() += 1;
            }
            marks.count.fetch_add(1, Ordering::SeqCst);
        }
    });
}

async fn wait_for(marks: &Marks, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while marks.count() < n {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Waits until the intake listens: the core queue subscription is in place, or the JetStream consumer exists.
async fn wait_for_intake(client: &async_nats::Client, intake: Intake) {
    if intake == Intake::Core {
        // No way to observe another connection's subscription but the server's interest; a short pause suffices.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return;
    }
    let js = jetstream::new(client.clone());
    for _ in 0..300 {
        if let Ok(s) = js.get_stream("RUNE_ALERTS").await
            && s.consumer_info("rune").await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the JetStream consumer did not appear");
}

async fn publish(client: &async_nats::Client, intake: Intake, a: Alert) {
    match intake {
        Intake::Core => client
            .publish_with_headers(a.subject, a.headers, a.payload)
            .await
            .unwrap_or_else(|e| panic!("publish: {e}")),
        Intake::JetStreamKv | Intake::JetStreamMemory => {
            let js = jetstream::new(client.clone());
            let ack = js
                .publish_with_headers(a.subject, a.headers, a.payload)
                .await
                .unwrap_or_else(|e| panic!("publish: {e}"));
            // The stream's ack is not on the alert's path to the consumer: awaited off the pacing loop.
            tokio::spawn(async move {
                if let Err(e) = ack.await {
                    eprintln!("warning: JetStream publish not acknowledged: {e}");
                }
            });
        }
    }
}

/// Publishes every alert into the JetStream alerts stream, [`PUBLISH_WINDOW`] acks outstanding.
async fn load_stream(client: &async_nats::Client, alerts: Vec<Alert>) -> Duration {
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(js_intake().stream_config()).await.unwrap_or_else(|e| panic!("stream: {e}"));
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(PUBLISH_WINDOW);
    for a in alerts {
        let ack =
            js.publish_with_headers(a.subject, a.headers, a.payload).await.unwrap_or_else(|e| panic!("publish: {e}"));
        pending.push_back(ack);
        if pending.len() >= PUBLISH_WINDOW
            && let Some(ack) = pending.pop_front()
        {
            ack.await.unwrap_or_else(|e| panic!("ack: {e}"));
        }
    }
    for ack in pending {
        ack.await.unwrap_or_else(|e| panic!("ack: {e}"));
    }
    start.elapsed()
}

// ---- 1. latency at a steady rate -------------------------------------------------------------------------------

struct LatencyRow {
    name: String,
    sent: usize,
    lost_decisions: usize,
    lost_results: usize,
    decision: Vec<Duration>,
    /// Publish → the orchestrator starts the run (the result's `started_at`; wall clock).
    started: Vec<Duration>,
    result: Vec<Duration>,
}

#[allow(clippy::too_many_arguments)]
fn latency_pass(
    shared: &Shared,
    name: &str,
    intake: Intake,
    host: &str,
    rate: usize,
    seconds: usize,
    idle: Option<&mut Option<(u64, u64)>>,
) -> LatencyRow {
    let server = NatsServer::start();
    let feed = Feed { intake, concurrency: CONCURRENCY };
    let running = start_bridge(shared, &server.url(), feed, &rules_plain(), MAX_IN_FLIGHT, name);
    let load = load_runtime();
    let warm = rate.max(1);
    let n = warm + 1 + rate * seconds;
    let tag = format!("lat-{}", slug(name));
    let row = load.block_on(async {
        let client = connect(&server.url()).await;
        let decisions = Marks::new(n);
        let results = Marks::new(n);
        watch(&client, "rune.decisions.>", decisions.clone(), Read::Nothing).await;
        watch(&client, "rune.results.>", results.clone(), Read::StartedAt).await;
        client.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        wait_for_intake(&client, intake).await;
        if let Some(idle) = idle {
            // Bridge built, NATS connected, intake listening, nothing has flowed yet.
            *idle = Some((status_kib("/proc/self/status", "VmRSS:"), status_kib("/proc/self/status", "VmHWM:")));
        }
        // Warm-up (not measured): one alert alone (opens the SSH connection when the host is remote), then one
        // second at the rate.
        let mut sent_at = vec![None; n];
        let mut sent_wall = vec![None; n];
        sent_at[0] = Some(Instant::now());
        publish(&client, intake, alert(0, &tag, host, 0)).await;
        if !wait_for(&results, 1, Duration::from_secs(60)).await {
            panic!("{name}: the warm-up alert got no result");
        }
        let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for seq in 1..n {
            if seq == warm + 1 {
                // Let the warm-up drain before the measured series.
                wait_for(&results, warm + 1, Duration::from_secs(60)).await;
                tick.reset();
            }
            tick.tick().await;
            sent_wall[seq] = Some(Utc::now());
            sent_at[seq] = Some(Instant::now());
            publish(&client, intake, alert(seq, &tag, host, seq)).await;
        }
        client.flush().await.ok();
        wait_for(&results, n, Duration::from_secs(60)).await;
        wait_for(&decisions, n, Duration::from_secs(5)).await;
        let (dt, rt, st) = (decisions.times(), results.times(), results.started());
        let mut row = LatencyRow {
            name: name.to_owned(),
            sent: n - warm - 1,
            lost_decisions: 0,
            lost_results: 0,
            decision: Vec::new(),
            started: Vec::new(),
            result: Vec::new(),
        };
        for seq in warm + 1..n {
            let Some(sent) = sent_at[seq] else { continue };
            match dt[seq] {
                Some(t) => row.decision.push(t.saturating_duration_since(sent)),
                None => row.lost_decisions += 1,
            }
            match rt[seq] {
                Some(t) => row.result.push(t.saturating_duration_since(sent)),
                None => row.lost_results += 1,
            }
            if let (Some(wall), Some(started)) = (sent_wall[seq], st[seq]) {
                row.started.push((started - wall).to_std().unwrap_or_default());
            }
        }
        row
    });
    running.stop(true);
    drop(load);
    drop(server);
    row
}

fn print_latency(rows: &[LatencyRow], rate: usize, seconds: usize) {
    println!();
    println!(
        "1. latency at {rate} alerts/s for {seconds} s (distinct fingerprints, every alert runs noop); ms from publish"
    );
    println!(
        "   dec = the decision received on rune.decisions.> (published as the run is spawned); sta = the orchestrator"
    );
    println!("   starts the run (result's started_at, wall clock); res = the result received on rune.results.>");
    println!(
        "{:<28} {:>6} {:>4} | {:>7} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} {:>7}",
        "pass",
        "alerts",
        "lost",
        "dec_p50",
        "dec_p90",
        "dec_p99",
        "dec_max",
        "sta_p50",
        "sta_p99",
        "sta_max",
        "res_p50",
        "res_p90",
        "res_p99",
        "res_max"
    );
    for r in rows {
        let mut d = r.decision.clone();
        let mut t = r.started.clone();
        let mut s = r.result.clone();
        d.sort();
        t.sort();
        s.sort();
        let max = |v: &[Duration]| ms(v.last().copied().unwrap_or_default());
        println!(
            "{:<28} {:>6} {:>4} | {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {:>7.2} {:>7.2} {:>7.2} | {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
            r.name,
            r.sent,
            r.lost_decisions.max(r.lost_results),
            ms(percentile(&d, 0.5)),
            ms(percentile(&d, 0.9)),
            ms(percentile(&d, 0.99)),
            max(&d),
            ms(percentile(&t, 0.5)),
            ms(percentile(&t, 0.99)),
            max(&t),
            ms(percentile(&s, 0.5)),
            ms(percentile(&s, 0.9)),
            ms(percentile(&s, 0.99)),
            max(&s),
        );
    }
}

// ---- 2. throughput through JetStream ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Runs {
    /// Every admitted alert runs `noop` (local process), `max_in_flight` 64.
    Execute,
    /// The rule's rate limit lets [`STORM_RUNS`] runs through; the rest is suppressed `rate_limited`.
    RateLimited,
    /// Every alert repeats one of [`REPEATED_ALERTS`] alerts acted on within the window (their keys are claimed in
    /// the KV bucket before the intake starts): all `duplicate`; no rate limit in the way.
    Repeats,
}

struct ThroughputRow {
    name: String,
    alerts: usize,
    distinct: usize,
    publish: Duration,
    decisions: Duration,
    runs: usize,
    runs_time: Duration,
    kinds: BTreeMap<String, usize>,
    lost: usize,
    cpu: Cpu,
    /// Wall time over which `cpu` was measured (intake start → last decision and last expected result).
    phase: Duration,
    /// VmRSS of this process when the intake started (the stream loaded), and when the last decision came.
    rss_start_kib: u64,
    rss_kib: u64,
}

fn throughput_pass(
    shared: &Shared,
    name: &str,
    (intake, concurrency): (Intake, usize),
    runs: Runs,
    host: &str,
    n: usize,
) -> ThroughputRow {
    let server = NatsServer::start();
    let load = load_runtime();
    let tag = format!("tp-{}", slug(name));
    let (alerts, distinct) = match runs {
        Runs::Repeats => {
            ((0..n).map(|seq| alert(seq, &tag, host, seq % REPEATED_ALERTS)).collect(), REPEATED_ALERTS.min(n))
        }
        Runs::Execute | Runs::RateLimited => mixed_alerts(n, &tag, host),
    };
    let rules = match runs {
        Runs::Execute | Runs::Repeats => rules_plain(),
        Runs::RateLimited => rules_storm(),
    };
    let (client, decisions, results, publish) = load.block_on(async {
        let client = connect(&server.url()).await;
        let decisions = Marks::new(n);
        let results = Marks::new(n);
        watch(&client, "rune.decisions.>", decisions.clone(), Read::Kind).await;
        watch(&client, "rune.results.>", results.clone(), Read::Nothing).await;
        client.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        if let Runs::Repeats = runs {
            // As if each had run within the window: the key the engine derives (rule/fingerprint/status/host).
            let store = KvDedup::open(client.clone(), &KvDedupSettings::default())
                .await
                .unwrap_or_else(|e| panic!("dedup store: {e}"));
            for of in 0..REPEATED_ALERTS {
                let key = format!("bench/{tag}-{of:08}/firing/{host}");
                let claimed = store.claim(&key, Duration::from_secs(3600), tokio::time::Instant::now()).await;
                assert_eq!(claimed, Ok(true), "seed claim {key}");
            }
        }
        let publish = load_stream(&client, alerts).await;
        (client, decisions, results, publish)
    });
    // The stream holds every alert; the intake starts now and works through it (the clock starts once the bridge
    // is built and its intake task spawned: the consumer is created by the intake, on the clock).
    let rss_start = status_kib("/proc/self/status", "VmRSS:");
    let feed = Feed { intake, concurrency };
    let running = start_bridge(shared, &server.url(), feed, &rules, MAX_IN_FLIGHT, name);
    let mark = CpuMark::now(server.pid());
    let start = Instant::now();
    let timeout = Duration::from_secs(60 + (n / 200) as u64);
    let expected_runs = match runs {
        Runs::Execute => distinct,
        Runs::RateLimited => STORM_RUNS.min(distinct),
        Runs::Repeats => 0,
    };
    let (all, _) = load.block_on(async {
        let all = wait_for(&decisions, n, timeout).await;
        let ran = wait_for(&results, expected_runs, timeout).await;
        (all, ran)
    });
    let cpu = mark.since();
    let phase = start.elapsed();
    let rss_kib = status_kib("/proc/self/status", "VmRSS:");
    let decided = decisions.last().map_or(start.elapsed(), |t| t.saturating_duration_since(start));
    let runs_time = results.last().map_or(Duration::ZERO, |t| t.saturating_duration_since(start));
    if !all {
        eprintln!("warning: {name}: {} of {n} decisions within {timeout:?}", decisions.count());
    }
    running.stop(true);
    drop(client);
    drop(load);
    drop(server);
    ThroughputRow {
        name: name.to_owned(),
        alerts: n,
        distinct,
        publish,
        decisions: decided,
        runs: results.count(),
        runs_time,
        kinds: decisions.kinds(),
        lost: n - decisions.count(),
        cpu,
        phase,
        rss_start_kib: rss_start,
        rss_kib,
    }
}

fn print_throughput(rows: &[ThroughputRow]) {
    println!();
    println!(
        "2. throughput through JetStream ({REPEAT_PERCENT}% of the alerts repeat an earlier one). The alerts stream is loaded first"
    );
    println!(
        "   (publish/s: JetStream publishes, {PUBLISH_WINDOW} acks in flight), then the intake starts: decisions/s = alerts / (intake start ->"
    );
    println!(
        "   last decision received), runs/s = results / (intake start -> last result). CPU over that phase: own = this process"
    );
    println!(
        "   (bridge + subscriber) and nats = nats-server, in µs per alert; cores = whole machine CPU / wall time. RSS of this process."
    );
    println!(
        "{:<28} {:>6} {:>8} {:>9} {:>11} {:>6} {:>7} {:>7} {:>7} {:>5} {:>13}  decisions",
        "pass",
        "alerts",
        "distinct",
        "publish/s",
        "decisions/s",
        "runs",
        "runs/s",
        "own_us",
        "nats_us",
        "cores",
        "rss_MiB"
    );
    for r in rows {
        let kinds: Vec<String> = r.kinds.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let runs_rate =
            if r.runs > 1 && !r.runs_time.is_zero() { r.runs as f64 / r.runs_time.as_secs_f64() } else { 0.0 };
        let per_alert = |d: Duration| us(d) / r.alerts as f64;
        println!(
            "{:<28} {:>6} {:>8} {:>9.0} {:>11.0} {:>6} {:>7.0} {:>7.0} {:>7.0} {:>5.2} {:>13}  {}{}",
            r.name,
            r.alerts,
            r.distinct,
            r.alerts as f64 / r.publish.as_secs_f64(),
            (r.alerts - r.lost) as f64 / r.decisions.as_secs_f64(),
            r.runs,
            runs_rate,
            per_alert(r.cpu.own),
            per_alert(r.cpu.nats),
            r.cpu.machine.as_secs_f64() / r.phase.as_secs_f64(),
            format!("{:.1} -> {:.1}", mib(r.rss_start_kib), mib(r.rss_kib)),
            kinds.join(" "),
            if r.lost > 0 { format!(" MISSING={}", r.lost) } else { String::new() }
        );
    }
}

// ---- KV round trips --------------------------------------------------------------------------------------------

struct KvRow {
    op: &'static str,
    n: usize,
    concurrency: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

fn kv_pass(n: usize) -> Vec<KvRow> {
    let server = NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let rows = rt.block_on(async {
        let client = connect(&server.url()).await;
        let kv = KvDedup::open(client, &KvDedupSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let window = Duration::from_secs(3600);
        let now = tokio::time::Instant::now();
        let mut rows = Vec::new();
        // Warm the connection and the bucket.
        for i in 0..100 {
            let _ = kv.claim(&format!("warm/{i}"), window, now).await;
        }
        macro_rules! sequential {
            ($op:expr, $prefix:expr, $call:ident $(, $arg:expr)*) => {{
                let mut lat = Vec::with_capacity(n);
                let start = Instant::now();
                for i in 0..n {
                    let key = format!("{}{i}", $prefix);
                    let t = Instant::now();
                    let r = kv.$call(&key $(, $arg)*).await;
                    lat.push(t.elapsed());
                    if r.is_err() {
                        eprintln!("warning: {} failed: {r:?}", $op);
                    }
                }
                rows.push(KvRow { op: $op, n, concurrency: 1, elapsed: start.elapsed(), lat });
            }};
        }
        sequential!("is_held (absent key)", "bench/new/", is_held, now);
        sequential!("claim (new key)", "bench/new/", claim, window, now);
        sequential!("is_held (held key)", "bench/new/", is_held, now);
        sequential!("claim (held key)", "bench/new/", claim, window, now);
        // The same claims with many in flight: what a consumer that decided several alerts at once would see.
        for concurrency in [16usize, 64] {
            let start = Instant::now();
            let lat: Vec<Duration> = futures::stream::iter(0..n)
                .map(|i| {
                    let kv = kv.clone();
                    async move {
                        let t = Instant::now();
                        let _ = kv.claim(&format!("bench/c{concurrency}/{i}"), window, now).await;
                        t.elapsed()
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            rows.push(KvRow { op: "claim (new key)", n, concurrency, elapsed: start.elapsed(), lat });
        }
        rows
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(server);
    rows
}

fn print_kv(rows: &[KvRow]) {
    println!();
    println!("KvDedup round trips on the same nats-server (loopback, file store): µs per call");
    println!("{:<22} {:>6} {:>11} {:>9} {:>8} {:>8} {:>8}", "op", "n", "in_flight", "ops/s", "p50", "p99", "max");
    for r in rows {
        let mut l = r.lat.clone();
        l.sort();
        println!(
            "{:<22} {:>6} {:>11} {:>9.0} {:>8.0} {:>8.0} {:>8.0}",
            r.op,
            r.n,
            r.concurrency,
            r.n as f64 / r.elapsed.as_secs_f64(),
            us(percentile(&l, 0.5)),
            us(percentile(&l, 0.99)),
            us(l.last().copied().unwrap_or_default()),
        );
    }
}

// ---- 3. the real daemon ----------------------------------------------------------------------------------------

struct DaemonRow {
    idle: (u64, u64),
    loaded: (u64, u64),
    settled: (u64, u64),
    alerts: usize,
    distinct: usize,
    decisions: Duration,
    runs: usize,
    runs_time: Duration,
    kinds: BTreeMap<String, usize>,
}

fn daemon_pass(shared: &Shared, n: usize) -> Option<DaemonRow> {
    let server = NatsServer::start();
    let dir = shared.dir.path().join("daemon");
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(rules.join("bench.yaml"), rules_plain()).unwrap_or_else(|e| panic!("{e}"));
    let port = support::sshd::free_port();
    let config = dir.join("rune.yaml");
    std::fs::write(
        &config,
        format!(
            "nats:\n  urls: [\"{}\"]\n  jetstream:\n    enabled: true\npaths:\n  rules_dir: {}\n  plugins_dirs: [{}]\n\
             webhook:\n  listen: 127.0.0.1:{port}\n",
            server.url(),
            rules.display(),
            repo().join("plugins").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let binary = env!("CARGO_BIN_EXE_rune");
    let log = dir.join("serve.log");
    let stderr = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
    // Under `setpriv --pdeathsig KILL` when present: the daemon dies with the benchmark, even on a panic.
    let mut command = if Path::new("/usr/bin/setpriv").is_file() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--pdeathsig", "KILL"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    command
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(&dir)
        .env_remove("RUNE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child: Child = command.spawn().unwrap_or_else(|e| panic!("{binary}: {e}"));
    let pid = child.id();
    let status = format!("/proc/{pid}/status");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&log) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains("listening on") {
            break;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            eprintln!("warning: rune serve did not start:\n{text}");
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = || (status_kib(&status, "VmRSS:"), status_kib(&status, "VmHWM:"));
    std::thread::sleep(Duration::from_secs(2));
    let idle = read();
    let load = load_runtime();
    let (alerts, distinct) = mixed_alerts(n, "daemon", "localhost");
    let (decisions, results, start) = load.block_on(async {
        let client = connect(&server.url()).await;
        let decisions = Marks::new(n);
        let results = Marks::new(n);
        watch(&client, "rune.decisions.>", decisions.clone(), Read::Kind).await;
        watch(&client, "rune.results.>", results.clone(), Read::Nothing).await;
        client.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        // Published while the daemon consumes (no preloading here: the daemon's consumer is already running).
        let start = Instant::now();
        load_stream(&client, alerts).await;
        let timeout = Duration::from_secs(60 + (n / 100) as u64);
        wait_for(&decisions, n, timeout).await;
        wait_for(&results, distinct, timeout).await;
        (decisions, results, start)
    });
    let loaded = read();
    std::thread::sleep(Duration::from_secs(2));
    let settled = read();
    // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(load);
    drop(server);
    Some(DaemonRow {
        idle,
        loaded,
        settled,
        alerts: n,
        distinct,
        decisions: decisions.last().map_or(Duration::ZERO, |t| t.saturating_duration_since(start)),
        runs: results.count(),
        runs_time: results.last().map_or(Duration::ZERO, |t| t.saturating_duration_since(start)),
        kinds: decisions.kinds(),
    })
}

// ---- main ------------------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let rate = env_usize("RUNE_BENCH_RATE", 100).max(1);
    let seconds = env_usize("RUNE_BENCH_SECONDS", 10).max(1);
    let alerts = env_usize("RUNE_BENCH_ALERTS", 20_000).max(1);
    let run_alerts = env_usize("RUNE_BENCH_RUN_ALERTS", 3_000).max(1);
    let daemon_alerts = env_usize("RUNE_BENCH_DAEMON_ALERTS", 2_000).max(1);
    let storm_concurrency: Vec<usize> = std::env::var("RUNE_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    let parts = std::env::var("RUNE_BENCH_PARTS").unwrap_or_else(|_| "latency,ssh,throughput,kv,daemon".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let started = Instant::now();
    support::nats::server_binary();

    let fleet = part("ssh").then(|| {
        support::sshd::ensure_prerequisites();
        SshdFleet::start(1, &FleetOptions::default())
    });
    let dir = tempfile::Builder::new().prefix("rune-bench-bridge-").tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap_or_else(|e| panic!("{e}"));
    let registry = Arc::new(Registry::load(&[repo().join("plugins"), plugins]));
    if let Some(p) = registry.problems().first() {
        panic!("bench plugins: {p}");
    }
    let shared = Shared { registry, inventory: Arc::new(inventory(fleet.as_ref())), dir };
    println!(
        "bridge benchmark: real nats-server {} on loopback, in-process Bridge wired like `rune serve` (2 worker threads), local transport{}",
        support::nats::server_binary().display(),
        if fleet.is_some() { " and one loopback sshd" } else { "" }
    );

    let mut idle_bench: Option<(u64, u64)> = None;
    let mut latency = Vec::new();
    if part("latency") {
        latency.push(latency_pass(
            &shared,
            "core, local noop",
            Intake::Core,
            "localhost",
            rate,
            seconds,
            Some(&mut idle_bench),
        ));
        latency.push(latency_pass(
            &shared,
            "jetstream+kv, local noop",
            Intake::JetStreamKv,
            "localhost",
            rate,
            seconds,
            None,
        ));
    }
    if let Some(fleet) = fleet.as_ref() {
        let host = fleet.hosts()[0].name.clone();
        latency.push(latency_pass(&shared, "core, warm ssh noop", Intake::Core, &host, rate, seconds, None));
        latency.push(latency_pass(
            &shared,
            "jetstream+kv, warm ssh noop",
            Intake::JetStreamKv,
            &host,
            rate,
            seconds,
            None,
        ));
    }
    if !latency.is_empty() {
        print_latency(&latency, rate, seconds);
    }

    if part("throughput") {
        let (kv, memory) = ((Intake::JetStreamKv, CONCURRENCY), (Intake::JetStreamMemory, CONCURRENCY));
        let local = "localhost";
        let mut rows = vec![throughput_pass(&shared, "kv, runs: local noop", kv, Runs::Execute, local, run_alerts)];
        if let Some(fleet) = fleet.as_ref() {
            let host = fleet.hosts()[0].name.clone();
            rows.push(throughput_pass(&shared, "kv, runs: ssh noop", kv, Runs::Execute, &host, run_alerts));
        }
        rows.push(throughput_pass(&shared, "kv, storm: rate_limited", kv, Runs::RateLimited, local, alerts));
        rows.push(throughput_pass(&shared, "kv, storm: duplicates", kv, Runs::Repeats, local, alerts));
        for concurrency in storm_concurrency.iter().copied().filter(|&c| c != CONCURRENCY) {
            let name = format!("kv, storm, concurrency {concurrency}");
            let feed = (Intake::JetStreamKv, concurrency);
            rows.push(throughput_pass(&shared, &name, feed, Runs::RateLimited, local, alerts));
        }
        rows.push(throughput_pass(&shared, "memory dedup, storm", memory, Runs::RateLimited, local, alerts));
        print_throughput(&rows);
    }

    if part("kv") {
        print_kv(&kv_pass(2_000));
    }

    let peak_bench = status_kib("/proc/self/status", "VmHWM:");
    let daemon = if part("daemon") { daemon_pass(&shared, daemon_alerts) } else { None };
    println!();
    println!("3. memory (MiB; VmRSS / VmHWM from /proc/PID/status)");
    if let Some((rss, hwm)) = idle_bench {
        println!(
            "bench process, idle (bridge built, NATS connected, intake listening, sshd harness started): VmRSS {:.1}, VmHWM {:.1}",
            mib(rss),
            mib(hwm)
        );
    }
    println!("bench process, peak over every pass (bridge + load generator + harness): VmHWM {:.1}", mib(peak_bench));
    if let Some(d) = daemon {
        println!(
            "rune serve (NATS + JetStream, KV dedup and locks), idle 2 s after start: VmRSS {:.1}, VmHWM {:.1}",
            mib(d.idle.0),
            mib(d.idle.1)
        );
        println!(
            "rune serve right after {} alerts ({} distinct: {} noop runs, {:.0} decisions/s, {:.0} results/s): VmRSS {:.1}, VmHWM {:.1}; 2 s later VmRSS {:.1}",
            d.alerts,
            d.distinct,
            d.runs,
            d.alerts as f64 / d.decisions.as_secs_f64().max(1e-9),
            d.runs as f64 / d.runs_time.as_secs_f64().max(1e-9),
            mib(d.loaded.0),
            mib(d.loaded.1),
            mib(d.settled.0)
        );
        let kinds: Vec<String> = d.kinds.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("rune serve decisions: {}", kinds.join(" "));
    }
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
}
