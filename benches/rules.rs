//! Rules-engine benchmark: Alertmanager payloads through adapter + matching + gates, on one core, with 100,
//! 1,000 and 10,000 rules and a realistic mix (most alerts match nothing, matching ones repeat, so dedup works).
//!
//! Run: `cargo bench --bench rules` (env `RUNE_BENCH_RULES=100,1000,10000`, `RUNE_BENCH_EVENTS=200000`).
//! Prints events/s and the per-event latency distribution; figures are recorded in BENCHMARKS.md. Nothing here
//! asserts a time.

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{alertmanager_payload, percentile};
use rune::engine::{Engine, Verdict};
use rune::event::{Intake, Limits, Source};
use rune::inventory::Inventory;
use rune::plugins::Registry;
use rune::rules::parse_files;

const HOSTS: usize = 200;
/// Share of payloads whose alert some rule matches (the rest: alerts nobody wrote a rule for).
const MATCHING_PERCENT: usize = 10;

fn inventory() -> Inventory {
    let mut s = String::from("hosts:\n");
    for h in 0..HOSTS {
        let _ = writeln!(s, "  web-{h}: {{ transport: local, groups: [web] }}");
    }
    Inventory::parse(&s, "bench", None).unwrap_or_else(|e| panic!("{e:?}"))
}

/// `n` rules in files of 1,000 (as a fleet would split them; one YAML file has a budget of 250,000 nodes), each
/// for its own alertname, of the shapes real rule files have: equality on alertname, a label that must be
/// present, a severity condition, a target from `instance`, a templated argument; plus two rules that cannot be
/// indexed (regex only), evaluated for every event.
fn rules(n: usize) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut s = String::from(
        "policy:\n  rate_limit:\n    global: { count: 1000000, per: 1s }\n    host: { count: 1000000, per: 1s }\n\
         rules:\n",
    );
    for i in 0..n {
        if i > 0 && i % 1000 == 0 {
            files.push((PathBuf::from(format!("bench-{:02}.yaml", files.len())), std::mem::take(&mut s)));
            s.push_str("rules:\n");
        }
        let _ = write!(
            s,
            "  - name: r{i}\n    match:\n      labels:\n        alertname: Alert{i}\n        instance: {{ present: true }}\n        \
             severity: {{ one_of: [warning, critical] }}\n    target: {{ host_from: \"{{{{ labels.instance | strip_port }}}}\" }}\n    \
             action: noop\n    args: {{ message: \"{{{{ labels.alertname }}}} on {{{{ target }}}}\" }}\n    dedup: {{ window: 10m }}\n"
        );
    }
    s.push_str(
        "  - name: any-page\n    match: { labels: { severity: { regex: \"page|emergency\" } } }\n    target: { host: web-0 }\n    action: noop\n\
         \x20 - name: any-canary\n    match: { labels: { job: { regex: \"canary-.*\" } } }\n    target: { host: web-0 }\n    action: noop\n",
    );
    files.push((PathBuf::from(format!("bench-{:02}.yaml", files.len())), s));
    files
}

/// The benchmark's alert payload on host `web-<host>` (`region` as the 8th label).
fn payload(alertname: &str, host: usize, fingerprint: u64) -> Vec<u8> {
    alertmanager_payload(alertname, &format!("web-{host}"), &format!("{fingerprint:016x}"), ("region", "eu-1"))
        .into_bytes()
}

/// `count` payloads: MATCHING_PERCENT% name a ruled alert (drawn from 500 distinct alert×host pairs, so most of
/// them repeat within the dedup window), the rest name alerts no rule knows.
fn payloads(rules: usize, count: usize) -> Vec<Vec<u8>> {
    let mut next = common::xorshift();
    (0..count)
        .map(|_| {
            let r = next();
            if (r % 100) < MATCHING_PERCENT as u64 {
                let pair = (r >> 8) % 500;
                let rule = (pair as usize * 7919) % rules;
                let host = (pair as usize) % HOSTS;
                payload(&format!("Alert{rule}"), host, pair)
            } else {
                let other = (r >> 8) % 10_000;
                payload(&format!("Unruled{other}"), (other as usize) % HOSTS, 1_000_000 + other)
            }
        })
        .collect()
}

fn pin_to_one_core() {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[derive(Default)]
struct Counts {
    events: usize,
    decisions: usize,
    admitted: usize,
    suppressed: usize,
}

async fn pass(engine: &Engine, bodies: &[Vec<u8>], latencies: Option<&mut Vec<Duration>>) -> (Duration, Counts) {
    let limits = Limits::default();
    let mut counts = Counts::default();
    let mut lat = latencies;
    let start = Instant::now();
    for body in bodies {
        let t = Instant::now();
        let intake = Intake { subject: "hooks.alertmanager", received_at: Utc::now(), correlation_id: None };
        let events = match rune::sources::parse(Source::Alertmanager, body, &intake, &limits) {
            Ok(e) => e,
            Err(e) => panic!("bench payload refused: {e}"),
        };
        for event in events {
            counts.events += 1;
            for d in engine.decide(Arc::new(event)).await {
                counts.decisions += 1;
                match d.verdict {
                    Verdict::Admitted(a) => {
                        counts.admitted += 1;
                        a.finish(true);
                    }
                    Verdict::Suppressed { .. } => counts.suppressed += 1,
                    _ => {}
                }
            }
        }
        if let Some(l) = lat.as_deref_mut() {
            l.push(t.elapsed());
        }
    }
    (start.elapsed(), counts)
}

fn main() {
    pin_to_one_core();
    let sizes: Vec<usize> = std::env::var("RUNE_BENCH_RULES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let count: usize = std::env::var("RUNE_BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let registry = Arc::new(Registry::load(&[repo.join("plugins")]));
    let inventory = Arc::new(inventory());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "rules engine, one core: {count} one-alert Alertmanager payloads, {MATCHING_PERCENT}% matching (500 distinct alert×host pairs, so most repeat), 2 unindexed rules"
    );
    println!(
        "{:>6} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "rules", "load_ms", "events/s", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "admitted", "suppr."
    );
    for n in sizes {
        let files = rules(n);
        let t = Instant::now();
        let set = parse_files(&files, &registry, &inventory).unwrap_or_else(|e| panic!("{:?}", e.first()));
        let load = t.elapsed();
        let bodies = payloads(n, count);
        let engine = Engine::new(set, registry.clone(), inventory.clone());
        // Warm-up pass on a throw-away engine state would hide the dedup work; warm the code, then measure
        // with a fresh engine.
        runtime.block_on(pass(&engine, &bodies[..bodies.len().min(20_000)], None));
        let set = parse_files(&files, &registry, &inventory).unwrap_or_else(|e| panic!("{:?}", e.first()));
        let engine = Engine::new(set, registry.clone(), inventory.clone());
        let mut lat = Vec::with_capacity(bodies.len());
        let (elapsed, counts) = runtime.block_on(pass(&engine, &bodies, Some(&mut lat)));
        lat.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{:>6} {:>9.0} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>9} {:>9}",
            n,
            load.as_secs_f64() * 1e3,
            counts.events as f64 / elapsed.as_secs_f64(),
            us(percentile(&lat, 0.50)),
            us(percentile(&lat, 0.90)),
            us(percentile(&lat, 0.99)),
            us(percentile(&lat, 0.999)),
            us(lat.last().copied().unwrap_or_default()),
            counts.admitted,
            counts.suppressed,
        );
        let _ = counts.decisions;
    }
}
