//! The decision stage: an event goes through the rules (matching) and the gates, and comes out as decisions —
//! an admitted run (holding its host lease) or a suppression with its reason. Nothing is dropped silently.
//!
//! Gate order for one (rule, host): target → arguments → safety class → circuit breaker → dedup (read) → host
//! lock (remediations) → blast radius (remediations) → dedup claim → rate limits
//! (rule×host, host, rule, global). The reversible gates
//! come first and are rolled back when a later one says no, so a suppressed decision leaves no trace in the
//! dedup store, the blast-radius window or the host locks; rate-limit tokens cannot be given back, so they are
//! taken last — except that a limit known to be exhausted (its last refusal named a later instant) answers right
//! after the dedup read, claiming and spending nothing. `once_after` claims the dedup key at once and parks the match (bounded in number); the gates from
//! the breaker on run when its window closes ([`Engine::take_due`]), against the rule as it is then.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::bpcs::{RawArg, SafetyClass, check_args, check_args_deferring};
use crate::event::{AlertStatus, Event};
use crate::gate::blast::{BlastRadius as BlastGate, BlastTicket};
use crate::gate::breaker::{BreakerPermit, BreakerSpec, CircuitBreaker};
use crate::gate::dedup::{ClaimRef, DedupError, DedupStore, MemoryDedup};
use crate::gate::kv::{KvError, KvLease, KvLocks};
use crate::gate::lock::{HostLease, HostLocks};
use crate::gate::ratelimit::{KeyedRateLimit, RateLimit, RateSpec};
use crate::inventory::{Inventory, TransportKind};
use crate::orchestrator::RunRequest;
use crate::plugins::{Plugin, Registry};
use crate::rules::template::EventContext;
use crate::rules::{ArgSource, DedupMode, MatchKind, Rule, RuleSet, Target};
use crate::secrets::SecretRef;

/// Name under which chatops decisions are reported (it is not a valid rule name, so no rule can take it).
pub const CHATOPS_RULE: &str = "chatops";

/// Why a decision did not admit a run. Stable names: they are published and filtered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressReason {
    /// A target, argument or dedup-key template failed (e.g. a label it reads is missing).
    TemplateError,
    /// The target is not an inventory host (or the group is empty).
    UnknownTarget,
    /// The rendered arguments do not satisfy the plugin's declarations.
    InvalidArgs,
    /// A remediation plugin for a rule not in `policy.remediation.allowed_rules`.
    SafetyClass,
    /// The rule's circuit breaker is open after repeated failures.
    CircuitOpen,
    /// The dedup key is held: the same alert already acted (or is collected into a pending run).
    Duplicate,
    /// The dedup store could not answer (full, or unreachable): fail closed.
    DedupUnavailable,
    /// The rule already remediated its maximum number of distinct hosts within the window.
    BlastRadius,
    /// Another remediation holds the host.
    HostBusy,
    /// A rate limit (rule, rule×host, host, global or chatops requester) is exhausted.
    RateLimited,
    /// The alert resolved while its `once_after` run was being parked.
    ResolvedBeforeWindow,
    /// A reload removed, disabled or changed the rule while its `once_after` run was pending.
    RuleChanged,
    /// Too many `once_after` runs are pending (per rule or in all): fail closed.
    PendingFull,
    /// A chatops request for an action chatops may not run.
    NotAllowed,
    /// A chatops request naming an unknown action.
    InvalidRequest,
    /// Admitted, but before the run started its pending dedup claim was taken over by a redelivery of its message
    /// (now deciding on another consumer) or cleared by a resolved alert: the run does not start.
    ClaimLost,
}

impl SuppressReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::TemplateError => "template_error",
            SuppressReason::UnknownTarget => "unknown_target",
            SuppressReason::InvalidArgs => "invalid_args",
            SuppressReason::SafetyClass => "safety_class",
            SuppressReason::CircuitOpen => "circuit_open",
            SuppressReason::Duplicate => "duplicate",
            SuppressReason::DedupUnavailable => "dedup_unavailable",
            SuppressReason::BlastRadius => "blast_radius",
            SuppressReason::HostBusy => "host_busy",
            SuppressReason::RateLimited => "rate_limited",
            SuppressReason::ResolvedBeforeWindow => "resolved_before_window",
            SuppressReason::RuleChanged => "rule_changed",
            SuppressReason::PendingFull => "pending_full",
            SuppressReason::NotAllowed => "not_allowed",
            SuppressReason::InvalidRequest => "invalid_request",
            SuppressReason::ClaimLost => "claim_lost",
        }
    }
}

impl fmt::Display for SuppressReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gates, in the order they are tried (also the index into [`Trace`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    Target,
    Args,
    SafetyClass,
    Breaker,
    Dedup,
    HostLock,
    BlastRadius,
    RateLimit,
}

impl Gate {
    pub const ALL: [Gate; 8] = [
        Gate::Target,
        Gate::Args,
        Gate::SafetyClass,
        Gate::Breaker,
        Gate::Dedup,
        Gate::HostLock,
        Gate::BlastRadius,
        Gate::RateLimit,
    ];
}

/// What one gate did for one decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// An earlier gate already decided.
    #[default]
    NotReached,
    /// The gate does not apply (e.g. blast radius for a diagnostic, dedup `off`).
    Skipped,
    Passed,
    /// The window is open: the match is parked until it closes (`once_after`).
    Deferred,
    Suppressed,
}

/// Every gate's step for one decision (no allocation: one byte per gate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trace([Step; 8]);

impl Trace {
    fn set(&mut self, gate: Gate, step: Step) {
        if let Some(s) = self.0.get_mut(gate as usize) {
            *s = step;
        }
    }

    pub fn get(&self, gate: Gate) -> Step {
        self.0.get(gate as usize).copied().unwrap_or_default()
    }

    pub fn steps(&self) -> impl Iterator<Item = (Gate, Step)> + '_ {
        Gate::ALL.iter().map(|g| (*g, self.get(*g)))
    }
}

impl Serialize for Trace {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(Gate::ALL.len()))?;
        for (g, step) in self.steps() {
            map.serialize_entry(&g, &step)?;
        }
        map.end()
    }
}

/// Where host leases come from: this process, or a JetStream KV bucket shared by every instance.
pub enum HostLockBackend {
    Local(HostLocks),
    Cluster(Box<KvLocks>),
}

/// A held host lease, from either backend; dropping it releases the host.
pub enum Lease {
    Local(HostLease),
    Cluster(Box<KvLease>),
}

impl Lease {
    /// Cancelled when a cluster lease is lost (renewals failed); never for a local one.
    pub fn lost(&self) -> Option<tokio_util::sync::CancellationToken> {
        match self {
            Lease::Local(_) => None,
            Lease::Cluster(l) => Some(l.lost()),
        }
    }
}

impl HostLockBackend {
    /// Ok(lease), or Err((reason, detail)): busy, or the lock store could not answer (fail closed).
    async fn try_acquire(
        &self,
        host: &str,
        holder: String,
        owner: Option<&str>,
        now: Instant,
    ) -> Result<Lease, (SuppressReason, String)> {
        match self {
            HostLockBackend::Local(locks) => locks
                .try_acquire(host, holder, now)
                .map(Lease::Local)
                .map_err(|busy| (SuppressReason::HostBusy, busy.to_string())),
            HostLockBackend::Cluster(locks) => match locks.try_acquire_as(host, &holder, owner).await {
                Ok(lease) => Ok(Lease::Cluster(Box::new(lease))),
                Err(e @ KvError::Busy { .. }) => Err((SuppressReason::HostBusy, e.to_string())),
                Err(e) => Err((SuppressReason::HostBusy, format!("host lock store unavailable (fail closed): {e}"))),
            },
        }
    }
}

/// The run an admitted decision may start. Holding it holds the host lease; [`Admission::finish`] reports the
/// run's outcome to the rule's circuit breaker and releases the host.
pub struct Admission {
    lease: Option<Lease>,
    permit: Option<(BreakerPermit, Arc<RuleGates>)>,
    /// What a run that does not start gives back ([`Engine::abandon`]); boxed, it is rarely used.
    undo: Box<Undo>,
}

/// The reversible steps of an admission.
#[derive(Debug, Default)]
struct Undo {
    /// The pending dedup claim, committed by [`Engine::commit`] just before the run starts.
    claim: Option<ClaimRef>,
    /// The blast-radius slot this run counts in.
    ticket: Option<BlastTicket>,
}

impl Admission {
    /// The pending dedup claim of this run, if the rule dedups.
    pub fn claim(&self) -> Option<&ClaimRef> {
        self.undo.claim.as_ref()
    }

    /// Cancelled if the cluster lease on the host is lost while the run goes on.
    pub fn lease_lost(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.lease.as_ref().and_then(Lease::lost)
    }

    /// Records the run's outcome (success = the plugin reported ok/warn/skipped) and releases the host lease.
    pub fn finish(self, success: bool) {
        if let Some((permit, gates)) = self.permit {
            gates.breaker.record(permit, success, Instant::now());
        }
        drop(self.lease);
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission").field("holds_host_lease", &self.lease.is_some()).finish()
    }
}

/// The outcome of one decision.
#[derive(Debug)]
pub enum Verdict {
    Admitted(Admission),
    Suppressed {
        reason: SuppressReason,
        detail: String,
    },
    /// `once_after`: parked until the window closes; the run (or suppression) comes from [`Engine::take_due`].
    Deferred {
        until: DateTime<Utc>,
    },
    /// A resolved event cleared the dedup key its firing twin claimed (and cancelled a pending run, if any).
    Cleared {
        cancelled_pending: bool,
    },
}

