//! The daemon's core (`rune serve`): events in, decisions and runs out. Intakes (webhooks, NATS) hand parsed
//! events to [`Bridge::accept`]; the engine decides; every decision is published; admitted runs go to the
//! orchestrator (bounded in number), and their results are published and fed back to the rule's breaker.
//!
//! `accept` returns once every decision of the events is *recorded* — its suppression published, its run handed to
//! a run task — which is when an intake that cannot redeliver (webhooks, core NATS) answers. An intake that can
//! redeliver (JetStream) calls [`Bridge::accept_started`] instead, which also waits until each admitted run has
//! *started* (a run slot taken, its dedup claim committed): a message acknowledged then never loses a run that had
//! not begun, and a message not acknowledged is redelivered and takes its own pending claim over (see
//! [`crate::gate::dedup`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Decision, Engine, ReloadSummary, SuppressReason, Verdict};
use crate::event::Event;
use crate::gate::dedup::{DedupStore, MemoryDedup};
use crate::metrics::Metrics;
use crate::orchestrator::Orchestrator;
use crate::results::publish::{Publish, PublishError};
use crate::rules::RuleDiagnostic;

/// Runtime knobs of the bridge (from the configuration).
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    pub rules_dir: PathBuf,
    /// Runs executing at once; admitted runs beyond it wait for a slot (their host lease is already held).
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight runs.
    pub shutdown_grace: Duration,
}

/// A cloneable handle on the daemon's core.
pub struct Bridge<D: DedupStore = MemoryDedup> {
    inner: Arc<Inner<D>>,
}

impl<D: DedupStore> Clone for Bridge<D> {
    fn clone(&self) -> Self {
        Bridge { inner: self.inner.clone() }
    }
}

struct Inner<D: DedupStore> {
    engine: Engine<D>,
    orchestrator: Orchestrator,
    publish: Arc<dyn Publish>,
    metrics: Metrics,
    options: BridgeOptions,
    /// Slots for runs executing at once; each run task holds one while its plugin runs.
    runs: Arc<Semaphore>,
    /// Every run task and the deferred-run timer; shutdown waits on it.
    tracker: TaskTracker,
    /// Cancelled by [`Bridge::shutdown`]: the timer stops, `accept` refuses new events.
    shutdown: CancellationToken,
    /// Wakes the deferred-run timer when a `once_after` run was parked.
    parked: Notify,
}

/// Why `accept` could not record every decision (the intake must not acknowledge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("shutting down: not accepting new events")]
    ShuttingDown,
    #[error("a decision could not be published: {0}")]
    Publish(#[from] PublishError),
    /// An admitted run did not start and nothing was recorded in its place (dedup store unreachable at commit,
    /// shutdown before a run slot was free): the message must be redelivered.
    #[error("an admitted run did not start: {0}")]
    NotStarted(String),
}

/// What became of an admitted run before its plugin started.
#[derive(Debug)]
enum Start {
    Started,
    /// Did not start, and a record says so (refused by the orchestrator, claim lost): nothing to redeliver.
    Recorded,
    /// Did not start and nothing says so: the carrying message must be redelivered.
    NotStarted(String),
    /// Gave up waiting for a run slot at shutdown: the message goes back at once for another instance.
    GaveUp,
}

impl<D: DedupStore> Bridge<D> {
    pub fn new(
        engine: Engine<D>,
        orchestrator: Orchestrator,
        publish: Arc<dyn Publish>,
        metrics: Metrics,
        options: BridgeOptions,
    ) -> Self {
        let runs = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
        metrics.rules_loaded(engine.rules().rules.len());
        Bridge {
            inner: Arc::new(Inner {
                engine,
                orchestrator,
                publish,
                metrics,
                options,
                runs,
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                parked: Notify::new(),
            }),
        }
    }

