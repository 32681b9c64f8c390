//! Results kept until their sink acknowledges them: each pending result is retried with a capped backoff until
//! it is acknowledged or `retry_for` has passed; at most `max_pending` are kept, and a full outbox makes the next
//! result wait for room (backpressure on the runs, never a silent drop). Shutdown drains it against a deadline
//! and is told which run ids are still unpublished.
//!
//! Used by the NATS publisher with a results stream (JetStream acknowledges each result): an outage longer than a
//! few retries no longer loses the results that finished during it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// First wait after a failed attempt; doubled after each further failure, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between two attempts: how long after the sink is back a pending result may still wait.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Longest one attempt may take (publish and acknowledgement), so a hung attempt cannot stall the retries; the
/// last attempt starts at the deadline, so a result is given up at most this long after `retry_for`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long and how many results are kept (`results.retry_for`, `results.max_pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSettings {
    /// How long one result is retried before it is given up (logged as an error, counted).
    pub retry_for: Duration,
    /// Results kept at once; one more waits for room.
    pub max_pending: usize,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings { retry_for: Duration::from_secs(300), max_pending: 1000 }
    }
}

/// Results waiting for their acknowledgement; a cloneable handle.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OutboxSettings,
    /// One permit per pending result: held by its delivery task until it is acknowledged or given up, so a full
    /// outbox makes [`Outbox::send`] wait.
    room: Arc<Semaphore>,
    /// Every delivery task; [`Outbox::drain`] waits on it.
    tracker: TaskTracker,
    /// Run id → subject of each result not yet acknowledged (what shutdown reports as unpublished).
    pending: Mutex<BTreeMap<String, String>>,
    /// Set while a result waits for room, so that the warning is said once per episode, not once per result.
    full: AtomicBool,
    metrics: Metrics,
}

