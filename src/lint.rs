//! `rune plugin lint`: checks plugin files without running them — the registry's header validation, BPCS static
//! checks on the bash body (docs/plugin-lint.md lists every check and its code), and shellcheck when installed.
//!
//! The body checks read bash through a small lexer ([`lex`]): quotes, comments, `$(…)`, `${…}`, `[[ … ]]`,
//! here-documents, case patterns and command wrappers (`timeout`, `sudo`, `env`…) are understood well enough to
//! find each simple command and its words, and the `$RUNE_*` expansions outside single quotes and comments. It is
//! an approximation of bash, tuned to report nothing it is not sure of: each check looks for a plain pattern
//! (`set -x`, `exit 124`, `systemctl restart`), never for what a variable might hold at run time.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::bpcs::SafetyClass;
use crate::plugins::{self, MAX_PLUGIN_BYTES, Plugin};

/// How bad a finding is: an error fails the lint (exit 1), a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem, at a file and line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub path: PathBuf,
    /// 1-based; a problem of the whole file (too large, not UTF-8) is at line 1.
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    pub severity: Severity,
    /// The check (docs/plugin-lint.md), or shellcheck's `SC1234`.
    pub code: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)?;
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        write!(f, ": {}: {}: {}", self.severity, self.code, self.message)
    }
}

/// Why a lint could not be carried out (exit 2), as opposed to what it found.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error("{path}: cannot read: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("shellcheck failed: {0}")]
    Shellcheck(String),
}

/// Whether shellcheck took part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellcheckRun {
    Ran,
    NotInstalled,
    Disabled,
}

/// What one lint found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub files: Vec<PathBuf>,
    pub findings: Vec<Finding>,
    pub shellcheck: ShellcheckRun,
}

impl Report {
    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == severity).count()
    }
}

/// How to lint.
#[derive(Debug, Clone, Default)]
pub struct LintOptions {
    /// Directories whose `lib/` holds the helpers a plugin sources from `$RUNE_LIB` (after the plugin's own
    /// `<dir>/lib`).
    pub plugin_dirs: Vec<PathBuf>,
    pub shellcheck: bool,
}

/// The plugin files named by `paths`: a file as given, a directory's `*.sh` files (not recursive, so its `lib/`
/// helpers are not taken for plugins), sorted. A path that cannot be read is an error.
pub fn plugin_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LintError> {
    let unreadable = |path: &Path, source| LintError::Unreadable { path: path.to_owned(), source };
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| unreadable(path, e))?;
        if !meta.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| unreadable(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sh") && p.is_file())
            .collect();
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Lints `files`: each one's header and body, then shellcheck over all of them when asked and installed.
pub fn lint_files(files: &[PathBuf], options: &LintOptions) -> Result<Report, LintError> {
    let mut findings = Vec::new();
    for path in files {
        let bytes = read_bounded(path).map_err(|source| LintError::Unreadable { path: path.clone(), source })?;
        findings.extend(lint_source(path, bytes, &options.plugin_dirs));
    }
    let shellcheck = if !options.shellcheck || files.is_empty() {
        ShellcheckRun::Disabled
    } else {
        match shellcheck(files)? {
            Some(found) => {
                findings.extend(found);
                ShellcheckRun::Ran
            }
            None => ShellcheckRun::NotInstalled,
        }
    };
    findings.sort_by(|a, b| (&a.path, a.line, &a.code).cmp(&(&b.path, b.line, &b.code)));
    Ok(Report { files: files.to_vec(), findings, shellcheck })
}

/// At most one byte past the registry's limit: enough for `parse_plugin` to say the file is too large.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_PLUGIN_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Lints one plugin's contents (read by the caller): the header as the registry validates it, then the body
/// checks. Helpers the plugin sources from `$RUNE_LIB` are looked for in `<plugin dir>/lib` and `<dir>/lib` of
/// each of `plugin_dirs`; what they do counts as the plugin's, reported at the line that sources them.
pub fn lint_source(path: &Path, bytes: Vec<u8>, plugin_dirs: &[PathBuf]) -> Vec<Finding> {
    let text = String::from_utf8(bytes.clone()).ok();
    let mut findings = Vec::new();
    let plugin = match plugins::parse_plugin(path, bytes) {
        Ok(p) => Some(p),
        Err(errors) => {
            findings.extend(errors.into_iter().map(|e| Finding {
                path: e.path,
                line: e.line.unwrap_or(1),
                column: e.column,
                severity: Severity::Error,
                code: "header".into(),
                message: e.message,
            }));
            None
        }
    };
    // Not text: the header error says so, and there is no body to read.
    let Some(text) = text.filter(|t| !t.contains('\0')) else { return findings };
    let mut lib_dirs: Vec<PathBuf> = path.parent().map(|d| d.join("lib")).into_iter().collect();
    lib_dirs.extend(plugin_dirs.iter().map(|d| d.join("lib")));
    let body = Body::read(&text, &lib_dirs);
    let mut checks = Checks { path, text: &text, body: &body, plugin: plugin.as_ref(), findings: Vec::new() };
    checks.run();
    findings.extend(checks.findings);
    findings
}

// ---------------------------------------------------------------------------------------------------------------
// The body: commands and variable reads of the plugin and the helpers it sources.

/// One simple command, as its words (quotes kept, so `"$x"` stays `"$x"`) from the command's name on: keywords,
/// assignments and wrappers before it are dropped ([`command_name`]).
#[derive(Debug, Clone)]
struct Command {
    /// Line in the plugin (for a helper's command: the line sourcing the helper).
    line: u64,
    words: Vec<String>,
    /// Run through `sudo`.
    sudo: bool,
    /// `lib/restart.sh:73` when the command is a helper's.
    via: Option<String>,
}

/// A `$RUNE_…` expansion (or `[[ -v RUNE_… ]]`) outside single quotes and comments.
#[derive(Debug, Clone)]
struct VarRead {
    line: u64,
    name: String,
    via: Option<String>,
}

#[derive(Debug, Default)]
struct Body {
    commands: Vec<Command>,
    reads: Vec<VarRead>,
    /// `RUNE_*` variables the script assigns itself.
    assigned: BTreeSet<String>,
    /// Lines naming `BASH_XTRACEFD` outside comments.
    xtrace_fd: Vec<(u64, Option<String>)>,
    /// Functions that test whether their first argument is a command (`has() { command -v "$1"…; }`).
    guard_functions: BTreeSet<String>,
}

static VAR_READ_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\{?[#!]?(RUNE_[A-Za-z0-9_]*[A-Za-z0-9])").unwrap_or_else(|_| unreachable!("valid regex"))
});
static ASSIGN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(RUNE_[A-Za-z0-9_]+)(\[[^]]*\])?\+?=").unwrap_or_else(|_| unreachable!("valid regex"))
});
static GUARD_FN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?s)([A-Za-z_][A-Za-z0-9_-]*)\s*\(\)\s*\{[^}]*?(command\s+-[vV]|type\s+-[pP]|hash)\s+"?\$\{?1"#)
        .unwrap_or_else(|_| unreachable!("valid regex"))
});
static LIB_SOURCE_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^"?\$\{?RUNE_LIB\}?/([A-Za-z0-9][A-Za-z0-9._+-]*\.sh)"?$"#)
        .unwrap_or_else(|_| unreachable!("valid regex"))
});