impl Verdict {
    fn suppressed(reason: SuppressReason, detail: impl Into<String>) -> Verdict {
        Verdict::Suppressed { reason, detail: detail.into() }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Admitted(_) => "admitted",
            Verdict::Suppressed { .. } => "suppressed",
            Verdict::Deferred { .. } => "deferred",
            Verdict::Cleared { .. } => "cleared",
        }
    }

    pub fn reason(&self) -> Option<SuppressReason> {
        match self {
            Verdict::Suppressed { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// One decision: a rule (or chatops request) applied to one event and one host.
#[derive(Debug)]
pub struct Decision {
    pub event: Arc<Event>,
    pub rule: Arc<str>,
    /// The plugin as resolved (`name@version`); empty when the action could not be resolved.
    pub action: String,
    pub plugin: Option<Arc<Plugin>>,
    /// The target host (as rendered, when it is not a known host).
    pub host: Option<String>,
    pub args: BTreeMap<String, String>,
    pub dedup_key: Option<String>,
    /// The rule's transport for the run, instead of the host's own (None: the host's).
    pub transport: Option<TransportKind>,
    /// Arguments that are Parameter Store references (shown as `ssm:/path` in `args`), resolved when the run
    /// starts.
    pub secrets: BTreeMap<String, SecretRef>,
    pub trace: Trace,
    pub verdict: Verdict,
    pub decided_at: DateTime<Utc>,
}

impl Decision {
    pub fn is_admitted(&self) -> bool {
        matches!(self.verdict, Verdict::Admitted(_))
    }

    /// Who the run is attributed to in results and logs.
    pub fn operator(&self) -> String {
        match &self.event.request {
            Some(r) => format!("chatops:{}", r.requester),
            None => format!("rule:{}", self.rule),
        }
    }

    /// The run request an admitted decision hands to the orchestrator (`None` unless admitted).
    pub fn run_request(&self) -> Option<RunRequest> {
        if !self.is_admitted() {
            return None;
        }
        let host = self.host.clone()?;
        Some(RunRequest {
            action: self.action.clone(),
            args: self
                .args
                .iter()
                .filter(|(k, _)| !self.secrets.contains_key(*k))
                .map(|(k, v)| (k.clone(), RawArg::Text(v.clone())))
                .collect(),
            secrets: self.secrets.clone(),
            hosts: vec![host],
            groups: Vec::new(),
            dry_run: false,
            timeout: None,
            operator: self.operator(),
            correlation_id: Some(self.event.correlation_id.clone()),
            trigger: self.trigger(),
            transport: self.transport,
        })
    }

    /// What started the run, as the plugin and the result envelope see it.
    pub fn trigger(&self) -> Value {
        let e = &self.event;
        json!({
            "source": e.source,
            "rule": &*self.rule,
            "event_id": e.id,
            "subject": e.subject,
            "status": e.status,
            "fingerprint": e.fingerprint,
            "labels": e.labels,
        })
    }

    /// The decision as published and printed by `rules test --output json`.
    /// The arguments as records show them: a value the plugin's header declares secret is `<redacted>` (a
    /// Parameter Store reference is shown: it is not the value).
    fn shown_args(&self) -> BTreeMap<&str, &str> {
        let secret = |name: &str| {
            !self.secrets.contains_key(name)
                && self.plugin.as_ref().is_some_and(|p| p.args.get(name).is_some_and(|s| s.secret))
        };
        self.args
            .iter()
            .map(|(k, v)| (k.as_str(), if secret(k) { crate::config::REDACTED } else { v.as_str() }))
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let decided_at = self.decided_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut v = json!({
            "record": "decision",
            "@timestamp": decided_at,
            "decided_at": decided_at,
            "event_id": self.event.id,
            "correlation_id": self.event.correlation_id,
            "source": self.event.source,
            "fingerprint": self.event.fingerprint,
            "status": self.event.status,
            "rule": &*self.rule,
            "operator": self.operator(),
            "action": self.action,
            "host": self.host,
            "args": self.shown_args(),
            "dedup_key": self.dedup_key,
            "decision": self.verdict.kind(),
            "gates": self.trace,
        });
        match &self.verdict {
            Verdict::Suppressed { reason, detail } => {
                v["reason"] = json!(reason);
                v["detail"] = json!(detail);
            }
            Verdict::Deferred { until } => v["until"] = json!(until.to_rfc3339()),
            Verdict::Cleared { cancelled_pending } => v["cancelled_pending"] = json!(cancelled_pending),
            Verdict::Admitted(_) => {}
        }
        v
    }
}

/// Gate state of one rule; kept across reloads while the rule's gate settings stay the same.
pub struct RuleGates {
    settings: (Option<RateSpec>, Option<RateSpec>, Option<crate::rules::BlastRadius>, BreakerSpec),
    rate_rule: Option<RateLimit>,
    rate_host: Option<KeyedRateLimit<Arc<str>>>,
    blast: Option<BlastGate>,
    breaker: CircuitBreaker,
}

impl RuleGates {
    fn new(rule: &Rule) -> RuleGates {
        RuleGates {
            settings: (rule.rate_rule, rule.rate_host, rule.blast_radius, rule.breaker),
            rate_rule: rule.rate_rule.map(RateLimit::new),
            rate_host: rule.rate_host.map(KeyedRateLimit::new),
            blast: rule.blast_radius.map(|b| BlastGate::new(b.max_hosts, b.window)),
            breaker: CircuitBreaker::new(rule.breaker),
        }
    }
}

/// One loaded rule set with its gate state.
struct Loaded {
    rules: Arc<RuleSet>,
    /// By rule number.
    gates: Vec<Arc<RuleGates>>,
    /// Rule number by name.
    by_name: HashMap<Arc<str>, usize>,
    global: Arc<RateLimit>,
    host: Arc<KeyedRateLimit<Arc<str>>>,
    requester: Arc<KeyedRateLimit<Arc<str>>>,
}

/// Most `once_after` runs pending at once, in all and per rule: a flood of distinct alerts must not fill the
/// dedup store (shared by all rules) or memory.
pub const MAX_PENDING: usize = 10_000;
pub const MAX_PENDING_PER_RULE: usize = 1_000;

/// A `once_after` match waiting for its window to close.
struct Parked {
    due: Instant,
    /// The event without its raw payload (which could be a large body shared with other alerts).
    event: Arc<Event>,
    rule: Arc<str>,
    /// What the rule said when the run was parked; a reload that changes it cancels the run.
    rule_spec: RuleSpec,
    action: String,
    plugin: Arc<Plugin>,
    host: String,
    args: BTreeMap<String, String>,
    secrets: BTreeMap<String, SecretRef>,
    trace: Trace,
    /// Repeats collected into this run.
    collected: u64,
}

/// The parts of a rule that decide what a parked run does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleSpec {
    action: String,
    plugin_sha256: String,
    target: Target,
    args: Vec<(String, ArgSource)>,
    transport: Option<TransportKind>,
}

impl RuleSpec {
    fn of(rule: &Rule) -> RuleSpec {
        RuleSpec {
            action: rule.action.clone(),
            plugin_sha256: rule.plugin.sha256.clone(),
            target: rule.target.clone(),
            transport: rule.transport,
            args: rule.args.clone(),
        }
    }
}

/// Parked runs by (rule-namespaced) dedup key, with a count per rule for the caps.
#[derive(Default)]
struct Pending {
    by_key: HashMap<String, Parked>,
    per_rule: HashMap<Arc<str>, usize>,
}

impl Pending {
    fn remove(&mut self, key: &str) -> Option<Parked> {
        let p = self.by_key.remove(key)?;
        if let Some(n) = self.per_rule.get_mut(&p.rule) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_rule.remove(&p.rule);
            }
        }
        Some(p)
    }
}

/// Summary of a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadSummary {
    pub rules: usize,
    /// Rules whose gate state (rate limiters, breaker, blast window) carried over.
    pub kept_state: usize,
}

/// The decision engine: rules, gate state, host locks, parked `once_after` runs.
pub struct Engine<D: DedupStore = MemoryDedup> {
    loaded: RwLock<Arc<Loaded>>,
    registry: Arc<Registry>,
    inventory: Arc<Inventory>,
    dedup: D,
    /// One lease per host across all rules and chatops; leases travel inside admitted decisions and are
    /// released when the run finishes ([`Admission::finish`]) or the decision is dropped.
    locks: HostLockBackend,
    parked: Mutex<Pending>,
    /// Reloads one at a time (each builds the new state outside the lock decisions read).
    reloading: Mutex<()>,
}