impl Outbox {
    pub fn new(settings: OutboxSettings, metrics: Metrics) -> Outbox {
        let settings = OutboxSettings { max_pending: settings.max_pending.max(1), ..settings };
        Outbox {
            inner: Arc::new(Inner {
                settings,
                room: Arc::new(Semaphore::new(settings.max_pending)),
                tracker: TaskTracker::new(),
                pending: Mutex::new(BTreeMap::new()),
                full: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    pub fn settings(&self) -> OutboxSettings {
        self.inner.settings
    }

    /// Results not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Keeps one result until `attempt` succeeds (or `retry_for` passes) and returns once it is kept: at once
    /// while there is room, else when a pending result is acknowledged or given up (at the latest `retry_for`
    /// after the oldest was kept). `attempt` publishes the result once and waits for its acknowledgement; it is
    /// called again after each failure, so it must be idempotent (the NATS publisher sends the same
    /// `Nats-Msg-Id`, which the stream deduplicates).
    pub async fn send<F, Fut>(&self, run_id: String, subject: String, mut attempt: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let inner = &self.inner;
        let permit = match inner.room.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => {
                if !inner.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        run_id,
                        max_pending = inner.settings.max_pending,
                        "results outbox full: finished runs wait for room before their results are kept"
                    );
                }
                inner.room.clone().acquire_owned().await
            }
        };
        let Ok(permit) = permit else {
            // The semaphore is never closed; this only keeps the type honest.
            tracing::error!(run_id, subject, "results outbox closed: result not published");
            inner.metrics.result_given_up();
            return;
        };
        if inner.room.available_permits() > 0 {
            inner.full.store(false, Ordering::Relaxed);
        }
        self.lock().insert(run_id.clone(), subject.clone());
        inner.metrics.result_pending(1);
        let outbox = self.clone();
        inner.tracker.spawn(async move {
            let deadline = Instant::now() + outbox.inner.settings.retry_for;
            let mut delay = FIRST_DELAY;
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt()).await {
                    Ok(Ok(())) => {
                        if attempts > 1 {
                            tracing::info!(run_id, subject, attempts, "result published after retries");
                        }
                        break;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => format!("no acknowledgement within {ATTEMPT_TIMEOUT:?}"),
                };
                // The last attempt is made at the deadline itself: a result is given up only after retry_for.
                if Instant::now() >= deadline {
                    tracing::error!(
                        run_id,
                        subject,
                        attempts,
                        retry_for_s = outbox.inner.settings.retry_for.as_secs(),
                        error,
                        "result given up: not acknowledged within results.retry_for (it is still in the audit trail)"
                    );
                    outbox.inner.metrics.result_given_up();
                    break;
                }
                if attempts == 1 {
                    tracing::warn!(run_id, subject, error, "result not acknowledged; kept and retried");
                }
                tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
            outbox.lock().remove(&run_id);
            outbox.inner.metrics.result_pending(-1);
            drop(permit);
        });
    }

    /// Waits until every kept result is acknowledged or given up, or until `deadline`; returns the run ids still
    /// unpublished (sorted). Results kept after this call are waited for too.
    pub async fn drain(&self, deadline: Instant) -> Vec<String> {
        self.inner.tracker.close();
        let _ = tokio::time::timeout_at(deadline, self.inner.tracker.wait()).await;
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// An attempt that fails until `up` is set, counting its calls.
    fn flaky(
        up: Arc<AtomicBool>,
        calls: Arc<AtomicU32>,
    ) -> impl FnMut() -> futures::future::BoxFuture<'static, Result<(), String>> {
        move || {
            let (up, calls) = (up.clone(), calls.clone());
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                match up.load(Ordering::SeqCst) {
                    true => Ok(()),
                    false => Err("not connected".into()),
                }
            })
        }
    }

    fn gauge(metrics: &Metrics, name: &str) -> String {
        let text = metrics.encode();
        text.lines().find(|l| l.starts_with(name)).unwrap_or("").to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_outlives_a_long_outage_and_is_published_once_the_sink_is_back() {
        let metrics = Metrics::new();
        let outbox =
            Outbox::new(OutboxSettings { retry_for: Duration::from_secs(300), max_pending: 10 }, metrics.clone());
        let (up, calls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        outbox.send("run-1".into(), "rune.results.x.y".into(), flaky(up.clone(), calls.clone())).await;
        assert_eq!(outbox.pending(), 1);
        // Two minutes down: far beyond the five tries (~12 s) the publisher used to give up after.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(outbox.pending(), 1);
        let tried = calls.load(Ordering::SeqCst);
        // Capped backoff: about one try per MAX_DELAY, not a busy loop and not an ever-growing wait.
        assert!((20..=40).contains(&tried), "{tried} attempts in 120 s");
        assert_eq!(gauge(&metrics, "rune_results_pending"), "rune_results_pending 1");
        up.store(true, Ordering::SeqCst);
        let left = outbox.drain(Instant::now() + MAX_DELAY + Duration::from_secs(1)).await;
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(gauge(&metrics, "rune_results_pending"), "rune_results_pending 0");
        assert!(metrics.encode().contains("rune_results_given_up_total 0"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_is_given_up_after_retry_for_and_counted() {
        let metrics = Metrics::new();
        let outbox =
            Outbox::new(OutboxSettings { retry_for: Duration::from_secs(30), max_pending: 10 }, metrics.clone());
        let (up, calls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        outbox.send("run-1".into(), "s".into(), flaky(up, calls)).await;
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(outbox.pending(), 0);
        assert!(metrics.encode().contains("rune_results_given_up_total 1"), "{}", metrics.encode());
        assert_eq!(gauge(&metrics, "rune_results_pending"), "rune_results_pending 0");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_makes_the_next_result_wait_until_the_oldest_is_given_up() {
        let metrics = Metrics::new();
        let outbox =
            Outbox::new(OutboxSettings { retry_for: Duration::from_secs(60), max_pending: 2 }, metrics.clone());
        let (up, calls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        outbox.send("run-1".into(), "s".into(), flaky(up.clone(), calls.clone())).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        outbox.send("run-2".into(), "s".into(), flaky(up.clone(), calls.clone())).await;
        let third = tokio::spawn({
            let outbox = outbox.clone();
            let attempt = flaky(up.clone(), calls.clone());
            async move { outbox.send("run-3".into(), "s".into(), attempt).await }
        });
        // Paused time: nothing moves until the clock does; 49 s later run-1 still holds its place.
        tokio::time::sleep(Duration::from_secs(49)).await;
        assert!(!third.is_finished(), "the third result was kept beyond max_pending");
        assert_eq!(outbox.pending(), 2);
        // run-1 is given up at 60 s (its last attempt, at the deadline, fails): the third takes its place.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(third.is_finished(), "the third result still waits after the oldest was given up");
        let kept: Vec<String> = outbox.lock().keys().cloned().collect();
        assert_eq!(kept, ["run-2", "run-3"]);
        assert!(metrics.encode().contains("rune_results_given_up_total 1"));
        // Back up: both are published; shutdown has nothing to report.
        up.store(true, Ordering::SeqCst);
        assert!(outbox.drain(Instant::now() + Duration::from_secs(10)).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_reports_what_is_still_unpublished_at_its_deadline() {
        let outbox = Outbox::new(OutboxSettings::default(), Metrics::new());
        let (up, calls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        for id in ["run-b", "run-a"] {
            outbox.send(id.into(), "s".into(), flaky(up.clone(), calls.clone())).await;
        }
        let left = outbox.drain(Instant::now() + Duration::from_secs(20)).await;
        assert_eq!(left, ["run-a", "run-b"]);
    }
}
