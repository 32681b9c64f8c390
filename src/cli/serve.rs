//! `rune serve`: the daemon. Loads the settings, plugins, inventory and rules; connects to NATS when configured;
//! serves the webhooks (and `/healthz`, `/readyz`, `/metrics`); runs until SIGTERM or ctrl-c, then drains.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{EXIT_OK, EXIT_USAGE, load_inventory};
use crate::audit::records::DecisionAudit;
use crate::audit::{AuditLog, AuditOptions, Auditor};
use crate::bridge::{Bridge, BridgeOptions};
use crate::config::{self, Settings};
use crate::engine::Engine;
use crate::event::{Event, Limits, Source};
use crate::gate::dedup::{DedupStore, MemoryDedup};
use crate::gate::kv::{KvDedup, KvDedupSettings, KvLockSettings, KvLocks};
use crate::metrics::Metrics;
use crate::orchestrator::Orchestrator;
use crate::plugins::Registry;
use crate::results::nats::NatsPublisher;
use crate::results::outbox::OutboxSettings;
use crate::results::publish::{JsonLines, Publish, Publishers};
use crate::rules::matcher::SubjectPattern;
use crate::secrets::ParameterStore;
use crate::sources::per_source::PerSource;
use crate::sources::tls::ServerTls;
use crate::sources::webhook::{
    self, EndpointAuth, EventSink, HookAuth, ListenerOptions, RefusalHook, RefusedPayload, SinkError, WebhookConfig,
};
use crate::transport::ssh::SshTransport;
use crate::transport::ssm::SsmTransport;

/// How often the webhook certificate files are checked for a change (a renewed certificate is served from then on).
const TLS_RELOAD_CHECK: Duration = Duration::from_secs(10);
/// How long the exit waits for the NATS client to send what it has queued (decisions, audit copies, acks).
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit code: the daemon could not start (bad settings, rules, NATS unreachable at start with JetStream…).
pub const EXIT_START_FAILED: i32 = 3;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Settings file (YAML or TOML); none = the embedded default (webhooks in, results to stdout).
    #[arg(long, env = "RUNE_CONFIG")]
    pub config: Option<PathBuf>,
}

pub async fn serve(args: ServeArgs, log: Option<String>, log_format: Option<super::LogFormat>) -> i32 {
    let loaded = config::load(args.config.as_deref());
    // --log / RUNE_LOG and --log-format / RUNE_LOG_FORMAT win over the settings' `log` section.
    let (level, format) = match &loaded {
        Ok(s) => (
            log.unwrap_or_else(|| s.log.level.clone()),
            log_format.unwrap_or(match s.log.format {
                config::LogFormat::Text => super::LogFormat::Text,
                config::LogFormat::Json => super::LogFormat::Json,
            }),
        ),
        Err(_) => (log.unwrap_or_else(|| "warn".into()), log_format.unwrap_or(super::LogFormat::Text)),
    };
    super::init_logging(&level, format);
    // Secrets given by reference and the prefetched paths are read now, before anything else starts (plugins,
    // rules, NATS, the listener): one store, kept for the runs' own references.
    let (loaded, secrets) = match loaded {
        Ok(mut s) => {
            let store = s.parameter_store();
            match s.resolve_secrets(&store).await {
                Ok(()) => (Ok(s), store),
                Err(errors) => (Err(errors), store),
            }
        }
        Err(errors) => (Err(errors), ParameterStore::default()),
    };
    let settings = match loaded {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s) in the settings; see `rune config check`", errors.len());
            return EXIT_USAGE;
        }
    };
    for w in &settings.warnings {
        tracing::warn!(warning = %w, "settings");
    }
    match start(settings, secrets).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            EXIT_START_FAILED
        }
    }
}

/// Everything `serve` builds before choosing the dedup store.
struct Parts {
    settings: Settings,
    /// The Parameter Store the settings' secrets were read through (its cache holds what was prefetched).
    secrets: ParameterStore,
    registry: Arc<Registry>,
    inventory: Arc<crate::inventory::Inventory>,
    rules: crate::rules::RuleSet,
    metrics: Metrics,
    nats: Option<async_nats::Client>,
    /// Cluster-wide host leases (JetStream mode).
    locks: Option<KvLocks>,
    /// The webhook listener's TLS, loaded before anything connects (a bad certificate stops the start).
    tls: Option<Arc<ServerTls>>,
}