impl Body {
    /// Reads the plugin text and, once each, the helpers it sources (but `bpcs.sh`, RUNE's own).
    fn read(text: &str, lib_dirs: &[PathBuf]) -> Body {
        let mut body = Body::default();
        let mut seen = BTreeSet::new();
        body.add(text, None, lib_dirs, &mut seen);
        body
    }

    /// Adds the facts of `text`; `from` is (line in the plugin, helper name) for a helper.
    fn add(&mut self, text: &str, from: Option<(u64, &str)>, lib_dirs: &[PathBuf], seen: &mut BTreeSet<String>) {
        let lexed = lex(text);
        let place = |line: u64| -> (u64, Option<String>) {
            match from {
                None => (line, None),
                Some((at, name)) => (at, Some(format!("lib/{name}:{line}"))),
            }
        };
        for cap in GUARD_FN_RE.captures_iter(&lexed.expanding) {
            if let Some(name) = cap.get(1) {
                self.guard_functions.insert(name.as_str().to_owned());
            }
        }
        for m in VAR_READ_RE.captures_iter(&lexed.expanding) {
            if let (Some(all), Some(name)) = (m.get(0), m.get(1)) {
                let (line, via) = place(lexed.line_of(all.start()));
                self.reads.push(VarRead { line, name: name.as_str().to_owned(), via });
            }
        }
        for (offset, _) in lexed.expanding.match_indices("BASH_XTRACEFD") {
            self.xtrace_fd.push(place(lexed.line_of(offset)));
        }
        for command in &lexed.commands {
            let (line, via) = place(command.line);
            for (i, word) in command.words.iter().enumerate() {
                if let Some(cap) = ASSIGN_RE.captures(word).and_then(|c| c.get(1)) {
                    self.assigned.insert(cap.as_str().to_owned());
                }
                // `[[ -v RUNE_ARG_x ]]` reads a variable by name.
                if word == "-v"
                    && i > 0
                    && command.words[..i].iter().any(|w| w == "[[")
                    && let Some(name) = command.words.get(i + 1).filter(|n| n.starts_with("RUNE_"))
                {
                    self.reads.push(VarRead { line, name: name.clone(), via: via.clone() });
                }
            }
            let words = command_name(&command.words);
            let prefix = &command.words[..command.words.len() - words.len()];
            let sudo = prefix.iter().any(|w| w == "sudo") || words.first().is_some_and(|w| w == "sudo");
            let command = Command { line, words: words.to_vec(), sudo, via: via.clone() };
            self.commands.push(command);
            let Some(command) = self.commands.last() else { continue };
            // A helper sourced from $RUNE_LIB: its commands count as the plugin's (one level of name lookup, each
            // helper once).
            let Some(name) = sourced_lib(&command.words) else { continue };
            if name == "bpcs.sh" || !seen.insert(name.clone()) {
                continue;
            }
            let line = command.line;
            let Some(helper) = lib_dirs.iter().find_map(|d| std::fs::read_to_string(d.join(&name)).ok()) else {
                continue;
            };
            self.add(&helper, Some((line, &name)), lib_dirs, seen);
        }
    }

    fn calls(&self, name: &str) -> bool {
        self.commands.iter().any(|c| c.words.first().is_some_and(|w| w == name))
    }
}

/// The helper a `. "$RUNE_LIB/x.sh"` / `source …` command loads.
fn sourced_lib(words: &[String]) -> Option<String> {
    let (first, arg) = (words.first()?, words.get(1)?);
    if first != "." && first != "source" {
        return None;
    }
    LIB_SOURCE_RE.captures(arg).and_then(|c| c.get(1)).map(|m| m.as_str().to_owned())
}

// ---------------------------------------------------------------------------------------------------------------
// The checks.

/// RUNE_* variables BPCS defines (docs/bpcs.md, section 3), besides `RUNE_ARG_<name>`.
const BPCS_VARIABLES: &[&str] = &[
    "RUNE_BPCS",
    "RUNE_RUN_ID",
    "RUNE_CORRELATION_ID",
    "RUNE_ACTION",
    "RUNE_HOST",
    "RUNE_DRY_RUN",
    "RUNE_TIMEOUT",
    "RUNE_LIB",
    "RUNE_INPUT",
    "RUNE_PLUGIN",
];

/// Commands a host may lack (neither bash nor coreutils, which BPCS assumes): used unguarded, they belong in
/// `requires`, so a missing one is `precondition_failed` before the plugin starts, not a 127 halfway through.
const TOOLS: &[&str] = &[
    "systemctl",
    "journalctl",
    "docker",
    "podman",
    "nomad",
    "consul",
    "vault",
    "kubectl",
    "crictl",
    "ctr",
    "curl",
    "wget",
    "jq",
    "python3",
    "python",
    "perl",
    "iptables",
    "nft",
    "ip",
    "ss",
    "apt-get",
    "yum",
    "dnf",
    "rpm",
    "dpkg",
    // Not coreutils either, though most hosts have them (findutils, grep, sed, gawk/mawk, procps).
    "find",
    "xargs",
    "grep",
    "sed",
    "awk",
    "ps",
    "pgrep",
    "pkill",
];

/// Commands that test for a command without running it (`command -v X`, `type -P X`, `hash X`, `which X`).
const GUARDS: &[&str] = &["command", "type", "hash", "which"];

/// Words that precede a command without being it; each skip rule in [`command_name`].
const KEYWORDS: &[&str] = &["if", "then", "elif", "else", "do", "while", "until", "!", "{", "}", "time", "function"];

struct Checks<'a> {
    path: &'a Path,
    text: &'a str,
    body: &'a Body,
    plugin: Option<&'a Plugin>,
    findings: Vec<Finding>,
}

/// What a command does that the checks care about.
enum Effect {
    /// Changes the host.
    Mutates,
    /// Changes the host and needs root to do it.
    MutatesAsRoot,
}

