//! Prometheus metrics of the daemon (`/metrics`): events in, decisions by kind and reason, runs by action and
//! status, run duration, runs in flight, NATS connection state, rule reloads, results awaiting acknowledgement.
//! One cheap handle, cloned everywhere; each notable event calls one method here next to its log line.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rule: String,
    decision: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    action: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

struct Inner {
    registry: Registry,
    events: Family<SourceLabels, Counter>,
    refused: Family<SourceLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    runs: Family<RunLabels, Counter>,
    duration: Family<ActionLabels, Histogram>,
    in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    nats_connected: Gauge<i64, std::sync::atomic::AtomicI64>,
    rules: Gauge<i64, std::sync::atomic::AtomicI64>,
    reloads: Family<ResultLabels, Counter>,
    published_errors: Counter<u64, AtomicU64>,
    webhook_refused: Family<ReasonLabels, Counter>,
    results_pending: Gauge<i64, std::sync::atomic::AtomicI64>,
    results_given_up: Counter<u64, AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The daemon's metrics; clone freely.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn histogram() -> Histogram {
    // 10 ms .. ~164 s: plugin runs, connection included.
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rune");
        let events = Family::<SourceLabels, Counter>::default();
        registry.register("events_received", "Events accepted from intakes, by payload source", events.clone());
        let refused = Family::<SourceLabels, Counter>::default();
        registry.register("payloads_refused", "Payloads refused by an intake (auth, size, parse)", refused.clone());
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions of the rules engine by rule, kind (admitted, suppressed, deferred, cleared) and reason",
            decisions.clone(),
        );
        let runs = Family::<RunLabels, Counter>::default();
        registry.register("runs", "Plugin runs finished, by action and status", runs.clone());
        let duration = Family::<ActionLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        registry.register("run_duration_seconds", "Plugin run wall time, by action", duration.clone());
        let in_flight = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("runs_in_flight", "Plugin runs executing now", in_flight.clone());
        let nats_connected = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("nats_connected", "1 while the NATS connection is up", nats_connected.clone());
        let rules = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("rules_loaded", "Rules in force", rules.clone());
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("rule_reloads", "Rule reloads, by result (ok, refused)", reloads.clone());
        let published_errors = Counter::<u64, AtomicU64>::default();
        registry.register("publish_errors", "Results or decisions a sink refused", published_errors.clone());
        let webhook_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "webhook_listener_refused",
            "Connections or requests the webhook listener refused before routing, by reason (too_many_connections, \
             rate_limited, tls_handshake)",
            webhook_refused.clone(),
        );
        let results_pending = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "results_pending",
            "Results kept for the results stream and not yet acknowledged (retried until results.retry_for)",
            results_pending.clone(),
        );
        let results_given_up = Counter::<u64, AtomicU64>::default();
        registry.register(
            "results_given_up",
            "Results the results stream did not acknowledge within results.retry_for (not published)",
            results_given_up.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                events,
                refused,
                decisions,
                runs,
                duration,
                in_flight,
                nats_connected,
                rules,
                reloads,
                published_errors,
                webhook_refused,
                results_pending,
                results_given_up,
            }),
        }
    }

    pub fn event_received(&self, source: &str) {
        self.inner.events.get_or_create(&SourceLabels { source: source.to_owned() }).inc();
    }

    pub fn payload_refused(&self, source: &str) {
        self.inner.refused.get_or_create(&SourceLabels { source: source.to_owned() }).inc();
    }

    pub fn decision(&self, rule: &str, decision: &str, reason: Option<&str>) {
        let labels = DecisionLabels {
            rule: rule.to_owned(),
            decision: decision.to_owned(),
            reason: reason.unwrap_or("").to_owned(),
        };
        self.inner.decisions.get_or_create(&labels).inc();
    }

    pub fn run_started(&self) {
        self.inner.in_flight.inc();
    }

    pub fn run_finished(&self, action: &str, status: &str, duration: Duration) {
        self.inner.in_flight.dec();
        self.inner.runs.get_or_create(&RunLabels { action: action.to_owned(), status: status.to_owned() }).inc();
        self.inner.duration.get_or_create(&ActionLabels { action: action.to_owned() }).observe(duration.as_secs_f64());
    }

    pub fn nats_connected(&self, up: bool) {
        self.inner.nats_connected.set(i64::from(up));
    }

    pub fn rules_loaded(&self, n: usize) {
        self.inner.rules.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.inner.reloads.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    pub fn publish_error(&self) {
        self.inner.published_errors.inc();
    }

    pub fn webhook_refused(&self, reason: &'static str) {
        self.inner.webhook_refused.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    /// A result was kept for later delivery (`+1`) or left the outbox, acknowledged or given up (`-1`).
    pub fn result_pending(&self, delta: i64) {
        self.inner.results_pending.inc_by(delta);
    }

    pub fn result_given_up(&self) {
        self.inner.results_given_up.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_exposed() {
        let m = Metrics::new();
        m.event_received("alertmanager");
        m.decision("docker-down", "suppressed", Some("duplicate"));
        m.run_started();
        m.run_finished("restart-docker", "ok", Duration::from_millis(120));
        m.rules_loaded(3);
        let text = m.encode();
        for want in [
            "rune_events_received_total{source=\"alertmanager\"} 1",
            "rune_decisions_total{rule=\"docker-down\",decision=\"suppressed\",reason=\"duplicate\"} 1",
            "rune_runs_total{action=\"restart-docker\",status=\"ok\"} 1",
            "rune_run_duration_seconds_count{action=\"restart-docker\"} 1",
            "rune_runs_in_flight 0",
            "rune_rules_loaded 3",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
