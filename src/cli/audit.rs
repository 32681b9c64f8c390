//! `rune audit verify|tail|query`: checks the audit trail's chain, and reads its records with filters.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::Value;

use super::{EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, OutputFormat};
use crate::audit::{self, verify};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain: every record's hash and its link to the one before, across rotated files. Exit 0 when
    /// intact, 1 when something was edited, removed, reordered or cut short (each problem with file and line).
    Verify {
        #[command(flatten)]
        trail: Trail,
        /// Files to check as one chain, in this order (default: the trail's rotated files, then the active one).
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
    /// The last records that match the filters.
    Tail {
        #[command(flatten)]
        trail: Trail,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        #[command(flatten)]
        filter: Filter,
        #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// Every record that matches the filters, oldest first.
    Query {
        #[command(flatten)]
        trail: Trail,
        #[command(flatten)]
        filter: Filter,
        #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
}

/// Which trail.
#[derive(Debug, Clone, clap::Args)]
pub struct Trail {
    /// The trail's active file (rotated files are found beside it).
    #[arg(long = "file", env = "RUNE_AUDIT_FILE")]
    pub file: Option<PathBuf>,
}

/// Record filters; all given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    #[arg(long)]
    pub host: Option<String>,
    /// The action (plugin name, without `@version`).
    #[arg(long)]
    pub action: Option<String>,
    /// Who: `alice`, `rule:<name>`, `chatops:<requester>`.
    #[arg(long)]
    pub operator: Option<String>,
    /// Record kind: start, decision, dispatch, result, refusal.
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// From this time on: RFC 3339 (`2026-11-24T07:00:00Z`) or a duration ago (`2h`, `30m`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Before this time (same forms).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor a duration like `2h`"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| format!("`{text}` is too long ago"))?;
    Ok(Utc::now() - ago)
}

impl Filter {
    fn matches(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name).and_then(Value::as_str);
        let equal = |want: &Option<String>, name: &str| want.as_deref().is_none_or(|w| field(name) == Some(w));
        let action = self.action.as_deref().is_none_or(|want| {
            field("action").is_some_and(|a| a == want || a.split_once('@').is_some_and(|(name, _)| name == want))
        });
        let time = field("time").and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
        let since = self.since.is_none_or(|s| time.is_some_and(|t| t >= s));
        let until = self.until.is_none_or(|u| time.is_some_and(|t| t < u));
        equal(&self.host, "host")
            && equal(&self.operator, "operator")
            && equal(&self.kind, "kind")
            && equal(&self.correlation_id, "correlation_id")
            && action
            && since
            && until
    }
}

pub fn main(command: AuditCommand) -> i32 {
    match command {
        AuditCommand::Verify { trail, files, output } => {
            let (files, head) = if files.is_empty() {
                let Some(path) = trail.file else { return no_trail() };
                (audit::trail_files(&path), Some(path))
            } else {
                (files, None)
            };
            if files.is_empty() {
                eprintln!("rune: no audit trail files found");
                return EXIT_USAGE;
            }
            let report = verify::verify(&files, head.as_deref());
            match output {
                OutputFormat::Pretty => print!("{}", verify::pretty(&report)),
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string(&report).unwrap_or_else(|_| "{}".into()));
                }
            }
            if report.ok() { EXIT_OK } else { EXIT_RUN_FAILED }
        }
        AuditCommand::Tail { trail, lines, filter, output } => {
            let Some(path) = trail.file else { return no_trail() };
            let mut last = std::collections::VecDeque::with_capacity(lines.min(100_000));
            let code = scan(&path, &filter, |line, record| {
                if last.len() == lines {
                    last.pop_front();
                }
                if lines > 0 {
                    last.push_back((line.to_owned(), record));
                }
            });
            for (line, record) in last {
                print_record(&line, &record, output);
            }
            code
        }
        AuditCommand::Query { trail, filter, output } => {
            let Some(path) = trail.file else { return no_trail() };
            scan(&path, &filter, |line, record| print_record(line, &record, output))
        }
    }
}

fn no_trail() -> i32 {
    eprintln!("rune: which audit trail? give --file PATH (or RUNE_AUDIT_FILE)");
    EXIT_USAGE
}

/// Calls `each` for every record of the trail that matches, oldest first. Lines that are not records are
/// skipped (`verify` reports them).
fn scan(path: &std::path::Path, filter: &Filter, mut each: impl FnMut(&str, Value)) -> i32 {
    let files = audit::trail_files(path);
    if files.is_empty() {
        eprintln!("rune: no audit trail at {}", path.display());
        return EXIT_USAGE;
    }
    for file in files {
        let read = audit::read_lines(&file, |_, line| {
            let (audit::Line::Whole(bytes) | audit::Line::Unterminated(bytes)) = line else { return };
            let Ok(line) = std::str::from_utf8(bytes) else { return };
            let line = line.trim_end();
            let Ok(record) = serde_json::from_str::<Value>(line) else { return };
            if filter.matches(&record) {
                each(line, record);
            }
        });
        if let Err(e) = read {
            eprintln!("rune: cannot read {}: {e}", file.display());
            return EXIT_USAGE;
        }
    }
    EXIT_OK
}

fn print_record(line: &str, record: &Value, output: OutputFormat) {
    match output {
        OutputFormat::Json => println!("{line}"),
        OutputFormat::Pretty => {
            let field = |name: &str| record.get(name).and_then(Value::as_str).unwrap_or("-");
            println!(
                "{} #{} {:<9} {:<12} {:<20} {:<24} {:<24} {}",
                field("time"),
                record.get("seq").and_then(Value::as_u64).unwrap_or(0),
                field("kind"),
                field("outcome"),
                field("host"),
                field("action"),
                field("operator"),
                field("correlation_id"),
            );
        }
    }
}