impl Checks<'_> {
    fn report(&mut self, line: u64, severity: Severity, code: &str, message: String, via: Option<&String>) {
        let message = match via {
            Some(via) => format!("{message} (in {via})"),
            None => message,
        };
        self.findings.push(Finding {
            path: self.path.to_owned(),
            line,
            column: None,
            severity,
            code: code.to_owned(),
            message,
        });
    }

    fn run(&mut self) {
        self.lib_and_output();
        self.commands();
        self.variables();
        if let Some(plugin) = self.plugin {
            self.dry_run(plugin);
        }
    }

    /// `no-bpcs-lib`, `hand-json`, `no-finish`.
    fn lib_and_output(&mut self) {
        let body = self.body;
        let sources = body.commands.iter().any(|c| sourced_lib(&c.words).as_deref() == Some("bpcs.sh"));
        let helper_call = body.commands.iter().find(|c| c.words.first().is_some_and(|w| w.starts_with("bpcs_")));
        if !sources {
            match helper_call {
                Some(call) => self.report(
                    call.line,
                    Severity::Error,
                    "no-bpcs-lib",
                    format!(
                        "`{}` is called but the plugin never sources \"$RUNE_LIB/bpcs.sh\" (the call would fail with 127)",
                        call.words[0]
                    ),
                    call.via.as_ref(),
                ),
                None => self.report(
                    self.header_end(),
                    Severity::Warning,
                    "no-bpcs-lib",
                    "the plugin does not source \"$RUNE_LIB/bpcs.sh\": build the result with its helpers".into(),
                    None,
                ),
            }
        }
        let mut hand_json = false;
        for c in &body.commands {
            let Some(first) = c.words.first() else { continue };
            if (first == "echo" || first == "printf") && c.words[1..].iter().any(|w| JSON_KEY_RE.is_match(w)) {
                hand_json = true;
                self.report(
                    c.line,
                    Severity::Warning,
                    "hand-json",
                    format!("result JSON written by hand with `{first}`: use `bpcs_finish` (it escapes and validates)"),
                    c.via.as_ref(),
                );
            }
        }
        if !hand_json && !body.calls("bpcs_finish") {
            self.report(
                self.header_end(),
                Severity::Warning,
                "no-finish",
                "the plugin never calls `bpcs_finish`: every path should end with it (one JSON object on stdout)"
                    .into(),
                None,
            );
        }
    }

    /// Per-command checks: `xtrace`, `reserved-exit`, `eval-arg`, `sudo`, `missing-requires`,
    /// `mutating-diagnostic`, `needs-root`.
    fn commands(&mut self) {
        let body = self.body;
        let guarded = self.guarded();
        let mut told_requires = BTreeSet::new();
        for (line, via) in &body.xtrace_fd {
            self.report(*line, Severity::Error, "xtrace", XTRACE_WHY.into(), via.as_ref());
        }
        for c in &body.commands {
            let words = &c.words;
            let Some(name) = words.first().map(String::as_str) else { continue };
            let args = &words[1..];
            if is_xtrace(name, args) {
                let shown = words.iter().take(4).cloned().collect::<Vec<_>>().join(" ");
                self.report(c.line, Severity::Error, "xtrace", format!("`{shown}`: {XTRACE_WHY}"), c.via.as_ref());
            }
            if name == "exit"
                && let Some(code) = args.first().and_then(|a| unquote(a).parse::<i64>().ok())
                && (120..=127).contains(&code)
            {
                self.report(
                    c.line,
                    Severity::Error,
                    "reserved-exit",
                    format!("`exit {code}`: exit codes 120..=127 belong to the RUNE runner; use 1..=119"),
                    c.via.as_ref(),
                );
            }
            if name == "eval" && args.iter().any(|a| a.contains("RUNE_") || a.contains("bpcs_arg")) {
                self.report(
                    c.line,
                    Severity::Error,
                    "eval-arg",
                    "`eval` of a RUNE variable: values are data, never code (docs/bpcs.md, section 3)".into(),
                    c.via.as_ref(),
                );
            }
            if c.sudo {
                self.report(
                    c.line,
                    Severity::Warning,
                    "sudo",
                    "`sudo` inside a plugin: declare `needs_root: true` and RUNE runs it as root (processes started \
                     through sudo escape the end-of-run sweep)"
                        .into(),
                    c.via.as_ref(),
                );
            }
            let Some(plugin) = self.plugin else { continue };
            if TOOLS.contains(&name)
                && !plugin.requires.iter().any(|r| r == name)
                && !guarded.contains(name)
                && told_requires.insert(name.to_owned())
            {
                self.report(
                    c.line,
                    Severity::Warning,
                    "missing-requires",
                    match self.find_header_line("requires") {
                        Some(at) => format!(
                            "`{name}` is used but not listed in `requires` (line {at}), nor tested with `command -v`"
                        ),
                        None => format!(
                            "`{name}` is used but the header has no `requires`, nor is it tested with `command -v`"
                        ),
                    },
                    c.via.as_ref(),
                );
            }
            let Some(effect) = effect(name, args) else { continue };
            let shown = words.iter().take(3).map(|w| unquote(w)).collect::<Vec<_>>().join(" ");
            if plugin.class == SafetyClass::Diagnostic {
                self.report(
                    c.line,
                    Severity::Warning,
                    "mutating-diagnostic",
                    format!(
                        "`{shown}` changes the host, but the header says `class: diagnostic` (line {}): make it \
                         `remediation`",
                        self.header_line("class")
                    ),
                    c.via.as_ref(),
                );
            }
            if matches!(effect, Effect::MutatesAsRoot) && !plugin.needs_root {
                self.report(
                    c.line,
                    Severity::Warning,
                    "needs-root",
                    format!("`{shown}` needs root, but the header does not declare `needs_root: true`"),
                    c.via.as_ref(),
                );
            }
        }
    }

    /// `undeclared-arg`, `unknown-variable`.
    fn variables(&mut self) {
        let body = self.body;
        let mut reads: Vec<(u64, String, Option<String>)> =
            body.reads.iter().map(|r| (r.line, r.name.clone(), r.via.clone())).collect();
        // `bpcs_arg NAME` reads RUNE_ARG_NAME.
        for c in &body.commands {
            if c.words.first().is_some_and(|w| w == "bpcs_arg")
                && let Some(name) = c.words.get(1).map(|w| unquote(w))
                && !name.contains('$')
            {
                reads.push((c.line, format!("RUNE_ARG_{name}"), c.via.clone()));
            }
        }
        let mut told = BTreeSet::new();
        for (line, name, via) in reads {
            if body.assigned.contains(&name) || !told.insert((line, name.clone())) {
                continue;
            }
            if let Some(arg) = name.strip_prefix("RUNE_ARG_") {
                let Some(plugin) = self.plugin else { continue };
                if !plugin.args.contains_key(arg) {
                    let declared = if plugin.args.is_empty() {
                        "none".to_owned()
                    } else {
                        plugin.args.keys().cloned().collect::<Vec<_>>().join(", ")
                    };
                    self.report(
                        line,
                        Severity::Error,
                        "undeclared-arg",
                        format!(
                            "`{name}` reads argument `{arg}`, which `args` does not declare (declared: {declared})"
                        ),
                        via.as_ref(),
                    );
                }
            } else if !BPCS_VARIABLES.contains(&name.as_str()) {
                self.report(
                    line,
                    Severity::Warning,
                    "unknown-variable",
                    format!(
                        "`{name}` is not a BPCS variable, and the plugin does not set it (docs/bpcs.md, section 3)"
                    ),
                    via.as_ref(),
                );
            }
        }
    }

    /// `no-dry-run`: a remediation plugin that never looks at the dry-run flag changes the host in a dry run.
    fn dry_run(&mut self, plugin: &Plugin) {
        let body = self.body;
        if plugin.class != SafetyClass::Remediation {
            return;
        }
        if body.calls("bpcs_dry_run") || body.reads.iter().any(|r| r.name == "RUNE_DRY_RUN") {
            return;
        }
        self.report(
            self.header_line("class"),
            Severity::Warning,
            "no-dry-run",
            "a remediation plugin that never checks `bpcs_dry_run`: in a dry run it MUST change nothing".into(),
            None,
        );
    }

    /// Commands tested before use: arguments of `command -v`, `type`, `hash`, `which` and of the script's own
    /// guard functions (`has docker`).
    fn guarded(&self) -> BTreeSet<&'static str> {
        let mut guarded = BTreeSet::new();
        for c in &self.body.commands {
            let Some(first) = c.words.first() else { continue };
            let is_guard = match first.as_str() {
                "command" => c.words.get(1).is_some_and(|w| w == "-v" || w == "-V"),
                f => GUARDS.contains(&f) || self.body.guard_functions.contains(f),
            };
            if is_guard {
                guarded.extend(c.words[1..].iter().map(|w| unquote(w)).filter_map(|w| TOOLS.iter().find(|t| **t == w)));
            }
        }
        guarded.into_iter().copied().collect()
    }

    /// The line of the header key `key` (`# key:`), else the header's first line.
    fn header_line(&self, key: &str) -> u64 {
        self.find_header_line(key).unwrap_or(2)
    }

    fn find_header_line(&self, key: &str) -> Option<u64> {
        let prefix = format!("# {key}:");
        self.text.lines().take_while(|l| l.starts_with('#')).position(|l| l.starts_with(&prefix)).map(|i| i as u64 + 1)
    }

    /// The line closing the header (`# ---`), where findings about the whole body are reported.
    fn header_end(&self) -> u64 {
        self.text
            .lines()
            .enumerate()
            .skip(2)
            .take_while(|(_, l)| l.starts_with('#'))
            .find(|(_, l)| l.trim_end() == "# ---")
            .map_or(1, |(i, _)| i as u64 + 1)
    }
}