    pub fn engine(&self) -> &Engine<D> {
        &self.inner.engine
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Runs executing right now.
    pub fn in_flight(&self) -> usize {
        self.inner.options.max_in_flight.max(1) - self.inner.runs.available_permits()
    }

    /// Decides every event and records every decision: publishes it, and starts the run of an admitted one.
    /// Err when a suppression or deferral could not be published (the caller should not acknowledge; a
    /// redelivered copy is decided again — as a duplicate if it had acted).
    pub async fn accept(&self, events: Vec<Event>) -> Result<Vec<uuid::Uuid>, AcceptError> {
        let ids = events.iter().map(|e| e.id).collect();
        self.decide_inner(events, false).await.map(|_| ids)
    }

    /// Like [`Bridge::accept`], and returns only when every admitted run has started (or did not start and a
    /// record says why). Err([`AcceptError::NotStarted`]) when one could not start and nothing was recorded: the
    /// caller must let its message be redelivered. For intakes that redeliver (JetStream); while runs wait for a
    /// slot their message stays unacknowledged, which is the intake's backpressure.
    pub async fn accept_started(&self, events: Vec<Event>) -> Result<Vec<uuid::Uuid>, AcceptError> {
        let ids = events.iter().map(|e| e.id).collect();
        self.decide_inner(events, true).await.map(|_| ids)
    }

    /// Like [`Bridge::accept`], returning the decision records (what a chatops reply tells).
    pub async fn decide(&self, events: Vec<Event>) -> Result<Vec<serde_json::Value>, AcceptError> {
        self.decide_inner(events, false).await
    }

    async fn decide_inner(
        &self,
        events: Vec<Event>,
        redeliverable: bool,
    ) -> Result<Vec<serde_json::Value>, AcceptError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(AcceptError::ShuttingDown);
        }
        let mut records = Vec::new();
        let mut starts = Vec::new();
        let mut first_error = None;
        for event in events {
            self.inner.metrics.event_received(event.source.as_str());
            let decisions = self.inner.engine.decide(Arc::new(event)).await;
            if let Err(e) = self.dispatch(decisions, &mut records, &mut starts, redeliverable).await {
                first_error.get_or_insert(AcceptError::Publish(e));
            }
        }
        for start in starts {
            match start.await {
                Ok(Start::Started | Start::Recorded) => {}
                Ok(Start::NotStarted(why)) => {
                    first_error.get_or_insert(AcceptError::NotStarted(why));
                }
                Ok(Start::GaveUp) => {
                    // Shutdown wins over any other error: the message is given back, never dead-lettered.
                    first_error = Some(AcceptError::ShuttingDown);
                }
                Err(_) => {
                    first_error.get_or_insert(AcceptError::NotStarted("the run task ended before it started".into()));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(records),
        }
    }

    /// Publishes each decision and starts the admitted runs; the records are appended to `records`, and for each
    /// admitted run a receiver of its start to `starts` (when `redeliverable`).
    async fn dispatch(
        &self,
        decisions: Vec<Decision>,
        records: &mut Vec<serde_json::Value>,
        starts: &mut Vec<oneshot::Receiver<Start>>,
        redeliverable: bool,
    ) -> Result<(), PublishError> {
        let mut result = Ok(());
        for d in decisions {
            let record = d.to_json();
            log_decision(&d);
            let reason = d.verdict.reason();
            self.inner.metrics.decision(&d.rule, d.verdict.kind(), reason.map(|r| r.as_str()));
            let published = self.inner.publish.decision(&d.rule, &record).await;
            if published.is_err() {
                self.inner.metrics.publish_error();
            }
            records.push(record);
            match d.verdict {
                Verdict::Admitted(_) => {
                    // The run is the record that counts; a lost decision line must not stop it.
                    let started = self.spawn_run(d, redeliverable);
                    if redeliverable {
                        starts.push(started);
                    }
                }
                Verdict::Deferred { .. } => {
                    self.inner.parked.notify_one();
                    result = result.and(published);
                }
                _ => result = result.and(published),
            }
        }
        result
    }

    /// Starts the task of an admitted run: it waits for a run slot, commits the dedup claim, runs the plugin and
    /// publishes the result. The receiver tells whether the plugin started. With `redeliverable`, a run still
    /// waiting for a slot at shutdown gives up (its message is redelivered); otherwise it waits for the slot.
    fn spawn_run(&self, mut d: Decision, redeliverable: bool) -> oneshot::Receiver<Start> {
        let (started, receiver) = oneshot::channel();
        let bridge = self.clone();
        self.inner.tracker.spawn(async move {
            let engine = &bridge.inner.engine;
            let Some(mut request) = d.run_request() else {
                let _ = started.send(Start::Recorded);
                return;
            };
            // The admitted record, for the records of a run that then does not start.
            let admitted = d.to_json();
            let Verdict::Admitted(admission) = std::mem::replace(&mut d.verdict, Verdict::Cleared { cancelled_pending: false })
            else {
                let _ = started.send(Start::Recorded);
                return;
            };
            let slot = bridge.inner.runs.clone().acquire_owned();
            let slot = tokio::select! {
                slot = slot => slot.ok(),
                _ = bridge.inner.shutdown.cancelled(), if redeliverable => None,
            };
            let Some(_slot) = slot else {
                engine.abandon(admission).await;
                let _ = started.send(Start::GaveUp);
                return;
            };
            let plan = match bridge.inner.orchestrator.prepare(&mut request).await {
                Ok(plan) => plan,
                Err(refused) => {
                    // The engine checked target and arguments already; this is the orchestrator's second look,
                    // and where secret references are resolved (a missing parameter refuses the run here).
                    tracing::error!(rule = %d.rule, correlation_id = %d.event.correlation_id, error = %refused, "admitted run refused by the orchestrator");
                    bridge.not_started(&d.rule, admitted, "refused", None, refused.to_string()).await;
                    engine.abandon(admission).await;
                    let _ = started.send(Start::Recorded);
                    return;
                }
            };
            // A cluster lease taken over by a redelivery of the same message: that delivery acts now.
            let lease_lost = admission.lease_lost().is_some_and(|t| t.is_cancelled());
            let committed = match lease_lost {
                true => Ok(false),
                false => engine.commit(&admission).await,
            };
            match committed {
                Ok(true) => {}
                Ok(false) => {
                    let reason = SuppressReason::ClaimLost;
                    tracing::warn!(rule = %d.rule, correlation_id = %d.event.correlation_id, reason = %reason, "admitted run not started: its dedup claim or host lease was taken over, cleared or expired");
                    let detail = "before the run started its pending dedup claim or host lease was taken over by a redelivery of the alert's message (deciding elsewhere), cleared by a resolved alert, or expired while the run waited for a slot";
                    bridge.not_started(&d.rule, admitted, "suppressed", Some(reason), detail.into()).await;
                    engine.abandon(admission).await;
                    let _ = started.send(Start::Recorded);
                    return;
                }
                Err(e) => {
                    tracing::warn!(rule = %d.rule, correlation_id = %d.event.correlation_id, error = %e, "admitted run not started: its dedup claim could not be committed");
                    engine.abandon(admission).await;
                    let outcome = match redeliverable {
                        // The message is redelivered and decided again; nothing to record.
                        true => Start::NotStarted(format!("dedup claim not committed: {e}")),
                        // Nothing will come again: say so.
                        false => {
                            let reason = SuppressReason::DedupUnavailable;
                            let detail = format!("admitted, but the dedup claim could not be committed: {e}");
                            bridge.not_started(&d.rule, admitted, "suppressed", Some(reason), detail).await;
                            Start::Recorded
                        }
                    };
                    let _ = started.send(outcome);
                    return;
                }
            }
            let _ = started.send(Start::Started);
            let metrics = &bridge.inner.metrics;
            metrics.run_started();
            let mut results = bridge.inner.orchestrator.execute(plan, 1);
            let mut success = true;
            let mut finished = false;
            // A cluster lease lost mid-run (renewals failed): another instance may now act on the host. The run
            // cannot be recalled safely half-way, so this is said loudly, once.
            let lost = admission.lease_lost();
            let lost_signal = async {
                match &lost {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(lost_signal);
            let mut lost_reported = false;
            loop {
                let envelope = tokio::select! {
                    envelope = results.recv() => match envelope {
                        Some(e) => e,
                        None => break,
                    },
                    _ = &mut lost_signal, if !lost_reported => {
                        lost_reported = true;
                        tracing::error!(
                            rule = %d.rule,
                            host = request.hosts.first().map(String::as_str).unwrap_or("-"),
                            correlation_id = %d.event.correlation_id,
                            "host lease lost while the run goes on: another instance may act on this host"
                        );
                        continue;
                    }
                };
                success &= envelope.status.is_success();
                finished = true;
                metrics.run_finished(&envelope.action, envelope.status.as_str(), Duration::from_millis(envelope.duration_ms));
                tracing::info!(
                    run_id = %envelope.run_id,
                    correlation_id = %envelope.correlation_id,
                    rule = %d.rule,
                    action = %envelope.action,
                    host = %envelope.host,
                    status = %envelope.status,
                    duration_ms = envelope.duration_ms,
                    "run finished"
                );
                if bridge.inner.publish.result(&envelope).await.is_err() {
                    metrics.publish_error();
                }
            }
            if !finished {
                // The orchestrator ended without a result (it never does); keep the gauge honest anyway.
                metrics.run_finished(&request.action, "error", Duration::ZERO);
            }
            admission.finish(success);
        });
        receiver
    }

    /// Publishes the record of an admitted run that did not start (`refused`, or `suppressed` with a reason).
    async fn not_started(
        &self,
        rule: &str,
        mut record: serde_json::Value,
        decision: &str,
        reason: Option<SuppressReason>,
        detail: String,
    ) {
        if let Some(reason) = reason {
            self.inner.metrics.decision(rule, decision, Some(reason.as_str()));
            record["reason"] = json!(reason.as_str());
        }
        record["decision"] = json!(decision);
        record["detail"] = json!(detail);
        if self.inner.publish.decision(rule, &record).await.is_err() {
            self.inner.metrics.publish_error();
        }
    }

    /// Starts the timer that runs parked `once_after` matches when their windows close.
    pub fn start_deferred_timer(&self) {
        let bridge = self.clone();
        self.inner.tracker.spawn(async move {
            loop {
                let next = bridge.inner.engine.next_due();
                let wait = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = bridge.inner.shutdown.cancelled() => break,
                    _ = bridge.inner.parked.notified() => continue,
                    _ = wait => {}
                }
                let due = bridge.inner.engine.take_due(tokio::time::Instant::now()).await;
                if let Err(e) = bridge.dispatch(due, &mut Vec::new(), &mut Vec::new(), false).await {
                    tracing::error!(error = %e, "a deferred decision could not be published");
                }
            }
        });
    }

    /// Reloads the rules on SIGHUP, and when a file of the rules folder changes (polled every `interval`,
    /// reloaded once the folder has been quiet for one interval), until shutdown.
    pub fn start_rule_watch(&self, interval: Duration) {
        let bridge = self.clone();
        // Taken now, not when the task first runs: a change made right after this call must count as a change.
        let initial = folder_state_now(&self.inner.options.rules_dir);
        self.inner.tracker.spawn(async move {
            let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; rules reload on file change only");
                    None
                }
            };
            let dir = bridge.inner.options.rules_dir.clone();
            let mut seen = initial;
            let mut changed_at: Option<tokio::time::Instant> = None;
            loop {
                let sighup = async {
                    match hangup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = bridge.inner.shutdown.cancelled() => break,
                    _ = sighup => {
                        tracing::info!("SIGHUP: reloading rules");
                        let _ = bridge.reload();
                        seen = folder_state(&dir).await;
                        continue;
                    }
                    _ = tokio::time::sleep(interval) => {}
                }
                let now = folder_state(&dir).await;
                if now != seen {
                    seen = now;
                    changed_at = Some(tokio::time::Instant::now());
                } else if changed_at.take().is_some() {
                    tracing::info!(dir = %dir.display(), "rules folder changed: reloading");
                    let _ = bridge.reload();
                }
            }
        });
    }

