//! The soak's load and its books: which alert each sequence number is (a new alert that runs, a repeat of a recent
//! one, a storm alert over a rate limit), the paced JetStream publisher, and the ledger that counts every decision
//! and result per alert, from the NATS subjects while the soak runs and from the audit trail after it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use rune::results::nats::CORRELATION_HEADER;
use serde_json::Value;
use tokio::sync::Semaphore;

/// Every alert's correlation id is this prefix and its sequence number: decisions and results are matched by it.
pub const CORRELATION_PREFIX: &str = "soak-";
/// Of every 20 alerts: 1 new alert that runs `noop` (5 %), 5 repeats of a recent one (25 %), 14 storm alerts (70 %).
const CYCLE: usize = 20;
const REPEATS_PER_CYCLE: usize = 5;
/// A repeat copies one of the last this many run alerts (all within the run rule's dedup window).
const REPEAT_SPAN: usize = 64;
/// JetStream publishes whose acknowledgement has not arrived yet, at most.
const ACKS_IN_FLIGHT: usize = 4096;
/// Bound on waiting for the last acknowledgements.
const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What an alert is, by its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A new alert of the run rule (`SoakRun`): admitted, runs `noop` over SSH.
    Run,
    /// The same alert (payload, fingerprint) as a recent `Run` alert, under its own correlation id: `duplicate`.
    Repeat,
    /// A new alert of the storm rule (`SoakStorm`), whose rate limit admits its first few: the rest `rate_limited`.
    Storm,
}

pub fn class_of(seq: usize) -> Class {
    match seq % CYCLE {
        0 => Class::Run,
        n if n <= REPEATS_PER_CYCLE => Class::Repeat,
        _ => Class::Storm,
    }
}

/// The run alert (by its sequence number) that the repeat `seq` copies: one of the last [`REPEAT_SPAN`] run alerts
/// published before it, picked by a fixed hash so every soak sends the same workload.
fn original_of(seq: usize) -> usize {
    let latest = seq / CYCLE;
    let mut x = (seq as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    let back = (x as usize) % (latest + 1).min(REPEAT_SPAN);
    (latest - back) * CYCLE
}

/// The alerts of a soak against a fleet of `hosts` hosts (`host-00`, …).
#[derive(Clone, Copy)]
pub struct Plan {
    pub hosts: usize,
}

impl Plan {
    /// Subject, headers and payload of alert `seq`.
    pub fn alert(&self, seq: usize) -> (String, HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(CORRELATION_HEADER, format!("{CORRELATION_PREFIX}{seq}").as_str());
        let payload = match class_of(seq) {
            Class::Run => self.payload("SoakRun", seq),
            Class::Repeat => self.payload("SoakRun", original_of(seq)),
            Class::Storm => self.payload("SoakStorm", seq),
        };
        ("rune.alerts.alertmanager".to_owned(), headers, Bytes::from(payload))
    }

    /// A one-alert Alertmanager v4 payload like a node-exporter alert (~1 KB, 8 labels), fingerprint from the
    /// alert name and `n`, on a host that cycles with `n`'s cycle and its place in it (run alerts, one per cycle,
    /// go round every host).
    fn payload(&self, alertname: &str, n: usize) -> String {
        let host = format!("host-{:02}", (n / CYCLE + n % CYCLE) % self.hosts.max(1));
        super::measure::alertmanager_payload(alertname, &host, &format!("{alertname}-{n:08}"), ("n", &n.to_string()))
    }
}

/// What the publisher did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Published {
    pub sent: usize,
    /// Publishes the stream acknowledged, and those it did not (an error or no answer in time).
    pub acked: usize,
    pub failed: usize,
    /// From the first publish to the last.
    pub elapsed: Duration,
    /// Most alerts the publisher was ever behind its schedule (publishes are not allowed to fall behind silently).
    pub max_behind: usize,
}