static JSON_KEY_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\\?"(bpcs|status|summary|changed)\\?"\s*:"#).unwrap_or_else(|_| unreachable!("valid regex"))
});

const XTRACE_WHY: &str =
    "xtrace prints every command with its argument values (secrets too) to stderr, which lands in the result";

/// `set -x`, `set -o xtrace`, `set -euxo pipefail`, `shopt -os xtrace`, `bash -x script`.
fn is_xtrace(name: &str, args: &[String]) -> bool {
    let short_x = |a: &String| {
        a.starts_with('-') && !a.starts_with("--") && a[1..].chars().all(|c| c.is_ascii_alphabetic()) && a.contains('x')
    };
    match name {
        "set" => args.iter().any(short_x) || args.iter().any(|a| unquote(a) == "xtrace"),
        "shopt" => args.iter().any(|a| unquote(a) == "xtrace"),
        "bash" | "sh" => args.iter().take_while(|a| a.starts_with('-')).any(|a| short_x(a) || unquote(a) == "xtrace"),
        _ => false,
    }
}

/// What `name args…` changes on the host, for the commands the checks know.
fn effect(name: &str, args: &[String]) -> Option<Effect> {
    let words: Vec<String> = args.iter().map(|a| unquote(a)).collect();
    let verb = words.iter().find(|w| !w.starts_with('-')).map(String::as_str).unwrap_or_default();
    let user = words.iter().any(|w| w == "--user");
    match name {
        "systemctl" => {
            let mutating = [
                "restart",
                "stop",
                "start",
                "reload",
                "try-restart",
                "reload-or-restart",
                "kill",
                "enable",
                "disable",
                "mask",
                "unmask",
                "isolate",
                "reboot",
                "poweroff",
                "halt",
                "daemon-reload",
                "set-property",
                "reset-failed",
            ];
            if !mutating.contains(&verb) {
                None
            } else if user {
                Some(Effect::Mutates)
            } else {
                Some(Effect::MutatesAsRoot)
            }
        }
        "service" => {
            let action = words.iter().filter(|w| !w.starts_with('-')).nth(1).map(String::as_str).unwrap_or_default();
            ["start", "stop", "restart", "reload", "force-reload"].contains(&action).then_some(Effect::MutatesAsRoot)
        }
        "reboot" | "shutdown" | "poweroff" | "halt" => Some(Effect::MutatesAsRoot),
        "docker" | "podman" => {
            let mutating =
                ["restart", "stop", "start", "kill", "rm", "rmi", "pause", "unpause", "prune", "run", "update"];
            let prune = words.iter().any(|w| w == "prune");
            (mutating.contains(&verb) || prune).then_some(Effect::Mutates)
        }
        "nomad" => {
            let sub = words.iter().filter(|w| !w.starts_with('-')).nth(1).map(String::as_str).unwrap_or_default();
            let mutating = matches!(
                (verb, sub),
                ("job", "stop" | "run" | "dispatch" | "revert" | "scale" | "promote")
                    | ("node", "drain" | "eligibility")
                    | ("alloc", "restart" | "stop" | "signal")
                    | ("system", "gc")
            );
            mutating.then_some(Effect::Mutates)
        }
        "kubectl" => {
            let mutating =
                ["delete", "apply", "create", "scale", "drain", "cordon", "uncordon", "rollout", "patch", "edit"];
            mutating.contains(&verb).then_some(Effect::Mutates)
        }
        "apt-get" | "yum" | "dnf" => ["install", "remove", "purge", "upgrade", "dist-upgrade", "erase", "update"]
            .contains(&verb)
            .then_some(Effect::MutatesAsRoot),
        "iptables" | "ip6tables" => words
            .iter()
            .any(|w| {
                ["-A", "-D", "-I", "-R", "-F", "-X", "-P", "-N", "--append", "--delete", "--insert", "--flush"]
                    .contains(&w.as_str())
            })
            .then_some(Effect::MutatesAsRoot),
        "mount" | "umount" if !words.is_empty() => Some(Effect::MutatesAsRoot),
        // Removing a tree by an absolute path (not the run's own temp files, which live in its working dir).
        "rm" => {
            let recursive = words
                .iter()
                .any(|w| w == "--recursive" || (w.starts_with('-') && !w.starts_with("--") && w.contains(['r', 'R'])));
            let absolute = words.iter().any(|w| w.starts_with('/') && !w.starts_with("/tmp/"));
            (recursive && absolute).then_some(Effect::Mutates)
        }
        _ => None,
    }
}

