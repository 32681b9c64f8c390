//! The `rune` command line: argument parsing, logging set-up, and the documented exit codes.

mod actions;
pub mod audit;
pub mod config;
pub mod plugin;
pub mod rules;
mod run;
pub mod serve;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::inventory::Inventory;
use crate::plugins::Registry;

/// Exit code: everything ran and every run succeeded (ok, warn, skipped, dry_run).
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one run did not succeed.
pub const EXIT_RUN_FAILED: i32 = 1;
/// Exit code: bad usage or invalid input; nothing ran.
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(name = "rune", version, about = "Event-driven alert-to-remediation bridge: run BPCS plugins on Linux hosts")]
pub struct Cli {
    /// Log format on stderr (default text; for `serve`, the settings' `log.format`).
    #[arg(long, global = true, value_enum, env = "RUNE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `rune=debug` (default `warn`; for `serve`, the
    /// settings' `log.level`). The flag and its variable win over the settings file.
    #[arg(long, global = true, env = "RUNE_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// One JSON document (JSON Lines for `run`) on stdout.
    Json,
    /// Human-readable.
    #[default]
    Pretty,
}

/// Where plugins come from (shared by the subcommands).
#[derive(Debug, Clone, clap::Args)]
pub struct PluginDirs {
    /// Plugin directory (repeatable; earlier ones win for shared helpers). Default: ./plugins
    #[arg(long = "plugins-dir", env = "RUNE_PLUGINS_DIR", value_delimiter = ':')]
    pub dirs: Vec<PathBuf>,
}

impl PluginDirs {
    pub fn load(&self) -> Registry {
        Registry::load(&self.dirs_or_default())
    }

    /// The directories given, or ./plugins.
    pub fn dirs_or_default(&self) -> Vec<PathBuf> {
        if self.dirs.is_empty() { vec![PathBuf::from("plugins")] } else { self.dirs.clone() }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a plugin on hosts from the inventory.
    Run(Box<run::RunArgs>),
    /// List the plugins that can be run.
    ListActions {
        #[command(flatten)]
        plugins: PluginDirs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
    /// Rules: check, list, test against a payload, print the schema.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// The daemon's settings: check a settings file and the RUNE_* overrides.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// The audit trail: verify its chain, tail and query its records.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run the daemon: webhooks (and NATS when configured) in, rules and gates, plugin runs, results out.
    Serve(serve::ServeArgs),
    /// Plugin tools: bundle (the files for hosts with `sudo: installed`), lint (check plugin files), test (run a
    /// plugin and check its result).
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Show one plugin's header, arguments and versions.
    PluginInfo {
        /// NAME or NAME@VERSION
        action: String,
        #[command(flatten)]
        plugins: PluginDirs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
}

/// Loads the inventory from `--inventory`, else ./inventory.yaml when present, else the embedded default.
pub fn load_inventory(path: Option<&PathBuf>) -> Result<Arc<Inventory>, Vec<String>> {
    let loaded = match path {
        Some(p) => Inventory::load(p),
        None => {
            let local = PathBuf::from("inventory.yaml");
            if local.is_file() { Inventory::load(&local) } else { Inventory::embedded_default() }
        }
    };
    loaded.map(Arc::new).map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// Installs the stderr logger (once per process; later calls do nothing).
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the CLI and returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    if let Command::Serve(args) = cli.command {
        // The daemon's logging may come from its settings file; it sets it up once they are loaded.
        return serve::serve(args, cli.log, cli.log_format).await;
    }
    init_logging(cli.log.as_deref().unwrap_or("warn"), cli.log_format.unwrap_or(LogFormat::Text));
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::ListActions { plugins, output } => actions::list(&plugins, output),
        Command::PluginInfo { action, plugins, output } => actions::info(&action, &plugins, output),
        Command::Rules(command) => rules::main(command).await,
        Command::Config(command) => config::main(command).await,
        Command::Audit(command) => audit::main(command),
        Command::Plugin(command) => plugin::main(command).await,
        Command::Serve(_) => EXIT_USAGE,
    }
}
