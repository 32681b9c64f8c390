//! `rune plugin test`: runs a plugin on one BPCS input exactly as a real run does (orchestrator → mediator →
//! transport, the same runner and quoting) and compares the result with an expected document; golden cases are
//! files in `<plugins dir>/tests/<plugin>/<case>.{input,expect}.json` (docs/plugin-tests.md).
//!
//! A case runs locally by default, with the case's stub commands (`<plugins dir>/tests/stubs/`) first on the
//! run's `PATH` and the commands it hides off it; that `PATH` is given to the local transport of this test's
//! orchestrator only ([`LocalTransport::with_env`]), never to a real run. With a host (`--host`) the case runs on
//! that inventory host as it is, so cases that need stubs are skipped there.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::bpcs::RawArg;
use crate::inventory::{Inventory, TransportKind};
use crate::orchestrator::{Orchestrator, RunRequest};
use crate::plugins::Registry;
use crate::transport::local::LocalTransport;
use crate::transport::ssh::SshTransport;

/// Where golden cases live, below a plugins dir: `tests/<plugin>/<case>.input.json` + `<case>.expect.json`.
pub const CASES_DIR: &str = "tests";
/// Where the stub commands live, below a plugins dir (a name no plugin's cases may use).
pub const STUBS_DIR: &str = "tests/stubs";
/// Suffixes of a case's two files.
pub const INPUT_SUFFIX: &str = ".input.json";
pub const EXPECT_SUFFIX: &str = ".expect.json";
/// The host a local case runs on (the embedded default inventory's only host).
pub const LOCAL_HOST: &str = "localhost";

/// Fields of the result that differ on every run; never compared, whatever the expect file says.
pub const ALWAYS_IGNORED: &[&str] =
    &["/run_id", "/correlation_id", "/@timestamp", "/started_at", "/finished_at", "/duration_ms"];

/// Largest case file read.
const MAX_CASE_BYTES: u64 = 1024 * 1024;

static FILE_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}$").unwrap_or_else(|_| unreachable!()));
static ENV_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$").unwrap_or_else(|_| unreachable!()));

/// Why a case (or the set of cases) could not be read or prepared: exit code 2, not a failed case.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot prepare the case's directory: {0}")]
    Prepare(String),
}

fn invalid(path: &Path, message: impl Into<String>) -> GoldenError {
    GoldenError::Invalid { path: path.display().to_string(), message: message.into() }
}

/// The input file of a case (`<case>.input.json`), also what `--input` reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseInput {
    /// One line saying what the case shows (printed with a failure).
    #[serde(default)]
    pub description: Option<String>,
    /// The plugin's arguments as JSON values, checked against its header like `rune run --args-json`.
    #[serde(default)]
    pub args: Map<String, Value>,
    #[serde(default)]
    pub dry_run: bool,
    /// Overrides the plugin's timeout (seconds).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Stub commands (from `tests/stubs/`) first on the run's PATH.
    #[serde(default)]
    pub stubs: Vec<String>,
    /// Commands taken off the run's PATH (the machine's own copy too): `requires` missing, a source absent.
    #[serde(default)]
    pub hide: Vec<String>,
    /// Files written into the stubs' state dir (`STUB_STATE_DIR`) before the run: name → contents.
    #[serde(default)]
    pub state: BTreeMap<String, String>,
    /// Extra environment variables for the run (not `PATH`, not `RUNE_*`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files made in the case's own directory before the run (relative path → contents and age), for a plugin
    /// that works on files; `@CASE_DIR@` in `args` and in the expect file stands for that directory, and the
    /// result document gets `files_after`, the files left in it.
    #[serde(default)]
    pub files: BTreeMap<String, CaseFile>,
}

/// One file of a case's `files`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub content: String,
    /// Seconds since its last modification (its mtime is set that far back).
    #[serde(default)]
    pub age_s: u64,
}

/// Stands for the case's own directory (`files`) in `args` and in the expect file.
pub const CASE_DIR: &str = "@CASE_DIR@";

