//! `rune config check`: loads the daemon's settings (file + `RUNE_*` environment), reads the secrets they name
//! by reference from Parameter Store as `rune serve` would at start (unless `--offline`), and shows every error,
//! or the effective settings with secrets redacted, the values that came from the environment marked, and each
//! reference shown beside its `<redacted>` value.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::{EXIT_OK, EXIT_USAGE, OutputFormat};
use crate::config::{self, ConfigError, Settings};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the settings: every error with file:line:column or the variable that set it (exit 0 valid,
    /// 2 invalid); when valid, print the effective settings with secrets redacted. Secrets given by reference
    /// (`*_ref: ssm:/…`) and `ssm.secrets_prefetch` are read from Parameter Store, as `rune serve` does at start,
    /// so a missing parameter or denied access shows here.
    Check {
        /// Settings file (.yaml, .yml or .toml). Without one, every setting has its default (the embedded
        /// mode); `RUNE_<SECTION>__<KEY>` variables override either.
        #[arg(long, env = "RUNE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
        /// Do not reach Parameter Store: references are checked for their syntax only.
        #[arg(long)]
        offline: bool,
    },
}

pub async fn main(command: ConfigCommand) -> i32 {
    match command {
        ConfigCommand::Check { config, output, offline } => {
            let mut loaded = config::load(config.as_deref());
            if !offline && let Ok(settings) = &mut loaded {
                let store = settings.parameter_store();
                if let Err(errors) = settings.resolve_secrets(&store).await {
                    loaded = Err(errors);
                }
            }
            // The webhook certificate and key are read as `rune serve` reads them: a pair that does not load fails
            // the check, not the start.
            if let Ok(settings) = &loaded
                && let Some(files) = &settings.webhook.tls
                && let Err(e) = crate::sources::tls::ServerTls::load(files)
            {
                let field = "webhook.tls".to_owned();
                loaded = Err(vec![ConfigError { field, location: None, env: None, message: e.to_string() }]);
            }
            let (code, out, err) = check(loaded, output);
            print!("{out}");
            eprint!("{err}");
            code
        }
    }
}

/// The exit code, stdout and stderr of `config check` for a load result.
pub fn check(loaded: Result<Settings, Vec<ConfigError>>, output: OutputFormat) -> (i32, String, String) {
    match (loaded, output) {
        (Ok(settings), OutputFormat::Json) => {
            let document = json!({
                "valid": true,
                "file": settings.origin.file.as_ref().map(|p| p.display().to_string()),
                "embedded": settings.embedded(),
                "settings": settings.redacted_json(),
                "from_env": settings.origin.env.iter().map(|o| json!({"var": o.var, "field": o.field})).collect::<Vec<_>>(),
                "secret_refs": settings.references,
                "warnings": settings.warnings.iter().map(error_json).collect::<Vec<_>>(),
            });
            (EXIT_OK, format!("{document}\n"), String::new())
        }
        (Ok(settings), OutputFormat::Pretty) => {
            let mut err = String::new();
            for w in &settings.warnings {
                err.push_str(&format!("warning: {w}\n"));
            }
            (EXIT_OK, pretty(&settings), err)
        }
        (Err(errors), OutputFormat::Json) => {
            let document = json!({ "valid": false, "errors": errors.iter().map(error_json).collect::<Vec<_>>() });
            (EXIT_USAGE, format!("{document}\n"), String::new())
        }
        (Err(errors), OutputFormat::Pretty) => {
            let mut err = String::new();
            for e in &errors {
                err.push_str(&format!("error: {e}\n"));
            }
            err.push_str(&format!("{} error(s); the settings were not loaded\n", errors.len()));
            (EXIT_USAGE, String::new(), err)
        }
    }
}

fn error_json(e: &ConfigError) -> Value {
    let (file, line, column) = match &e.location {
        Some((file, line, column)) => (Some(file.as_str()), Some(*line), Some(*column)),
        None => (None, None, None),
    };
    json!({
        "field": e.field,
        "file": file,
        "line": line,
        "column": column,
        "env": e.env,
        "message": e.message,
        "text": e.to_string(),
    })
}