    /// Reloads the rules folder: atomic; on any error the rules in force stay and every error is returned.
    pub fn reload(&self) -> Result<ReloadSummary, Vec<RuleDiagnostic>> {
        let outcome = self.inner.engine.reload_from(&self.inner.options.rules_dir);
        self.inner.metrics.reload(outcome.is_ok());
        match &outcome {
            Ok(s) => {
                self.inner.metrics.rules_loaded(s.rules);
                tracing::info!(rules = s.rules, kept_state = s.kept_state, "rules reloaded");
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!(error = %e, "rules reload refused; the rules in force stay");
                }
            }
        }
        outcome
    }

    /// Stops accepting events and the timer; runs admitted by [`Bridge::accept_started`] that still wait for a run
    /// slot give up (their messages are redelivered). [`Bridge::shutdown`] does this first too.
    pub fn stop_accepting(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stops accepting events and the timer, then waits up to the grace period for in-flight runs. Returns the
    /// number of runs still going when it gave up.
    pub async fn shutdown(&self) -> usize {
        self.shutdown_report().await.runs_in_flight
    }

    /// [`Bridge::shutdown`], and within the same grace period waits for the results the sinks kept for later
    /// delivery (a results stream that was unreachable): what is still unpublished at the end is logged as an
    /// error with its run ids, and returned.
    pub async fn shutdown_report(&self) -> ShutdownReport {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        let grace = self.inner.options.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let mut runs_in_flight = 0;
        if tokio::time::timeout_at(deadline, self.inner.tracker.wait()).await.is_err() {
            runs_in_flight = self.in_flight().max(1);
            tracing::warn!(
                in_flight = runs_in_flight,
                grace_s = grace.as_secs(),
                "shutdown grace over with runs in flight"
            );
        }
        let unpublished = self.inner.publish.drain(deadline).await;
        if !unpublished.is_empty() {
            tracing::error!(
                unpublished = unpublished.len(),
                run_ids = %unpublished.join(","),
                grace_s = grace.as_secs(),
                "exiting with results not acknowledged by the results stream: they are lost to it (the audit trail has them)"
            );
        }
        ShutdownReport { runs_in_flight, unpublished_results: unpublished }
    }
}