/// The words of a command from its real name on: leading assignments, keywords and wrappers (`timeout 10`,
/// `sudo -n`, `env A=1`, `nohup`, `exec`, `command`) are skipped; a guard (`command -v x`) stays `command`.
fn command_name(words: &[String]) -> &[String] {
    let mut i = 0;
    loop {
        let Some(word) = words.get(i) else { return &words[words.len()..] };
        let w = word.as_str();
        // Keywords, assignments, and a function's header (`name() {`, `function name {`).
        if KEYWORDS.contains(&w) || is_assignment(w) || w.ends_with("()") {
            i += if w == "function" { 2 } else { 1 };
            continue;
        }
        let rest = &words[i + 1..];
        let options = |with_value: &[&str]| -> usize {
            let mut n = 0;
            while let Some(o) = rest.get(n) {
                if !o.starts_with('-') || o == "--" {
                    return n + usize::from(o == "--");
                }
                n += if with_value.contains(&o.as_str()) { 2 } else { 1 };
            }
            n
        };
        let skip = match w {
            // timeout [options] DURATION command
            "timeout" => options(&["-k", "-s"]) + 1,
            "sudo" => options(&["-u", "-g", "-C", "-h", "-p", "-U", "-D", "-R", "-T"]),
            "nice" => options(&["-n"]),
            "ionice" => options(&["-c", "-n", "-t"]),
            "nohup" | "exec" | "builtin" | "stdbuf" | "setsid" => options(&[]),
            "env" => {
                let mut n = options(&["-u", "-C", "-S"]);
                while rest.get(n).is_some_and(|a| is_assignment(a)) {
                    n += 1;
                }
                n
            }
            "command" if !rest.first().is_some_and(|o| o == "-v" || o == "-V") => options(&[]),
            _ => return &words[i..],
        };
        i += 1 + skip;
    }
}

fn is_assignment(word: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=").unwrap_or_else(|_| unreachable!("valid regex"))
    });
    RE.is_match(word)
}

/// A word without its quotes (`"$x"` → `$x`, `'a b'` → `a b`); escapes stay.
fn unquote(word: &str) -> String {
    word.chars().filter(|c| *c != '"' && *c != '\'').collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The lexer.

/// A script read by [`lex`].
struct Lexed {
    commands: Vec<LexedCommand>,
    /// The text with comments and single-quoted text blanked (newlines kept): where `$VAR` expands.
    expanding: String,
    line_starts: Vec<usize>,
}

struct LexedCommand {
    line: u64,
    words: Vec<String>,
}

impl Lexed {
    fn line_of(&self, offset: usize) -> u64 {
        self.line_starts.partition_point(|s| *s <= offset) as u64
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Code,
    Comment,
    /// Single quotes, `$'…'`, a quoted here-document: no expansion.
    Literal,
    /// Double quotes, an unquoted here-document: `$VAR` expands.
    Expanding,
}

/// What ends a nested command list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    /// `)` of `$(…)`, `<(…)`.
    Paren,
    Backtick,
}

/// Deepest nesting of `$(…)`, quotes and `${…}` read as such; deeper text is skipped as one span (a hostile
/// file of nested `$(` must not exhaust the stack).
const MAX_DEPTH: usize = 64;

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
    class: Vec<Class>,
    commands: Vec<LexedCommand>,
    /// Here-documents whose bodies start at the next newline: (delimiter, strip tabs, expands).
    heredocs: Vec<(String, bool, bool)>,
    /// `case … in` statements open (their `esac` not seen yet).
    cases: usize,
    /// Reading a case pattern (after `in` or `;;`, up to its `)`): `|` separates alternatives, not commands.
    pattern: bool,
}

/// Reads bash text into its simple commands and a map of what is quoted or commented.
fn lex(text: &str) -> Lexed {
    let s = text.as_bytes();
    let mut lexer = Lexer {
        s,
        i: 0,
        depth: 0,
        cases: 0,
        pattern: false,
        class: vec![Class::Code; s.len()],
        commands: Vec::new(),
        heredocs: Vec::new(),
    };
    lexer.list(End::Eof);
    let mut line_starts = vec![0];
    line_starts.extend(s.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1));
    let blank = |keep: &dyn Fn(Class) -> bool| -> String {
        let bytes: Vec<u8> =
            s.iter().zip(&lexer.class).map(|(b, c)| if *b == b'\n' || keep(*c) { *b } else { b' ' }).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let expanding = blank(&|c| matches!(c, Class::Code | Class::Expanding));
    let mut commands = lexer.commands;
    for c in &mut commands {
        c.line = line_starts.partition_point(|s| *s as u64 <= c.line) as u64;
    }
    Lexed { commands, expanding, line_starts }
}

/// The command being read: its words and where its first word starts.
#[derive(Default)]
struct Pending {
    words: Vec<String>,
    start: Option<usize>,
    word_start: Option<usize>,
    /// Inside `[[ … ]]`: `(`, `)`, `|`, `<`, `>` are part of words.
    dbracket: bool,
    /// The next word is a redirection target (dropped) or a here-document delimiter.
    redirect: Option<Redirect>,
}

#[derive(Clone, Copy)]
enum Redirect {
    Target,
    Heredoc { strip_tabs: bool },
}