/// One `key = value` line per setting (values as JSON), the ones set by a variable marked with it.
fn pretty(settings: &Settings) -> String {
    let mut out = String::new();
    let file = match &settings.origin.file {
        Some(p) => format!("config: {} valid", p.display()),
        None => "config: no file, defaults".to_owned(),
    };
    let mode = match &settings.nats {
        None => "embedded mode: no NATS".to_owned(),
        Some(n) => format!(
            "NATS mode: {} server URL(s), JetStream {}",
            n.urls.len(),
            if n.jetstream.is_some() { "on" } else { "off" }
        ),
    };
    let overrides = settings.origin.env.len();
    let references = match settings.references.len() {
        0 => String::new(),
        n if settings.unresolved().next().is_none() => format!("; {n} secret(s) read from Parameter Store"),
        n => format!("; {n} secret reference(s), not read"),
    };
    out.push_str(&format!("{file} ({mode}; {overrides} value(s) from the environment{references})\n"));
    let mut leaves = Vec::new();
    flatten("", &settings.redacted_json(), &mut leaves);
    let width = leaves.iter().map(|(k, v)| k.len() + v.len() + 3).max().unwrap_or(0).min(80);
    for (key, value) in leaves {
        let line = format!("{key} = {value}");
        let mut notes = Vec::new();
        if let Some(o) = settings.origin.env.iter().find(|o| within(&key, &o.field)) {
            notes.push(format!("env {}", o.var));
        }
        if let Some(r) = settings.references.iter().find(|r| r.key == key) {
            let read = if r.resolved { "" } else { ", not read" };
            notes.push(format!("{} ({}){read}", r.reference, r.field));
        }
        match notes.is_empty() {
            true => out.push_str(&format!("{line}\n")),
            false => out.push_str(&format!("{line:<width$}  # {}\n", notes.join("; "))),
        }
    }
    if overrides > 0 {
        out.push_str("from the environment:\n");
        for o in &settings.origin.env {
            out.push_str(&format!("  {} → {}\n", o.var, o.field));
        }
    }
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// `key` is `field` or lies below it.
fn within(key: &str, field: &str) -> bool {
    key == field || key.strip_prefix(field).is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const CANARY: &str = "canary-0c41d2-never-printed";

    #[test]
    fn check_output_never_contains_a_secret_and_marks_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, CANARY).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = dir.path().join("rune.yaml");
        std::fs::write(
            &file,
            "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    token_file: token\n\
             webhook:\n  generic:\n    hmac_secret_env: HMAC\n",
        )
        .unwrap();
        let env: Vec<(String, String)> = [("HMAC", CANARY), ("RUNE_WEBHOOK__LISTEN", "0.0.0.0:9301")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for output in [OutputFormat::Pretty, OutputFormat::Json] {
            let (code, out, err) = check(config::load_from(Some(&file), &env), output);
            assert_eq!(code, EXIT_OK, "{err}");
            assert!(!out.contains(CANARY) && !err.contains(CANARY), "the secret leaked:\n{out}\n{err}");
            assert!(out.contains("<redacted>"), "{out}");
            assert!(out.contains("RUNE_WEBHOOK__LISTEN"), "{out}");
        }
        let (_, pretty, _) = check(config::load_from(Some(&file), &env), OutputFormat::Pretty);
        let listen = pretty.lines().find(|l| l.starts_with("webhook.listen = ")).unwrap();
        assert!(listen.contains("\"0.0.0.0:9301\"") && listen.ends_with("# env RUNE_WEBHOOK__LISTEN"), "{listen}");
        let (_, json, _) = check(config::load_from(Some(&file), &env), OutputFormat::Json);
        let doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["valid"], true);
        assert_eq!(doc["from_env"][0], json!({"var": "RUNE_WEBHOOK__LISTEN", "field": "webhook.listen"}));
        assert_eq!(doc["settings"]["nats"]["auth"]["token"], "<redacted>");
    }

    #[test]
    fn check_reports_every_error_with_exit_code_2() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rune.yaml");
        std::fs::write(&file, "webhook:\n  listen: nowhere\n  grafana: {}\nlimits:\n  parallel: 0\n").unwrap();
        let (code, out, err) = check(config::load_from(Some(&file), &[]), OutputFormat::Pretty);
        assert_eq!((code, out.as_str()), (EXIT_USAGE, ""));
        assert!(err.contains("rune.yaml:2:11: webhook.listen: `nowhere` is not a socket address"), "{err}");
        assert!(err.contains("rune.yaml:3:3: webhook.grafana: no authentication chosen"), "{err}");
        assert!(err.contains("rune.yaml:5:13: limits.parallel: must be at least 1"), "{err}");
        assert!(err.ends_with("3 error(s); the settings were not loaded\n"), "{err}");
        let (code, json, _) = check(config::load_from(Some(&file), &[]), OutputFormat::Json);
        assert_eq!(code, EXIT_USAGE);
        let doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["valid"], false);
        assert_eq!(doc["errors"][0]["line"], 2);
        assert_eq!(doc["errors"][0]["field"], "webhook.listen");
    }
}