/// What [`Bridge::shutdown_report`] left behind when its grace period ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Runs still going (0 when every run finished).
    pub runs_in_flight: usize,
    /// Run ids of finished runs whose results a sink had kept and could not deliver in time.
    pub unpublished_results: Vec<String>,
}

/// Names, sizes and modification times of the rule files (what a change is judged by).
type FolderState = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// The folder state, read now (blocking).
fn folder_state_now(dir: &std::path::Path) -> FolderState {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            out.push((path, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

/// The folder state off the runtime's threads (a directory read may block).
async fn folder_state(dir: &std::path::Path) -> FolderState {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || folder_state_now(&dir)).await.unwrap_or_default()
}

/// One log line per decision, fields first.
fn log_decision(d: &Decision) {
    let host = d.host.as_deref().unwrap_or("-");
    let e = &d.event;
    match &d.verdict {
        Verdict::Admitted(_) => tracing::info!(
            correlation_id = %e.correlation_id, event_id = %e.id, rule = %d.rule, action = %d.action, host,
            "admitted"
        ),
        Verdict::Suppressed { reason, detail } => tracing::info!(
            correlation_id = %e.correlation_id, event_id = %e.id, rule = %d.rule, action = %d.action, host,
            reason = %reason, detail = %detail, "suppressed"
        ),
        Verdict::Deferred { until } => tracing::info!(
            correlation_id = %e.correlation_id, event_id = %e.id, rule = %d.rule, host, until = %until, "deferred"
        ),
        Verdict::Cleared { cancelled_pending } => tracing::debug!(
            correlation_id = %e.correlation_id, event_id = %e.id, rule = %d.rule, host,
            cancelled_pending = *cancelled_pending, "dedup key cleared"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use chrono::Utc;
    use futures::future::BoxFuture;
    use serde_json::Value;

    use super::*;
    use crate::event::{AlertStatus, Source};
    use crate::inventory::Inventory;
    use crate::plugins::Registry;
    use crate::results::ResultEnvelope;
    use crate::transport::ssh::SshTransport;

    /// Records what was published (a test double beside the real local transport and plugin runs).
    #[derive(Default)]
    struct Recorder {
        results: Mutex<Vec<ResultEnvelope>>,
        decisions: Mutex<Vec<Value>>,
        notify: tokio::sync::Notify,
    }

    impl Publish for Recorder {
        fn result<'a>(&'a self, envelope: &'a ResultEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
            self.results.lock().unwrap_or_else(|e| e.into_inner()).push(envelope.clone());
            self.notify.notify_waiters();
            Box::pin(async { Ok(()) })
        }
        fn decision<'a>(&'a self, _rule: &'a str, decision: &'a Value) -> BoxFuture<'a, Result<(), PublishError>> {
            self.decisions.lock().unwrap_or_else(|e| e.into_inner()).push(decision.clone());
            Box::pin(async { Ok(()) })
        }
    }

    const RULES: &str = "
rules:
  - name: hello
    match: { labels: { alertname: Hello } }
    target: { host_from: \"{{ labels.instance | strip_port }}\" }
    action: noop
    args: { message: \"{{ labels.alertname }} from {{ rule }}\" }
";

    fn bridge(recorder: Arc<Recorder>) -> Bridge {
        let registry = Arc::new(Registry::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins")]));
        let inventory = Arc::new(Inventory::embedded_default().unwrap_or_else(|e| panic!("{e:?}")));
        let files = vec![(PathBuf::from("t.yaml"), RULES.to_owned())];
        let set = crate::rules::parse_files(&files, &registry, &inventory).unwrap_or_else(|e| panic!("{e:?}"));
        let engine = Engine::new(set, registry.clone(), inventory.clone());
        let orchestrator = Orchestrator::new(registry, inventory, SshTransport::default());
        let options = BridgeOptions {
            rules_dir: PathBuf::from("rules"),
            max_in_flight: 4,
            shutdown_grace: Duration::from_secs(30),
        };
        Bridge::new(engine, orchestrator, recorder, Metrics::new(), options)
    }

    fn alert(fingerprint: &str, instance: &str) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            source: Source::Alertmanager,
            subject: "hooks.alertmanager".into(),
            status: AlertStatus::Firing,
            labels: BTreeMap::from([("alertname".into(), "Hello".into()), ("instance".into(), instance.into())]),
            annotations: BTreeMap::new(),
            fingerprint: fingerprint.into(),
            starts_at: None,
            received_at: Utc::now(),
            correlation_id: format!("corr-{fingerprint}"),
            request: None,
            delivery: None,
            raw: Arc::from("{}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_rules_folder_is_reloaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("a.yaml"), RULES).unwrap_or_else(|e| panic!("{e}"));
        let recorder = Arc::new(Recorder::default());
        let mut b = bridge(recorder);
        if let Some(inner) = Arc::get_mut(&mut b.inner) {
            inner.options.rules_dir = dir.path().to_owned();
        }
        b.start_rule_watch(Duration::from_millis(50));
        let second = RULES.replace("name: hello", "name: hello-again").replace("Hello }", "Again }");
        std::fs::write(dir.path().join("b.yaml"), second).unwrap_or_else(|e| panic!("{e}"));
        let mut reloaded = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if b.engine().rules().rules.len() == 2 {
                reloaded = true;
                break;
            }
        }
        assert!(reloaded, "the new file was not picked up");
        std::fs::write(dir.path().join("c.yaml"), "rules: [{ name: broken }]\n").unwrap_or_else(|e| panic!("{e}"));
        let mut refused = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if b.metrics().encode().contains("rune_rule_reloads_total{result=\"refused\"}") {
                refused = true;
                break;
            }
        }
        assert!(refused, "the broken file was not noticed");
        assert_eq!(b.engine().rules().rules.len(), 2, "a broken folder leaves the rules in force");
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alert_runs_its_plugin_and_every_decision_and_result_is_published() {
        let recorder = Arc::new(Recorder::default());
        let b = bridge(recorder.clone());
        let accepted = b.accept(vec![alert("fp1", "localhost:9100")]).await;
        assert_eq!(accepted.map(|ids| ids.len()), Ok(1));
        // A duplicate and a host outside the inventory: published suppressions, no run.
        assert!(b.accept(vec![alert("fp1", "localhost:9100"), alert("fp2", "web-9:9100")]).await.is_ok());
        assert_eq!(b.shutdown().await, 0, "the run finished within the grace period");
        let decisions = recorder.decisions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let kinds: Vec<(String, String)> = decisions
            .iter()
            .map(|d| (d["decision"].as_str().unwrap_or("").to_owned(), d["reason"].as_str().unwrap_or("").to_owned()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("admitted".to_owned(), String::new()),
                ("suppressed".to_owned(), "duplicate".to_owned()),
                ("suppressed".to_owned(), "unknown_target".to_owned())
            ]
        );
        let results = recorder.results.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert_eq!(r.status, crate::results::Status::Ok, "{r:?}");
        assert_eq!(r.correlation_id, "corr-fp1");
        assert_eq!(r.host, "localhost");
        assert_eq!(r.operator, "rule:hello");
        assert_eq!(r.trigger["rule"], "hello");
        assert_eq!(r.trigger["fingerprint"], "fp1");
        assert_eq!(r.output.as_ref().map(|o| o["data"]["message"].clone()), Some(json!("Hello from hello")));
        let metrics = b.metrics().encode();
        assert!(metrics.contains("rune_runs_total{action=\"noop\",status=\"ok\"} 1"), "{metrics}");
        assert!(metrics.contains("rune_runs_in_flight 0"), "{metrics}");
        // After shutdown nothing is accepted.
        assert_eq!(b.accept(vec![alert("fp3", "localhost")]).await, Err(AcceptError::ShuttingDown));
    }
}