impl CaseInput {
    /// True when the case changes the local run's environment (which a remote host cannot get).
    pub fn needs_local(&self) -> bool {
        !(self.stubs.is_empty()
            && self.hide.is_empty()
            && self.state.is_empty()
            && self.env.is_empty()
            && self.files.is_empty())
    }

    fn check(&self, path: &Path, stubs_dir: Option<&Path>) -> Result<(), GoldenError> {
        let mut problems = Vec::new();
        for name in self.stubs.iter().chain(&self.hide).chain(self.state.keys()) {
            if !FILE_NAME_RE.is_match(name) {
                problems.push(format!("`{name}` is not a plain file name"));
            }
        }
        for name in &self.stubs {
            match stubs_dir {
                Some(dir) if dir.join(name).is_file() => {}
                Some(dir) => problems.push(format!("stub `{name}`: no such file in {}", dir.display())),
                None => problems.push(format!("stub `{name}`: no {STUBS_DIR} directory in the plugin dirs")),
            }
            if self.hide.contains(name) {
                problems.push(format!("`{name}` is both stubbed and hidden"));
            }
        }
        for name in self.env.keys() {
            if !ENV_NAME_RE.is_match(name) || name == "PATH" || name == "STUB_STATE_DIR" || name.starts_with("RUNE_") {
                problems.push(format!(
                    "env `{name}`: not a variable a case may set (PATH, STUB_STATE_DIR and RUNE_* are RUNE's)"
                ));
            }
        }
        for name in self.files.keys() {
            let segments: Vec<&str> = name.split('/').collect();
            if segments.len() > 8 || !segments.iter().all(|s| FILE_NAME_RE.is_match(s)) {
                problems.push(format!("file `{name}`: not a relative path of plain names (at most 8)"));
            }
        }
        if self.timeout == Some(0) {
            problems.push("timeout must be at least 1 second".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(invalid(path, problems.join("; "))) }
    }
}

/// What a case expects: a subset of the result document, and pointers into it that are not compared.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// Every field given must be in the result with this value (objects: a subset; arrays: same length, each
    /// element matched the same way).
    pub document: Map<String, Value>,
    /// JSON pointers (RFC 6901) not compared, on top of [`ALWAYS_IGNORED`].
    pub ignore: Vec<String>,
}

impl Expectation {
    /// Parses an expect file: a JSON object; its `ignore` key (a list of JSON pointers) is taken out.
    pub fn parse(path: &Path, text: &str) -> Result<Expectation, GoldenError> {
        let Value::Object(mut document) =
            serde_json::from_str::<Value>(text).map_err(|e| invalid(path, format!("not JSON: {e}")))?
        else {
            return Err(invalid(path, "expected a JSON object"));
        };
        let ignore = match document.remove("ignore") {
            None => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<String>>(v)
                .map_err(|_| invalid(path, "`ignore` must be a list of JSON pointers (strings)"))?,
        };
        if let Some(bad) = ignore.iter().find(|p| !p.starts_with('/')) {
            return Err(invalid(path, format!("ignore: `{bad}` is not a JSON pointer (they start with `/`)")));
        }
        Ok(Expectation { document, ignore })
    }
}

/// One test case: a plugin, an input, and (for golden cases always) an expectation.
#[derive(Debug, Clone)]
pub struct Case {
    /// The action: NAME or NAME@VERSION.
    pub action: String,
    /// `<case>`, or `(command line)` for a run from flags.
    pub name: String,
    pub input: CaseInput,
    /// Command-line arguments (`--arg k=v`): typed by the header, win over the input's.
    pub cli_args: BTreeMap<String, String>,
    pub expect: Option<Expectation>,
}

/// One difference between the expected and the actual document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// JSON pointer of the field.
    pub pointer: String,
    pub expected: Value,
    /// None: the field is missing from the result.
    pub actual: Option<Value>,
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run here (a case needing stubs with `--host`, a root plugin as another user); not a failure.
    Skip,
    /// The case's files could not be read or its run prepared (exit 2).
    Broken,
}

/// The report of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub plugin: String,
    pub case: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Why it was skipped, broken, or (without an expectation) failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<Difference>,
    /// The result document the case was judged on (the envelope, or the refusal).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub actual: Value,
}

