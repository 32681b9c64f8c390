//! The soak test (issue 6): the real `rune serve` binary under ≥ 1,000 alerts/s through JetStream for minutes,
//! every alert accounted for exactly once, its memory, file descriptors and SSH connections flat.
//!
//! Opt-in and bounded in time (docs/testing.md):
//! `RUNE_SOAK_SECONDS=300 cargo test --release --test integration -- --ignored --exact soak::soak --nocapture`.
//!
//! Real parts: a nats-server with JetStream, an sshd fleet on loopback (`RUNE_SOAK_HOSTS`, default 12), and
//! `rune serve` as a child process with the audit trail on (the default), KV dedup and locks, the default
//! consumer (256 lanes) and run slots (64). The load, paced from this process at `RUNE_SOAK_RATE` alerts/s
//! (default 1,000) into the alerts stream, cycles through 20 alerts: one new `SoakRun` alert (admitted: `noop`
//! over SSH on the fleet, 50 runs/s at the default rate), five repeats of a recent one (`duplicate`), fourteen
//! new `SoakStorm` alerts whose rule allows [`STORM_RUNS`] runs a day (`rate_limited` after those).
//!
//! Books: every decision and result on `rune.decisions.>` / `rune.results.>` and every record of the audit trail
//! is counted per alert by its correlation id. Pass: each alert has exactly one decision in both, with the
//! verdict of its kind; each admitted decision exactly one dispatch and one `ok` result, the others none; the
//! daemon drains, exits 0, and its trail verifies. Flat: from the end of the warm-up (the first 20 %) to the end of
//! the load, VmRSS grows by less than 20 % + 16 MiB and open descriptors by at most 16, and the daemon never holds
//! more SSH connections than hosts (one pooled connection per host). The figures are printed (`--nocapture`).

mod daemon;
mod load;
/// The benchmarks' measuring helpers (/proc readings, the Alertmanager payload), shared rather than copied.
#[path = "../../benches/common/mod.rs"]
mod measure;
mod probe;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use daemon::Daemon;
use load::{AuditSummary, Class, Ledger, Plan, Published, Verdict, class_of};
use measure::mib;
use probe::{Progress, Reading, Sample, Sampler};

use crate::support::nats::NatsServer;
use crate::support::sshd::{FleetOptions, SshdFleet, free_port};

/// Runs of the storm rule per day: its first few alerts run, every later one is `rate_limited`.
const STORM_RUNS: usize = 10;
/// Share of the load before the flatness baseline is taken (connections opened, buffers grown, caches warm).
const WARM_UP: f64 = 0.2;
/// Flatness bounds, end of load against the end of the warm-up.
const RSS_GROWTH: f64 = 0.20;
const RSS_SLACK_KIB: u64 = 16 * 1024;
const FD_SLACK: usize = 16;
/// Pooled SSH connections per host (`SshSettings`: one authenticated connection per host, channels on it).
const SSH_POOL_PER_HOST: usize = 1;
/// After the load: bound on waiting without any new decision or result (a stall), and on the drain as a whole.
const STALL: Duration = Duration::from_secs(60);
const DRAIN_LIMIT: Duration = Duration::from_secs(600);
/// After the drain: time for a late second decision or result of some alert to show up.
const LATE: Duration = Duration::from_secs(3);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The knobs, from the environment.
struct Knobs {
    seconds: u64,
    rate: f64,
    hosts: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        let number = |name: &str, default: u64| -> u64 {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
                Err(_) => default,
            }
        };
        let knobs = Knobs {
            seconds: number("RUNE_SOAK_SECONDS", 180),
            rate: number("RUNE_SOAK_RATE", 1000) as f64,
            hosts: number("RUNE_SOAK_HOSTS", 12) as usize,
        };
        assert!(knobs.seconds >= 5, "RUNE_SOAK_SECONDS must be at least 5");
        assert!(knobs.rate >= 1.0, "RUNE_SOAK_RATE must be at least 1");
        assert!((1..=100).contains(&knobs.hosts), "RUNE_SOAK_HOSTS must be 1 to 100");
        knobs
    }
}

