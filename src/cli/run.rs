//! `rune run <action>`: validate, fan out, print one envelope per host (JSON Lines) or a readable summary.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, OutputFormat, PluginDirs, load_inventory};
use crate::audit::{AuditLog, AuditOptions, Auditor};
use crate::bpcs::RawArg;
use crate::orchestrator::{DEFAULT_PARALLEL, MAX_PARALLEL, Orchestrator, RunRequest};
use crate::results::{ResultEnvelope, Status};
use crate::secrets::SecretRef;
use crate::transport::ssh::SshTransport;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Plugin to run: NAME or NAME@VERSION.
    pub action: String,
    /// Target host from the inventory (repeatable).
    #[arg(long = "host")]
    pub host: Vec<String>,
    /// Comma-separated target hosts from the inventory.
    #[arg(long = "hosts", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Every host of an inventory group (repeatable).
    #[arg(long = "group")]
    pub group: Vec<String>,
    /// Plugin argument KEY=VALUE (repeatable); typed by the plugin's header.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub arg: Vec<String>,
    /// JSON object of plugin arguments (`-` for stdin); --arg wins on the same key.
    #[arg(long = "args-json", value_name = "FILE")]
    pub args_json: Option<PathBuf>,
    /// Ask the plugin to report its plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
    pub output: OutputFormat,
    /// Hosts run at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL)]
    pub parallel: usize,
    /// Timeout per host (e.g. 30, 30s, 5m); default: the plugin's.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Inventory file (YAML). Default: ./inventory.yaml if present, else the embedded localhost-only inventory.
    #[arg(long, env = "RUNE_INVENTORY")]
    pub inventory: Option<PathBuf>,
    #[command(flatten)]
    pub plugins: PluginDirs,
    /// Who is running this (recorded in every result). Default: $USER.
    #[arg(long, env = "RUNE_OPERATOR")]
    pub operator: Option<String>,
    /// Correlation id to carry into every result; generated when absent.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Run through AWS SSM Run Command on every target, whatever its inventory transport (each host needs an
    /// `ssm` section). Credentials, region and endpoint come from the standard AWS configuration.
    #[arg(long)]
    pub use_ssm: bool,
    /// Record this run (its dispatch, result or refusal) in this audit trail; a remediation the trail cannot
    /// record does not run. One process per trail: not the daemon's file.
    #[arg(long, env = "RUNE_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,
}

/// Parses `30`, `30s`, `5m`, `2h` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a duration like 30, 30s, 5m or 2h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("`{s}`: unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn collect_args(args: &RunArgs) -> Result<BTreeMap<String, RawArg>, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    if let Some(path) = &args.args_json {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
        } else {
            std::fs::read_to_string(path)
        };
        match text.map_err(|e| e.to_string()).and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        {
            Ok(Value::Object(map)) => {
                for (k, v) in map {
                    out.insert(k, RawArg::Json(v));
                }
            }
            Ok(_) => errors.push(format!("--args-json {}: expected a JSON object", path.display())),
            Err(e) => errors.push(format!("--args-json {}: {e}", path.display())),
        }
    }
    for kv in &args.arg {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_owned(), RawArg::Text(v.to_owned()));
            }
            _ => errors.push(format!("--arg `{kv}`: expected KEY=VALUE")),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Moves the arguments written `ssm:/path` (with `--arg`, or as JSON strings) out of `raw` as secret references.
fn split_secrets(raw: &mut BTreeMap<String, RawArg>) -> Result<BTreeMap<String, SecretRef>, Vec<String>> {
    let mut secrets = BTreeMap::new();
    let mut errors = Vec::new();
    raw.retain(|name, value| {
        let text = match value {
            RawArg::Text(t) => t.as_str(),
            RawArg::Json(Value::String(t)) => t.as_str(),
            RawArg::Json(_) => return true,
        };
        match SecretRef::parse(text) {
            None => true,
            Some(Ok(r)) => {
                secrets.insert(name.clone(), r);
                false
            }
            Some(Err(e)) => {
                errors.push(format!("argument `{name}`: {e}"));
                false
            }
        }
    });
    if errors.is_empty() { Ok(secrets) } else { Err(errors) }
}

fn operator(args: &RunArgs) -> Result<String, String> {
    let name = args
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        // SAFETY: getuid(2) has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid-{}", unsafe { libc::getuid() }));
    let valid =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if valid { Ok(name) } else { Err(format!("operator `{name}` must be 1-64 characters of [A-Za-z0-9._@-]")) }
}

/// Says why nothing was run (and records the refusal in the audit trail).
async fn refuse(args: &RunArgs, audit: Option<&AuditLog>, problems: &[String]) -> i32 {
    if let Some(log) = audit {
        let operator = operator(args).unwrap_or_else(|_| "-".into());
        let mut hosts = args.host.clone();
        hosts.extend(args.hosts.iter().cloned());
        hosts.extend(args.group.iter().map(|g| format!("group:{g}")));
        let record = crate::audit::records::refusal("cli", &operator, &args.action, &hosts, problems);
        if let Err(e) = log.append("refusal", record).await {
            eprintln!("rune: the refusal could not be recorded: {e}");
        }
    }
    match args.output {
        OutputFormat::Json => {
            let doc = json!({ "error": "invalid_request", "problems": problems, "ran": false });
            eprintln!("{doc}");
        }
        OutputFormat::Pretty => {
            for p in problems {
                eprintln!("error: {p}");
            }
            eprintln!("nothing was run");
        }
    }
    EXIT_USAGE
}