impl CaseReport {
    fn new(case: &Case, verdict: Verdict, reason: Option<String>) -> CaseReport {
        CaseReport {
            plugin: case.action.clone(),
            case: case.name.clone(),
            verdict,
            description: case.input.description.clone(),
            reason,
            differences: Vec::new(),
            actual: Value::Null,
        }
    }

    /// A case file that could not be read: reported like a case, so the others still run.
    pub fn broken(plugin: &str, case: &str, error: &GoldenError) -> CaseReport {
        CaseReport {
            plugin: plugin.to_owned(),
            case: case.to_owned(),
            verdict: Verdict::Broken,
            description: None,
            reason: Some(error.to_string()),
            differences: Vec::new(),
            actual: Value::Null,
        }
    }
}

fn read_bounded(path: &Path) -> Result<String, GoldenError> {
    let read = |path: &Path| -> std::io::Result<String> {
        let len = std::fs::metadata(path)?.len();
        if len > MAX_CASE_BYTES {
            return Err(std::io::Error::other(format!("{len} bytes, the limit is {MAX_CASE_BYTES}")));
        }
        std::fs::read_to_string(path)
    };
    read(path).map_err(|e| GoldenError::Read { path: path.display().to_string(), message: e.to_string() })
}

/// Reads an input file (`<case>.input.json`, or `--input`).
pub fn read_input(path: &Path) -> Result<CaseInput, GoldenError> {
    let text = read_bounded(path)?;
    serde_json::from_str(&text).map_err(|e| invalid(path, e.to_string()))
}

/// Reads an expect file (`<case>.expect.json`, or `--expect`).
pub fn read_expectation(path: &Path) -> Result<Expectation, GoldenError> {
    Expectation::parse(path, &read_bounded(path)?)
}

/// Reads one golden case from its input file; its expect file is the one beside it.
pub fn read_case(action: &str, input_path: &Path) -> Result<Case, GoldenError> {
    let file = input_path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = file.strip_suffix(INPUT_SUFFIX).unwrap_or(file).to_owned();
    let expect_path = input_path.with_file_name(format!("{name}{EXPECT_SUFFIX}"));
    if !expect_path.is_file() {
        return Err(invalid(input_path, format!("no expect file {} beside it", expect_path.display())));
    }
    Ok(Case {
        action: action.to_owned(),
        name,
        input: read_input(input_path)?,
        cli_args: BTreeMap::new(),
        expect: Some(read_expectation(&expect_path)?),
    })
}

/// The input files of one plugin's golden cases in the plugin dirs (`<dir>/tests/<plugin>/*.input.json`),
/// sorted; an expect file without its input is reported as a problem.
pub fn case_files(dirs: &[PathBuf], plugin: &str) -> (Vec<PathBuf>, Vec<GoldenError>) {
    let mut inputs = Vec::new();
    let mut problems = Vec::new();
    for dir in dirs {
        let cases = dir.join(CASES_DIR).join(plugin);
        let Ok(entries) = std::fs::read_dir(&cases) else { continue };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for path in files {
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if file.ends_with(INPUT_SUFFIX) {
                inputs.push(path);
            } else if let Some(stem) = file.strip_suffix(EXPECT_SUFFIX)
                && !path.with_file_name(format!("{stem}{INPUT_SUFFIX}")).is_file()
            {
                problems.push(invalid(&path, format!("no input file {stem}{INPUT_SUFFIX} beside it")));
            }
        }
    }
    (inputs, problems)
}

/// The plugins that have a golden case directory (`<dir>/tests/<plugin>/`), sorted, without `stubs`.
pub fn plugins_with_cases(dirs: &[PathBuf]) -> Vec<String> {
    let mut names = BTreeSet::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join(CASES_DIR)) else { continue };
        for entry in entries.flatten() {
            if entry.path().is_dir()
                && let Some(name) = entry.file_name().to_str()
                && name != "stubs"
            {
                names.insert(name.to_owned());
            }
        }
    }
    names.into_iter().collect()
}

/// The first `<dir>/tests/stubs` of the plugin dirs.
pub fn stubs_dir(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(STUBS_DIR)).find(|d| d.is_dir())
}