/// Publishes alerts `0, 1, …` into the alerts stream at `rate` per second for `duration`, paced by the clock
/// (every tick sends what is due), at most [`ACKS_IN_FLIGHT`] acknowledgements outstanding. `published` counts
/// publishes as they are handed to the connection. Waits for the last acknowledgements before returning.
pub async fn publish(
    js: jetstream::Context,
    plan: Plan,
    rate: f64,
    duration: Duration,
    published: Arc<AtomicUsize>,
) -> Published {
    let permits = Arc::new(Semaphore::new(ACKS_IN_FLIGHT));
    let acked = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let (mut sent, mut max_behind) = (0usize, 0usize);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().min(duration);
        let due = (elapsed.as_secs_f64() * rate) as usize;
        max_behind = max_behind.max(due.saturating_sub(sent));
        while sent < due {
            let permit = permits.clone().acquire_owned().await.unwrap_or_else(|e| panic!("ack permits: {e}"));
            let (subject, headers, payload) = plan.alert(sent);
            let ack = js
                .publish_with_headers(subject, headers, payload)
                .await
                .unwrap_or_else(|e| panic!("publish of alert {sent}: {e}"));
            published.fetch_add(1, Ordering::SeqCst);
            let (acked, failed, first_failure) = (acked.clone(), failed.clone(), first_failure.clone());
            let seq = sent;
            tokio::spawn(async move {
                match ack.await {
                    Ok(_) => acked.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        first_failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(format!("alert {seq}: {e}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                drop(permit);
            });
            sent += 1;
        }
        if elapsed >= duration {
            break;
        }
    }
    let elapsed = start.elapsed();
    let drained = tokio::time::timeout(ACK_DRAIN_TIMEOUT, permits.acquire_many(ACKS_IN_FLIGHT as u32)).await;
    if drained.is_err() {
        eprintln!("soak: acknowledgements still outstanding after {ACK_DRAIN_TIMEOUT:?}");
    }
    if let Some(failure) = first_failure.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        eprintln!("soak: first unacknowledged publish: {failure}");
    }
    Published { sent, acked: acked.load(Ordering::SeqCst), failed: failed.load(Ordering::SeqCst), elapsed, max_behind }
}

/// What one alert got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub decisions: u32,
    /// The verdict of its (first) decision.
    pub verdict: Verdict,
    /// Runs dispatched (audit trail only) and results.
    pub dispatches: u32,
    pub results: u32,
    pub ok_results: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    #[default]
    None,
    Admitted,
    Duplicate,
    RateLimited,
    /// Any other verdict (named in [`Ledger::verdicts`]).
    Other,
}

/// Decisions and results per alert, from one source (the NATS subjects or the audit trail).
#[derive(Default)]
pub struct Ledger {
    pub tallies: Vec<Tally>,
    /// Decisions by verdict (`admitted`, or `suppressed:<reason>`, `deferred`, …).
    pub verdicts: BTreeMap<String, usize>,
    /// Results by status.
    pub statuses: BTreeMap<String, usize>,
    pub decided: usize,
    pub dispatched: usize,
    pub results: usize,
    /// Records without a soak correlation id (or with one beyond every alert sent): none expected.
    pub foreign: usize,
}

impl Ledger {
    fn tally(&mut self, correlation_id: Option<&str>) -> Option<&mut Tally> {
        let seq = correlation_id?.strip_prefix(CORRELATION_PREFIX)?.parse::<usize>().ok()?;
        // Sequence numbers come from this test; a bound keeps a stray huge one from allocating.
        if seq >= 100_000_000 {
            return None;
        }
        if seq >= self.tallies.len() {
            self.tallies.resize(seq + 1, Tally::default());
        }
        self.tallies.get_mut(seq)
    }

