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
mod probe;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use daemon::Daemon;
use load::{Class, Ledger, Plan, Verdict, class_of};
use probe::{Progress, Reading, Sample, Sampler, mib};

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
    let sent = runtime.block_on(load::publish(js.clone(), plan, knobs.rate, duration, published.clone()));
    let load_end = start.elapsed();
    let load_at_end = load_average();

    // Drain: every decision, then the result of every admitted one; a stall ends the wait.
    let drain_start = Instant::now();
    let mut stalled = None;
    let mut last = (0, 0);
    let mut last_change = Instant::now();
    loop {
        let (decided, results, admitted) = {
            let ledger = live.lock().unwrap_or_else(|e| e.into_inner());
            (ledger.decided, ledger.results, ledger.verdicts.get("admitted").copied().unwrap_or(0))
        };
        if decided >= sent.sent && results >= admitted {
            break;
        }
        if (decided, results) != last {
            (last, last_change) = ((decided, results), Instant::now());
        }
        if last_change.elapsed() > STALL || drain_start.elapsed() > DRAIN_LIMIT {
            stalled = Some(format!(
                "drain stalled: {decided} decisions of {} alerts, {results} results of {admitted} admitted, no progress for {:.0} s",
                sent.sent,
                last_change.elapsed().as_secs_f64()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = drain_start.elapsed();
    std::thread::sleep(LATE);
    let samples = sampler.stop();
    let settled = probe::read(pid, &ssh_ports).unwrap_or_default();
    let consumer = runtime.block_on(async {
        let mut consumer: jetstream::consumer::PullConsumer =
            js.get_consumer_from_stream("rune", "RUNE_ALERTS").await.unwrap_or_else(|e| panic!("consumer: {e}"));
        consumer.info().await.cloned().unwrap_or_else(|e| panic!("consumer info: {e}"))
    });
    let nats_cpu = nats.pid().map(probe::cpu).unwrap_or_default();
    let nats_rss = nats.pid().map(probe::rss_kib).unwrap_or_default();
    let exit = daemon.terminate();
    let problems = daemon.log_problems();
    let log_bytes = std::fs::metadata(daemon.log_path()).map(|m| m.len()).unwrap_or(0);
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

    // ---- the books ----
    let mut failures: Vec<String> = Vec::new();
    if let Some(stall) = stalled {
        failures.push(stall);
    }
    if sent.failed > 0 || sent.acked != sent.sent {
        failures.push(format!(
            "{} of {} publishes acknowledged by the stream ({} failed)",
            sent.acked, sent.sent, sent.failed
        ));
    }
    let books = Books::check(&live, &audit, sent.sent);
    failures.extend(books.failures.iter().cloned());
    if exit != Some(0) {
        failures.push(format!("rune serve exited with {exit:?} after SIGTERM (0 expected)"));
    }
    if !verify.status.success() {
        failures.push(format!("rune audit verify failed: {}", crate::support::text(&verify)));
    }
    if audit_summary.unparsed > 0 || audit_summary.last_kind != "stop" {
        failures.push(format!(
            "audit trail: {} unparsed lines, last record {:?} (stop expected)",
            audit_summary.unparsed, audit_summary.last_kind
        ));
    }
    if consumer.num_pending != 0 || consumer.num_ack_pending != 0 {
        failures.push(format!(
            "consumer not drained: {} pending, {} unacknowledged",
            consumer.num_pending, consumer.num_ack_pending
        ));
    }

    // ---- flatness ----
    let during: Vec<&Sample> = samples.iter().filter(|s| s.at <= load_end).collect();
    let warm_at = duration.mul_f64(WARM_UP);
    let warm = during.iter().find(|s| s.at >= warm_at).copied();
    let end = during.last().copied();
    let max_ssh = samples.iter().map(|s| s.reading.ssh).max().unwrap_or(0);
    let max_rss_after_warm = during.iter().filter(|s| s.at >= warm_at).map(|s| s.reading.rss_kib).max().unwrap_or(0);
    match (warm, end) {
        (Some(w), Some(e)) => {
            let rss_bound = (w.reading.rss_kib as f64 * (1.0 + RSS_GROWTH)) as u64 + RSS_SLACK_KIB;
            if e.reading.rss_kib > rss_bound {
                failures.push(format!(
                    "VmRSS grew from {:.1} MiB (t={:.0}s) to {:.1} MiB (t={:.0}s), above the bound {:.1} MiB",
                    mib(w.reading.rss_kib),
                    w.at.as_secs_f64(),
                    mib(e.reading.rss_kib),
                    e.at.as_secs_f64(),
                    mib(rss_bound)
                ));
            }
            if e.reading.fds > w.reading.fds + FD_SLACK {
                failures.push(format!(
                    "open descriptors grew from {} to {} (at most +{FD_SLACK})",
                    w.reading.fds, e.reading.fds
                ));
            }
        }
        _ => failures.push(format!("too few samples for the flatness check ({})", samples.len())),
    }
    if max_ssh > knobs.hosts * SSH_POOL_PER_HOST {
        failures.push(format!(
            "up to {max_ssh} SSH connections at once, more than {} hosts × {SSH_POOL_PER_HOST}",
            knobs.hosts
        ));
    }

    // ---- the report ----
    let cpu_load = end.map(|e| e.reading.cpu.saturating_sub(idle.cpu)).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsoak: rune serve (pid {pid}, {}) through nats-server {} (JetStream) and {} loopback sshd hosts",
        if cfg!(debug_assertions) { "debug build" } else { "release build" },
        crate::support::nats::server_binary().display(),
        knobs.hosts
    );
    let _ = writeln!(out, "load average (1/5/15 min): {load_at_start} at start, {load_at_end} at the end of the load");
    let _ = writeln!(
        out,
        "alerts in: {} published in {:.1} s = {:.0}/s (target {:.0}/s; at most {} behind schedule), {} acknowledged, {} failed",
        sent.sent,
        sent.elapsed.as_secs_f64(),
        sent.sent as f64 / sent.elapsed.as_secs_f64(),
        knobs.rate,
        sent.max_behind,
        sent.acked,
        sent.failed
    );
    let _ = writeln!(out, "  by kind: {}", books.classes);
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
    let _ = writeln!(out, "accounting: {}", books.summary);
    let decided_in_load = end.map(|e| e.progress.decided).unwrap_or(0);
    let max_lag = during.iter().map(|s| s.progress.published.saturating_sub(s.progress.decided)).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "throughput: {:.0} decisions/s and {:.0} results/s during the load; largest backlog {max_lag} alerts; drained {:.1} s after the load",
        decided_in_load as f64 / load_end.as_secs_f64(),
        end.map(|e| e.progress.results).unwrap_or(0) as f64 / load_end.as_secs_f64(),
        drained.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "rune serve CPU: {:.1} s during the load ({:.0} % of one core, {:.0} µs per alert); nats-server {:.1} s in all, VmRSS {:.1} MiB",
        cpu_load.as_secs_f64(),
        100.0 * cpu_load.as_secs_f64() / load_end.as_secs_f64(),
        1e6 * cpu_load.as_secs_f64() / sent.sent.max(1) as f64,
        nats_cpu.as_secs_f64(),
        mib(nats_rss)
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
    let _ = writeln!(out, "{}", show("start (idle, before the load)", &idle));
    if let (Some(w), Some(e)) = (warm, end) {
        let _ = writeln!(out, "{}", show(&format!("end of warm-up (t={:.0}s)", w.at.as_secs_f64()), &w.reading));
        let _ = writeln!(out, "{}", show(&format!("end of load (t={:.0}s)", e.at.as_secs_f64()), &e.reading));
    }
    let _ = writeln!(out, "{}", show("settled (drained)", &settled));
    let _ = writeln!(
        out,
        "bounds: VmRSS end ≤ warm × {:.2} + {} MiB (max after warm-up {:.1} MiB); fds end ≤ warm + {FD_SLACK}; SSH ≤ {} (max {max_ssh})",
        1.0 + RSS_GROWTH,
        RSS_SLACK_KIB / 1024,
        mib(max_rss_after_warm),
        knobs.hosts * SSH_POOL_PER_HOST
    );
    let _ = writeln!(
        out,
        "consumer: {} delivered ({} redeliveries), {} pending, {} unacknowledged; {} slow-consumer events on the test's subscriptions",
        consumer.delivered.consumer_sequence,
        consumer.delivered.consumer_sequence.saturating_sub(consumer.delivered.stream_sequence),
        consumer.num_pending,
        consumer.num_ack_pending,
        slow_consumers.load(Ordering::SeqCst)
    );
    let _ = writeln!(
        out,
        "audit trail: {} records in {} files ({}), last {:?}; rune audit verify: {}",
        audit_summary.records,
        audit_summary.files,
        kinds(&audit_summary.other_kinds),
        audit_summary.last_kind,
        if verify.status.success() { "intact" } else { "FAILED" }
    );
    let _ = writeln!(
        out,
        "log: {:.1} MiB, {} WARN/ERROR lines{}",
        log_bytes as f64 / 1048576.0,
        problems.len(),
        problems.iter().take(5).map(|p| format!("\n  {p}")).collect::<String>()
    );
    out.push_str(&series(&samples, warm_at));
    println!("{out}");
    assert!(failures.is_empty(), "soak failed:\n- {}", failures.join("\n- "));
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