async fn start(settings: Settings, secrets: ParameterStore) -> Result<i32, String> {
    if let Some(r) = settings.unresolved().next() {
        return Err(format!("internal error: {} ({}) was not read", r.field, r.reference));
    }
    let registry = Arc::new(Registry::load(&settings.paths.plugins_dirs));
    for p in registry.problems() {
        tracing::warn!(problem = %p, "plugin not loaded");
    }
    let inventory = load_inventory(settings.paths.inventory.as_ref()).map_err(|e| e.join("; "))?;
    let files = crate::rules::load_dir(&settings.paths.rules_dir).map_err(|e| join(&e))?;
    let rules = crate::rules::parse_files(&files, &registry, &inventory).map_err(|e| join(&e))?;
    for w in &rules.warnings {
        tracing::warn!(warning = %w, "rules");
    }
    let tls = match &settings.webhook.tls {
        Some(files) => Some(Arc::new(ServerTls::load(files).map_err(|e| format!("webhook.tls: {e}"))?)),
        None => None,
    };
    let metrics = Metrics::new();
    let nats = match &settings.nats {
        Some(n) => Some(connect_nats(n, &metrics).await?),
        None => None,
    };
    // Cluster-wide dedup and host leases on JetStream KV when JetStream is configured; in-process otherwise.
    let (kv, locks) = match (&nats, settings.nats.as_ref().and_then(|n| n.jetstream.as_ref())) {
        (Some(client), Some(js)) => {
            let dedup = KvDedupSettings { bucket: js.kv.dedup_bucket.clone(), ..KvDedupSettings::default() };
            let store = KvDedup::open(client.clone(), &dedup).await.map_err(|e| format!("dedup store: {e}"))?;
            let lease_ttl = js.kv.lease_ttl;
            let lock_settings = KvLockSettings {
                bucket: js.kv.locks_bucket.clone(),
                lease_ttl,
                renew_every: lease_ttl / 3,
                ..KvLockSettings::default()
            };
            let instance = format!("{}-{}", settings.nats.as_ref().map_or("rune", |n| n.name.as_str()), instance_id());
            let locks = KvLocks::open(client.clone(), &instance, &lock_settings)
                .await
                .map_err(|e| format!("host locks: {e}"))?;
            (Some(store), Some(locks))
        }
        _ => (None, None),
    };
    let parts = Parts { settings, secrets, registry, inventory, rules, metrics, nats, locks, tls };
    match kv {
        Some(store) => run(parts, store).await,
        None => run(parts, MemoryDedup::default()).await,
    }
}

/// Unique per process: the pid and a random part (pids repeat across hosts and containers).
fn instance_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", std::process::id(), random.get(..8).unwrap_or(&random))
}

fn join(d: &[crate::rules::RuleDiagnostic]) -> String {
    d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

async fn connect_nats(n: &config::Nats, metrics: &Metrics) -> Result<async_nats::Client, String> {
    use async_nats::ConnectOptions;
    let secret = |s: &config::Secret| s.expose_str().map(str::to_owned).ok_or("a NATS secret is not UTF-8".to_owned());
    let mut options = match &n.auth {
        config::NatsAuth::None => ConnectOptions::new(),
        config::NatsAuth::Token { token } => ConnectOptions::with_token(secret(token)?),
        config::NatsAuth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), secret(password)?)
        }
        config::NatsAuth::Nkey { seed } => ConnectOptions::with_nkey(secret(seed)?),
        config::NatsAuth::Credentials { contents, file } => {
            ConnectOptions::with_credentials(&secret(contents)?).map_err(|e| format!("{}: {e}", file.display()))?
        }
    };
    if let Some(ca) = &n.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some(cert) = &n.tls.client_cert {
        options = options.add_client_certificate(cert.cert_file.clone(), cert.key_file.clone());
    }
    let metrics = metrics.clone();
    let max_delay = n.reconnect.max_delay;
    options = options
        .require_tls(n.tls.required)
        .name(&n.name)
        .connection_timeout(n.connect_timeout)
        .max_reconnects(n.reconnect.max_attempts.map(|a| usize::try_from(a).unwrap_or(usize::MAX)))
        .reconnect_delay_callback(move |attempts| {
            let exp = 100u64.saturating_mul(1 << attempts.min(10));
            Duration::from_millis(exp).min(max_delay)
        })
        .event_callback(move |event| {
            let metrics = metrics.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics.nats_connected(true);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        metrics.nats_connected(false);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        });
    let client = options.connect(n.urls.clone()).await.map_err(|e| format!("NATS {}: {e}", n.urls.join(",")))?;
    metrics_connected(&client, &n.name);
    Ok(client)
}

