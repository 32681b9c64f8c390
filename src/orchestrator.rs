//! The orchestrator: validates a run request (action, arguments, targets) before anything runs, then fans the
//! plugin out across hosts with bounded parallelism and streams each host's result as it finishes.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::audit::Auditor;
use crate::bpcs::{self, RawArg};
use crate::inventory::Host;
use crate::inventory::{Inventory, TransportKind};
use crate::mediator::{self, Masked, RunSpec};
use crate::plugins::{MAX_TIMEOUT_SECS, Registry};
use crate::results::ResultEnvelope;
use crate::secrets::{ParameterStore, SecretRef};
use crate::transport::local::LocalTransport;
use crate::transport::ssh::SshTransport;
use crate::transport::ssm::{self, SsmTransport};
use crate::transport::{Invocation, RawOutcome, Transport, TransportError};

static CORRELATION_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$").unwrap_or_else(|_| unreachable!()));

/// Most hosts run at once by default.
pub const DEFAULT_PARALLEL: usize = 32;
/// Upper bound for `parallel`.
pub const MAX_PARALLEL: usize = 10_000;

/// A request to run one action on some hosts: from the CLI today, from rules and chatops later.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub action: String,
    pub args: BTreeMap<String, RawArg>,
    pub hosts: Vec<String>,
    pub groups: Vec<String>,
    pub dry_run: bool,
    /// Overrides the plugin's declared timeout.
    pub timeout: Option<Duration>,
    pub operator: String,
    /// Accepted from the caller when present, generated otherwise.
    pub correlation_id: Option<String>,
    /// What started the run (`{"source":"cli",...}`); passed to the plugin.
    pub trigger: Value,
    /// Reach every host through this transport instead of its own (`--use-ssm`); a host that lacks what it
    /// needs (an `ssm` section) refuses the request.
    pub transport: Option<TransportKind>,
    /// Arguments given as Parameter Store references (from trusted sources only: the operator, rule literals).
    /// [`Orchestrator::prepare`] resolves them into `args`; the names stay here, so the plan knows which values
    /// are secret.
    pub secrets: BTreeMap<String, SecretRef>,
}

/// Why a request was refused before anything ran. Every problem is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

/// A validated request: one spec per host, nothing run yet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub correlation_id: String,
    pub specs: Vec<RunSpec>,
}

