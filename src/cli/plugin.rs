//! `rune plugin …`: tools for plugins. `bundle` writes what a host with `sudo: installed` needs; `lint` checks
//! plugin files without running them (docs/plugin-lint.md); `test` runs a plugin on an input as a real run would
//! and checks the result (its golden cases: [`crate::golden`]).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::{EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, OutputFormat, PluginDirs};
use crate::golden::{self, Case, CaseInput, CaseReport, Tester};
use crate::{installed, lint};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Start a plugin: <dir>/<name>.sh with a complete header, an argument, dry-run handling and the helpers, and
    /// its first golden cases in <dir>/tests/<name>/ (ok, dry-run, bad-args). It passes lint and test as written.
    New {
        /// The plugin's name: a-z, 0-9 and `-`, starting with a letter or digit.
        name: String,
        /// diagnostic (reads state, changes nothing) or remediation (changes the host).
        #[arg(long, value_enum, default_value_t = NewClass::Diagnostic)]
        class: NewClass,
        /// The plugin directory to write into (default: the first plugin dir, ./plugins).
        #[command(flatten)]
        plugins: PluginDirs,
    },
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
    /// Run a plugin on a BPCS input as a real run does (locally, or on an inventory host) and check its result:
    /// one run from flags, a plugin's golden cases (plugins/tests/<plugin>/), or all of them (docs/plugin-tests.md).
    Test(TestArgs),
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

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// NAME, NAME@VERSION, a plugin file (path/x.sh) or a case (path/<case>.input.json). Omit with --all.
    pub target: Option<String>,
    /// Run every golden case of every plugin.
    #[arg(long, conflicts_with = "target")]
    pub all: bool,
    /// Input file (the case input format: args, dry_run, stubs, ...): one run instead of the plugin's cases.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Plugin argument KEY=VALUE (repeatable; typed by the header; wins over the input's): one run.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub arg: Vec<String>,
    /// Expected result (the expect file format). Without one, a run passes when it succeeds.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// One dry run.
    #[arg(long)]
    pub dry_run: bool,
    /// Run on this inventory host instead of locally (cases that need stubs are skipped).
    #[arg(long)]
    pub host: Option<String>,
    /// Inventory file for --host. Default: ./inventory.yaml if present, else the embedded one.
    #[arg(long, env = "RUNE_INVENTORY")]
    pub inventory: Option<PathBuf>,
    #[command(flatten)]
    pub plugins: PluginDirs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Pretty)]
    pub output: OutputFormat,
}

/// `--class` of `rune plugin new`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NewClass {
    Diagnostic,
    Remediation,
}

pub async fn main(command: PluginCommand) -> i32 {
    match command {
        PluginCommand::New { name, class, plugins } => new(&name, class, &plugins),
        PluginCommand::Bundle { names, out, user, dir, plugins, output } => {
            bundle(&names, &out, &user, &dir, &plugins, output)
        }
        PluginCommand::Test(args) => test(args).await,
        PluginCommand::Lint { paths, no_shellcheck, plugins, output } => lint(&paths, no_shellcheck, &plugins, output),
    }
}

/// What `rune plugin test` was asked to run.
enum TestTarget {
    /// Every case of every plugin.
    All,
    /// One plugin (NAME or NAME@VERSION): its cases, or the one run the flags describe.
    Plugin(String),
    /// One case file.
    Case { action: String, input: PathBuf },
}