    /// A decision record: `decision` is `admitted`, `suppressed` (with `reason`), `deferred` or `cleared`.
    pub fn decision(&mut self, correlation_id: Option<&str>, decision: &str, reason: Option<&str>) {
        self.decided += 1;
        let name = match (decision, reason) {
            ("suppressed", Some(reason)) => format!("suppressed:{reason}"),
            (other, _) => other.to_owned(),
        };
        let verdict = match name.as_str() {
            "admitted" => Verdict::Admitted,
            "suppressed:duplicate" => Verdict::Duplicate,
            "suppressed:rate_limited" => Verdict::RateLimited,
            _ => Verdict::Other,
        };
        *self.verdicts.entry(name).or_default() += 1;
        match self.tally(correlation_id) {
            Some(tally) => {
                tally.decisions += 1;
                if tally.verdict == Verdict::None {
                    tally.verdict = verdict;
                }
            }
            None => self.foreign += 1,
        }
    }

    pub fn dispatch(&mut self, correlation_id: Option<&str>) {
        self.dispatched += 1;
        match self.tally(correlation_id) {
            Some(tally) => tally.dispatches += 1,
            None => self.foreign += 1,
        }
    }

    pub fn result(&mut self, correlation_id: Option<&str>, status: &str) {
        self.results += 1;
        *self.statuses.entry(status.to_owned()).or_default() += 1;
        match self.tally(correlation_id) {
            Some(tally) => {
                tally.results += 1;
                tally.ok_results += u32::from(status == "ok");
            }
            None => self.foreign += 1,
        }
    }

    /// The tally of alert `seq` (empty when nothing came for it).
    pub fn get(&self, seq: usize) -> Tally {
        self.tallies.get(seq).copied().unwrap_or_default()
    }

    /// Reads the records of an audit trail (every file, oldest first): decisions, dispatches, results.
    pub fn from_audit_trail(path: &std::path::Path) -> (Ledger, AuditSummary) {
        let mut ledger = Ledger::default();
        let mut summary = AuditSummary::default();
        for file in rune::audit::trail_files(path) {
            summary.files += 1;
            summary.bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            for line in text.lines() {
                summary.records += 1;
                let Ok(record) = serde_json::from_str::<Value>(line) else {
                    summary.unparsed += 1;
                    continue;
                };
                let text = |name: &str| record.get(name).and_then(Value::as_str);
                let kind = text("kind").unwrap_or("");
                match kind {
                    "decision" => {
                        ledger.decision(text("correlation_id"), text("outcome").unwrap_or("?"), text("reason"))
                    }
                    "dispatch" => ledger.dispatch(text("correlation_id")),
                    "result" => ledger.result(text("correlation_id"), text("outcome").unwrap_or("?")),
                    _ => *summary.other_kinds.entry(kind.to_owned()).or_default() += 1,
                }
                summary.last_kind = kind.to_owned();
            }
        }
        (ledger, summary)
    }
}

/// The audit trail beside its decisions and results.
#[derive(Default, Debug)]
pub struct AuditSummary {
    pub files: usize,
    pub bytes: u64,
    pub records: usize,
    pub unparsed: usize,
    /// Records other than decision, dispatch and result (`start`, `stop`) by kind.
    pub other_kinds: BTreeMap<String, usize>,
    pub last_kind: String,
}

/// Counts decisions on `rune.decisions.>` and results on `rune.results.>` into `ledger` until the connection
/// closes.
pub async fn watch(client: &async_nats::Client, ledger: Arc<Mutex<Ledger>>) {
    let mut decisions =
        client.subscribe("rune.decisions.>").await.unwrap_or_else(|e| panic!("subscribe to decisions: {e}"));
    let mut results = client.subscribe("rune.results.>").await.unwrap_or_else(|e| panic!("subscribe to results: {e}"));
    let for_decisions = ledger.clone();
    tokio::spawn(async move {
        while let Some(message) = decisions.next().await {
            let record: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            let text = |name: &str| record.get(name).and_then(Value::as_str);
            let mut ledger = for_decisions.lock().unwrap_or_else(|e| e.into_inner());
            ledger.decision(text("correlation_id"), text("decision").unwrap_or("?"), text("reason"));
        }
    });
    tokio::spawn(async move {
        while let Some(message) = results.next().await {
            let record: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            let text = |name: &str| record.get(name).and_then(Value::as_str);
            let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
            ledger.result(text("correlation_id"), text("status").unwrap_or("?"));
        }
    });
}