impl Lexer<'_> {
    /// Moves on `n` bytes, never past the end.
    fn advance(&mut self, n: usize) {
        self.i = (self.i + n).min(self.s.len());
    }

    /// A nested command list (`$(…)`, backticks, `<(…)`), or at [`MAX_DEPTH`] a span skipped to its end.
    fn nested(&mut self, end: End) {
        if self.depth >= MAX_DEPTH {
            let close = if end == End::Backtick { b'`' } else { b')' };
            while self.i < self.s.len() && self.s[self.i] != close {
                self.i += 1;
            }
            self.advance(1);
            return;
        }
        self.depth += 1;
        self.list(end);
        self.depth -= 1;
    }

    fn peek(&self, n: usize) -> u8 {
        self.s.get(self.i + n).copied().unwrap_or(0)
    }

    fn mark(&mut self, from: usize, to: usize, class: Class) {
        let to = to.min(self.class.len());
        for c in &mut self.class[from.min(to)..to] {
            *c = class;
        }
    }

    fn start_word(&self, p: &mut Pending) {
        if p.word_start.is_none() {
            p.word_start = Some(self.i);
        }
    }

    fn end_word(&mut self, p: &mut Pending) {
        let Some(start) = p.word_start.take() else { return };
        let word = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        match p.redirect.take() {
            Some(Redirect::Target) => return,
            Some(Redirect::Heredoc { strip_tabs }) => {
                let expands = !word.contains(['\'', '"', '\\']);
                self.heredocs.push((unquote(&word).replace('\\', ""), strip_tabs, expands));
                return;
            }
            None => {}
        }
        if word == "[[" {
            p.dbracket = true;
        } else if word == "]]" {
            p.dbracket = false;
        } else if word == "in" && p.words.len() == 2 && p.words[0] == "case" {
            self.cases += 1;
            self.pattern = true;
        } else if word == "esac" && self.cases > 0 {
            self.cases -= 1;
            self.pattern = false;
        }
        if p.start.is_none() {
            p.start = Some(start);
        }
        p.words.push(word);
    }

    fn end_command(&mut self, p: &mut Pending) {
        self.end_word(p);
        if let Some(start) = p.start.take()
            && !p.words.is_empty()
        {
            // `line` holds the byte offset until `lex` turns it into a line number.
            self.commands.push(LexedCommand { line: start as u64, words: std::mem::take(&mut p.words) });
        }
        p.words.clear();
        p.dbracket = false;
        p.redirect = None;
    }

    /// Reads a command list until `end`.
    fn list(&mut self, end: End) {
        let mut p = Pending::default();
        let mut subshells = 0usize;
        while let Some(&c) = self.s.get(self.i) {
            // `]]` followed by an operator (`]];`, `]])`): the test ends there.
            if p.dbracket
                && matches!(c, b';' | b'&' | b'|' | b')' | b'<' | b'>')
                && p.word_start.is_some_and(|s| self.s.get(s..self.i) == Some(b"]]"))
            {
                self.end_word(&mut p);
            }
            match c {
                b'\\' => {
                    if self.peek(1) == b'\n' {
                        // Line continuation: a word boundary, not a command boundary.
                        self.end_word(&mut p);
                        self.i += 2;
                        continue;
                    }
                    self.start_word(&mut p);
                    self.advance(2);
                }
                b'\'' => {
                    self.start_word(&mut p);
                    self.single_quoted(1);
                }
                b'"' => {
                    self.start_word(&mut p);
                    self.double_quoted();
                }
                b'`' if end == End::Backtick => {
                    self.end_command(&mut p);
                    self.i += 1;
                    return;
                }
                b'`' => {
                    self.start_word(&mut p);
                    self.i += 1;
                    self.nested(End::Backtick);
                }
                b'$' => {
                    self.start_word(&mut p);
                    self.dollar();
                }
                b'#' if p.word_start.is_none() => {
                    let from = self.i;
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                    self.mark(from, self.i, Class::Comment);
                }
                b' ' | b'\t' | b'\r' => {
                    self.end_word(&mut p);
                    self.i += 1;
                }
                b'\n' => {
                    self.end_command(&mut p);
                    self.i += 1;
                    self.heredoc_bodies();
                }
                b'|' if self.pattern && !p.dbracket => {
                    self.end_word(&mut p);
                    self.i += 1;
                }
                b';' | b'&' | b'|' if !p.dbracket => {
                    self.end_command(&mut p);
                    let from = self.i;
                    while matches!(self.peek(0), b';' | b'&' | b'|') {
                        self.i += 1;
                    }
                    // `;;`, `;&`, `;;&` end a case branch: a pattern follows.
                    if self.s[from..self.i].starts_with(b";;") || self.s[from..self.i].starts_with(b";&") {
                        self.pattern = self.cases > 0;
                    }
                }
                b'(' if p.word_start.is_some() || p.dbracket => {
                    // Inside a word (`a=(…)`, `@(…)`) or a `[[ =~ (…) ]]` regex: part of the word.
                    self.start_word(&mut p);
                    self.balanced(b'(', b')', Class::Code);
                }
                b'(' if self.peek(1) == b'(' => {
                    self.start_word(&mut p);
                    self.balanced(b'(', b')', Class::Code);
                }
                b'(' => {
                    self.end_command(&mut p);
                    subshells += 1;
                    self.i += 1;
                }
                b')' if p.dbracket => {
                    self.start_word(&mut p);
                    self.i += 1;
                }
                b')' => {
                    if self.pattern {
                        // The end of a `case` pattern (`docker)`, `a | b)`): not a command.
                        p = Pending::default();
                        self.pattern = false;
                    } else if subshells > 0 {
                        subshells -= 1;
                        self.end_command(&mut p);
                    } else if end == End::Paren {
                        self.end_command(&mut p);
                        self.i += 1;
                        return;
                    } else {
                        // Unbalanced: drop what was read.
                        p = Pending::default();
                    }
                    self.i += 1;
                }
                b'<' | b'>' if !p.dbracket => {
                    if self.peek(1) == b'(' {
                        self.start_word(&mut p);
                        self.i += 2;
                        self.nested(End::Paren);
                        continue;
                    }
                    // `2>…`, `{fd}>…`: the number is the redirection's, not a word.
                    if let Some(start) = p.word_start {
                        let w = &self.s[start..self.i];
                        if w.iter().all(u8::is_ascii_digit) || (w.first() == Some(&b'{') && w.last() == Some(&b'}')) {
                            p.word_start = None;
                        } else {
                            self.end_word(&mut p);
                        }
                    }
                    let from = self.i;
                    while matches!(self.peek(0), b'<' | b'>' | b'&' | b'|' | b'-') {
                        self.i += 1;
                    }
                    let op = &self.s[from..self.i];
                    p.redirect = Some(if op.starts_with(b"<<<") {
                        Redirect::Target
                    } else if op.starts_with(b"<<") {
                        Redirect::Heredoc { strip_tabs: op.ends_with(b"-") }
                    } else {
                        Redirect::Target
                    });
                    // `>&2`, `2>&1`: the target is glued to the operator.
                    if op.ends_with(b"&") && self.peek(0).is_ascii_digit() {
                        while self.peek(0).is_ascii_digit() || self.peek(0) == b'-' {
                            self.i += 1;
                        }
                        p.redirect = None;
                    }
                }
                _ => {
                    self.start_word(&mut p);
                    self.i += 1;
                }
            }
        }
        self.end_command(&mut p);
    }

    /// `'…'` (after `skip` bytes of opening), or `$'…'` with its backslash escapes.
    fn single_quoted(&mut self, skip: usize) {
        let from = self.i;
        let escapes = skip == 2;
        self.i += skip;
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            if escapes && c == b'\\' {
                self.advance(1);
            } else if c == b'\'' {
                break;
            }
        }
        self.mark(from, self.i, Class::Literal);
    }

    /// `"…"`, with `$(…)`, `${…}` and backticks inside.
    fn double_quoted(&mut self) {
        self.mark(self.i, self.i + 1, Class::Expanding);
        self.i += 1;
        if self.depth >= MAX_DEPTH {
            while let Some(&c) = self.s.get(self.i) {
                self.mark(self.i, self.i + 1, Class::Expanding);
                self.advance(if c == b'\\' { 2 } else { 1 });
                if c == b'"' {
                    return;
                }
            }
            return;
        }
        self.depth += 1;
        self.double_quoted_body();
        self.depth -= 1;
    }

    fn double_quoted_body(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'\\' => {
                    self.mark(self.i, self.i + 2, Class::Expanding);
                    self.advance(2);
                }
                b'"' => {
                    self.mark(self.i, self.i + 1, Class::Expanding);
                    self.i += 1;
                    return;
                }
                b'$' => self.dollar(),
                b'`' => {
                    self.i += 1;
                    self.nested(End::Backtick);
                }
                _ => {
                    self.mark(self.i, self.i + 1, Class::Expanding);
                    self.i += 1;
                }
            }
        }
    }

    /// At a `$`: `$(…)` (commands), `$((…))`, `${…}`, `$'…'`, or a plain `$name`.
    fn dollar(&mut self) {
        match self.peek(1) {
            b'(' if self.peek(2) == b'(' => {
                self.i += 1;
                self.balanced(b'(', b')', Class::Code);
            }
            b'(' => {
                self.i += 2;
                self.nested(End::Paren);
            }
            b'{' => {
                self.i += 1;
                self.balanced(b'{', b'}', Class::Code);
            }
            b'\'' => self.single_quoted(2),
            _ => self.i += 1,
        }
    }

    /// From an `open` byte to its matching `close`, skipping quoted text; the span is marked `class`.
    fn balanced(&mut self, open: u8, close: u8, class: Class) {
        let mut depth = 0usize;
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'\\' => self.advance(2),
                b'\'' => {
                    self.single_quoted(1);
                    continue;
                }
                b'"' => {
                    self.double_quoted();
                    continue;
                }
                c if c == open => {
                    depth += 1;
                    self.i += 1;
                }
                c if c == close => {
                    self.i += 1;
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                b'\n' if open == b'{' => break,
                _ => {
                    self.mark(self.i, self.i + 1, class);
                    self.i += 1;
                }
            }
        }
    }

    /// After a newline: the bodies of the here-documents opened on the line before.
    fn heredoc_bodies(&mut self) {
        for (delimiter, strip_tabs, expands) in std::mem::take(&mut self.heredocs) {
            while self.i < self.s.len() {
                let from = self.i;
                while self.i < self.s.len() && self.s[self.i] != b'\n' {
                    self.i += 1;
                }
                let line = &self.s[from..self.i];
                let line = if strip_tabs {
                    let tabs = line.iter().take_while(|b| **b == b'\t').count();
                    &line[tabs..]
                } else {
                    line
                };
                let done = line == delimiter.as_bytes();
                if !done {
                    self.mark(from, self.i, if expands { Class::Expanding } else { Class::Literal });
                }
                self.i = (self.i + 1).min(self.s.len());
                if done {
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// shellcheck.

#[derive(serde::Deserialize)]
struct ShellcheckOutput {
    comments: Vec<ShellcheckComment>,
}

#[derive(serde::Deserialize)]
struct ShellcheckComment {
    file: PathBuf,
    line: u64,
    column: u64,
    level: String,
    code: u64,
    message: String,
}

/// Runs `shellcheck -x -f json1` on `files`; `None` when shellcheck is not installed. Its `error` level is an
/// error, `warning`, `info` and `style` are warnings (the shipped plugins are clean at every level).
fn shellcheck(files: &[PathBuf]) -> Result<Option<Vec<Finding>>, LintError> {
    let output = match Process::new("shellcheck").args(["-x", "-f", "json1", "--"]).args(files).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LintError::Shellcheck(e.to_string())),
    };
    // 0: clean, 1: findings; anything else (bad options, unreadable files) is a failure of the tool.
    if !matches!(output.status.code(), Some(0 | 1)) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(LintError::Shellcheck(format!("{}: {}", output.status, stderr.trim())));
    }
    let parsed: ShellcheckOutput = serde_json::from_slice(&output.stdout)
        .map_err(|e| LintError::Shellcheck(format!("unreadable json1 output: {e}")))?;
    Ok(Some(
        parsed
            .comments
            .into_iter()
            .map(|c| Finding {
                path: c.file,
                line: c.line,
                column: Some(c.column),
                severity: if c.level == "error" { Severity::Error } else { Severity::Warning },
                code: format!("SC{}", c.code),
                message: format!("{} ({})", c.message, c.level),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin `t.sh`: header lines 1..=8 (class on line 7), `extra` header lines after them, then `body`.
    fn plugin(class: &str, extra: &str, body: &str) -> String {
        format!(
            "#!/usr/bin/env bash\n# ---\n# bpcs: \"0.1\"\n# name: t\n# version: 1.0.0\n# description: d\n# class: {class}\n# timeout: 30\n{extra}# ---\n{body}"
        )
    }

    /// A diagnostic plugin with one string argument `name`, sourcing the helpers, whose body is `body` then a
    /// `bpcs_finish`.
    fn diagnostic(body: &str) -> String {
        plugin(
            "diagnostic",
            "# args:\n#   name: { type: string, default: x }\n",
            &format!(". \"$RUNE_LIB/bpcs.sh\"\n{body}\nbpcs_finish ok done false '{{}}'\n"),
        )
    }

    fn findings_in(text: &str, dirs: &[PathBuf]) -> Vec<(String, u64)> {
        lint_source(Path::new("t.sh"), text.as_bytes().to_vec(), dirs).into_iter().map(|f| (f.code, f.line)).collect()
    }

    fn findings(text: &str) -> Vec<(String, u64)> {
        findings_in(text, &[])
    }

    /// The 1-based line of the first line containing `needle`.
    fn line(text: &str, needle: &str) -> u64 {
        text.lines().position(|l| l.contains(needle)).map(|i| i as u64 + 1).unwrap_or_else(|| panic!("no {needle}"))
    }

    fn only(text: &str, code: &str, needle: &str) {
        assert_eq!(findings(text), [(code.to_owned(), line(text, needle))], "{text}");
    }

    fn clean(text: &str) {
        assert_eq!(findings(text), [], "{text}");
    }

    #[test]
    fn shipped_plugins_are_clean() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins");
        let files = plugin_files(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e}"));
        assert!(files.len() >= 4, "{files:?}");
        for path in files {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
            let found = lint_source(&path, bytes, std::slice::from_ref(&dir));
            assert!(found.is_empty(), "{}: {found:#?}", path.display());
        }
    }

    #[test]
    fn a_minimal_plugin_is_clean() {
        clean(&diagnostic("echo \"hello ${RUNE_ARG_name-} on $RUNE_HOST\" >&2"));
    }

    #[test]
    fn header_errors_carry_the_line_of_their_field() {
        let text = diagnostic("").replace("version: 1.0.0", "version: 1.0");
        only(&text, "header", "version: 1.0");
        let text = diagnostic("").replace("default: x }", "default: x, pattern: \"[\" }");
        only(&text, "header", "pattern:");
        let text = diagnostic("").replace("# timeout: 30\n", "# timeout: 30\n# needs_root: yes\n");
        only(&text, "header", "needs_root");
        let text = diagnostic("").replace("class: diagnostic", "class: repair");
        only(&text, "header", "class:");
    }

    #[test]
    fn xtrace_is_an_error_wherever_it_is_switched_on() {
        for cmd in [
            "set -x",
            "set -euxo pipefail",
            "set -o xtrace",
            "bash -x ./other.sh",
            "export BASH_XTRACEFD=2",
            "if true; then set -x; fi",
        ] {
            only(&diagnostic(cmd), "xtrace", cmd);
        }
        for cmd in ["# set -x", "echo 'set -x'", "set +x", "set -euo pipefail", "echo \"-x\"", "bash ./a.sh -x"] {
            clean(&diagnostic(cmd));
        }
    }

    #[test]
    fn reserved_exit_codes_are_errors() {
        only(&diagnostic("exit 124"), "reserved-exit", "exit 124");
        only(&diagnostic("if [[ -z ${RUNE_ARG_name-} ]]; then exit 127; fi"), "reserved-exit", "exit 127");
        clean(&diagnostic("exit 2"));
        clean(&diagnostic("echo 'exit 124' >&2"));
    }

    #[test]
    fn undeclared_arguments_are_errors() {
        only(&diagnostic("x=${RUNE_ARG_nmae-}"), "undeclared-arg", "nmae");
        only(&diagnostic("echo \"$RUNE_ARG_other\" >&2"), "undeclared-arg", "other");
        only(&diagnostic("x=$(bpcs_arg colour red)"), "undeclared-arg", "colour");
        only(&diagnostic("if [[ -v RUNE_ARG_gone ]]; then :; fi"), "undeclared-arg", "gone");
        clean(&diagnostic("x=$(bpcs_arg name)\ny=\"${RUNE_ARG_name:-}\""));
        clean(&diagnostic("echo '$RUNE_ARG_other' >&2 # $RUNE_ARG_nope"));
    }

    #[test]
    fn unknown_rune_variables_are_warnings_unless_the_plugin_sets_them() {
        only(&diagnostic("echo \"$RUNE_HOSTNAME\" >&2"), "unknown-variable", "RUNE_HOSTNAME");
        clean(&diagnostic("RUNE_MINE=1\necho \"$RUNE_MINE $RUNE_RUN_ID $RUNE_DRY_RUN $RUNE_INPUT\" >&2"));
    }

    #[test]
    fn the_helpers_must_be_sourced() {
        let text = plugin("diagnostic", "", "bpcs_finish ok done false '{}'\n");
        only(&text, "no-bpcs-lib", "bpcs_finish");
        let text = plugin("diagnostic", "", "printf '%s\\n' \"$x\"\n");
        let end = line(&text, "printf") - 1;
        assert_eq!(findings(&text), [("no-bpcs-lib".to_owned(), end), ("no-finish".to_owned(), end)]);
    }

    #[test]
    fn hand_written_json_is_a_warning() {
        let text = plugin(
            "diagnostic",
            "",
            ". \"$RUNE_LIB/bpcs.sh\"\necho '{\"bpcs\":\"0.1\",\"status\":\"ok\",\"summary\":\"s\",\"data\":{},\"changed\":false}'\n",
        );
        only(&text, "hand-json", "echo");
        let text = plugin("diagnostic", "", ". \"$RUNE_LIB/bpcs.sh\"\nprintf \"{\\\"status\\\": \\\"%s\\\"}\" ok\n");
        only(&text, "hand-json", "printf");
    }

    #[test]
    fn mutating_commands_in_a_diagnostic_plugin() {
        let text = diagnostic("timeout --foreground 10 systemctl restart -- nginx");
        let at = line(&text, "systemctl restart");
        let mut got = findings(&text);
        got.sort();
        let want = [("missing-requires", at), ("mutating-diagnostic", at), ("needs-root", at)];
        assert_eq!(got, want.map(|(c, l)| (c.to_owned(), l)), "{text}");
        only(
            &diagnostic("rm -rf /var/lib/app/cache").replace("# timeout: 30\n", "# timeout: 30\n# requires: []\n"),
            "mutating-diagnostic",
            "rm -rf",
        );
        // Reading is fine, and so is removing the plugin's own temporary files.
        let text = diagnostic("tmp=$(mktemp -d)\nrm -rf -- \"$tmp\"\nsystemctl is-active nginx || true")
            .replace("# timeout: 30\n", "# timeout: 30\n# requires: [systemctl]\n");
        clean(&text);
    }

    #[test]
    fn tools_must_be_required_unless_tested_first() {
        only(&diagnostic("docker ps >&2"), "missing-requires", "docker ps");
        only(&diagnostic("out=$(nomad node status -self)"), "missing-requires", "nomad node");
        only(&diagnostic("n=$(grep -c x file)"), "missing-requires", "grep -c");
        let required = diagnostic("docker ps >&2").replace("# timeout: 30\n", "# timeout: 30\n# requires: [docker]\n");
        clean(&required);
        clean(&diagnostic("if command -v docker >/dev/null 2>&1; then docker ps >&2; fi"));
        clean(&diagnostic(
            "has() { command -v \"$1\" >/dev/null 2>&1; }\nif has journalctl; then journalctl -n 5 >&2; fi",
        ));
        // Words that are not commands: case patterns, array items, strings, here-documents, [[ ]] regexes.
        clean(&diagnostic(
            "case ${RUNE_ARG_name-} in\n  docker) x=1 ;;\n  nomad | systemctl) x=2 ;;\nesac\ntools=(docker nomad)\necho \"docker ps\" 'nomad' >&2\ncat <<EOF >&2\ndocker restart x\nEOF\n[[ ${RUNE_ARG_name-} =~ ^(docker|nomad)$ ]] || true",
        ));
    }

    #[test]
    fn root_calls_need_needs_root() {
        let remediation = |extra: &str, body: &str| {
            plugin(
                "remediation",
                &format!("# requires: [systemctl]\n{extra}"),
                &format!(
                    ". \"$RUNE_LIB/bpcs.sh\"\nif bpcs_dry_run; then bpcs_finish ok plan false ''; fi\n{body}\nbpcs_finish ok done true ''\n"
                ),
            )
        };
        only(&remediation("", "systemctl restart nginx"), "needs-root", "systemctl restart");
        clean(&remediation("# needs_root: true\n", "systemctl restart nginx"));
        clean(&remediation("", "systemctl --user restart app"));
        only(&remediation("# needs_root: true\n", "sudo -n systemctl restart nginx"), "sudo", "sudo -n");
    }

    #[test]
    fn remediation_without_dry_run_is_a_warning() {
        let text = plugin(
            "remediation",
            "# needs_root: true\n# requires: [systemctl]\n",
            ". \"$RUNE_LIB/bpcs.sh\"\nsystemctl restart nginx\nbpcs_finish ok done true ''\n",
        );
        only(&text, "no-dry-run", "class:");
        clean(&text.replace("systemctl restart", "[[ $RUNE_DRY_RUN == 1 ]] || systemctl restart"));
    }

    #[test]
    fn eval_of_an_argument_is_an_error() {
        only(&diagnostic("eval \"echo $RUNE_ARG_name\""), "eval-arg", "eval");
        clean(&diagnostic("eval 'x=1'"));
    }

    #[test]
    fn a_sourced_helper_counts_as_the_plugins() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("lib")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("lib/act.sh"), "# helper\nsystemctl restart \"$RUNE_ARG_unit\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let text = diagnostic(". \"$RUNE_LIB/act.sh\"");
        let at = line(&text, "act.sh");
        let found = lint_source(Path::new("t.sh"), text.clone().into_bytes(), &[dir.path().to_owned()]);
        let mut got: Vec<(&str, u64)> = found.iter().map(|f| (f.code.as_str(), f.line)).collect();
        got.sort();
        assert_eq!(
            got,
            [("missing-requires", at), ("mutating-diagnostic", at), ("needs-root", at), ("undeclared-arg", at)],
            "{found:#?}"
        );
        assert!(found.iter().all(|f| f.message.ends_with("(in lib/act.sh:2)")), "{found:#?}");
    }

    #[test]
    fn hostile_text_is_read_without_crashing() {
        for body in [
            "$(".repeat(200_000),
            "\"${".repeat(100_000),
            "`".repeat(100_001),
            "cat <<EOF".to_owned(),
            "x=\\".to_owned(),
            "echo $'unterminated\\".to_owned(),
            ")".repeat(1000),
        ] {
            let _ = findings(&diagnostic(&body));
        }
    }
}