/// Runs cases: holds the registry, the inventory and the SSH transport (one pool for every case).
pub struct Tester {
    registry: Arc<Registry>,
    inventory: Arc<Inventory>,
    ssh: SshTransport,
    /// The inventory host to run on; None: locally.
    host: Option<String>,
    stubs_dir: Option<PathBuf>,
}

impl Tester {
    /// Locally when `host` is None (the embedded default inventory, host `localhost`), else on `host` of
    /// `inventory`.
    pub fn new(
        registry: Arc<Registry>,
        inventory: Arc<Inventory>,
        host: Option<String>,
        stubs_dir: Option<PathBuf>,
    ) -> Tester {
        Tester { registry, inventory, ssh: SshTransport::default(), host, stubs_dir }
    }

    /// Runs one case and judges it. Never fails: every problem is the case's verdict.
    pub async fn run(&self, case: &Case) -> CaseReport {
        let on_host = self.host.is_some();
        if on_host && case.input.needs_local() {
            let why = "the case sets stubs, hidden commands, stub state, env or files, which only a local run gets";
            return CaseReport::new(case, Verdict::Skip, Some(why.into()));
        }
        if let Err(e) =
            case.input.check(Path::new(&format!("{}/{}", case.action, case.name)), self.stubs_dir.as_deref())
        {
            return CaseReport::new(case, Verdict::Broken, Some(e.to_string()));
        }
        let local = !on_host
            || self
                .host
                .as_ref()
                .and_then(|h| self.inventory.get(h))
                .is_some_and(|h| h.transport == TransportKind::Local);
        if let Ok(plugin) = self.registry.resolve(&case.action)
            && plugin.needs_root
            && local
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            && unsafe { libc::geteuid() } != 0
        {
            let why = format!(
                "{} needs root: run the test as root (or, for cases without stubs, hide, state, env or files, on a host with --host)",
                plugin.name
            );
            return CaseReport::new(case, Verdict::Skip, Some(why));
        }
        let workspace = if on_host {
            None
        } else {
            match Workspace::create(&case.input, self.stubs_dir.as_deref()) {
                Ok(w) => Some(w),
                Err(e) => return CaseReport::new(case, Verdict::Broken, Some(e.to_string())),
            }
        };
        let mut orchestrator = Orchestrator::new(self.registry.clone(), self.inventory.clone(), self.ssh.clone());
        if let Some(w) = &workspace {
            orchestrator = orchestrator.with_local(LocalTransport::with_env(w.env.clone()));
        }
        let mut envelope = None;
        let case_dir = workspace.as_ref().map(|w| w.files.display().to_string());
        let host = self.host.as_deref().unwrap_or(LOCAL_HOST);
        let actual = match orchestrator.plan(&request(case, host, case_dir.as_deref())) {
            Err(refused) => json!({ "error": "invalid_request", "problems": refused.0, "ran": false }),
            Ok(plan) => {
                envelope = orchestrator.run_all(plan, 1).await.into_iter().next();
                let mut doc = match envelope.as_ref().map(serde_json::to_value) {
                    Some(Ok(v)) => v,
                    _ => return CaseReport::new(case, Verdict::Broken, Some("the run returned no result".into())),
                };
                if let (Some(w), Value::Object(map)) = (&workspace, &mut doc)
                    && !case.input.stubs.is_empty()
                {
                    map.insert("stub_calls".into(), Value::from(w.calls()));
                }
                if let (Some(w), Value::Object(map)) = (&workspace, &mut doc)
                    && !case.input.files.is_empty()
                {
                    map.insert("files_after".into(), Value::from(w.files_left()));
                }
                doc
            }
        };
        let mut report = match &case.expect {
            Some(expect) => {
                let mut ignore: Vec<String> = ALWAYS_IGNORED.iter().map(|p| (*p).to_owned()).collect();
                ignore.extend(expect.ignore.iter().cloned());
                let mut differences = Vec::new();
                let mut expected = Value::Object(expect.document.clone());
                if let Some(dir) = &case_dir {
                    substitute_case_dir(&mut expected, dir);
                }
                compare(&expected, Some(&actual), String::new(), &ignore, &mut differences);
                let verdict = if differences.is_empty() { Verdict::Pass } else { Verdict::Fail };
                let mut r = CaseReport::new(case, verdict, None);
                r.differences = differences;
                r
            }
            // Without an expectation a case passes when the run succeeded (a valid output, agreeing exit code).
            None => match envelope {
                Some(e) if e.status.is_success() => CaseReport::new(case, Verdict::Pass, None),
                Some(_) | None => CaseReport::new(
                    case,
                    Verdict::Fail,
                    Some("expected a successful run (no expectation given)".into()),
                ),
            },
        };
        report.actual = actual;
        report
    }
}