/// Runs an intake until it ends; an intake that ends with an error says so.
fn spawn_intake<E: std::fmt::Display>(
    name: &'static str,
    task: impl Future<Output = Result<(), E>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "{name} intake stopped");
        }
    })
}

fn metrics_connected(client: &async_nats::Client, name: &str) {
    tracing::info!(server = %client.server_info().server_name, client = name, "NATS ready");
}

/// Webhook sink: the raw payload goes into the NATS alerts subjects (any instance may decide it).
struct ToNats {
    client: async_nats::Client,
    /// `<prefix>.<format>`, checked at start to be covered by the alert subscriptions.
    prefix: String,
}

impl EventSink for ToNats {
    async fn submit(
        &self,
        format: Source,
        body: Bytes,
        _events: Vec<Event>,
        correlation_id: Option<String>,
    ) -> Result<(), SinkError> {
        let subject = format!("{}.{format}", self.prefix);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(crate::sources::nats::FORMAT_HEADER, format.as_str());
        if let Some(c) = &correlation_id {
            headers.insert(crate::results::nats::CORRELATION_HEADER, c.as_str());
        }
        let js = async_nats::jetstream::new(self.client.clone());
        let ack = js
            .publish_with_headers(subject.clone(), headers, body)
            .await
            .map_err(|e| SinkError::Unavailable(format!("NATS {subject}: {e}")))?;
        ack.await.map_err(|e| SinkError::Unavailable(format!("NATS {subject}: {e}"))).map(drop)
    }
}

fn endpoint_auth(auth: &Option<config::EndpointAuth>) -> Result<Option<EndpointAuth>, String> {
    Ok(match auth {
        None => None,
        Some(config::EndpointAuth::None) => Some(EndpointAuth::None),
        Some(config::EndpointAuth::Bearer { token }) => Some(EndpointAuth::Bearer(
            webhook::Secret::new(token.expose().to_vec()).map_err(|e| format!("webhook bearer token: {e}"))?,
        )),
        Some(config::EndpointAuth::Hmac { secret, header }) => Some(EndpointAuth::Hmac {
            secret: webhook::Secret::new(secret.expose().to_vec()).map_err(|e| format!("webhook HMAC secret: {e}"))?,
            header: header.parse().map_err(|e| format!("webhook HMAC header `{header}`: {e}"))?,
        }),
    })
}