/// `rune run`.
pub async fn run(args: RunArgs) -> i32 {
    let audit = match &args.audit_file {
        Some(path) => match AuditLog::open(AuditOptions::new(path)) {
            Ok(log) => Some(log),
            Err(e) => {
                eprintln!("rune: {e}; nothing was run");
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    let code = run_audited(&args, audit.as_ref()).await;
    if let Some(log) = &audit
        && let Err(e) = log.close(serde_json::Map::new()).await
    {
        eprintln!("rune: audit trail: {e}");
    }
    code
}

async fn run_audited(args: &RunArgs, audit: Option<&AuditLog>) -> i32 {
    let mut problems = Vec::new();
    let mut raw_args = collect_args(args).unwrap_or_else(|e| {
        problems.extend(e);
        BTreeMap::new()
    });
    let secrets = split_secrets(&mut raw_args).unwrap_or_else(|e| {
        problems.extend(e);
        BTreeMap::new()
    });
    let operator = operator(args).unwrap_or_else(|e| {
        problems.push(e);
        String::new()
    });
    if args.parallel == 0 || args.parallel > MAX_PARALLEL {
        problems.push(format!("--parallel must be within 1..={MAX_PARALLEL}"));
    }
    let registry = args.plugins.load();
    for p in registry.problems() {
        tracing::warn!(problem = %p, "plugin not loaded");
    }
    let inventory = match load_inventory(args.inventory.as_ref()) {
        Ok(i) => Some(i),
        Err(e) => {
            problems.extend(e);
            None
        }
    };
    let Some(inventory) = inventory else { return refuse(args, audit, &problems).await };
    let mut orchestrator = Orchestrator::new(Arc::new(registry), inventory, SshTransport::default());
    if let Some(log) = audit {
        orchestrator = orchestrator.with_audit(Auditor::new(log.clone(), false));
    }
    let mut hosts = args.host.clone();
    hosts.extend(args.hosts.iter().filter(|h| !h.is_empty()).cloned());
    let mut request = RunRequest {
        action: args.action.clone(),
        args: raw_args,
        hosts,
        groups: args.group.clone(),
        dry_run: args.dry_run,
        timeout: args.timeout,
        operator: operator.clone(),
        correlation_id: args.correlation_id.clone(),
        trigger: json!({ "source": "cli", "operator": operator }),
        transport: args.use_ssm.then_some(crate::inventory::TransportKind::Ssm),
        secrets,
    };
    let plan = match orchestrator.prepare(&mut request).await {
        Ok(plan) if problems.is_empty() => plan,
        Ok(_) => return refuse(args, audit, &problems).await,
        Err(refused) => {
            problems.extend(refused.0);
            return refuse(args, audit, &problems).await;
        }
    };
    // A secret given on the command line shows in `ps` and the shell's history.
    if let Some(spec) = plan.specs.first() {
        for name in args.arg.iter().filter_map(|kv| kv.split_once('=')).map(|(k, _)| k) {
            if spec.plugin.args.get(name).is_some_and(|s| s.secret) && !request.secrets.contains_key(name) {
                eprintln!(
                    "warning: argument `{name}` is secret: given with --arg it shows in `ps` and the shell history; \
                     use --args-json FILE (or -, stdin) or --arg {name}=ssm:/path"
                );
            }
        }
    }
    let total = plan.specs.len();
    tracing::info!(action = %args.action, hosts = total, correlation_id = %plan.correlation_id, "dispatching");
    let started = Instant::now();
    let mut rx = orchestrator.execute(plan, args.parallel);
    let progress = total > 1 && std::io::stderr().is_terminal() && args.output == OutputFormat::Pretty;
    let mut tally: BTreeMap<Status, usize> = BTreeMap::new();
    let mut done = 0usize;
    let mut stdout = std::io::stdout().lock();
    while let Some(envelope) = rx.recv().await {
        done += 1;
        *tally.entry(envelope.status).or_default() += 1;
        match args.output {
            OutputFormat::Json => {
                if let Ok(line) = serde_json::to_string(&envelope) {
                    let _ = writeln!(stdout, "{line}");
                    let _ = stdout.flush();
                }
            }
            OutputFormat::Pretty => {
                if progress {
                    eprint!("\r\x1b[2K");
                }
                let _ = writeln!(stdout, "{}", pretty_line(&envelope));
                let _ = stdout.flush();
                if progress && done < total {
                    eprint!("[{done}/{total}] running {}…", args.action);
                }
            }
        }
    }
    let failed: usize = tally.iter().filter(|(s, _)| !s.is_success()).map(|(_, n)| n).sum();
    if args.output == OutputFormat::Pretty {
        let parts: Vec<String> = tally.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let _ = writeln!(stdout, "\n{total} host(s) in {:.1}s: {}", started.elapsed().as_secs_f64(), parts.join(", "));
    }
    if failed == 0 { EXIT_OK } else { EXIT_RUN_FAILED }
}

fn pretty_line(e: &ResultEnvelope) -> String {
    let mark = if e.status.is_success() { "✔" } else { "✘" };
    let summary = e
        .output
        .as_ref()
        .and_then(|o| o.get("summary"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| e.error.clone())
        .unwrap_or_default();
    let summary = printable(&summary);
    let mut line = format!("{mark} {:<24} {:<19} {:>7}ms  {summary}", e.host, e.status.as_str(), e.duration_ms);
    if e.truncated {
        line.push_str(" [output truncated]");
    }
    if !e.status.is_success() && !e.stderr_tail.is_empty() {
        let tail: Vec<&str> = e.stderr_tail.lines().rev().take(3).collect();
        for l in tail.into_iter().rev() {
            line.push_str("\n    │ ");
            line.push_str(&printable(l));
        }
    }
    line
}

/// Plugin text shown on a terminal: control characters (escape sequences included) become `�`.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