/// Replaces [`CASE_DIR`] in every string of `value` with `dir`.
fn substitute_case_dir(value: &mut Value, dir: &str) {
    match value {
        Value::String(s) if s.contains(CASE_DIR) => *s = s.replace(CASE_DIR, dir),
        Value::Array(items) => items.iter_mut().for_each(|v| substitute_case_dir(v, dir)),
        Value::Object(map) => map.values_mut().for_each(|v| substitute_case_dir(v, dir)),
        _ => {}
    }
}

fn request(case: &Case, host: &str, case_dir: Option<&str>) -> RunRequest {
    let mut args: BTreeMap<String, RawArg> = case
        .input
        .args
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            if let Some(dir) = case_dir {
                substitute_case_dir(&mut v, dir);
            }
            (k.clone(), RawArg::Json(v))
        })
        .collect();
    for (k, v) in &case.cli_args {
        args.insert(k.clone(), RawArg::Text(v.clone()));
    }
    RunRequest {
        action: case.action.clone(),
        args,
        hosts: vec![host.to_owned()],
        dry_run: case.input.dry_run,
        timeout: case.input.timeout.map(std::time::Duration::from_secs),
        operator: "plugin-test".into(),
        trigger: json!({ "source": "plugin-test", "case": case.name }),
        ..RunRequest::default()
    }
}

/// A local case's private directory (removed on drop): `bin/` with its stubs, `state/` for them, `mask-N/` copies
/// of PATH directories without the hidden commands; and the variables the run gets.
struct Workspace {
    dir: PathBuf,
    state: PathBuf,
    /// The case's own directory (`files`, `@CASE_DIR@`).
    files: PathBuf,
    env: Vec<(String, OsString)>,
}