/// Puts `dir` first among the plugin dirs (moved there when it is already one of them).
fn put_first(dirs: &mut Vec<PathBuf>, dir: &std::path::Path) {
    let same = |a: &std::path::Path| match (std::fs::canonicalize(a), std::fs::canonicalize(dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == dir,
    };
    dirs.retain(|d| !same(d));
    dirs.insert(0, dir.to_path_buf());
}

/// `rune plugin test`: exit 0 every case passed (or was skipped), 1 a case failed, 2 bad usage or a case that
/// cannot be read (and a single run without expectation that was refused, like `rune run`).
async fn test(args: TestArgs) -> i32 {
    let usage = |message: String| {
        eprintln!("error: {message}");
        EXIT_USAGE
    };
    let mut dirs =
        if args.plugins.dirs.is_empty() { vec![PathBuf::from("plugins")] } else { args.plugins.dirs.clone() };
    let single = args.input.is_some() || !args.arg.is_empty() || args.expect.is_some() || args.dry_run;
    let target = match (&args.target, args.all) {
        (None, true) if single => {
            return usage("--all runs the golden cases: no --input, --arg, --expect or --dry-run".into());
        }
        (None, true) => TestTarget::All,
        (None, false) => return usage("name a plugin, a plugin file or a case file, or give --all".into()),
        (Some(t), _) if t.ends_with(golden::INPUT_SUFFIX) => {
            let input = PathBuf::from(t);
            let cases = input.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            // The parent of the plugin's dir must be `tests`, however the path is written.
            let in_tests = cases.parent().and_then(|p| p.file_name()).is_some_and(|n| n == golden::CASES_DIR);
            let plugin = cases.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            let Some(plugin) = plugin.filter(|_| in_tests) else {
                return usage(format!("{t}: a case file lives in <plugins dir>/tests/<plugin>/"));
            };
            // <dir>/tests/<plugin>/<case>.input.json: that plugins dir first.
            if let Some(dir) = cases.parent().and_then(|p| p.parent()) {
                put_first(&mut dirs, dir);
            }
            TestTarget::Case { action: plugin, input }
        }
        (Some(t), _) if t.ends_with(".sh") || t.contains('/') => {
            let path = PathBuf::from(t);
            let plugin = match crate::plugins::load_plugin(&path) {
                Ok(p) => p,
                Err(errors) => {
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                    return EXIT_USAGE;
                }
            };
            if let Some(dir) = path.parent() {
                put_first(&mut dirs, if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir });
            }
            TestTarget::Plugin(format!("{}@{}", plugin.name, plugin.version))
        }
        (Some(t), _) => TestTarget::Plugin(t.clone()),
    };
    let registry = crate::plugins::Registry::load(&dirs);
    // A plugin file named on the command line: its own problems only, not its neighbours'.
    let file = args.target.as_deref().filter(|t| t.ends_with(".sh")).map(PathBuf::from);
    for p in registry.problems().iter().filter(|p| file.as_ref().is_none_or(|f| *f == p.path)) {
        eprintln!("warning: {p}");
    }
    let inventory = match &args.host {
        None => crate::inventory::Inventory::embedded_default()
            .map(std::sync::Arc::new)
            .map_err(|e| e.iter().map(ToString::to_string).collect()),
        Some(_) => super::load_inventory(args.inventory.as_ref()),
    };
    let inventory = match inventory {
        Ok(i) => i,
        Err(problems) => return usage(problems.join("; ")),
    };
    let mut cli_args = std::collections::BTreeMap::new();
    for kv in &args.arg {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                cli_args.insert(k.to_owned(), v.to_owned());
            }
            _ => return usage(format!("--arg `{kv}`: expected KEY=VALUE")),
        }
    }
    let expect = match args.expect.as_deref().map(golden::read_expectation).transpose() {
        Ok(e) => e,
        Err(e) => return usage(e.to_string()),
    };

    let mut cases: Vec<Case> = Vec::new();
    let mut reports: Vec<CaseReport> = Vec::new();
    let add_cases_of = |plugin: &str, action: &str, cases: &mut Vec<Case>, reports: &mut Vec<CaseReport>| {
        let (files, problems) = golden::case_files(&dirs, plugin);
        reports.extend(problems.iter().map(|e| CaseReport::broken(action, "-", e)));
        for file in files {
            match golden::read_case(action, &file) {
                Ok(case) => cases.push(case),
                Err(e) => {
                    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    reports.push(CaseReport::broken(action, name.trim_end_matches(golden::INPUT_SUFFIX), &e));
                }
            }
        }
    };
    match &target {
        TestTarget::All => {
            for plugin in golden::plugins_with_cases(&dirs) {
                add_cases_of(&plugin, &plugin, &mut cases, &mut reports);
            }
        }
        TestTarget::Case { action, input } => {
            let case = match (golden::read_input(input), expect) {
                (Err(e), _) => return usage(e.to_string()),
                (Ok(input_doc), Some(expect)) => {
                    let name = input.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    let name = name.trim_end_matches(golden::INPUT_SUFFIX).to_owned();
                    Case { action: action.clone(), name, input: input_doc, cli_args, expect: Some(expect) }
                }
                (Ok(input_doc), None) => match golden::read_case(action, input) {
                    Ok(case) => Case {
                        cli_args,
                        input: CaseInput { dry_run: input_doc.dry_run || args.dry_run, ..case.input },
                        ..case
                    },
                    Err(e) => return usage(e.to_string()),
                },
            };
            cases.push(case);
        }
        TestTarget::Plugin(action) if single => {
            let mut input = match args.input.as_deref().map(golden::read_input).transpose() {
                Ok(i) => i.unwrap_or_default(),
                Err(e) => return usage(e.to_string()),
            };
            input.dry_run |= args.dry_run;
            cases.push(Case { action: action.clone(), name: "(command line)".into(), input, cli_args, expect });
        }
        TestTarget::Plugin(action) => {
            let plugin = action.split('@').next().unwrap_or(action).to_owned();
            add_cases_of(&plugin, action, &mut cases, &mut reports);
            if cases.is_empty() && reports.is_empty() {
                // No golden case yet: one run with the defaults, judged on its own.
                eprintln!("note: no cases in <plugins dir>/tests/{plugin}/: one run with the default arguments");
                let input = CaseInput::default();
                cases.push(Case { action: action.clone(), name: "(defaults)".into(), input, cli_args, expect: None });
            }
        }
    }
    if cases.is_empty() && reports.is_empty() {
        return usage("no golden cases found (<plugins dir>/tests/<plugin>/<case>.input.json)".into());
    }

    let tester = Tester::new(std::sync::Arc::new(registry), inventory, args.host.clone(), golden::stubs_dir(&dirs));
    for case in &cases {
        reports.push(tester.run(case).await);
    }
    match args.output {
        OutputFormat::Json => println!("{}", golden::json_report(&reports)),
        OutputFormat::Pretty => println!("{}", golden::pretty_report(&reports)),
    }
    // A single run without expectation that RUNE refused is bad usage, as with `rune run`.
    let refused = |r: &CaseReport| r.actual.get("error").and_then(serde_json::Value::as_str) == Some("invalid_request");
    if let [only] = reports.as_slice()
        && cases.first().is_some_and(|c| c.expect.is_none())
        && refused(only)
    {
        return EXIT_USAGE;
    }
    golden::exit_code(&reports)
}