async fn run<D: DedupStore>(parts: Parts, dedup: D) -> Result<i32, String> {
    let Parts { settings, secrets, registry, inventory, rules, metrics, nats, locks, tls } = parts;
    let mut engine = Engine::with_store(rules, registry.clone(), inventory.clone(), dedup);
    if let Some(locks) = locks {
        engine = engine.with_cluster_locks(locks);
    }
    let mut orchestrator = Orchestrator::new(registry, inventory, SshTransport::default())
        .with_ssm(SsmTransport::new(settings.ssm.transport()))
        .with_secrets(secrets);
    // Publishers: JSON Lines (stdout, file) and NATS.
    let mut sinks: Vec<Arc<dyn Publish>> = Vec::new();
    // The audit trail: each run's dispatch (waited for: a remediation the trail cannot record does not run) and
    // result, every decision; each record copied to `nats.subjects.audit` when NATS is configured.
    let audit = match settings.audit.enabled {
        true => {
            let mirror = match (&nats, &settings.nats) {
                (Some(client), Some(n)) => Some(crate::audit::nats_mirror(client.clone(), n.subjects.audit.clone())),
                _ => None,
            };
            let options = AuditOptions {
                max_bytes: settings.audit.max_file_size,
                mirror,
                ..AuditOptions::new(&settings.audit.file)
            };
            let log = AuditLog::open(options).map_err(|e| e.to_string())?;
            tracing::info!(file = %settings.audit.file.display(), "audit trail open");
            orchestrator = orchestrator.with_audit(Auditor::new(log.clone(), settings.audit.refuse_diagnostics));
            sinks.push(Arc::new(DecisionAudit(log.clone())));
            Some(log)
        }
        false => {
            tracing::warn!("audit trail off (audit.enabled: false): runs and decisions are not recorded");
            None
        }
    };
    if settings.results.stdout || settings.results.jsonl_file.is_some() {
        let jsonl = JsonLines::open(settings.results.stdout, settings.results.jsonl_file.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        sinks.push(Arc::new(jsonl));
    }
    if let (Some(client), Some(n)) = (&nats, &settings.nats)
        && settings.results.nats
    {
        let js = match n.jetstream.as_ref().and_then(|j| j.results_stream.as_ref()) {
            Some(rs) => {
                let ctx = async_nats::jetstream::new(client.clone());
                ctx.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: rs.name.clone(),
                    subjects: rs.subjects.clone(),
                    max_age: rs.max_age,
                    max_bytes: i64::try_from(rs.max_bytes).unwrap_or(i64::MAX),
                    max_messages: rs.max_msgs.and_then(|m| i64::try_from(m).ok()).unwrap_or(-1),
                    duplicate_window: results_duplicate_window(settings.results.retry_for, rs.max_age),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("results stream {}: {e}", rs.name))?;
                Some(ctx)
            }
            None => None,
        };
        let s = &n.subjects;
        let outbox =
            OutboxSettings { retry_for: settings.results.retry_for, max_pending: settings.results.max_pending.get() };
        let publisher = NatsPublisher::new(client.clone(), js, &s.results_prefix, &s.decisions_prefix)
            .with_outbox(outbox, metrics.clone());
        sinks.push(Arc::new(publisher));
    }
    let options = BridgeOptions {
        rules_dir: settings.paths.rules_dir.clone(),
        max_in_flight: settings.limits.max_in_flight_runs.get(),
        shutdown_grace: settings.limits.shutdown_grace,
    };
    let bridge = Bridge::new(engine, orchestrator, Arc::new(Publishers(sinks)), metrics.clone(), options);
    bridge.start_deferred_timer();
    bridge.start_rule_watch(settings.limits.reload_debounce);
    let stop = CancellationToken::new();
    let limits = Limits { max_body_bytes: settings.webhook.max_body_bytes, ..Limits::default() };
    let mut intakes = Vec::new();
    if let (Some(client), Some(n)) = (&nats, &settings.nats) {
        let s = &n.subjects;
        match &n.jetstream {
            Some(js) => {
                let intake = crate::sources::nats::JetStreamIntake {
                    stream: js.alerts_stream.name.clone(),
                    subjects: js.alerts_stream.subjects.clone(),
                    max_age: js.alerts_stream.max_age,
                    max_bytes: i64::try_from(js.alerts_stream.max_bytes).unwrap_or(i64::MAX),
                    durable: js.consumer.name.clone(),
                    max_deliver: js.consumer.max_deliver,
                    ack_wait: js.consumer.ack_wait,
                    backoff: js.consumer.backoff.clone(),
                    dead_letter_subject: s.dead_letter.clone(),
                    concurrency: js.consumer.concurrency,
                };
                let task =
                    crate::sources::nats::run_jetstream(client.clone(), intake, bridge.clone(), limits, stop.clone());
                intakes.push(spawn_intake("JetStream", task));
            }
            None => {
                let task = crate::sources::nats::run_core(
                    client.clone(),
                    s.alerts.clone(),
                    s.queue_group.clone(),
                    s.dead_letter.clone(),
                    bridge.clone(),
                    limits,
                    stop.clone(),
                );
                intakes.push(spawn_intake("NATS", task));
            }
        }
        if settings.chatops.enabled {
            let task = crate::sources::nats::run_requests(
                client.clone(),
                s.requests_prefix.clone(),
                s.queue_group.clone(),
                s.results_prefix.clone(),
                bridge.clone(),
                limits,
                stop.clone(),
            );
            intakes.push(spawn_intake("chatops", task));
        }
    }
    // Webhooks, health and metrics on one listener.
    let w = &settings.webhook;
    let mut auth = HookAuth {
        alertmanager: endpoint_auth(&w.alertmanager)?,
        grafana: endpoint_auth(&w.grafana)?,
        generic: endpoint_auth(&w.generic)?,
    };
    let unconfigured = auth.alertmanager.is_none() && auth.grafana.is_none() && auth.generic.is_none();
    if settings.origin.file.is_none() && unconfigured && w.listen.ip().is_loopback() {
        // The embedded default (no settings file at all): the three webhooks, unauthenticated, on loopback only.
        tracing::warn!(listen = %w.listen, "no settings file: webhooks served WITHOUT authentication, on loopback only");
        auth = HookAuth {
            alertmanager: Some(EndpointAuth::None),
            grafana: Some(EndpointAuth::None),
            generic: Some(EndpointAuth::None),
        };
    }
    // Every refused payload is counted and recorded in the audit trail (the answer waits for the queue).
    let on_refusal = {
        let (audit, metrics) = (audit.clone(), bridge.metrics().clone());
        RefusalHook(Arc::new(move |refused: RefusedPayload| {
            let (audit, metrics) = (audit.clone(), metrics.clone());
            Box::pin(async move {
                let format = refused.format.to_string();
                metrics.payload_refused(&format);
                if let Some(log) = audit {
                    let peer = refused.peer.map(|p| p.to_string());
                    let record = crate::audit::records::webhook_refusal(
                        &format,
                        peer.as_deref(),
                        refused.status,
                        &refused.error,
                    );
                    log.record("refusal", record).await;
                }
            })
        }))
    };
    let webhook_config =
        WebhookConfig { request_timeout: w.request_timeout, limits, auth, on_refusal: Some(on_refusal) };
    let hooks = match (&nats, &settings.nats) {
        (Some(client), Some(n)) if w.publish_to_nats => {
            let prefix = publish_prefix(&n.subjects.alerts)?;
            webhook::router(webhook_config, Arc::new(ToNats { client: client.clone(), prefix }))
        }
        _ => webhook::router(webhook_config, Arc::new(webhook::BridgeSink(bridge.clone()))),
    };
    // The stop signals are caught from before the first alert can be accepted: a SIGTERM that came between
    // `ready` and the wait below used to end the process at once (the default action), dropping admitted runs.
    let signals = StopSignals::catch();
    let ready = Arc::new(AtomicBool::new(true));
    let app: Router = hooks.merge(ops_routes(&bridge, settings.metrics.enabled, nats.clone(), ready.clone()));
    let listener = tokio::net::TcpListener::bind(w.listen).await.map_err(|e| format!("listen on {}: {e}", w.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %local, nats = nats.is_some(), rules = bridge.engine().rules().rules.len(), "rune serve ready");
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("rune serve: listening on {scheme}://{local} (webhooks /hooks/…, /healthz, /readyz, /metrics)");
    if let Some(tls) = &tls {
        tokio::spawn(Arc::clone(tls).watch(TLS_RELOAD_CHECK, stop.clone()));
    }
    let listener_options = ListenerOptions {
        per_source: PerSource::new(w.rate_limit_per_source, w.max_connections_per_source),
        tls,
        metrics: bridge.metrics().clone(),
        ..ListenerOptions::new(Duration::from_secs(30))
    };
    let http_stop = stop.clone();
    let http =
        tokio::spawn(webhook::serve(listener, app, listener_options, async move { http_stop.cancelled().await }));
    signals.wait().await;
    tracing::info!("shutting down: intake stopped, draining runs");
    ready.store(false, Ordering::SeqCst);
    stop.cancel();
    // Runs still waiting for a slot give up now; their JetStream messages go back for another instance.
    bridge.stop_accepting();
    // The intakes give back what they hold; one still setting up against an unreachable NATS (its requests time
    // out one after another) is not waited for beyond the grace.
    let intake_deadline = tokio::time::Instant::now() + settings.limits.shutdown_grace;
    for mut t in intakes {
        if tokio::time::timeout_at(intake_deadline, &mut t).await.is_err() {
            t.abort();
            tracing::warn!(
                "an intake did not stop within the shutdown grace; abandoned (its messages return after ack_wait)"
            );
        }
    }
    // Runs in flight finish, and results kept for an unreachable results stream are waited for, within the grace.
    let report = bridge.shutdown_report().await;
    let left = report.runs_in_flight;
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    if let Some(audit) = &audit {
        let mut fields = serde_json::Map::new();
        fields.insert("in_flight".into(), serde_json::json!(left));
        fields.insert("unpublished_results".into(), serde_json::json!(report.unpublished_results));
        if let Err(e) = audit.close(fields).await {
            tracing::error!(error = %e, "audit trail: the stop record could not be written");
        }
    }
    if let Some(client) = nats {
        // A flush waits for the connection: with NATS down it would never return, and the daemon never exit.
        if tokio::time::timeout(EXIT_FLUSH_TIMEOUT, client.flush()).await.is_err() {
            tracing::warn!(
                timeout_s = EXIT_FLUSH_TIMEOUT.as_secs(),
                "NATS unreachable at exit: decisions and audit copies still queued for it are dropped"
            );
        }
    }
    if left > 0 {
        tracing::warn!(in_flight = left, "exited with runs still in flight");
    }
    Ok(EXIT_OK)
}

/// The results stream's `Nats-Msg-Id` window: at least two minutes, and as long as a result may be retried
/// (`results.retry_for`), so that a retry after a lost acknowledgement is not stored twice; never longer than the
/// stream keeps messages (the server refuses that). An existing stream keeps the window it was made with.
fn results_duplicate_window(retry_for: Duration, max_age: Duration) -> Duration {
    let window = retry_for.max(Duration::from_secs(120));
    match max_age.is_zero() {
        true => window,
        false => window.min(max_age),
    }
}

/// The subject prefix webhook payloads are published under (`<prefix>.<format>`): the literal head of an
/// alerts pattern ending in `>`, so that the subscriptions are sure to receive them.
fn publish_prefix(alerts: &[String]) -> Result<String, String> {
    for pattern in alerts {
        if let Some(head) = pattern.strip_suffix(".>")
            && !head.split('.').any(|t| t == "*")
            && SubjectPattern::parse(pattern).is_ok()
        {
            return Ok(head.to_owned());
        }
    }
    Err(format!(
        "webhook.publish_to_nats needs an alerts subject ending in `.>` to publish under (have: {})",
        alerts.join(", ")
    ))
}

fn ops_routes<D: DedupStore>(
    bridge: &Bridge<D>,
    metrics_enabled: bool,
    nats: Option<async_nats::Client>,
    ready: Arc<AtomicBool>,
) -> Router {
    let mut router = Router::new().route("/healthz", get(|| async { (StatusCode::OK, "ok\n") })).route(
        "/readyz",
        get(move || {
            let nats = nats.clone();
            let ready = ready.clone();
            async move {
                let nats_up =
                    nats.as_ref().is_none_or(|c| c.connection_state() == async_nats::connection::State::Connected);
                if ready.load(Ordering::SeqCst) && nats_up {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
        }),
    );
    if metrics_enabled {
        let metrics = bridge.metrics().clone();
        router = router.route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
    }
    router
}

/// SIGTERM and SIGINT, caught from [`StopSignals::catch`] on: one that arrives before [`StopSignals::wait`] is
/// kept, not acted on by the default action (which would end the process without draining).
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn catch() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let catch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| tracing::error!(signal = name, error = %e, "cannot catch the signal")).ok()
        };
        StopSignals {
            term: catch(SignalKind::terminate(), "SIGTERM"),
            interrupt: catch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn wait(mut self) {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => {}
            _ = next(&mut self.interrupt) => {}
        }
    }
}