impl Workspace {
    fn create(input: &CaseInput, stubs_dir: Option<&Path>) -> Result<Workspace, GoldenError> {
        use std::os::unix::fs::DirBuilderExt;
        let fail = |what: &str, e: std::io::Error| GoldenError::Prepare(format!("{what}: {e}"));
        let dir = std::env::temp_dir().join(format!("rune-plugin-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| fail(&dir.display().to_string(), e))?;
        let mut w = Workspace { state: dir.join("state"), files: dir.join("files"), dir, env: Vec::new() };
        let bin = w.dir.join("bin");
        std::fs::create_dir(&bin).map_err(|e| fail("bin", e))?;
        std::fs::create_dir(&w.state).map_err(|e| fail("state", e))?;
        for name in &input.stubs {
            // Checked by CaseInput::check: a plain name, present in the stubs dir.
            let from = stubs_dir.map(|d| d.join(name)).unwrap_or_default();
            let from = std::fs::canonicalize(&from).map_err(|e| fail(name, e))?;
            std::os::unix::fs::symlink(&from, bin.join(name)).map_err(|e| fail(name, e))?;
        }
        for (name, contents) in &input.state {
            std::fs::write(w.state.join(name), contents).map_err(|e| fail(name, e))?;
        }
        std::fs::create_dir(&w.files).map_err(|e| fail("files", e))?;
        for (name, file) in &input.files {
            // Checked by CaseInput::check: plain names joined by `/`.
            let path = w.files.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail(name, e))?;
            }
            std::fs::write(&path, &file.content).map_err(|e| fail(name, e))?;
            let when = std::time::SystemTime::now()
                .checked_sub(std::time::Duration::from_secs(file.age_s))
                .unwrap_or(std::time::UNIX_EPOCH);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(when))
                .map_err(|e| fail(name, e))?;
        }
        let mut path = vec![bin];
        let inherited = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        for (i, entry) in std::env::split_paths(&inherited).enumerate() {
            if input.hide.iter().any(|h| entry.join(h).exists()) {
                path.push(w.mask(&entry, i, &input.hide).map_err(|e| fail(&entry.display().to_string(), e))?);
            } else {
                path.push(entry);
            }
        }
        let path = std::env::join_paths(path).map_err(|e| GoldenError::Prepare(e.to_string()))?;
        w.env.push(("PATH".into(), path));
        w.env.push(("STUB_STATE_DIR".into(), w.state.clone().into_os_string()));
        w.env.extend(input.env.iter().map(|(k, v)| (k.clone(), OsString::from(v))));
        Ok(w)
    }

    /// A directory of links to every entry of `dir` but the hidden ones, standing in for `dir` on PATH.
    fn mask(&self, dir: &Path, index: usize, hide: &[String]) -> std::io::Result<PathBuf> {
        let masked = self.dir.join(format!("mask-{index}"));
        std::fs::create_dir(&masked)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| hide.iter().any(|h| h == n)) {
                continue;
            }
            std::os::unix::fs::symlink(entry.path(), masked.join(&name))?;
        }
        Ok(masked)
    }

    /// The files left in the case's directory after the run (relative paths, sorted; directories not listed).
    fn files_left(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>, depth: usize) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() && depth < 16 => walk(&path, base, out, depth + 1),
                    Ok(t) if t.is_dir() => {}
                    _ => out.push(path.strip_prefix(base).unwrap_or(&path).display().to_string()),
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.files, &self.files, &mut out, 0);
        out.sort();
        out
    }

    /// The stubs' calls (`calls.log`), one line each.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("calls.log"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Escapes one JSON pointer token (RFC 6901).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Compares `expected` with `actual` at `pointer`: objects as a subset, arrays element by element (same length),
/// everything else by equality. Pointers in `ignore` (and what is below them) are skipped.
pub fn compare(
    expected: &Value,
    actual: Option<&Value>,
    pointer: String,
    ignore: &[String],
    out: &mut Vec<Difference>,
) {
    if ignore.contains(&pointer) {
        return;
    }
    let differ = |out: &mut Vec<Difference>, pointer: String| {
        out.push(Difference { pointer, expected: expected.clone(), actual: actual.cloned() });
    };
    match (expected, actual) {
        (Value::Object(e), Some(Value::Object(a))) => {
            for (key, value) in e {
                compare(value, a.get(key), format!("{pointer}/{}", pointer_token(key)), ignore, out);
            }
        }
        (Value::Array(e), Some(Value::Array(a))) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(ev, Some(av), format!("{pointer}/{i}"), ignore, out);
            }
        }
        (e, Some(a)) if e == a => {}
        _ => differ(out, pointer),
    }
}

/// How the cases went, for the exit code: 2 when a case was broken, 1 when one failed, else 0.
pub fn exit_code(reports: &[CaseReport]) -> i32 {
    if reports.iter().any(|r| r.verdict == Verdict::Broken) {
        crate::cli::EXIT_USAGE
    } else if reports.iter().any(|r| r.verdict == Verdict::Fail) {
        crate::cli::EXIT_RUN_FAILED
    } else {
        crate::cli::EXIT_OK
    }
}

/// The reports as one JSON document (`--output json`).
pub fn json_report(reports: &[CaseReport]) -> Value {
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    json!({
        "cases": reports,
        "passed": count(Verdict::Pass),
        "failed": count(Verdict::Fail),
        "skipped": count(Verdict::Skip),
        "broken": count(Verdict::Broken),
    })
}

