//! `rune rules check | list | test | schema`: the rules engine offline — validate, show, and try rules on a
//! payload without running anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::{EXIT_OK, EXIT_USAGE, OutputFormat, PluginDirs, load_inventory};
use crate::engine::{Decision, Engine, Step, Verdict};
use crate::event::{Event, Intake, Limits, Source};
use crate::inventory::Inventory;
use crate::plugins::Registry;
use crate::rules::{self, RuleDiagnostic, RuleSet};

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate rule files: every error of every file with file:line:column (exit 0 valid, 2 invalid).
    Check {
        #[command(flatten)]
        common: RulesCommon,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
    /// Show the loaded rules.
    List {
        #[command(flatten)]
        common: RulesCommon,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
    /// Feed a payload through matching and the gates, and show each decision. Nothing runs.
    Test {
        /// The payload file (`-` for stdin).
        #[arg(long)]
        event: PathBuf,
        /// Payload format; `auto` tells Alertmanager, Grafana, chatops and generic apart by their fields.
        #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
        format: FormatArg,
        /// Subject the payload is taken to arrive on (default `hooks.<format>`).
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        common: RulesCommon,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
    /// Print the JSON Schema of rule files.
    Schema,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RulesCommon {
    /// Rules folder (every *.yaml / *.yml in it). Default: ./rules
    #[arg(default_value = "rules", env = "RUNE_RULES_DIR")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub plugins: PluginDirs,
    /// Inventory file (default: ./inventory.yaml when present, else the embedded default).
    #[arg(long, env = "RUNE_INVENTORY")]
    pub inventory: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum FormatArg {
    Auto,
    Alertmanager,
    Grafana,
    Generic,
    Chatops,
}

pub async fn main(command: RulesCommand) -> i32 {
    match command {
        RulesCommand::Check { common, output } => check(&common, output),
        RulesCommand::List { common, output } => list(&common, output),
        RulesCommand::Test { event, format, subject, common, output } => {
            test(&event, format, subject.as_deref(), &common, output).await
        }
        RulesCommand::Schema => {
            println!("{}", schema());
            EXIT_OK
        }
    }
}

/// The JSON Schema of a rule file, as committed in `docs/schemas/rules.schema.json`.
pub fn schema() -> String {
    let schema = schemars::schema_for!(rules::model::RuleFileConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

struct Loaded {
    registry: Arc<Registry>,
    inventory: Arc<Inventory>,
    set: RuleSet,
}

fn load(common: &RulesCommon) -> Result<Loaded, Vec<String>> {
    let registry = Arc::new(common.plugins.load());
    let inventory = load_inventory(common.inventory.as_ref())?;
    let files = rules::load_dir(&common.dir).map_err(strings)?;
    let set = rules::parse_files(&files, &registry, &inventory).map_err(strings)?;
    Ok(Loaded { registry, inventory, set })
}

fn strings(d: Vec<RuleDiagnostic>) -> Vec<String> {
    d.iter().map(ToString::to_string).collect()
}

fn report_errors(errors: &[String], output: OutputFormat) -> i32 {
    match output {
        OutputFormat::Json => println!("{}", json!({ "valid": false, "errors": errors })),
        OutputFormat::Pretty => {
            for e in errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); the rule set was not loaded", errors.len());
        }
    }
    EXIT_USAGE
}

fn check(common: &RulesCommon, output: OutputFormat) -> i32 {
    let loaded = match load(common) {
        Ok(l) => l,
        Err(errors) => return report_errors(&errors, output),
    };
    let set = &loaded.set;
    let warnings = strings(set.warnings.clone());
    match output {
        OutputFormat::Json => println!(
            "{}",
            json!({
                "valid": true,
                "rules": set.rules.len(),
                "files": set.files,
                "unindexed": set.unindexed(),
                "warnings": warnings,
            })
        ),
        OutputFormat::Pretty => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: {} rule(s) in {} file(s) valid ({} warning(s), {} not indexed)",
                common.dir.display(),
                set.rules.len(),
                set.files.len(),
                warnings.len(),
                set.unindexed()
            );
        }
    }
    EXIT_OK
}

fn list(common: &RulesCommon, output: OutputFormat) -> i32 {
    let loaded = match load(common) {
        Ok(l) => l,
        Err(errors) => return report_errors(&errors, output),
    };
    let set = &loaded.set;
    match output {
        OutputFormat::Json => println!("{}", json!({ "rules": set.rules, "policy": set.policy })),
        OutputFormat::Pretty => {
            for r in &set.rules {
                let target = match &r.target {
                    rules::Target::Host(h) => format!("host {h}"),
                    rules::Target::Group(g) => format!("group {g}"),
                    rules::Target::HostFrom { source, .. } => format!("host from {source}"),
                };
                let state = if r.enabled { "" } else { " (disabled)" };
                let stop = if r.stop { ", stop" } else { "" };
                println!(
                    "{}{state}  {}:{}\n    {} ({:?}) on {target}\n    dedup {:?} {}{stop}",
                    r.name,
                    r.origin.file,
                    r.origin.line,
                    r.action,
                    r.plugin.class,
                    r.dedup.mode,
                    humantime::format_duration(r.dedup.window),
                );
            }
            println!("{} rule(s)", set.rules.len());
        }
    }
    EXIT_OK
}

fn detect(body: &[u8]) -> Source {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return Source::Generic };
    let has = |k: &str| v.get(k).is_some();
    if has("orgId") || (has("alerts") && has("title") && has("state")) {
        Source::Grafana
    } else if has("alerts") && (has("groupKey") || has("version")) {
        Source::Alertmanager
    } else if has("action") && has("requester") {
        Source::Chatops
    } else {
        Source::Generic
    }
}

fn read_event(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let limit = Limits::default().max_body_bytes as u64 + 1;
    let mut bytes = Vec::new();
    let result = if path == Path::new("-") {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    result.map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Ok(bytes)
}

async fn test(
    path: &Path,
    format: FormatArg,
    subject: Option<&str>,
    common: &RulesCommon,
    output: OutputFormat,
) -> i32 {
    let loaded = match load(common) {
        Ok(l) => l,
        Err(errors) => return report_errors(&errors, output),
    };
    let body = match read_event(path) {
        Ok(b) => b,
        Err(e) => return report_errors(&[e], output),
    };
    let source = match format {
        FormatArg::Auto => detect(&body),
        FormatArg::Alertmanager => Source::Alertmanager,
        FormatArg::Grafana => Source::Grafana,
        FormatArg::Generic => Source::Generic,
        FormatArg::Chatops => Source::Chatops,
    };
    let default_subject = format!("hooks.{source}");
    let intake = Intake { subject: subject.unwrap_or(&default_subject), received_at: Utc::now(), correlation_id: None };
    let events = match crate::sources::parse(source, &body, &intake, &Limits::default()) {
        Ok(e) => e,
        Err(e) => return report_errors(&[e.to_string()], output),
    };
    let engine = Engine::new(loaded.set, loaded.registry, loaded.inventory);
    let mut report = Vec::new();
    for (n, event) in events.into_iter().enumerate() {
        let event = Arc::new(event);
        let decisions = engine.decide(event.clone()).await;
        match output {
            OutputFormat::Json => report.push(json!({
                "event": &*event,
                "decisions": decisions.iter().map(Decision::to_json).collect::<Vec<_>>(),
            })),
            OutputFormat::Pretty => print_event(n + 1, &event, &decisions),
        }
        // Nothing runs here: admitted decisions are dropped, which releases their host leases.
        drop(decisions);
    }
    if output == OutputFormat::Json {
        println!("{}", json!({ "format": source, "events": report }));
    }
    EXIT_OK
}

fn print_event(n: usize, event: &Event, decisions: &[Decision]) {
    let labels: Vec<String> = event.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "event {n}: {} {} fingerprint={} subject={}\n  labels: {}",
        event.source,
        event.status,
        event.fingerprint,
        event.subject,
        labels.join(" ")
    );
    if decisions.is_empty() {
        println!("  no rule matches");
    }
    for d in decisions {
        let host = d.host.as_deref().unwrap_or("-");
        println!("  rule {} → {} on {host}", d.rule, if d.action.is_empty() { "-" } else { &d.action });
        if !d.args.is_empty() {
            let args: Vec<String> = d.args.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            println!("    args: {}", args.join(" "));
        }
        if let Some(k) = &d.dedup_key {
            println!("    dedup key: {k}");
        }
        let steps: Vec<String> = d
            .trace
            .steps()
            .filter(|(_, s)| *s != Step::NotReached)
            .map(|(g, s)| {
                let mark = match s {
                    Step::Passed => "ok",
                    Step::Skipped => "skip",
                    Step::Deferred => "deferred",
                    Step::Suppressed => "NO",
                    Step::NotReached => "-",
                };
                format!(
                    "{}={mark}",
                    serde_json::to_value(g).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
                )
            })
            .collect();
        println!("    gates: {}", steps.join(" "));
        match &d.verdict {
            Verdict::Admitted(_) => println!("    decision: ADMITTED (would run)"),
            Verdict::Suppressed { reason, detail } => println!("    decision: suppressed ({reason}): {detail}"),
            Verdict::Deferred { until } => println!("    decision: deferred until {}", until.to_rfc3339()),
            Verdict::Cleared { cancelled_pending } => {
                let extra = if *cancelled_pending { ", pending run cancelled" } else { "" };
                println!("    decision: dedup key cleared (resolved){extra}");
            }
        }
    }
}