/// Rules: the policy's limits out of the way; `soak-run` acts once per alert within 2 minutes (its repeats are
/// duplicates); `soak-storm` runs [`STORM_RUNS`] times a day.
fn rules() -> String {
    format!(
        "policy:\n  rate_limit:\n    global: {{ count: 1000000, per: 1s }}\n    host: {{ count: 1000000, per: 1s }}\n\
         rules:\n\
         \x20 - name: soak-run\n    match: {{ labels: {{ alertname: SoakRun, instance: {{ present: true }}, n: {{ present: true }} }} }}\n    \
         target: {{ host_from: \"{{{{ labels.instance | strip_port }}}}\" }}\n    action: noop\n    \
         args: {{ message: \"run {{{{ labels.n }}}}\" }}\n    dedup: {{ window: 2m }}\n\
         \x20 - name: soak-storm\n    match: {{ labels: {{ alertname: SoakStorm, instance: {{ present: true }}, n: {{ present: true }} }} }}\n    \
         target: {{ host_from: \"{{{{ labels.instance | strip_port }}}}\" }}\n    action: noop\n    \
         args: {{ message: \"storm {{{{ labels.n }}}}\" }}\n    rate_limit:\n      rule: {{ count: {STORM_RUNS}, per: 24h }}\n"
    )
}

fn inventory(fleet: &SshdFleet) -> String {
    let mut s = format!(
        "defaults:\n  transport: ssh\n  user: {}\n  key: {}\n  known_hosts: {}\n  connect_timeout_s: 30\nhosts:\n",
        fleet.user(),
        fleet.client_key().display(),
        fleet.known_hosts().display()
    );
    for h in fleet.hosts() {
        let _ = write!(s, "  {}:\n    address: {}\n    port: {}\n", h.name, h.addr, h.port);
    }
    s
}

