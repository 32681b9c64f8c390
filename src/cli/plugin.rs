//! `rune plugin …`: tools for plugins. `bundle` writes what a host with `sudo: installed` needs; `lint` checks
//! plugin files without running them (docs/plugin-lint.md).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::{EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, OutputFormat, PluginDirs};
use crate::{installed, lint};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write the files a host needs for `sudo: installed`: the installed runner, the shared helpers, the plugins
    /// that need root, SHA256SUMS, and a sudoers drop-in with one line per plugin.
    Bundle {
        /// Plugins to include (NAME or NAME@VERSION; each must declare `needs_root`). Default: every plugin that does.
        names: Vec<String>,
        /// The directory to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
        /// RUNE's login user on the hosts (the sudoers lines are for this user).
        #[arg(long, default_value = "rune")]
        user: String,
        /// Where the bundle will be installed on the hosts (the inventory's `installed_dir`).
        #[arg(long, default_value = installed::DEFAULT_DIR)]
        dir: String,
        #[command(flatten)]
        plugins: PluginDirs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
    /// Check plugin files without running them: the header, BPCS rules for the body, and shellcheck when installed.
    /// Exit 0: no errors (warnings allowed); 1: errors; 2: a path cannot be read.
    Lint {
        /// Plugin files or directories (their `*.sh`, not `lib/`). Default: every plugin in the plugin directories.
        paths: Vec<PathBuf>,
        /// Do not run shellcheck.
        #[arg(long)]
        no_shellcheck: bool,
        #[command(flatten)]
        plugins: PluginDirs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
        output: OutputFormat,
    },
}

pub fn main(command: PluginCommand) -> i32 {
    match command {
        PluginCommand::Bundle { names, out, user, dir, plugins, output } => {
            bundle(&names, &out, &user, &dir, &plugins, output)
        }
        PluginCommand::Lint { paths, no_shellcheck, plugins, output } => lint(&paths, no_shellcheck, &plugins, output),
    }
}

fn lint(paths: &[PathBuf], no_shellcheck: bool, dirs: &PluginDirs, output: OutputFormat) -> i32 {
    let plugin_dirs = dirs.dirs_or_default();
    let paths = if paths.is_empty() { plugin_dirs.clone() } else { paths.to_vec() };
    let options = lint::LintOptions { plugin_dirs, shellcheck: !no_shellcheck };
    let report = match lint::plugin_files(&paths).and_then(|files| lint::lint_files(&files, &options)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let (errors, warnings) = (report.count(lint::Severity::Error), report.count(lint::Severity::Warning));
    match output {
        OutputFormat::Json => {
            let doc = json!({
                "files": report.files, "findings": report.findings, "errors": errors, "warnings": warnings,
                "shellcheck": report.shellcheck,
            });
            println!("{doc}");
        }
        OutputFormat::Pretty => {
            for finding in &report.findings {
                println!("{finding}");
            }
            if report.shellcheck == lint::ShellcheckRun::NotInstalled {
                eprintln!("note: shellcheck is not installed: its checks were skipped");
            }
            eprintln!("{} file(s) checked: {errors} error(s), {warnings} warning(s)", report.files.len());
        }
    }
    if errors > 0 { EXIT_RUN_FAILED } else { EXIT_OK }
}

fn bundle(
    names: &[String],
    out: &std::path::Path,
    user: &str,
    dir: &str,
    dirs: &PluginDirs,
    output: OutputFormat,
) -> i32 {
    let registry = dirs.load();
    for p in registry.problems() {
        eprintln!("warning: {p}");
    }
    let bundle = match installed::bundle(&registry, names, user, dir) {
        Ok(b) => b,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return EXIT_USAGE;
        }
    };
    if let Err(e) = installed::write(&bundle, out) {
        eprintln!("error: {e}");
        return EXIT_RUN_FAILED;
    }
    let (out, dir) = (out.display(), bundle.dir.display());
    match output {
        OutputFormat::Json => {
            let plugins: Vec<_> = bundle
                .plugins
                .iter()
                .map(|p| json!({ "name": p.name, "version": p.version.to_string(), "sha256": p.sha256 }))
                .collect();
            let files: Vec<_> = bundle.files.iter().map(|f| f.path.display().to_string()).collect();
            let doc = json!({
                "out": out.to_string(), "dir": dir.to_string(), "user": bundle.user,
                "runner_sha256": bundle.runner_sha256, "plugins": plugins, "files": files,
            });
            println!("{doc}");
        }
        OutputFormat::Pretty => {
            let list: Vec<String> = bundle.plugins.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
            println!("wrote {out} for {dir}, user {}: {}", bundle.user, list.join(", "));
            println!("install on each host, as root:");
            println!("  install -d -o root -g root -m 0755 {dir}");
            println!("  cp -R {out}/run {out}/lib {out}/plugins {dir}/ && chown -R root:root {dir}");
            println!("  (cd / && sha256sum -c {out}/SHA256SUMS)");
            println!("  visudo -cf {out}/sudoers && install -o root -g root -m 0440 {out}/sudoers /etc/sudoers.d/rune");
            println!(
                "then set `sudo: installed` for those hosts in the inventory (and `installed_dir: {dir}` if not the default)."
            );
        }
    }
    EXIT_OK
}