/// Holds the registry, the inventory and the transports (with their connection pools).
#[derive(Clone)]
pub struct Orchestrator {
    registry: Arc<Registry>,
    inventory: Arc<Inventory>,
    local: Arc<LocalTransport>,
    ssh: SshTransport,
    ssm: SsmTransport,
    secrets: ParameterStore,
    /// Writes the dispatch record before each run (and refuses runs the trail cannot record) and the result
    /// record after it. None: runs are not audited.
    audit: Option<Auditor>,
    /// Hosts whose stale run dirs the first run from this orchestrator sweeps; later runs skip the scan,
    /// whose cost grows with the number of run dirs on the host.
    swept: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Orchestrator {
    pub fn new(registry: Arc<Registry>, inventory: Arc<Inventory>, ssh: SshTransport) -> Orchestrator {
        Orchestrator {
            registry,
            inventory,
            local: Arc::new(LocalTransport::default()),
            ssh,
            ssm: SsmTransport::default(),
            secrets: ParameterStore::default(),
            audit: None,
            swept: Arc::default(),
        }
    }

    /// This orchestrator recording every run in the audit trail.
    pub fn with_audit(self, audit: Auditor) -> Orchestrator {
        Orchestrator { audit: Some(audit), ..self }
    }

    pub fn audit(&self) -> Option<&Auditor> {
        self.audit.as_ref()
    }

    /// This orchestrator running local hosts through `local` (`rune plugin test` gives its runs a `PATH` of stubs).
    pub fn with_local(self, local: LocalTransport) -> Orchestrator {
        Orchestrator { local: Arc::new(local), ..self }
    }

    /// This orchestrator with `ssm` as its SSM transport (settings, or a fixed client in tests).
    pub fn with_ssm(self, ssm: SsmTransport) -> Orchestrator {
        Orchestrator { ssm, ..self }
    }

    /// This orchestrator resolving secret references through `secrets`.
    pub fn with_secrets(self, secrets: ParameterStore) -> Orchestrator {
        Orchestrator { secrets, ..self }
    }

    /// Resolves the request's secret references (Parameter Store) into its arguments, then plans it. A
    /// reference that cannot be resolved, or whose value breaks the argument's declaration, refuses the request:
    /// nothing runs. Messages name references, never values.
    pub async fn prepare(&self, request: &mut RunRequest) -> Result<Plan, Refused> {
        if !request.secrets.is_empty() {
            // Secrets never go through SSM: SendCommand parameters stay in SSM's command history, readable with
            // ssm:ListCommands. Checked before any parameter is read (the only place: secrets are resolved here).
            let ssm = self.inventory.select(&request.hosts, &request.groups).ok().is_some_and(|hosts| {
                hosts.iter().any(|h| request.transport.unwrap_or(h.transport) == TransportKind::Ssm)
            });
            if ssm {
                return Err(Refused(vec![format!(
                    "secret arguments ({}) are not sent through SSM (command parameters are kept in its history)",
                    request.secrets.keys().cloned().collect::<Vec<_>>().join(", ")
                )]));
            }
            let mut problems = Vec::new();
            let plugin = self.registry.resolve(&request.action).ok();
            for (name, reference) in &request.secrets {
                let spec = plugin.as_ref().and_then(|p| p.args.get(name));
                match spec {
                    Some(s) if s.arg_type == bpcs::ArgType::String => {}
                    Some(_) => {
                        problems.push(format!(
                            "argument `{name}`: a secret reference (ssm:) can only fill a string argument"
                        ));
                        continue;
                    }
                    // An unknown action or argument: the plan says so.
                    None => continue,
                }
                if request.args.contains_key(name) {
                    problems.push(format!("argument `{name}` is given twice (a value and {reference})"));
                    continue;
                }
                match self.secrets.get(reference).await {
                    Ok(value) => {
                        let raw = RawArg::Text(value.expose().to_owned());
                        if spec.is_some_and(|s| s.check(name, &raw).is_err()) {
                            problems.push(format!(
                                "argument `{name}`: the value of {reference} does not satisfy the argument's declaration"
                            ));
                            continue;
                        }
                        request.args.insert(name.clone(), raw);
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if !problems.is_empty() {
                return Err(Refused(problems));
            }
        }
        self.plan(request)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn ssh(&self) -> &SshTransport {
        &self.ssh
    }

    /// Validates the request completely; refuses with every problem found. Nothing is run.
    pub fn plan(&self, request: &RunRequest) -> Result<Plan, Refused> {
        let mut problems = Vec::new();
        let plugin = match self.registry.resolve(&request.action) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let args = plugin.as_ref().and_then(|p| match bpcs::check_args(&p.args, &request.args) {
            Ok(a) => Some(a),
            Err(errors) => {
                problems.extend(errors.iter().map(ToString::to_string));
                None
            }
        });
        let mut hosts = match self.inventory.select(&request.hosts, &request.groups) {
            Ok(h) => h,
            Err(errors) => {
                problems.extend(errors.iter().map(ToString::to_string));
                Vec::new()
            }
        };
        for name in request.secrets.keys().filter(|n| !request.args.contains_key(*n)) {
            problems.push(format!("argument `{name}`: its secret reference was not resolved"));
        }
        if let Some(kind) = request.transport {
            for host in &mut hosts {
                match host.via(kind) {
                    Some(h) => *host = Arc::new(h),
                    None => problems.push(format!("host `{}` has no `{kind}` section in the inventory", host.name)),
                }
            }
        }
        if let Some(t) = request.timeout
            && (t.is_zero() || t.as_secs() > MAX_TIMEOUT_SECS)
        {
            problems.push(format!("timeout must be within 1..={MAX_TIMEOUT_SECS} seconds"));
        }
        let correlation_id = match &request.correlation_id {
            Some(c) if CORRELATION_RE.is_match(c) => c.clone(),
            Some(_) => {
                problems.push(format!("correlation id must match {}", CORRELATION_RE.as_str()));
                String::new()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let (Some(plugin), Some(args), true) = (plugin, args, problems.is_empty()) else {
            return Err(Refused(problems));
        };
        // Hidden in the results: arguments given as references and arguments the header declares secret.
        let masked = Masked::new(args.iter().filter_map(|(name, value)| {
            let reference = match request.secrets.get(name) {
                Some(r) => r.to_string(),
                None if plugin.args.get(name).is_some_and(|s| s.secret) => crate::config::REDACTED.to_owned(),
                None => return None,
            };
            Some((name.clone(), reference, value.as_env_string()))
        }));
        let args = Arc::new(args);
        let trigger = Arc::new(request.trigger.clone());
        let timeout = request.timeout.unwrap_or(plugin.timeout);
        let specs = hosts
            .into_iter()
            .map(|host| RunSpec {
                run_id: uuid::Uuid::now_v7().to_string(),
                correlation_id: correlation_id.clone(),
                action: plugin.name.clone(),
                plugin: plugin.clone(),
                lib: self.registry.lib().clone(),
                args: args.clone(),
                dry_run: request.dry_run,
                timeout,
                operator: request.operator.clone(),
                trigger: trigger.clone(),
                sweep_stale: self.first_run_on(&host.name),
                masked: masked.clone(),
                host,
            })
            .collect();
        Ok(Plan { correlation_id, specs })
    }

    /// True the first time it is asked for a host.
    fn first_run_on(&self, host: &str) -> bool {
        match self.swept.lock() {
            Ok(mut swept) => swept.insert(host.to_owned()),
            Err(poisoned) => poisoned.into_inner().insert(host.to_owned()),
        }
    }

    fn transport(&self, kind: TransportKind) -> Arc<dyn Transport> {
        match kind {
            TransportKind::Local => self.local.clone(),
            TransportKind::Ssh => Arc::new(self.ssh.clone()),
            TransportKind::Ssm => Arc::new(self.ssm.clone()),
        }
    }

    /// Runs a plan with at most `parallel` hosts at once; each result is sent on the returned channel as soon as
    /// its host finishes. The channel closes when every host has a result.
    pub fn execute(&self, plan: Plan, parallel: usize) -> mpsc::Receiver<ResultEnvelope> {
        let (tx, rx) = mpsc::channel(plan.specs.len().max(1));
        let parallel = parallel.clamp(1, MAX_PARALLEL);
        let limit = Arc::new(Semaphore::new(parallel));
        // SSM hosts that share region, document and output bucket go out as one SendCommand (at most 50 each); the rest one
        // run at a time per host.
        let mut groups: BTreeMap<_, Vec<RunSpec>> = BTreeMap::new();
        let mut singles = Vec::new();
        for spec in plan.specs {
            match (spec.host.transport, spec.host.ssm.as_ref()) {
                (TransportKind::Ssm, Some(t)) => groups.entry(t.command_key()).or_default().push(spec),
                _ => singles.push(spec),
            }
        }
        for (_, specs) in groups {
            if specs.len() == 1 {
                singles.extend(specs);
                continue;
            }
            let mut specs = specs.into_iter().peekable();
            while specs.peek().is_some() {
                let chunk: Vec<RunSpec> = specs.by_ref().take(ssm::MAX_FAN_OUT).collect();
                let (tx, limit, ssm, audit) = (tx.clone(), limit.clone(), self.ssm.clone(), self.audit.clone());
                // Unique (the tag), so an unclear SendCommand failure can be looked up by it.
                let tag = uuid::Uuid::new_v4().simple().to_string();
                let comment = format!("rune fan-out {} x{} {}", &tag[..12], chunk.len(), plan.correlation_id);
                tokio::spawn(async move {
                    let permits = u32::try_from(chunk.len().min(parallel)).unwrap_or(u32::MAX);
                    let Ok(_permits) = limit.acquire_many_owned(permits).await else { return };
                    for envelope in fan_out(&ssm, audit.as_ref(), &chunk, parallel, &comment).await {
                        let _ = tx.send(envelope).await;
                    }
                });
            }
        }
        for spec in singles {
            let tx = tx.clone();
            let limit = limit.clone();
            let transport = self.transport(spec.host.transport);
            let audit = self.audit.clone();
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else { return };
                let envelope = match admit(audit.as_ref(), &spec).await {
                    Ok(()) => mediator::run(&spec, transport.as_ref()).await,
                    Err(verdict) => mediator::finish(&spec, mediator::Started::now(), verdict, RawOutcome::default()),
                };
                if let Some(a) = &audit {
                    a.after_run(&spec, &envelope).await;
                }
                let _ = tx.send(envelope).await;
            });
        }
        rx
    }

    /// Runs a plan and collects every result (in completion order).
    pub async fn run_all(&self, plan: Plan, parallel: usize) -> Vec<ResultEnvelope> {
        let mut rx = self.execute(plan, parallel);
        let mut out = Vec::new();
        while let Some(r) = rx.recv().await {
            out.push(r);
        }
        out
    }
}

/// The audit trail's word on a run about to start (its dispatch record written): Err with the run's
/// `precondition_failed` verdict when it must not start. No trail: every run starts.
async fn admit(audit: Option<&Auditor>, spec: &RunSpec) -> Result<(), mediator::Verdict> {
    match audit {
        Some(a) => a.before_run(spec).await.map_err(mediator::Verdict::not_run),
        None => Ok(()),
    }
}

/// One SendCommand for several SSM hosts; an envelope per host, in the chunk's order. Each host's dispatch is
/// recorded first; a host the trail refuses is left out of the command.
async fn fan_out(
    ssm: &SsmTransport,
    audit: Option<&Auditor>,
    specs: &[RunSpec],
    parallel: usize,
    comment: &str,
) -> Vec<ResultEnvelope> {
    let started = mediator::Started::now();
    let mut prepared: Vec<Result<Invocation, mediator::Verdict>> = Vec::with_capacity(specs.len());
    for spec in specs {
        prepared.push(admit(audit, spec).await.and_then(|()| mediator::prepare(spec)));
    }
    let runs: Vec<(&Host, &Invocation)> =
        specs.iter().zip(&prepared).filter_map(|(spec, p)| p.as_ref().ok().map(|i| (spec.host.as_ref(), i))).collect();
    let mut outcomes = ssm.execute_many(&runs, parallel, comment).await.into_iter();
    let envelopes: Vec<ResultEnvelope> = specs
        .iter()
        .zip(prepared)
        .map(|(spec, p)| {
            let (verdict, raw) = match p {
                Err(verdict) => (verdict, RawOutcome::default()),
                Ok(_) => {
                    let outcome = outcomes
                        .next()
                        .unwrap_or_else(|| Err(TransportError::Protocol("SSM fan-out: no outcome".into())));
                    mediator::judge(spec, outcome)
                }
            };
            mediator::finish(spec, started, verdict, raw)
        })
        .collect();
    if let Some(a) = audit {
        for (spec, envelope) in specs.iter().zip(&envelopes) {
            a.after_run(spec, envelope).await;
        }
    }
    envelopes
}