/// `rune serve`'s settings: JetStream intake with its defaults, everything else default (audit trail on,
/// results and decisions on core NATS, info log).
fn settings(nats: &NatsServer) -> String {
    format!(
        "nats:\n  urls: [\"{}\"]\n  jetstream:\n    enabled: true\npaths:\n  rules_dir: rules\n  inventory: inventory.yaml\n  \
         plugins_dirs: [{}]\nwebhook:\n  listen: 127.0.0.1:{}\naudit:\n  file: audit/rune-audit.jsonl\n",
        nats.url(),
        repo().join("plugins").display(),
        free_port()
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "soak: minutes long, opt-in (docs/testing.md); run in release"]
fn soak() {
    let knobs = Knobs::from_env();
    let figures = run(&knobs);
    println!("{}", figures.report(&knobs));
    let failures = figures.failures(&knobs);
    assert!(
        failures.is_empty(),
        "soak failed:\n- {}\nlast lines of the daemon's log:\n{}",
        failures.join("\n- "),
        figures.log_tail
    );
}

/// Everything a soak measured and counted.
struct Figures {
    pid: u32,
    /// /proc/loadavg when the soak started and when its load ended (the machine is shared).
    load_average: (String, String),
    sent: Published,
    /// Since the load started: when it ended.
    load_end: Duration,
    warm_at: Duration,
    /// How long the daemon took after the load to decide and run the rest, or why it stalled.
    drain: Result<Duration, String>,
    samples: Vec<Sample>,
    /// Before the load (NATS connected, consumer listening) and after the drain.
    idle: Reading,
    settled: Reading,
    consumer: jetstream::consumer::Info,
    slow_consumers: usize,
    nats_cpu: Duration,
    nats_rss_kib: u64,
    exit: Option<i32>,
    log_problems: Vec<String>,
    log_tail: String,
    log_bytes: u64,
    live: Ledger,
    audit: Ledger,
    audit_summary: AuditSummary,
    verify: std::process::Output,
    books: Books,
}

/// Starts the parts, runs the load, drains, stops the daemon and reads its books.
fn run(knobs: &Knobs) -> Figures {
    let duration = Duration::from_secs(knobs.seconds);
    crate::support::sshd::ensure_prerequisites();
    let nats = NatsServer::start();
    let fleet = SshdFleet::start(knobs.hosts, &FleetOptions::default());
    let dir = tempfile::Builder::new().prefix("rune-soak-").tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(dir.path().join("rules")).unwrap_or_else(|e| panic!("{e}"));
    write(&dir.path().join("rules/soak.yaml"), &rules());
    write(&dir.path().join("inventory.yaml"), &inventory(&fleet));
    let config = dir.path().join("rune.yaml");
    write(&config, &settings(&nats));
    let load_at_start = load_average();
    // Spawned from this thread, which outlives it (setpriv's death signal follows the spawning thread).
    let mut daemon = Daemon::start(&config, dir.path());
    let pid = daemon.pid();
    let ssh_ports: HashSet<u16> = fleet.hosts().iter().map(|h| h.port).collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak-load")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let slow_consumers = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(Mutex::new(Ledger::default()));
    let (client, js) = runtime.block_on(async {
        let counter = slow_consumers.clone();
        let client = async_nats::ConnectOptions::new()
            .name("rune-soak")
            .subscription_capacity(1 << 18)
            .event_callback(move |event| {
                let counter = counter.clone();
                async move {
                    if let async_nats::Event::SlowConsumer(_) = event {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        load::watch(&client, live.clone()).await;
        client.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        wait_for_consumer(&client).await;
        let js = jetstream::new(client.clone());
        (client, js)
    });

    // Idle: NATS connected, consumer listening, nothing published yet.
    std::thread::sleep(Duration::from_secs(1));
    let idle = probe::read(pid, &ssh_ports).unwrap_or_else(|| panic!("rune serve is gone:\n{}", daemon.log_tail(40)));
    let published = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let sampler = Sampler::start(pid, ssh_ports.clone(), Duration::from_secs(1), start, {
        let (live, published) = (live.clone(), published.clone());
        move || {
            let ledger = live.lock().unwrap_or_else(|e| e.into_inner());
            Progress { published: published.load(Ordering::SeqCst), decided: ledger.decided, results: ledger.results }
        }
    });
    let plan = Plan { hosts: knobs.hosts };
    eprintln!("soak: {} alerts/s for {} s on {} hosts (rune serve pid {pid})", knobs.rate, knobs.seconds, knobs.hosts);
    let sent = runtime.block_on(load::publish(js.clone(), plan, knobs.rate, duration, published));
    let load_end = start.elapsed();
    let load_at_end = load_average();
    let drain = drain(&live, sent.sent);
    std::thread::sleep(LATE);
    let samples = sampler.stop();
    let settled = probe::read(pid, &ssh_ports).unwrap_or_default();
    let consumer = runtime.block_on(async {
        let mut consumer: jetstream::consumer::PullConsumer =
            js.get_consumer_from_stream("rune", "RUNE_ALERTS").await.unwrap_or_else(|e| panic!("consumer: {e}"));
        consumer.info().await.cloned().unwrap_or_else(|e| panic!("consumer info: {e}"))
    });
    let nats_cpu = measure::pid_cpu(nats.pid());
    let nats_rss_kib = nats.pid().map(|pid| measure::status_kib(&format!("/proc/{pid}/status"), "VmRSS:")).unwrap_or(0);
    let exit = daemon.terminate();
    drop(client);
    runtime.shutdown_timeout(Duration::from_secs(2));

    let trail = dir.path().join("audit/rune-audit.jsonl");
    let (audit, audit_summary) = Ledger::from_audit_trail(&trail);
    let verify = crate::support::rune(
        &["audit", "verify", "--file", &trail.display().to_string(), "--output", "json"],
        dir.path(),
        &[],
    );
    let live = std::mem::take(&mut *live.lock().unwrap_or_else(|e| e.into_inner()));
    let books = Books::check(&live, &audit, sent.sent);
    Figures {
        pid,
        load_average: (load_at_start, load_at_end),
        sent,
        load_end,
        warm_at: duration.mul_f64(WARM_UP),
        drain,
        samples,
        idle,
        settled,
        consumer,
        slow_consumers: slow_consumers.load(Ordering::SeqCst),
        nats_cpu,
        nats_rss_kib,
        exit,
        log_problems: daemon.log_problems(),
        log_tail: daemon.log_tail(20),
        log_bytes: std::fs::metadata(daemon.log_path()).map(|m| m.len()).unwrap_or(0),
        live,
        audit,
        audit_summary,
        verify,
        books,
    }
}

/// Waits until every alert sent has its decision and every admitted one its result (on NATS). Err when nothing
/// new arrives for [`STALL`], or the drain passes [`DRAIN_LIMIT`].
fn drain(live: &Mutex<Ledger>, sent: usize) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = (0, 0);
    let mut last_change = Instant::now();
    loop {
        let (decided, results, admitted) = {
            let ledger = live.lock().unwrap_or_else(|e| e.into_inner());
            (ledger.decided, ledger.results, ledger.verdicts.get("admitted").copied().unwrap_or(0))
        };
        if decided >= sent && results >= admitted {
            return Ok(start.elapsed());
        }
        if (decided, results) != last {
            (last, last_change) = ((decided, results), Instant::now());
        }
        if last_change.elapsed() > STALL || start.elapsed() > DRAIN_LIMIT {
            return Err(format!(
                "drain stalled: {decided} decisions of {sent} alerts, {results} results of {admitted} admitted, \
                 nothing new for {:.0} s",
                last_change.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Figures {
    /// The samples taken while the load ran.
    fn during(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.at <= self.load_end)
    }

    /// The flatness baseline: the first sample after the warm-up.
    fn warm(&self) -> Option<&Sample> {
        self.during().find(|s| s.at >= self.warm_at)
    }

    /// The last sample of the load.
    fn end(&self) -> Option<&Sample> {
        self.during().last()
    }

    fn max_ssh(&self) -> usize {
        self.samples.iter().map(|s| s.reading.ssh).max().unwrap_or(0)
    }

    fn rss_bound_kib(warm: &Sample) -> u64 {
        (warm.reading.rss_kib as f64 * (1.0 + RSS_GROWTH)) as u64 + RSS_SLACK_KIB
    }

    /// What failed: the books, the daemon's exit and trail, the consumer, the flatness bounds.
    fn failures(&self, knobs: &Knobs) -> Vec<String> {
        let mut failures: Vec<String> = Vec::new();
        if let Err(stall) = &self.drain {
            failures.push(stall.clone());
        }
        let sent = &self.sent;
        if sent.failed > 0 || sent.acked != sent.sent {
            failures.push(format!(
                "{} of {} publishes acknowledged by the stream ({} failed)",
                sent.acked, sent.sent, sent.failed
            ));
        }
        failures.extend(self.books.failures.iter().cloned());
        if self.exit != Some(0) {
            failures.push(format!("rune serve exited with {:?} after SIGTERM (0 expected)", self.exit));
        }
        if !self.verify.status.success() {
            failures.push(format!("rune audit verify failed: {}", crate::support::text(&self.verify)));
        }
        if self.audit_summary.unparsed > 0 || self.audit_summary.last_kind != "stop" {
            failures.push(format!(
                "audit trail: {} unparsed lines, last record {:?} (stop expected)",
                self.audit_summary.unparsed, self.audit_summary.last_kind
            ));
        }
        if self.consumer.num_pending != 0 || self.consumer.num_ack_pending != 0 {
            failures.push(format!(
                "consumer not drained: {} pending, {} unacknowledged",
                self.consumer.num_pending, self.consumer.num_ack_pending
            ));
        }
        match (self.warm(), self.end()) {
            (Some(w), Some(e)) => {
                if e.reading.rss_kib > Self::rss_bound_kib(w) {
                    failures.push(format!(
                        "VmRSS grew from {:.1} MiB (t={:.0}s) to {:.1} MiB (t={:.0}s), above the bound {:.1} MiB",
                        mib(w.reading.rss_kib),
                        w.at.as_secs_f64(),
                        mib(e.reading.rss_kib),
                        e.at.as_secs_f64(),
                        mib(Self::rss_bound_kib(w))
                    ));
                }
                if e.reading.fds > w.reading.fds + FD_SLACK {
                    failures.push(format!(
                        "open descriptors grew from {} to {} (at most +{FD_SLACK})",
                        w.reading.fds, e.reading.fds
                    ));
                }
            }
            _ => failures.push(format!("too few samples for the flatness check ({})", self.samples.len())),
        }
        if self.max_ssh() > knobs.hosts * SSH_POOL_PER_HOST {
            failures.push(format!(
                "up to {} SSH connections at once, more than {} hosts × {SSH_POOL_PER_HOST}",
                self.max_ssh(),
                knobs.hosts
            ));
        }
        failures
    }

    /// The figures for BENCHMARKS.md.
    fn report(&self, knobs: &Knobs) -> String {
        let (sent, live, audit) = (&self.sent, &self.live, &self.audit);
        let load_s = self.load_end.as_secs_f64();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nsoak: rune serve (pid {}, {}) through nats-server {} (JetStream) and {} loopback sshd hosts",
            self.pid,
            if cfg!(debug_assertions) { "debug build" } else { "release build" },
            crate::support::nats::server_binary().display(),
            knobs.hosts
        );
        let _ = writeln!(
            out,
            "load average (1/5/15 min): {} at start, {} at the end of the load",
            self.load_average.0, self.load_average.1
        );
        let _ = writeln!(
            out,
            "alerts in: {} published in {:.1} s = {:.0}/s (target {:.0}/s; at most {} behind schedule), {} acknowledged, \
             {} failed",
            sent.sent,
            sent.elapsed.as_secs_f64(),
            sent.sent as f64 / sent.elapsed.as_secs_f64(),
            knobs.rate,
            sent.max_behind,
            sent.acked,
            sent.failed
        );
        let _ = writeln!(out, "  by kind: {}", self.books.classes);
        let _ = writeln!(out, "decisions out (NATS): {} — {}", live.decided, kinds(&live.verdicts));
        let _ = writeln!(out, "decisions out (audit trail): {} — {}", audit.decided, kinds(&audit.verdicts));
        let _ = writeln!(
            out,
            "runs (dispatch records): {}; results published (NATS): {} — {}; result records: {} — {}",
            audit.dispatched,
            live.results,
            kinds(&live.statuses),
            audit.results,
            kinds(&audit.statuses)
        );
        let _ = writeln!(out, "accounting: {}", self.books.summary);
        let (warm, end) = (self.warm(), self.end());
        let max_backlog = self.during().map(|s| s.progress.published.saturating_sub(s.progress.decided)).max();
        let _ = writeln!(
            out,
            "throughput: {:.0} decisions/s and {:.0} results/s during the load; largest backlog {} alerts; {}",
            end.map_or(0, |e| e.progress.decided) as f64 / load_s,
            end.map_or(0, |e| e.progress.results) as f64 / load_s,
            max_backlog.unwrap_or(0),
            match &self.drain {
                Ok(d) => format!("drained {:.1} s after the load", d.as_secs_f64()),
                Err(e) => e.clone(),
            }
        );
        let cpu = end.map(|e| e.reading.cpu.saturating_sub(self.idle.cpu)).unwrap_or_default().as_secs_f64();
        let _ = writeln!(
            out,
            "rune serve CPU: {cpu:.1} s during the load ({:.0} % of one core, {:.0} µs per alert); nats-server {:.1} s \
             in all, VmRSS {:.1} MiB",
            100.0 * cpu / load_s,
            1e6 * cpu / sent.sent.max(1) as f64,
            self.nats_cpu.as_secs_f64(),
            mib(self.nats_rss_kib)
        );
        let show = |name: &str, r: &Reading| {
            format!(
                "{name}: VmRSS {:.1} MiB, VmHWM {:.1} MiB, fds {}, SSH connections {}, threads {}",
                mib(r.rss_kib),
                mib(r.hwm_kib),
                r.fds,
                r.ssh,
                r.threads
            )
        };
        let _ = writeln!(out, "{}", show("start (idle, before the load)", &self.idle));
        if let (Some(w), Some(e)) = (warm, end) {
            let _ = writeln!(out, "{}", show(&format!("end of warm-up (t={:.0}s)", w.at.as_secs_f64()), &w.reading));
            let _ = writeln!(out, "{}", show(&format!("end of load (t={:.0}s)", e.at.as_secs_f64()), &e.reading));
            let max_rss = self.during().filter(|s| s.at >= self.warm_at).map(|s| s.reading.rss_kib).max();
            let _ = writeln!(
                out,
                "bounds: VmRSS at the end ≤ {:.1} MiB (warm × {:.2} + {} MiB; highest after the warm-up {:.1} MiB); \
                 fds ≤ {}; SSH connections ≤ {} at any time (highest {})",
                mib(Self::rss_bound_kib(w)),
                1.0 + RSS_GROWTH,
                RSS_SLACK_KIB / 1024,
                mib(max_rss.unwrap_or(0)),
                w.reading.fds + FD_SLACK,
                knobs.hosts * SSH_POOL_PER_HOST,
                self.max_ssh()
            );
        }
        let _ = writeln!(out, "{}", show("settled (drained)", &self.settled));
        let delivered = &self.consumer.delivered;
        let _ = writeln!(
            out,
            "consumer: {} deliveries ({} redeliveries), {} pending, {} unacknowledged; {} slow-consumer events on the \
             soak's subscriptions",
            delivered.consumer_sequence,
            delivered.consumer_sequence.saturating_sub(delivered.stream_sequence),
            self.consumer.num_pending,
            self.consumer.num_ack_pending,
            self.slow_consumers
        );
        let _ = writeln!(
            out,
            "audit trail: {} records in {} files, {:.1} MiB ({}), last {:?}; rune audit verify: {}",
            self.audit_summary.records,
            self.audit_summary.files,
            mib(self.audit_summary.bytes / 1024),
            kinds(&self.audit_summary.other_kinds),
            self.audit_summary.last_kind,
            if self.verify.status.success() { "intact" } else { "FAILED" }
        );
        let _ = writeln!(
            out,
            "log: {:.1} MiB, {} WARN/ERROR lines{}",
            self.log_bytes as f64 / 1048576.0,
            self.log_problems.len(),
            self.log_problems.iter().take(5).map(|p| format!("\n  {p}")).collect::<String>()
        );
        out.push_str(&series(&self.samples, self.warm_at));
        out
    }
}

/// `k=v` pairs.
fn kinds(map: &std::collections::BTreeMap<String, usize>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Waits until `rune serve`'s intake has created the alerts stream and its durable consumer.
async fn wait_for_consumer(client: &async_nats::Client) {
    let js = jetstream::new(client.clone());
    for _ in 0..1500 {
        if let Ok(stream) = js.get_stream("RUNE_ALERTS").await
            && stream.consumer_info("rune").await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("rune serve's JetStream consumer did not appear within 30 s");
}

/// The checks of the accounting, per alert, against both books.
struct Books {
    failures: Vec<String>,
    classes: String,
    summary: String,
}

impl Books {
    fn check(live: &Ledger, audit: &Ledger, sent: usize) -> Books {
        let mut failures = Vec::new();
        // Alerts (by sequence number) with something wrong, by what.
        let mut wrong: std::collections::BTreeMap<&'static str, Vec<usize>> = Default::default();
        let mut count = [0usize; 3];
        let mut storm_admitted = 0;
        for seq in 0..sent {
            let class = class_of(seq);
            count[class as usize] += 1;
            let (n, a) = (live.get(seq), audit.get(seq));
            let mut flag = |what: &'static str| wrong.entry(what).or_default().push(seq);
            match n.decisions {
                0 => flag("no decision on NATS"),
                1 => {}
                _ => flag("more than one decision on NATS"),
            }
            match a.decisions {
                0 => flag("no decision in the audit trail"),
                1 => {}
                _ => flag("more than one decision in the audit trail"),
            }
            if n.decisions > 0 && a.decisions > 0 && n.verdict != a.verdict {
                flag("verdicts differ between NATS and the audit trail");
            }
            let expected = match (class, n.verdict) {
                (Class::Run, v) => v == Verdict::Admitted,
                (Class::Repeat, v) => v == Verdict::Duplicate,
                (Class::Storm, Verdict::Admitted) => {
                    storm_admitted += 1;
                    true
                }
                (Class::Storm, v) => v == Verdict::RateLimited,
            };
            if n.decisions > 0 && !expected {
                flag("unexpected verdict");
            }
            let runs = u32::from(n.verdict == Verdict::Admitted);
            if n.results != runs || n.ok_results != runs {
                flag("results on NATS not exactly one ok per admitted decision");
            }
            if a.results != runs || a.ok_results != runs || a.dispatches != runs {
                flag("dispatch/result records not exactly one (ok) per admitted decision");
            }
        }
        if storm_admitted != STORM_RUNS.min(count[Class::Storm as usize]) {
            failures.push(format!("{storm_admitted} storm alerts admitted, {STORM_RUNS} expected (rule rate limit)"));
        }
        for (what, seqs) in &wrong {
            let shown: Vec<String> = seqs.iter().take(10).map(|s| format!("{s} ({:?})", class_of(*s))).collect();
            failures.push(format!("{what}: {} alerts, e.g. {}", seqs.len(), shown.join(", ")));
        }
        for (name, ledger) in [("NATS", live), ("audit trail", audit)] {
            if ledger.foreign > 0 || ledger.tallies.len() > sent {
                failures.push(format!(
                    "{name}: {} records without a soak correlation id, {} alerts known of {sent} sent",
                    ledger.foreign,
                    ledger.tallies.len()
                ));
            }
        }
        let classes = format!(
            "run={} repeat={} storm={} (storm admitted: {storm_admitted})",
            count[Class::Run as usize],
            count[Class::Repeat as usize],
            count[Class::Storm as usize]
        );
        let summary = if wrong.is_empty() {
            format!(
                "every one of {sent} alerts has exactly one decision (NATS and audit trail) with the verdict of its kind; every admitted one exactly one dispatch and one ok result"
            )
        } else {
            let counts: Vec<String> = wrong.iter().map(|(w, s)| format!("{w}: {}", s.len())).collect();
            format!("PROBLEMS — {}", counts.join("; "))
        };
        Books { failures, classes, summary }
    }
}

/// The samples as a compact table: about 15 rows evenly spread, plus the end of the warm-up.
fn series(samples: &[Sample], warm_at: Duration) -> String {
    let mut out = String::from(
        "series:   t_s  rss_MiB  hwm_MiB  fds  ssh  thr   cpu_s  published   decided   results  backlog\n",
    );
    let step = (samples.len() / 15).max(1);
    let warm = samples.iter().position(|s| s.at >= warm_at);
    for (i, s) in samples.iter().enumerate() {
        if i % step != 0 && i + 1 != samples.len() && Some(i) != warm {
            continue;
        }
        let (r, p) = (&s.reading, &s.progress);
        let _ = writeln!(
            out,
            "        {:>6.0} {:>8.1} {:>8.1} {:>4} {:>4} {:>4} {:>7.1} {:>10} {:>9} {:>9} {:>8}{}",
            s.at.as_secs_f64(),
            mib(r.rss_kib),
            mib(r.hwm_kib),
            r.fds,
            r.ssh,
            r.threads,
            r.cpu.as_secs_f64(),
            p.published,
            p.decided,
            p.results,
            p.published.saturating_sub(p.decided),
            if Some(i) == warm { "  <- end of warm-up" } else { "" }
        );
    }
    out
}