fn new(name: &str, class: NewClass, dirs: &PluginDirs) -> i32 {
    let plugin_dirs = dirs.dirs_or_default();
    let Some(dir) = plugin_dirs.first() else { return EXIT_USAGE };
    if !crate::plugins::valid_name(name) {
        eprintln!("error: `{name}` is not a plugin name (a-z, 0-9 and -, starting with a letter or digit, at most 63)");
        return EXIT_USAGE;
    }
    if dirs.load().resolve(name).is_ok() {
        eprintln!("error: a plugin named {name} exists already in {}", plugin_dirs_text(&plugin_dirs));
        return EXIT_USAGE;
    }
    let class = match class {
        NewClass::Diagnostic => crate::bpcs::SafetyClass::Diagnostic,
        NewClass::Remediation => crate::bpcs::SafetyClass::Remediation,
    };
    let files = crate::scaffold::files(dir, name, class);
    if let Err(e) = crate::scaffold::write(&files) {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    for f in &files {
        println!("created {}", f.path.display());
    }
    if !plugin_dirs.iter().any(|d| d.join("lib/bpcs.sh").is_file()) {
        eprintln!(
            "note: no lib/bpcs.sh in the plugin dirs: add RUNE's plugins dir (--plugins-dir {}:plugins)",
            dir.display()
        );
    }
    println!(
        "next: edit {}/{name}.sh, then `rune plugin lint` and `rune plugin test {name}` (docs/plugins.md);",
        dir.display()
    );
    println!("      when it declares `requires`, add a case that hides one of them (a precondition failure).");
    EXIT_OK
}

fn plugin_dirs_text(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
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