/// One value in a report line: compact JSON, cut to 200 characters.
fn show(value: Option<&Value>) -> String {
    let text = match value {
        None => return "(missing)".into(),
        Some(v) => v.to_string(),
    };
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The reports for people: a line per case, what differed under a failed one, then the totals.
pub fn pretty_report(reports: &[CaseReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for r in reports {
        let mark = match r.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
            Verdict::Broken => "BROKEN",
        };
        let status = r.actual.get("status").and_then(Value::as_str).unwrap_or(if r.actual.get("problems").is_some() {
            "refused"
        } else {
            ""
        });
        let _ = writeln!(out, "{mark:<6} {}/{}  {status}", r.plugin, r.case);
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "       {reason}");
        }
        if r.verdict != Verdict::Fail {
            continue;
        }
        if let Some(d) = &r.description {
            let _ = writeln!(out, "       case: {d}");
        }
        for d in &r.differences {
            let _ = writeln!(
                out,
                "       {}: expected {}, got {}",
                d.pointer,
                show(Some(&d.expected)),
                show(d.actual.as_ref())
            );
        }
        if let Some(e) = r.actual.get("error").and_then(Value::as_str)
            && r.actual.get("status").is_some()
        {
            let _ = writeln!(out, "       error: {e}");
        }
        if let Some(problems) = r.actual.get("problems").and_then(Value::as_array) {
            for p in problems {
                let _ = writeln!(out, "       refused: {}", p.as_str().unwrap_or_default());
            }
        }
        if let Some(tail) = r.actual.get("stderr_tail").and_then(Value::as_str) {
            for line in tail.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev() {
                let _ = writeln!(out, "       │ {line}");
            }
        }
    }
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let _ = write!(
        out,
        "{} case(s): {} passed, {} failed, {} skipped",
        reports.len(),
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Skip)
    );
    if count(Verdict::Broken) > 0 {
        let _ = write!(out, ", {} broken", count(Verdict::Broken));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diffs(expected: Value, actual: Value, ignore: &[&str]) -> Vec<String> {
        let ignore: Vec<String> = ignore.iter().map(|s| (*s).to_owned()).collect();
        let mut out = Vec::new();
        compare(&expected, Some(&actual), String::new(), &ignore, &mut out);
        out.into_iter().map(|d| d.pointer).collect()
    }

    #[test]
    fn objects_match_as_a_subset_arrays_whole_and_ignored_pointers_are_skipped() {
        let actual =
            json!({"status": "ok", "output": {"data": {"a/b": 1, "n": [1, {"x": 2, "y": 3}]}, "summary": "s"}});
        assert!(diffs(json!({"output": {"data": {"n": [1, {"x": 2}]}}}), actual.clone(), &[]).is_empty());
        assert_eq!(diffs(json!({"status": "dry_run"}), actual.clone(), &[]), ["/status"]);
        assert_eq!(diffs(json!({"output": {"data": {"a/b": 2}}}), actual.clone(), &[]), ["/output/data/a~1b"]);
        assert_eq!(diffs(json!({"output": {"data": {"n": [1]}}}), actual.clone(), &[]), ["/output/data/n"]);
        assert_eq!(diffs(json!({"output": {"missing": null}}), actual.clone(), &[]), ["/output/missing"]);
        assert!(diffs(json!({"output": {"summary": "other"}}), actual, &["/output/summary"]).is_empty());
    }

    #[test]
    fn expect_files_take_ignore_out_and_check_it() {
        let e = Expectation::parse(Path::new("x"), r#"{"status":"ok","ignore":["/output/summary"]}"#).expect("valid");
        assert_eq!(e.ignore, ["/output/summary"]);
        assert!(!e.document.contains_key("ignore"));
        assert!(Expectation::parse(Path::new("x"), r#"{"ignore":["output"]}"#).is_err());
        assert!(Expectation::parse(Path::new("x"), "[1]").is_err());
    }

    #[test]
    fn case_inputs_refuse_what_a_case_may_not_set() {
        let input: CaseInput =
            serde_json::from_str(r#"{"stubs":["../x"],"env":{"PATH":"/tmp","RUNE_LIB":"/"},"state":{"a/b":""}}"#)
                .expect("parses");
        let Err(e) = input.check(Path::new("c"), None) else { panic!("accepted") };
        let e = e.to_string();
        for bad in ["`../x`", "`a/b`", "env `PATH`", "env `RUNE_LIB`"] {
            assert!(e.contains(bad), "{bad} not named in: {e}");
        }
        assert!(serde_json::from_str::<CaseInput>(r#"{"argz":{}}"#).is_err(), "unknown keys are refused");
    }
}