thread_local! {
    /// Candidate rule numbers, reused across events on this thread.
    static CANDIDATES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

impl Engine<MemoryDedup> {
    /// An engine with the in-process dedup store (one instance; the cluster store comes with `rune serve`).
    pub fn new(rules: RuleSet, registry: Arc<Registry>, inventory: Arc<Inventory>) -> Engine<MemoryDedup> {
        Engine::with_store(rules, registry, inventory, MemoryDedup::default())
    }
}

impl<D: DedupStore> Engine<D> {
    pub fn with_store(rules: RuleSet, registry: Arc<Registry>, inventory: Arc<Inventory>, dedup: D) -> Engine<D> {
        let loaded = Self::build(rules, None);
        Engine {
            loaded: RwLock::new(Arc::new(loaded)),
            registry,
            inventory,
            dedup,
            locks: HostLockBackend::Local(HostLocks::default()),
            parked: Mutex::new(Pending::default()),
            reloading: Mutex::new(()),
        }
    }

    fn build(rules: RuleSet, old: Option<&Loaded>) -> Loaded {
        let gates = rules
            .rules
            .iter()
            .map(|r| {
                let previous = old.and_then(|o| o.gates.get(*o.by_name.get(&r.name)?).cloned());
                match previous {
                    Some(g) if g.settings == (r.rate_rule, r.rate_host, r.blast_radius, r.breaker) => g,
                    _ => Arc::new(RuleGates::new(r)),
                }
            })
            .collect();
        let p = &rules.policy;
        let keep = |old: Option<&Arc<RateLimit>>, rate: RateSpec| match old {
            Some(l) if l.spec() == rate => l.clone(),
            _ => Arc::new(RateLimit::new(rate)),
        };
        let keep_keyed = |old: Option<&Arc<KeyedRateLimit<Arc<str>>>>, rate: RateSpec| match old {
            Some(l) if l.spec() == rate => l.clone(),
            _ => Arc::new(KeyedRateLimit::new(rate)),
        };
        let by_name = rules.rules.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
        Loaded {
            by_name,
            global: keep(old.map(|o| &o.global), p.global),
            host: keep_keyed(old.map(|o| &o.host), p.host),
            requester: keep_keyed(old.map(|o| &o.requester), p.chatops_rate),
            rules: Arc::new(rules),
            gates,
        }
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rule set in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.current().rules.clone()
    }

    /// Swaps in a new rule set at once. Gate state carries over for rules whose name and gate settings are
    /// unchanged. (A rule set that failed to load never gets here: the old one stays in force.)
    pub fn reload(&self, rules: RuleSet) -> ReloadSummary {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        // Built outside the lock decisions take: they go on with the old set meanwhile.
        let old = self.current();
        let new = Self::build(rules, Some(&old));
        let old_gates: std::collections::HashSet<*const RuleGates> = old.gates.iter().map(Arc::as_ptr).collect();
        let kept = new.gates.iter().filter(|g| old_gates.contains(&Arc::as_ptr(g))).count();
        let summary = ReloadSummary { rules: new.rules.rules.len(), kept_state: kept };
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        summary
    }

    /// Takes host leases from a JetStream KV bucket shared by every instance instead of this process only.
    pub fn with_cluster_locks(mut self, locks: KvLocks) -> Self {
        self.locks = HostLockBackend::Cluster(Box::new(locks));
        self
    }

    /// Loads the rules folder and swaps it in, or — if any file has any error — keeps the rule set in force and
    /// returns every error.
    pub fn reload_from(&self, dir: &std::path::Path) -> Result<ReloadSummary, Vec<crate::rules::RuleDiagnostic>> {
        let files = crate::rules::load_dir(dir)?;
        let set = crate::rules::parse_files(&files, &self.registry, &self.inventory)?;
        Ok(self.reload(set))
    }

    /// Decides what to do about one event: one decision per matching rule and target host, in rule order.
    /// An event that matches nothing yields no decision (and costs a few hash lookups).
    pub async fn decide(&self, event: Arc<Event>) -> Vec<Decision> {
        let loaded = self.current();
        if event.request.is_some() {
            return vec![self.request(&loaded, event).await];
        }
        let mut matches: Vec<(u32, MatchKind)> = Vec::new();
        CANDIDATES.with(|c| {
            let mut scratch = c.borrow_mut();
            loaded.rules.matches(&event, &mut scratch, &mut matches);
        });
        let mut out = Vec::new();
        for (number, kind) in matches {
            let (Some(rule), Some(gates)) =
                (loaded.rules.rules.get(number as usize), loaded.gates.get(number as usize))
            else {
                continue;
            };
            self.rule_decisions(&loaded, rule, gates, kind, &event, &mut out).await;
        }
        out
    }

    fn base(&self, event: &Arc<Event>, rule: &Rule) -> Decision {
        Decision {
            event: event.clone(),
            rule: rule.name.clone(),
            action: format!("{}@{}", rule.plugin.name, rule.plugin.version),
            plugin: Some(rule.plugin.clone()),
            host: None,
            args: BTreeMap::new(),
            dedup_key: None,
            transport: rule.transport,
            secrets: BTreeMap::new(),
            trace: Trace::default(),
            verdict: Verdict::Cleared { cancelled_pending: false },
            decided_at: Utc::now(),
        }
    }

    async fn rule_decisions(
        &self,
        loaded: &Loaded,
        rule: &Rule,
        gates: &Arc<RuleGates>,
        kind: MatchKind,
        event: &Arc<Event>,
        out: &mut Vec<Decision>,
    ) {
        let context = |target: Option<&str>, status: Option<AlertStatus>| {
            EventContext { event: event.clone(), rule: rule.name.clone(), target: target.map(Arc::from), status }
                .into_value()
        };
        // Target(s).
        let hosts: Vec<String> = match &rule.target {
            Target::Host(h) => vec![h.clone()],
            Target::Group(g) => match self.inventory.select(&[], std::slice::from_ref(g)) {
                Ok(hosts) => hosts.iter().map(|h| h.name.clone()).collect(),
                Err(_) => {
                    let mut d = self.base(event, rule);
                    d.trace.set(Gate::Target, Step::Suppressed);
                    d.verdict = Verdict::suppressed(SuppressReason::UnknownTarget, format!("group `{g}` has no hosts"));
                    out.push(d);
                    return;
                }
            },
            Target::HostFrom { template, .. } => match loaded.rules.render(template, &context(None, None)) {
                Ok(h) => vec![h.trim().to_owned()],
                Err(e) => {
                    let mut d = self.base(event, rule);
                    d.trace.set(Gate::Target, Step::Suppressed);
                    d.verdict = Verdict::suppressed(SuppressReason::TemplateError, format!("target: {e}"));
                    out.push(d);
                    return;
                }
            },
        };
        for host in hosts {
            let mut d = self.base(event, rule);
            d.host = Some(truncate(&host, 256));
            let reachable = match (self.inventory.get(&host), rule.transport) {
                (None, _) => Err(format!("`{}` is not an inventory host", truncate(&host, 256))),
                (Some(h), Some(kind)) if h.via(kind).is_none() => {
                    Err(format!("host `{host}` has no `{kind}` section (the rule's transport is {kind})"))
                }
                _ => Ok(()),
            };
            if let Err(detail) = reachable {
                d.trace.set(Gate::Target, Step::Suppressed);
                d.verdict = Verdict::suppressed(SuppressReason::UnknownTarget, detail);
                out.push(d);
                continue;
            }
            d.trace.set(Gate::Target, Step::Passed);
            let now = Instant::now();
            if kind == MatchKind::Clear {
                let ctx = context(Some(&host), Some(AlertStatus::Firing));
                self.clear(loaded, rule, event, &host, &mut d, ctx).await;
                out.push(d);
                continue;
            }
            if event.status == AlertStatus::Resolved && rule.dedup.clear_on_resolved {
                // A rule that acts on resolved events (status: any) also clears its firing twin's key.
                let firing = context(Some(&host), Some(AlertStatus::Firing));
                if let Ok(key) = self.dedup_key(loaded, rule, event, &host, AlertStatus::Firing, &firing) {
                    self.parked.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    let _ = self.dedup.release(&key).await;
                }
            }
            let ctx = context(Some(&host), None);
            if let Err(verdict) = self.render_args(loaded, rule, &ctx, &mut d) {
                d.verdict = verdict;
                out.push(d);
                continue;
            }
            if let Err(v) = self.safety_class(loaded, rule, &mut d.trace) {
                d.verdict = v;
                out.push(d);
                continue;
            }
            // Dedup key.
            let key = if rule.dedup.mode == DedupMode::Off {
                None
            } else {
                match self.dedup_key(loaded, rule, event, &host, event.status, &ctx) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        d.trace.set(Gate::Dedup, Step::Suppressed);
                        d.verdict = Verdict::suppressed(SuppressReason::TemplateError, format!("dedup.key: {e}"));
                        out.push(d);
                        continue;
                    }
                }
            };
            d.dedup_key = key.clone();
            match (rule.dedup.mode, key) {
                (DedupMode::OnceAfter, Some(key)) => {
                    d.verdict = self.defer(rule, key, &host, &mut d, now).await;
                    out.push(d);
                }
                (_, key) => {
                    // The pending claim's owner: the carrying message (stable across redeliveries) and the host.
                    let owner = key.as_ref().map(|_| match &event.delivery {
                        Some(delivery) => format!("{delivery}#{host}"),
                        None => format!("{}#{host}", event.id),
                    });
                    d.verdict = self
                        .admit(loaded, rule, gates, &host, key.as_deref(), owner.as_deref(), &mut d.trace, now)
                        .await;
                    out.push(d);
                }
            }
        }
    }

    /// Remediation plugins only for the rules the policy allows.
    fn safety_class(&self, loaded: &Loaded, rule: &Rule, trace: &mut Trace) -> Result<(), Verdict> {
        if rule.plugin.class == SafetyClass::Remediation
            && loaded.rules.policy.remediation_allowed_rules.as_ref().is_some_and(|a| !a.contains(&*rule.name))
        {
            trace.set(Gate::SafetyClass, Step::Suppressed);
            let detail = format!(
                "`{}` is a remediation plugin and rule `{}` is not in policy.remediation.allowed_rules",
                rule.plugin.name, rule.name
            );
            return Err(Verdict::suppressed(SuppressReason::SafetyClass, detail));
        }
        trace.set(Gate::SafetyClass, Step::Passed);
        Ok(())
    }

    fn render_args(
        &self,
        loaded: &Loaded,
        rule: &Rule,
        ctx: &minijinja::Value,
        d: &mut Decision,
    ) -> Result<(), Verdict> {
        for (name, source) in &rule.args {
            let value = match source {
                ArgSource::Literal(v) => v.clone(),
                ArgSource::Secret(r) => {
                    d.secrets.insert(name.clone(), r.clone());
                    r.to_string()
                }
                ArgSource::Template { template, .. } => match loaded.rules.render(template, ctx) {
                    Ok(v) => v,
                    Err(e) => {
                        d.trace.set(Gate::Args, Step::Suppressed);
                        return Err(Verdict::suppressed(SuppressReason::TemplateError, format!("args.{name}: {e}")));
                    }
                },
            };
            d.args.insert(name.clone(), value);
        }
        let raw: BTreeMap<String, RawArg> = d.args.iter().map(|(k, v)| (k.clone(), RawArg::Text(v.clone()))).collect();
        let deferred: std::collections::BTreeSet<String> = d.secrets.keys().cloned().collect();
        if let Err(errors) = check_args_deferring(&rule.plugin.args, &raw, &deferred) {
            d.trace.set(Gate::Args, Step::Suppressed);
            let detail = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return Err(Verdict::suppressed(SuppressReason::InvalidArgs, detail));
        }
        d.trace.set(Gate::Args, Step::Passed);
        Ok(())
    }

    /// The rule-namespaced dedup key (two rules matching one alert never dedup each other).
    fn dedup_key(
        &self,
        loaded: &Loaded,
        rule: &Rule,
        event: &Arc<Event>,
        host: &str,
        status: AlertStatus,
        ctx: &minijinja::Value,
    ) -> Result<String, crate::rules::template::TemplateError> {
        let body = match &rule.dedup.key_template {
            Some(t) => loaded.rules.render(t, ctx)?,
            None => format!("{}/{}/{}", event.fingerprint, status, host),
        };
        Ok(format!("{}/{}", rule.name, body))
    }

    /// The gates from the breaker on; each reversible step is undone if a later one says no.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        loaded: &Loaded,
        rule: &Rule,
        gates: &Arc<RuleGates>,
        host: &str,
        key: Option<&str>,
        owner: Option<&str>,
        trace: &mut Trace,
        now: Instant,
    ) -> Verdict {
        let permit = match gates.breaker.check(now) {
            Ok(p) => p,
            Err(open) => {
                trace.set(Gate::Breaker, Step::Suppressed);
                return Verdict::suppressed(SuppressReason::CircuitOpen, open.to_string());
            }
        };
        trace.set(Gate::Breaker, Step::Passed);
        // The early read answers a duplicate with one read (a refused claim costs a write and a read with a shared
        // store) and keeps it from taking a host lock and a blast-radius slot.
        if let Some(key) = key {
            match self.dedup.is_held_for(key, owner, now).await {
                Ok(false) => {}
                Ok(true) => {
                    trace.set(Gate::Dedup, Step::Suppressed);
                    let window = humantime::format_duration(rule.dedup.window);
                    return Verdict::suppressed(
                        SuppressReason::Duplicate,
                        format!("key `{key}` acted within the last {window}"),
                    );
                }
                Err(e) => {
                    trace.set(Gate::Dedup, Step::Suppressed);
                    return Verdict::suppressed(SuppressReason::DedupUnavailable, e.to_string());
                }
            }
        } else if key.is_none() {
            trace.set(Gate::Dedup, Step::Skipped);
        }
        // A limit already known to be exhausted answers before any claim, lock or token (see
        // `RateLimit::exhausted`): in an alert storm, the suppressed alerts cost the shared store no writes.
        if let Some(detail) = Self::exhausted(loaded, gates, host) {
            if key.is_some() {
                trace.set(Gate::Dedup, Step::Passed);
            }
            trace.set(Gate::RateLimit, Step::Suppressed);
            return Verdict::suppressed(SuppressReason::RateLimited, detail);
        }
        // The lease is taken over by the same owner only where a dedup claim guards the start (its commit fails for
        // the holder that was taken over); without dedup a stalled holder could otherwise still start.
        let (lease, ticket) = match self.lock_and_blast(rule, gates, host, key.and(owner), trace, now).await {
            Ok(x) => x,
            Err(v) => return v,
        };
        let rollback_blast = |ticket: Option<BlastTicket>| {
            if let (Some(t), Some(b)) = (ticket, gates.blast.as_ref()) {
                t.rollback(b);
            }
        };
        // The claim is the atomic dedup step (a concurrent twin loses here); it can be released, rate-limit
        // tokens cannot, so it comes before them.
        // Pending until the run starts (see `crate::gate::dedup`): the bridge commits it then.
        let mut claim = None;
        if let Some(key) = key {
            match self.dedup.claim_as(key, rule.dedup.window, owner, now).await {
                Ok(Some(c)) => {
                    trace.set(Gate::Dedup, Step::Passed);
                    claim = Some(c);
                }
                other => {
                    rollback_blast(ticket);
                    trace.set(Gate::Dedup, Step::Suppressed);
                    return match other {
                        Err(e) => Verdict::suppressed(SuppressReason::DedupUnavailable, e.to_string()),
                        _ => Verdict::suppressed(
                            SuppressReason::Duplicate,
                            format!("key `{key}` was claimed concurrently"),
                        ),
                    };
                }
            }
        }
        if let Err(detail) = self.rates(loaded, Some(gates), host, None) {
            if let Some(c) = &claim {
                let _ = self.dedup.release_claim(c).await;
            }
            rollback_blast(ticket);
            trace.set(Gate::RateLimit, Step::Suppressed);
            return Verdict::suppressed(SuppressReason::RateLimited, detail);
        }
        trace.set(Gate::RateLimit, Step::Passed);
        Verdict::Admitted(Admission {
            lease,
            permit: Some((permit, gates.clone())),
            undo: Box::new(Undo { claim, ticket }),
        })
    }

    /// Host lock, then blast radius (remediations only). The lock first: with it held, no two tickets for one
    /// host can be outstanding, so a rollback always undoes exactly its own admission.
    async fn lock_and_blast(
        &self,
        rule: &Rule,
        gates: &RuleGates,
        host: &str,
        owner: Option<&str>,
        trace: &mut Trace,
        now: Instant,
    ) -> Result<(Option<Lease>, Option<BlastTicket>), Verdict> {
        if rule.plugin.class != SafetyClass::Remediation {
            trace.set(Gate::HostLock, Step::Skipped);
            trace.set(Gate::BlastRadius, Step::Skipped);
            return Ok((None, None));
        }
        let lease = match self.locks.try_acquire(host, format!("rule {}", rule.name), owner, now).await {
            Ok(l) => l,
            Err((reason, detail)) => {
                trace.set(Gate::HostLock, Step::Suppressed);
                return Err(Verdict::suppressed(reason, detail));
            }
        };
        trace.set(Gate::HostLock, Step::Passed);
        let ticket = match gates.blast.as_ref() {
            Some(b) => match b.try_admit(host, now) {
                Ok(t) => {
                    trace.set(Gate::BlastRadius, Step::Passed);
                    Some(t)
                }
                Err(e) => {
                    trace.set(Gate::BlastRadius, Step::Suppressed);
                    return Err(Verdict::suppressed(SuppressReason::BlastRadius, e.to_string()));
                }
            },
            None => {
                trace.set(Gate::BlastRadius, Step::Skipped);
                None
            }
        };
        Ok((Some(lease), ticket))
    }

    /// Rule×host, host, rule, requester, global: narrowest first, because a limiter cannot give a token back —
    /// when a later limit refuses, the earlier ones have spent one (so a busy host never drains its rule's or
    /// the global budget, only its own). The first exhausted limit answers.
    fn rates(
        &self,
        loaded: &Loaded,
        gates: Option<&RuleGates>,
        host: &str,
        requester: Option<&str>,
    ) -> Result<(), String> {
        let host_key: Arc<str> = Arc::from(host);
        if let Some(l) = gates.and_then(|g| g.rate_host.as_ref()) {
            l.check(&host_key).map_err(|e| format!("rule limit per host {} on {host}: {e}", l.spec()))?;
        }
        loaded.host.check(&host_key).map_err(|e| format!("host limit {} on {host}: {e}", loaded.host.spec()))?;
        if let Some(l) = gates.and_then(|g| g.rate_rule.as_ref()) {
            l.check().map_err(|e| format!("rule limit {}: {e}", l.spec()))?;
        }
        if let Some(r) = requester {
            let l = &loaded.requester;
            l.check(&Arc::from(r)).map_err(|e| format!("chatops limit per requester {} for {r}: {e}", l.spec()))?;
        }
        loaded.global.check().map_err(|e| format!("global limit {}: {e}", loaded.global.spec()))
    }

    /// The limit (in the order of `rates`) known to refuse now, without spending anything (None: `rates`
    /// decides).
    fn exhausted(loaded: &Loaded, gates: &RuleGates, host: &str) -> Option<String> {
        if let Some(l) = gates.rate_host.as_ref()
            && let Some(e) = l.exhausted(host)
        {
            return Some(format!("rule limit per host {} on {host}: {e}", l.spec()));
        }
        if let Some(e) = loaded.host.exhausted(host) {
            return Some(format!("host limit {} on {host}: {e}", loaded.host.spec()));
        }
        if let Some(l) = gates.rate_rule.as_ref()
            && let Some(e) = l.exhausted()
        {
            return Some(format!("rule limit {}: {e}", l.spec()));
        }
        loaded.global.exhausted().map(|e| format!("global limit {}: {e}", loaded.global.spec()))
    }

    async fn clear(
        &self,
        loaded: &Loaded,
        rule: &Rule,
        event: &Arc<Event>,
        host: &str,
        d: &mut Decision,
        ctx: minijinja::Value,
    ) {
        let key = match self.dedup_key(loaded, rule, event, host, AlertStatus::Firing, &ctx) {
            Ok(k) => k,
            Err(e) => {
                d.trace.set(Gate::Dedup, Step::Suppressed);
                d.verdict = Verdict::suppressed(SuppressReason::TemplateError, format!("dedup.key: {e}"));
                return;
            }
        };
        let cancelled = self.parked.lock().unwrap_or_else(|e| e.into_inner()).remove(&key).is_some();
        let _ = self.dedup.release(&key).await;
        d.trace.set(Gate::Dedup, Step::Passed);
        d.dedup_key = Some(key);
        d.verdict = Verdict::Cleared { cancelled_pending: cancelled };
    }

    /// `once_after`: claims the key (opening the window) and parks the match, or collects a repeat into the run
    /// already parked. Bounded: past [`MAX_PENDING`] / [`MAX_PENDING_PER_RULE`] parked runs, new ones are refused.
    async fn defer(&self, rule: &Rule, key: String, host: &str, d: &mut Decision, now: Instant) -> Verdict {
        if self.collect(&key) {
            d.trace.set(Gate::Dedup, Step::Suppressed);
            return Verdict::suppressed(SuppressReason::Duplicate, "collected into the pending run");
        }
        {
            let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            let of_rule = parked.per_rule.get(&rule.name).copied().unwrap_or(0);
            if parked.by_key.len() >= MAX_PENDING || of_rule >= MAX_PENDING_PER_RULE {
                d.trace.set(Gate::Dedup, Step::Suppressed);
                let detail = format!(
                    "{} once_after runs pending ({of_rule} of rule `{}`); limits {MAX_PENDING} and {MAX_PENDING_PER_RULE} per rule",
                    parked.by_key.len(),
                    rule.name
                );
                return Verdict::suppressed(SuppressReason::PendingFull, detail);
            }
        }
        match self.dedup.claim(&key, rule.dedup.window, now).await {
            Ok(true) => {}
            Ok(false) => {
                d.trace.set(Gate::Dedup, Step::Suppressed);
                return Verdict::suppressed(SuppressReason::Duplicate, format!("key `{key}` is held (once_after)"));
            }
            Err(e) => {
                d.trace.set(Gate::Dedup, Step::Suppressed);
                return Verdict::suppressed(SuppressReason::DedupUnavailable, e.to_string());
            }
        }
        let parked = Parked {
            due: now + rule.dedup.window,
            event: Arc::new(Event { raw: Arc::from(""), ..(*d.event).clone() }),
            rule: rule.name.clone(),
            rule_spec: RuleSpec::of(rule),
            action: d.action.clone(),
            plugin: rule.plugin.clone(),
            host: host.to_owned(),
            args: d.args.clone(),
            secrets: d.secrets.clone(),
            trace: d.trace,
            collected: 0,
        };
        {
            let mut pending = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            *pending.per_rule.entry(rule.name.clone()).or_default() += 1;
            if let Some(previous) = pending.by_key.insert(key.clone(), parked) {
                // Cannot happen (collect() saw no entry and the key was free), but never lose a parked run.
                pending.by_key.insert(key.clone(), previous);
            }
        }
        // A resolved event may have cleared the key between the claim and the parking: then nothing is pending.
        if !self.dedup.is_held(&key, now).await.unwrap_or(true) {
            self.parked.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            d.trace.set(Gate::Dedup, Step::Suppressed);
            return Verdict::suppressed(SuppressReason::ResolvedBeforeWindow, "the alert resolved while it was parked");
        }
        d.trace.set(Gate::Dedup, Step::Deferred);
        Verdict::Deferred { until: Utc::now() + chrono::Duration::from_std(rule.dedup.window).unwrap_or_default() }
    }

    /// Counts a repeat into the parked run of `key`, if there is one (also one whose window just closed but
    /// that [`Engine::take_due`] has not taken yet: it is never replaced).
    fn collect(&self, key: &str) -> bool {
        match self.parked.lock().unwrap_or_else(|e| e.into_inner()).by_key.get_mut(key) {
            Some(p) => {
                p.collected += 1;
                true
            }
            None => false,
        }
    }

    /// Commits an admitted run's pending dedup claim; call it just before the run starts. Ok(false): the claim is
    /// gone (its message was redelivered and the redelivery took it over, or a resolved alert cleared it) and the
    /// run must not start. Ok(true) when the rule does not dedup.
    pub async fn commit(&self, admission: &Admission) -> Result<bool, DedupError> {
        match &admission.undo.claim {
            Some(claim) => self.dedup.commit(claim, Instant::now()).await,
            None => Ok(true),
        }
    }

    /// Gives back what an admitted run took when it will not start: its pending claim (a later claim of the key
    /// stays), its blast-radius slot, its host lease and its breaker permit.
    pub async fn abandon(&self, admission: Admission) {
        let Admission { lease, permit, undo } = admission;
        let Undo { claim, ticket } = *undo;
        if let Some(claim) = &claim
            && let Err(e) = self.dedup.release_claim(claim).await
        {
            tracing::warn!(key = %claim.key, error = %e, "pending dedup claim not rolled back; it expires with its window");
        }
        if let (Some(ticket), Some(blast)) = (ticket, permit.as_ref().and_then(|(_, gates)| gates.blast.as_ref())) {
            ticket.rollback(blast);
        }
        drop(lease);
    }

    /// When the earliest parked `once_after` run is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).by_key.values().map(|p| p.due).min()
    }

    /// Runs the remaining gates for every parked run whose window has closed by `now`.
    pub async fn take_due(&self, now: Instant) -> Vec<Decision> {
        let due: Vec<(String, Parked)> = {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<String> =
                parked.by_key.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| k.clone()).collect();
            keys.into_iter().filter_map(|k| parked.remove(&k).map(|p| (k, p))).collect()
        };
        let loaded = self.current();
        let mut out = Vec::with_capacity(due.len());
        for (key, p) in due {
            let mut d = Decision {
                event: p.event,
                rule: p.rule.clone(),
                action: p.action,
                plugin: Some(p.plugin),
                host: Some(p.host.clone()),
                args: p.args,
                dedup_key: Some(key),
                transport: None,
                secrets: p.secrets,
                trace: p.trace,
                verdict: Verdict::Cleared { cancelled_pending: false },
                decided_at: Utc::now(),
            };
            d.trace.set(Gate::Dedup, Step::Passed);
            let found = loaded.by_name.get(&p.rule).copied();
            let current = found.and_then(|i| Some((loaded.rules.rules.get(i)?, loaded.gates.get(i)?)));
            let (rule, gates) = match current {
                Some((rule, gates)) if rule.enabled && RuleSpec::of(rule) == p.rule_spec => (rule, gates),
                Some((rule, _)) if !rule.enabled => {
                    d.verdict = Verdict::suppressed(SuppressReason::RuleChanged, "a reload disabled the rule");
                    out.push(d);
                    continue;
                }
                Some(_) => {
                    let detail = "a reload changed the rule's action, target or arguments";
                    d.verdict = Verdict::suppressed(SuppressReason::RuleChanged, detail);
                    out.push(d);
                    continue;
                }
                None => {
                    d.verdict = Verdict::suppressed(SuppressReason::RuleChanged, "a reload removed the rule");
                    out.push(d);
                    continue;
                }
            };
            d.transport = rule.transport;
            if let Err(v) = self.safety_class(&loaded, rule, &mut d.trace) {
                d.verdict = v;
                out.push(d);
                continue;
            }
            d.verdict = self.admit(&loaded, rule, gates, &p.host, None, None, &mut d.trace, now).await;
            if d.trace.get(Gate::Dedup) == Step::Skipped {
                // The key was claimed when the run was parked.
                d.trace.set(Gate::Dedup, Step::Passed);
            }
            if p.collected > 0 {
                tracing::debug!(rule = %p.rule, collected = p.collected, "once_after window closed");
            }
            out.push(d);
        }
        out
    }

    /// A chatops request: no matching, but the policy's allow-list, the inventory, the argument checks, the host
    /// lock and the rate limits (per requester, per host, global) all apply.
    async fn request(&self, loaded: &Loaded, event: Arc<Event>) -> Decision {
        let mut d = Decision {
            event: event.clone(),
            rule: Arc::from(CHATOPS_RULE),
            action: String::new(),
            plugin: None,
            host: None,
            args: BTreeMap::new(),
            dedup_key: None,
            transport: None,
            secrets: BTreeMap::new(),
            trace: Trace::default(),
            verdict: Verdict::Cleared { cancelled_pending: false },
            decided_at: Utc::now(),
        };
        let Some(req) = event.request.clone() else {
            d.verdict = Verdict::suppressed(SuppressReason::InvalidRequest, "not a chatops request");
            return d;
        };
        d.action = req.action.clone();
        d.host = Some(truncate(&req.target, 256));
        d.trace.set(Gate::Breaker, Step::Skipped);
        d.trace.set(Gate::Dedup, Step::Skipped);
        d.trace.set(Gate::BlastRadius, Step::Skipped);
        let plugin = match self.registry.resolve(&req.action) {
            Ok(p) => p,
            Err(e) => {
                d.trace.set(Gate::SafetyClass, Step::Suppressed);
                d.verdict = Verdict::suppressed(SuppressReason::InvalidRequest, e.to_string());
                return d;
            }
        };
        d.action = format!("{}@{}", plugin.name, plugin.version);
        d.plugin = Some(plugin.clone());
        let allowed = match &loaded.rules.policy.chatops_allowed_actions {
            Some(list) => list.contains(&plugin.name) || list.contains(&req.action),
            None => plugin.class == SafetyClass::Diagnostic,
        };
        if !allowed {
            d.trace.set(Gate::SafetyClass, Step::Suppressed);
            let detail = format!(
                "chatops may not run `{}` ({:?}); see policy.chatops.allowed_actions",
                plugin.name, plugin.class
            );
            d.verdict = Verdict::suppressed(SuppressReason::NotAllowed, detail);
            return d;
        }
        d.trace.set(Gate::SafetyClass, Step::Passed);
        if self.inventory.get(&req.target).is_none() {
            d.trace.set(Gate::Target, Step::Suppressed);
            let detail = format!("`{}` is not an inventory host", truncate(&req.target, 256));
            d.verdict = Verdict::suppressed(SuppressReason::UnknownTarget, detail);
            return d;
        }
        d.trace.set(Gate::Target, Step::Passed);
        let raw: BTreeMap<String, RawArg> =
            req.args.iter().map(|(k, v)| (k.clone(), RawArg::Json(v.clone()))).collect();
        match check_args(&plugin.args, &raw) {
            Ok(values) => {
                d.args = req.args.keys().filter_map(|k| Some((k.clone(), values.get(k)?.as_env_string()))).collect();
                d.trace.set(Gate::Args, Step::Passed);
            }
            Err(errors) => {
                d.trace.set(Gate::Args, Step::Suppressed);
                let detail = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                d.verdict = Verdict::suppressed(SuppressReason::InvalidArgs, detail);
                return d;
            }
        }
        let lease = if plugin.class == SafetyClass::Remediation {
            match self.locks.try_acquire(&req.target, format!("chatops {}", req.requester), None, Instant::now()).await
            {
                Ok(l) => {
                    d.trace.set(Gate::HostLock, Step::Passed);
                    Some(l)
                }
                Err((reason, detail)) => {
                    d.trace.set(Gate::HostLock, Step::Suppressed);
                    d.verdict = Verdict::suppressed(reason, detail);
                    return d;
                }
            }
        } else {
            d.trace.set(Gate::HostLock, Step::Skipped);
            None
        };
        if let Err(detail) = self.rates(loaded, None, &req.target, Some(&req.requester)) {
            d.trace.set(Gate::RateLimit, Step::Suppressed);
            d.verdict = Verdict::suppressed(SuppressReason::RateLimited, detail);
            return d;
        }
        d.trace.set(Gate::RateLimit, Step::Passed);
        d.verdict = Verdict::Admitted(Admission { lease, permit: None, undo: Box::default() });
        d
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::{ChatopsRequest, Source};
    use crate::rules::compile::tests::{compile, inventory, registry};

    fn engine(yaml: &str) -> Engine {
        let set = compile(&[("t.yaml", yaml)]).unwrap_or_else(|e| panic!("{e:#?}"));
        Engine::new(set, Arc::new(registry()), Arc::new(inventory()))
    }

    fn event(status: AlertStatus, fingerprint: &str, labels: &[(&str, &str)]) -> Arc<Event> {
        Arc::new(Event {
            id: uuid::Uuid::now_v7(),
            source: Source::Alertmanager,
            subject: "hooks.alertmanager".into(),
            status,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: BTreeMap::new(),
            fingerprint: fingerprint.into(),
            starts_at: None,
            received_at: Utc::now(),
            correlation_id: "corr-1".into(),
            request: None,
            delivery: None,
            raw: Arc::from("{}"),
        })
    }

    fn firing(fp: &str, labels: &[(&str, &str)]) -> Arc<Event> {
        event(AlertStatus::Firing, fp, labels)
    }

    /// (rule, verdict kind, reason) of each decision.
    async fn decide(e: &Engine, ev: Arc<Event>) -> Vec<(String, &'static str, Option<SuppressReason>)> {
        e.decide(ev).await.iter().map(|d| (d.rule.to_string(), d.verdict.kind(), d.verdict.reason())).collect()
    }

    fn one(kind: &'static str, reason: Option<SuppressReason>) -> Vec<(String, &'static str, Option<SuppressReason>)> {
        vec![("r".to_owned(), kind, reason)]
    }

    const DIAG: &str = "
rules:
  - name: r
    match: { labels: { alertname: A } }
    target: { host_from: \"{{ labels.instance | strip_port }}\" }
    action: noop
    args: { message: \"{{ labels.alertname }} on {{ target }}\" }
    dedup: { window: 10m }
";

    #[tokio::test(start_paused = true)]
    async fn once_within_admits_the_first_and_suppresses_repeats_until_the_window_ends() {
        let e = engine(DIAG);
        let a = || firing("fp1", &[("alertname", "A"), ("instance", "web-1:9100")]);
        let ds = e.decide(a()).await;
        assert_eq!(ds.len(), 1);
        assert!(ds[0].is_admitted(), "{:?}", ds[0].verdict);
        assert_eq!(ds[0].host.as_deref(), Some("web-1"));
        assert_eq!(ds[0].args.get("message").map(String::as_str), Some("A on web-1"));
        assert_eq!(ds[0].dedup_key.as_deref(), Some("r/fp1/firing/web-1"));
        let request = ds[0].run_request().unwrap_or_default();
        assert_eq!(request.hosts, ["web-1"]);
        assert_eq!(request.operator, "rule:r");
        assert_eq!(request.trigger["rule"], "r");
        assert_eq!(decide(&e, a()).await, one("suppressed", Some(SuppressReason::Duplicate)));
        // Another alert (fingerprint) is another key.
        let other = firing("fp2", &[("alertname", "A"), ("instance", "web-1:9100")]);
        assert_eq!(decide(&e, other).await, one("admitted", None));
        tokio::time::advance(Duration::from_secs(599)).await;
        assert_eq!(decide(&e, a()).await, one("suppressed", Some(SuppressReason::Duplicate)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(decide(&e, a()).await, one("admitted", None));
    }

    #[tokio::test(start_paused = true)]
    async fn resolved_clears_the_key_so_the_next_firing_acts_at_once() {
        let e = engine(DIAG);
        let labels = [("alertname", "A"), ("instance", "web-1:9100")];
        assert_eq!(decide(&e, firing("fp", &labels)).await, one("admitted", None));
        assert_eq!(decide(&e, firing("fp", &labels)).await, one("suppressed", Some(SuppressReason::Duplicate)));
        let ds = e.decide(event(AlertStatus::Resolved, "fp", &labels)).await;
        assert!(matches!(ds[0].verdict, Verdict::Cleared { cancelled_pending: false }), "{:?}", ds[0].verdict);
        assert_eq!(ds[0].dedup_key.as_deref(), Some("r/fp/firing/web-1"));
        assert_eq!(decide(&e, firing("fp", &labels)).await, one("admitted", None));
    }

    #[tokio::test(start_paused = true)]
    async fn once_after_collects_repeats_and_acts_once_when_the_window_closes() {
        let e = engine(&DIAG.replace("dedup: { window: 10m }", "dedup: { window: 5m, mode: once_after }"));
        let labels = [("alertname", "A"), ("instance", "web-2:9100")];
        let ds = e.decide(firing("fp", &labels)).await;
        assert!(matches!(ds[0].verdict, Verdict::Deferred { .. }), "{:?}", ds[0].verdict);
        assert_eq!(ds[0].trace.get(Gate::Dedup), Step::Deferred);
        for _ in 0..3 {
            assert_eq!(decide(&e, firing("fp", &labels)).await, one("suppressed", Some(SuppressReason::Duplicate)));
        }
        let due = e.next_due().unwrap_or_else(Instant::now);
        assert!(e.take_due(due - Duration::from_millis(1)).await.is_empty());
        tokio::time::advance(Duration::from_secs(300)).await;
        let ds = e.take_due(Instant::now()).await;
        assert_eq!(ds.len(), 1);
        assert!(ds[0].is_admitted(), "{:?}", ds[0].verdict);
        assert_eq!(ds[0].host.as_deref(), Some("web-2"));
        assert!(e.next_due().is_none());
        // The window is over: the next firing opens a new one.
        let ds = e.decide(firing("fp", &labels)).await;
        assert!(matches!(ds[0].verdict, Verdict::Deferred { .. }));
        // ... and resolving cancels it.
        let ds = e.decide(event(AlertStatus::Resolved, "fp", &labels)).await;
        assert!(matches!(ds[0].verdict, Verdict::Cleared { cancelled_pending: true }), "{:?}", ds[0].verdict);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(e.take_due(Instant::now()).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn with_dedup_off_a_resolved_event_is_no_business_of_a_firing_rule() {
        let e = engine(&DIAG.replace("dedup: { window: 10m }", "dedup: { mode: off }"));
        let labels = [("alertname", "A"), ("instance", "web-1:9100")];
        assert!(e.decide(event(AlertStatus::Resolved, "fp", &labels)).await.is_empty());
        assert_eq!(decide(&e, firing("fp", &labels)).await, one("admitted", None));
        assert_eq!(decide(&e, firing("fp", &labels)).await, one("admitted", None));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_per_rule_and_per_host_refill_over_time() {
        let e = engine(&DIAG.replace(
            "dedup: { window: 10m }",
            "dedup: { mode: off }\n    rate_limit: { rule: { count: 3, per: 1m }, host: { count: 2, per: 1m } }",
        ));
        let on = |h: &str| firing("fp", &[("alertname", "A"), ("instance", h)]);
        assert_eq!(decide(&e, on("web-1")).await, one("admitted", None));
        assert_eq!(decide(&e, on("web-1")).await, one("admitted", None));
        let ds = e.decide(on("web-1")).await;
        assert_eq!(ds[0].verdict.reason(), Some(SuppressReason::RateLimited));
        assert!(format!("{:?}", ds[0].verdict).contains("per host"), "{:?}", ds[0].verdict);
        assert_eq!(decide(&e, on("web-2")).await, one("admitted", None));
        let ds = e.decide(on("web-2")).await;
        assert!(format!("{:?}", ds[0].verdict).contains("rule limit 3 per 1m"), "{:?}", ds[0].verdict);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(decide(&e, on("db-1")).await, one("admitted", None));
    }

    const REMEDIATE: &str = "
policy:
  remediation: { allowed_rules: [r, s] }
rules:
  - name: r
    match: { labels: { alertname: A } }
    target: { group: web }
    action: restart-docker
    dedup: { mode: off }
    safety:
      blast_radius: { max_hosts: 1, window: 10m }
      breaker: { failures: 2, of_last: 3, cool_down: 10m }
  - name: s
    match: { labels: { alertname: B } }
    target: { host_from: \"{{ labels.host }}\" }
    action: restart-nomad
    dedup: { mode: off }
  - name: t
    match: { labels: { alertname: C } }
    target: { host: db-1 }
    action: restart-nomad
";

    #[tokio::test(start_paused = true)]
    async fn blast_radius_host_lock_and_safety_class() {
        let e = engine(REMEDIATE);
        // A group of two hosts with a blast radius of one: the second is refused.
        let ds = e.decide(firing("fp", &[("alertname", "A")])).await;
        let got: Vec<_> = ds.iter().map(|d| (d.host.clone().unwrap_or_default(), d.verdict.reason())).collect();
        assert_eq!(got, [("web-1".to_owned(), None), ("web-2".to_owned(), Some(SuppressReason::BlastRadius))]);
        // web-1 is locked by r's admitted run: s cannot remediate it, but can remediate web-2.
        let busy = e.decide(firing("fp", &[("alertname", "B"), ("host", "web-1")])).await;
        assert_eq!(busy[0].verdict.reason(), Some(SuppressReason::HostBusy));
        let ok = e.decide(firing("fp", &[("alertname", "B"), ("host", "web-2")])).await;
        assert!(ok[0].is_admitted());
        drop(ds);
        let ds = e.decide(firing("fp", &[("alertname", "B"), ("host", "web-1")])).await;
        assert!(ds[0].is_admitted(), "the lease is released with the admission");
        // A host that was refused for a busy lock did not take r's blast-radius slot... r's slot is web-1's.
        drop(ds);
        let again = e.decide(firing("fp", &[("alertname", "A")])).await;
        assert!(again[0].is_admitted(), "{:?}", again[0].verdict);
        // t runs a remediation plugin but is not in the allow-list.
        let t = e.decide(firing("fp", &[("alertname", "C")])).await;
        assert_eq!(t[0].verdict.reason(), Some(SuppressReason::SafetyClass));
        assert_eq!(t[0].trace.get(Gate::Breaker), Step::NotReached);
    }

    #[tokio::test(start_paused = true)]
    async fn circuit_breaker_opens_after_failures_and_probes_after_the_cool_down() {
        let e = engine(REMEDIATE);
        let run = |ok: bool| {
            let e = &e;
            async move {
                let mut ds = e.decide(firing("fp", &[("alertname", "A")])).await;
                let d = ds.remove(0);
                match d.verdict {
                    Verdict::Admitted(a) => {
                        a.finish(ok);
                        None
                    }
                    Verdict::Suppressed { reason, .. } => Some(reason),
                    other => panic!("{other:?}"),
                }
            }
        };
        assert_eq!(run(false).await, None);
        assert_eq!(run(false).await, None);
        assert_eq!(run(true).await, Some(SuppressReason::CircuitOpen));
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(run(true).await, None, "the probe after the cool-down");
        assert_eq!(run(true).await, None, "closed again");
    }

    #[tokio::test(start_paused = true)]
    async fn template_target_and_argument_failures_are_suppressions() {
        let e = engine(
            "
rules:
  - name: r
    match: { labels: { alertname: A } }
    target: { host_from: \"{{ labels.instance | strip_port }}\" }
    action: gather-logs
    args: { since: \"{{ labels.since }}\" }
",
        );
        let cases = [
            (vec![("alertname", "A")], SuppressReason::TemplateError, Gate::Target),
            (vec![("alertname", "A"), ("instance", "evil.example:22")], SuppressReason::UnknownTarget, Gate::Target),
            (vec![("alertname", "A"), ("instance", "web-1:9100")], SuppressReason::TemplateError, Gate::Args),
            (
                vec![("alertname", "A"), ("instance", "web-1:9100"), ("since", "1h; rm -rf /")],
                SuppressReason::InvalidArgs,
                Gate::Args,
            ),
        ];
        for (labels, reason, gate) in cases {
            let ds = e.decide(firing("fp", &labels)).await;
            assert_eq!(ds[0].verdict.reason(), Some(reason), "{labels:?}");
            assert_eq!(ds[0].trace.get(gate), Step::Suppressed, "{labels:?}");
        }
        let ok = e.decide(firing("fp", &[("alertname", "A"), ("instance", "web-1:9100"), ("since", "2h")])).await;
        assert!(ok[0].is_admitted(), "{:?}", ok[0].verdict);
    }

    #[tokio::test(start_paused = true)]
    async fn several_rules_match_in_file_order_until_a_stop_rule() {
        let e = engine(
            "
rules:
  - name: first
    match: { labels: { severity: critical } }
    target: { host: web-1 }
    action: noop
  - name: second
    match: { labels: { alertname: { regex: \"Disk.*\" } } }
    target: { host: web-1 }
    action: noop
    stop: true
  - name: third
    match: { labels: { alertname: DiskFull } }
    target: { host: web-1 }
    action: noop
  - name: fourth
    match: { status: resolved, labels: { alertname: Other } }
    target: { host: web-1 }
    action: noop
",
        );
        let names = |ds: Vec<Decision>| ds.iter().map(|d| d.rule.to_string()).collect::<Vec<_>>();
        let ds = e.decide(firing("a", &[("alertname", "DiskFull"), ("severity", "critical")])).await;
        assert_eq!(names(ds), ["first", "second"]);
        let ds = e.decide(firing("b", &[("alertname", "Other"), ("severity", "critical")])).await;
        assert_eq!(names(ds), ["first"]);
        let ds = e.decide(event(AlertStatus::Resolved, "c", &[("alertname", "Other")])).await;
        assert_eq!(names(ds), ["fourth"]);
        // A resolved event clears the keys of the firing rules it matches (first, second), nothing else.
        let ds =
            e.decide(event(AlertStatus::Resolved, "a", &[("alertname", "DiskFull"), ("severity", "critical")])).await;
        let kinds: Vec<_> = ds.iter().map(|d| (d.rule.to_string(), d.verdict.kind())).collect();
        assert_eq!(kinds, [("first".into(), "cleared"), ("second".into(), "cleared"), ("third".into(), "cleared")]);
        assert!(e.decide(firing("d", &[("alertname", "Nothing")])).await.is_empty());
    }

    fn chatops(action: &str, target: &str, requester: &str, args: &[(&str, Value)]) -> Arc<Event> {
        let mut ev = (*firing("x", &[])).clone();
        ev.source = Source::Chatops;
        ev.request = Some(ChatopsRequest {
            action: action.into(),
            target: target.into(),
            args: args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            requester: requester.into(),
        });
        Arc::new(ev)
    }

    #[tokio::test(start_paused = true)]
    async fn chatops_requests_skip_matching_but_not_the_gates() {
        let e = engine(DIAG);
        let reason = |ds: Vec<Decision>| ds[0].verdict.reason();
        let ds = e.decide(chatops("noop", "web-1", "alice", &[("message", json!("hi"))])).await;
        assert_eq!(&*ds[0].rule, CHATOPS_RULE);
        assert!(ds[0].is_admitted(), "{:?}", ds[0].verdict);
        assert_eq!(ds[0].operator(), "chatops:alice");
        assert_eq!(ds[0].args.get("message").map(String::as_str), Some("hi"));
        let refused = [
            (chatops("restart-docker", "web-1", "alice", &[]), SuppressReason::NotAllowed),
            (chatops("no-such", "web-1", "alice", &[]), SuppressReason::InvalidRequest),
            (chatops("noop", "nowhere", "alice", &[]), SuppressReason::UnknownTarget),
            (chatops("noop", "web-1", "alice", &[("message", json!(3))]), SuppressReason::InvalidArgs),
        ];
        for (ev, want) in refused {
            assert_eq!(reason(e.decide(ev).await), Some(want));
        }
        // Default chatops rate: 10 per minute, burst 5, per requester.
        for _ in 0..4 {
            assert!(e.decide(chatops("noop", "web-2", "bob", &[])).await[0].is_admitted());
        }
        assert!(e.decide(chatops("noop", "web-2", "alice", &[])).await[0].is_admitted());
        assert_eq!(reason(e.decide(chatops("noop", "web-2", "bob", &[])).await), Some(SuppressReason::RateLimited));
    }

    #[tokio::test(start_paused = true)]
    async fn reload_keeps_gate_state_of_unchanged_rules() {
        let yaml = DIAG
            .replace("dedup: { window: 10m }", "dedup: { mode: off }\n    rate_limit: { rule: { count: 1, per: 1h } }");
        let e = engine(&yaml);
        let a = || firing("fp", &[("alertname", "A"), ("instance", "web-1:9100")]);
        assert_eq!(decide(&e, a()).await, one("admitted", None));
        assert_eq!(decide(&e, a()).await, one("suppressed", Some(SuppressReason::RateLimited)));
        let same = compile(&[("t.yaml", &yaml)]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(e.reload(same), ReloadSummary { rules: 1, kept_state: 1 });
        assert_eq!(decide(&e, a()).await, one("suppressed", Some(SuppressReason::RateLimited)));
        let changed = compile(&[("t.yaml", &yaml.replace("count: 1, per: 1h", "count: 5, per: 1h"))])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(e.reload(changed), ReloadSummary { rules: 1, kept_state: 0 });
        assert_eq!(decide(&e, a()).await, one("admitted", None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_rule_folder_leaves_the_old_rules_in_force() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let good = dir.path().join("a.yaml");
        std::fs::write(&good, DIAG).unwrap_or_else(|e| panic!("{e}"));
        let e = engine("rules: []\n");
        assert_eq!(e.reload_from(dir.path()).map(|s| s.rules), Ok(1));
        std::fs::write(dir.path().join("b.yaml"), "rules: [{ name: x, action: nope }]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let errors = e.reload_from(dir.path()).err().unwrap_or_default();
        assert!(errors.iter().any(|d| d.file.ends_with("b.yaml")), "{errors:?}");
        assert_eq!(e.rules().rules.len(), 1);
        let a = firing("fp", &[("alertname", "A"), ("instance", "web-1:9100")]);
        assert_eq!(decide(&e, a).await, one("admitted", None));
    }

    const UNLIMITED: &str = "
policy:
  rate_limit:
    global: { count: 1000000, per: 1s }
    host: { count: 1000000, per: 1s }
rules:
  - name: r
    match: { labels: { alertname: A } }
    target: { host_from: \"{{ labels.instance }}\" }
    action: noop
    dedup: { window: 10m }
";

    proptest::proptest! {
        // Each case builds a fresh engine (rules compiled, plugins loaded): 64 cases keep this to seconds.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Under any interleaving of alerts (3 alerts × 2 hosts) and clock advances, the dedup gate admits exactly
        /// the first event of each key in each window: checked against a model of the rule.
        #[test]
        fn dedup_admits_exactly_one_per_key_per_window(
            steps in proptest::collection::vec((0usize..3, 0usize..2, 0u64..400), 1..60)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
            let rt = rt.unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async {
                let e = engine(UNLIMITED);
                let window = Duration::from_secs(600);
                let mut last: HashMap<(usize, usize), Instant> = HashMap::new();
                for (fp, host, advance) in steps {
                    tokio::time::advance(Duration::from_secs(advance)).await;
                    let now = Instant::now();
                    let hosts = ["web-1", "web-2"];
                    let ev = firing(&format!("fp{fp}"), &[("alertname", "A"), ("instance", hosts[host])]);
                    let ds = e.decide(ev).await;
                    let admitted = ds.iter().filter(|d| d.is_admitted()).count();
                    let expect = last.get(&(fp, host)).is_none_or(|t| now.duration_since(*t) >= window);
                    if expect {
                        last.insert((fp, host), now);
                    }
                    assert_eq!(admitted, usize::from(expect), "fp{fp} on {} at +{:?}", hosts[host], now);
                    if !expect {
                        assert_eq!(ds[0].verdict.reason(), Some(SuppressReason::Duplicate));
                    }
                }
            });
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_copies_of_one_alert_admit_exactly_one_run() {
        let e = Arc::new(engine(UNLIMITED));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let e = e.clone();
                tokio::spawn(async move {
                    let ev = firing("same", &[("alertname", "A"), ("instance", "web-1")]);
                    e.decide(ev).await.iter().filter(|d| d.is_admitted()).count()
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap_or(0);
        }
        assert_eq!(admitted, 1);
    }

    const AFTER: &str = "
policy:
  remediation: { allowed_rules: [r] }
rules:
  - name: r
    match: { labels: { alertname: A } }
    target: { host: web-1 }
    action: restart-docker
    dedup: { mode: once_after, window: 5m }
";

    fn set(yaml: &str) -> RuleSet {
        compile(&[("t.yaml", yaml)]).unwrap_or_else(|e| panic!("{e:#?}"))
    }

    /// Regression (review): a parked run used to execute after a reload disabled its rule, removed it from the
    /// allow-list or changed its action.
    #[tokio::test(start_paused = true)]
    async fn a_reload_that_disables_or_changes_the_rule_cancels_its_parked_run() {
        let cases = [
            (
                AFTER.replace("    action: restart-docker", "    enabled: false\n    action: restart-docker"),
                SuppressReason::RuleChanged,
            ),
            (AFTER.replace("allowed_rules: [r]", "allowed_rules: []"), SuppressReason::SafetyClass),
            (AFTER.replace("restart-docker", "restart-nomad"), SuppressReason::RuleChanged),
            (AFTER.replace("name: r", "name: q").replace("[r]", "[q]"), SuppressReason::RuleChanged),
        ];
        for (new, reason) in cases {
            let e = engine(AFTER);
            assert_eq!(e.decide(firing("fp", &[("alertname", "A")])).await[0].verdict.kind(), "deferred");
            e.reload(set(&new));
            tokio::time::advance(Duration::from_secs(300)).await;
            let due = e.take_due(Instant::now()).await;
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].verdict.reason(), Some(reason), "{new}");
        }
        // An unchanged reload keeps it.
        let e = engine(AFTER);
        let _ = e.decide(firing("fp", &[("alertname", "A")])).await;
        e.reload(set(AFTER));
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!(e.take_due(Instant::now()).await[0].is_admitted());
    }

    /// Regression (review): a repeat arriving after the window closed but before `take_due` used to replace the
    /// parked run and postpone it by a whole window.
    #[tokio::test(start_paused = true)]
    async fn a_repeat_at_the_due_instant_is_collected_not_reparked() {
        let e = engine(&AFTER.replace("restart-docker", "noop"));
        let a = || firing("fp", &[("alertname", "A")]);
        assert_eq!(e.decide(a()).await[0].verdict.kind(), "deferred");
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(e.decide(a()).await[0].verdict.reason(), Some(SuppressReason::Duplicate));
        let ran = e.take_due(Instant::now()).await;
        assert_eq!(ran.len(), 1);
        assert!(ran[0].is_admitted());
        assert_eq!(ran[0].trace.get(Gate::Dedup), Step::Passed);
    }

    /// Regression (review): a flood of distinct alerts on one once_after rule used to fill the dedup store
    /// shared by every rule.
    #[tokio::test(start_paused = true)]
    async fn once_after_parking_is_bounded_per_rule() {
        let yaml = format!(
            "{}{}",
            AFTER.replace("restart-docker", "noop"),
            "
  - name: other
    match: { labels: { alertname: B } }
    target: { host: web-2 }
    action: noop
"
        );
        let e = engine(&yaml);
        for i in 0..MAX_PENDING_PER_RULE {
            let d = e.decide(firing(&format!("fp{i}"), &[("alertname", "A")])).await;
            assert_eq!(d[0].verdict.kind(), "deferred");
        }
        let d = e.decide(firing("one-more", &[("alertname", "A")])).await;
        assert_eq!(d[0].verdict.reason(), Some(SuppressReason::PendingFull));
        assert!(e.decide(firing("b", &[("alertname", "B")])).await[0].is_admitted());
    }

    /// Regression (review): a decision refused by the dedup claim used to have spent its rate-limit tokens.
    #[tokio::test(start_paused = true)]
    async fn a_refused_dedup_claim_spends_no_rate_tokens() {
        let yaml = "
rules:
  - name: r
    match: { labels: { alertname: A } }
    target: { host_from: \"{{ labels.instance }}\" }
    action: noop
    rate_limit: { rule: { count: 2, per: 1h } }
";
        let store = MemoryDedup::new(std::num::NonZeroUsize::MIN);
        let e = Engine::with_store(set(yaml), Arc::new(registry()), Arc::new(inventory()), store);
        let on = |fp: &str, status| event(status, fp, &[("alertname", "A"), ("instance", "web-1")]);
        assert!(e.decide(on("a", AlertStatus::Firing)).await[0].is_admitted());
        let b = e.decide(on("b", AlertStatus::Firing)).await;
        assert_eq!(b[0].verdict.reason(), Some(SuppressReason::DedupUnavailable));
        let _ = e.decide(on("a", AlertStatus::Resolved)).await;
        assert!(e.decide(on("c", AlertStatus::Firing)).await[0].is_admitted(), "budget of 2, one run so far");
    }

    /// A literal `ssm:/path` argument is a secret reference carried to the run request unresolved; the same text
    /// rendered from alert data is only text (an alert cannot make RUNE read a parameter).
    #[tokio::test(start_paused = true)]
    async fn only_literal_ssm_arguments_are_secret_references() {
        let e = engine(
            "
rules:
  - name: lit
    match: { labels: { alertname: A } }
    target: { host: web-1 }
    action: noop
    args: { message: \"ssm:/prod/token\" }
  - name: tpl
    match: { labels: { alertname: B } }
    target: { host: web-1 }
    action: noop
    args: { message: \"{{ labels.m }}\" }
",
        );
        let d = e.decide(firing("a", &[("alertname", "A")])).await;
        assert!(d[0].is_admitted(), "{:?}", d[0].verdict);
        assert_eq!(d[0].args["message"], "ssm:/prod/token", "decisions show the reference");
        let request = d[0].run_request().unwrap_or_else(|| panic!("admitted"));
        assert!(!request.args.contains_key("message"), "not passed as text");
        assert_eq!(request.secrets["message"].to_string(), "ssm:/prod/token");
        let d = e.decide(firing("b", &[("alertname", "B"), ("m", "ssm:/prod/token")])).await;
        let request = d[0].run_request().unwrap_or_else(|| panic!("admitted"));
        assert!(request.secrets.is_empty(), "rendered from the alert: plain text");
        assert!(matches!(&request.args["message"], RawArg::Text(t) if t == "ssm:/prod/token"));
    }

    /// A rule's transport goes into its run request; a rendered target without what it needs is `unknown_target`.
    #[tokio::test(start_paused = true)]
    async fn the_rule_transport_reaches_the_run_request_and_is_checked_per_target() {
        let e = engine(
            "
rules:
  - name: r
    match: { labels: { alertname: A } }
    target: { host_from: \"{{ labels.instance }}\" }
    action: noop
    transport: ssm
",
        );
        let on = |host: &str| event(AlertStatus::Firing, host, &[("alertname", "A"), ("instance", host)]);
        let d = e.decide(on("web-2")).await;
        assert!(d[0].is_admitted(), "{:?}", d[0].verdict);
        let request = d[0].run_request().unwrap_or_else(|| panic!("admitted"));
        assert_eq!(request.transport, Some(TransportKind::Ssm));
        let d = e.decide(on("web-1")).await;
        assert_eq!(d[0].verdict.reason(), Some(SuppressReason::UnknownTarget));
        assert!(format!("{:?}", d[0].verdict).contains("no `ssm` section"), "{:?}", d[0].verdict);
    }

    /// Once a limit (rule-wide, or per host) has refused, the alerts until its next permit are suppressed `rate_limited` without a
    /// claim (the store, full here, would refuse one), while a repeat of the alert that ran is still a duplicate.
    #[tokio::test(start_paused = true)]
    async fn an_exhausted_rate_limit_suppresses_without_claiming() {
        for limit in ["rule", "host"] {
            an_exhausted_limit_suppresses_without_claiming(limit).await;
        }
    }

    async fn an_exhausted_limit_suppresses_without_claiming(limit: &str) {
        let yaml = format!(
            "
rules:
  - name: r
    match: {{ labels: {{ alertname: A }} }}
    target: {{ host_from: \"{{{{ labels.instance }}}}\" }}
    action: noop
    dedup: {{ window: 10m }}
    rate_limit: {{ {limit}: {{ count: 1, per: 1h }} }}
"
        );
        let store = MemoryDedup::new(std::num::NonZeroUsize::MIN.saturating_add(1));
        let e = Engine::with_store(set(&yaml), Arc::new(registry()), Arc::new(inventory()), store);
        let on = |fp: &str| event(AlertStatus::Firing, fp, &[("alertname", "A"), ("instance", "web-1")]);
        assert!(e.decide(on("a")).await[0].is_admitted());
        // The refusal that teaches the limit when its next permit comes: claimed, refused, released.
        assert_eq!(e.decide(on("b")).await[0].verdict.reason(), Some(SuppressReason::RateLimited));
        // Fill the store's last place: a claim would now fail (dedup_unavailable), so these never claimed.
        assert!(e.dedup.claim("other", Duration::from_secs(7200), Instant::now()).await.unwrap());
        for fp in ["c", "d", "e"] {
            let d = e.decide(on(fp)).await;
            assert_eq!(d[0].verdict.reason(), Some(SuppressReason::RateLimited), "{limit}: {fp}");
            assert_eq!(d[0].trace.get(Gate::RateLimit), Step::Suppressed);
            assert_eq!(d[0].trace.get(Gate::Dedup), Step::Passed);
        }
        assert_eq!(e.decide(on("a")).await[0].verdict.reason(), Some(SuppressReason::Duplicate), "{limit}: a read");
        // Once the next permit is due, the claim and the limiter decide again (`a`'s window is over: room for one).
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(e.decide(on("f")).await[0].is_admitted(), "{limit}");
    }

    /// Regression (review): a `status: any` rule acting on a resolved alert, and a resolved `stop` rule placed
    /// first, used to leave the firing key held.
    #[tokio::test(start_paused = true)]
    async fn resolved_alerts_clear_keys_also_for_any_status_rules_and_past_stop_rules() {
        let e = engine(
            "
rules:
  - name: done
    match: { status: resolved, labels: { alertname: B } }
    target: { host: web-2 }
    action: noop
    stop: true
  - name: any
    match: { status: any, labels: { alertname: A } }
    target: { host: web-1 }
    action: noop
  - name: fix
    match: { labels: { alertname: B } }
    target: { host: web-2 }
    action: noop
",
        );
        let names = |ds: &[Decision]| ds.iter().map(|d| (d.rule.to_string(), d.verdict.kind())).collect::<Vec<_>>();
        assert!(e.decide(firing("a", &[("alertname", "A")])).await[0].is_admitted());
        assert!(e.decide(event(AlertStatus::Resolved, "a", &[("alertname", "A")])).await[0].is_admitted());
        assert!(e.decide(firing("a", &[("alertname", "A")])).await[0].is_admitted(), "firing key cleared");
        assert!(e.decide(firing("b", &[("alertname", "B")])).await[0].is_admitted());
        let ds = e.decide(event(AlertStatus::Resolved, "b", &[("alertname", "B")])).await;
        assert_eq!(names(&ds), [("done".to_owned(), "admitted"), ("fix".to_owned(), "cleared")]);
        assert!(e.decide(firing("b", &[("alertname", "B")])).await[0].is_admitted());
    }

    #[tokio::test]
    async fn ten_thousand_rules_load_index_and_match() {
        use std::fmt::Write as _;
        let mut yaml = String::from("rules:\n");
        for i in 0..10_000 {
            let _ = write!(
                yaml,
                "  - name: r{i}\n    match: {{ labels: {{ alertname: A{i}, instance: {{ regex: \"web-[0-9]+(:[0-9]+)?\" }} }} }}\n    target: {{ host_from: \"{{{{ labels.instance | strip_port }}}}\" }}\n    action: noop\n"
            );
        }
        let set = compile(&[("big.yaml", &yaml)]).unwrap_or_else(|e| panic!("{:?}", &e[..3.min(e.len())]));
        assert_eq!(set.rules.len(), 10_000);
        assert_eq!(set.unindexed(), 0);
        let e = Engine::new(set, Arc::new(registry()), Arc::new(inventory()));
        let ds = e.decide(firing("fp", &[("alertname", "A7777"), ("instance", "web-2:9100")])).await;
        assert_eq!(ds.len(), 1);
        assert_eq!(&*ds[0].rule, "r7777");
        assert!(ds[0].is_admitted());
        assert!(e.decide(firing("fp", &[("alertname", "A7777"), ("instance", "db-1")])).await.is_empty());
        assert!(e.decide(firing("fp", &[("alertname", "B1")])).await.is_empty());
    }
}
