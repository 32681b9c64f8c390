//! The plugin registry: discovers BPCS plugins in directories, parses and validates their headers, keeps
//! version and sha256, and resolves `name` or `name@version`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use regex::Regex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bpcs::{ArgSpec, ArgValue, BPCS_VERSION, HeaderConfig, RawArg, SafetyClass};

static NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9-]{0,62}$").unwrap_or_else(|_| unreachable!()));
/// True for a valid plugin name (`^[a-z0-9][a-z0-9-]{0,62}$`).
pub fn valid_name(name: &str) -> bool {
    NAME_RE.is_match(name)
}

static ARG_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9_]{0,62}$").unwrap_or_else(|_| unreachable!()));
static COMMAND_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$").unwrap_or_else(|_| unreachable!()));
static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]{0,62}$").unwrap_or_else(|_| unreachable!()));

/// Longest plugin or helper file accepted.
pub const MAX_PLUGIN_BYTES: u64 = 512 * 1024;
/// Longest timeout a header may declare.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// A validated plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Plugin {
    pub name: String,
    #[serde(serialize_with = "serialize_display")]
    pub version: semver::Version,
    pub description: String,
    pub tags: Vec<String>,
    pub class: SafetyClass,
    pub needs_root: bool,
    /// Default timeout from the header.
    #[serde(rename = "timeout_s", serialize_with = "serialize_secs")]
    pub timeout: Duration,
    pub requires: Vec<String>,
    pub args: BTreeMap<String, ArgSpec>,
    pub path: PathBuf,
    pub sha256: String,
    /// The script itself, sent to the target on each run.
    #[serde(skip)]
    pub source: Arc<[u8]>,
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// A shared helper file (`<plugin dir>/lib/*.sh`), sent along with every plugin.
#[derive(Debug, Clone)]
pub struct LibFile {
    pub name: String,
    pub source: Arc<[u8]>,
}

/// A problem found while loading plugins; the other plugins still load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginLoadError {
    pub path: PathBuf,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl fmt::Display for PluginLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Why an action could not be resolved to a plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown action `{0}` (see `rune list-actions`)")]
    Unknown(String),
    #[error("action `{name}` has no version {version} (available: {available})")]
    NoSuchVersion { name: String, version: String, available: String },
    #[error("invalid action `{0}`: expected NAME or NAME@VERSION")]
    Invalid(String),
}

/// All plugins found in the configured directories.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Plugins by name, each list sorted by ascending version.
    plugins: BTreeMap<String, Vec<Arc<Plugin>>>,
    lib: Arc<Vec<LibFile>>,
    problems: Vec<PluginLoadError>,
}

impl Registry {
    /// Loads every `*.sh` in `dirs` (not recursive) and the helpers in each `dir/lib/`. Earlier directories win
    /// for helper files of the same name. Problems are collected, never fatal.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry::default();
        let mut lib: Vec<LibFile> = Vec::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) => {
                    registry.problem(dir, None, format!("cannot read plugin directory: {e}"));
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for path in files {
                if path.extension().is_some_and(|e| e == "sh") && path.is_file() {
                    match load_plugin(&path) {
                        Ok(p) => registry.insert(p),
                        Err(errors) => registry.problems.extend(errors),
                    }
                }
            }
            let lib_dir = dir.join("lib");
            if let Ok(entries) = std::fs::read_dir(&lib_dir) {
                let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                for path in files {
                    let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                        continue;
                    };
                    if !name.ends_with(".sh") || !COMMAND_RE.is_match(&name) || lib.iter().any(|l| l.name == name) {
                        continue;
                    }
                    match read_bounded(&path) {
                        Ok(source) => lib.push(LibFile { name, source: source.into() }),
                        Err(message) => registry.problem(&path, None, message),
                    }
                }
            }
        }
        registry.lib = Arc::new(lib);
        registry
    }

    fn problem(&mut self, path: &Path, line: Option<u64>, message: String) {
        self.problems.push(PluginLoadError { path: path.to_owned(), line, column: None, message });
    }

    fn insert(&mut self, plugin: Plugin) {
        let list = self.plugins.entry(plugin.name.clone()).or_default();
        if let Some(existing) = list.iter().find(|p| p.version == plugin.version) {
            let message = format!(
                "plugin {}@{} is already provided by {}; this copy is ignored",
                plugin.name,
                plugin.version,
                existing.path.display()
            );
            self.problems.push(PluginLoadError { path: plugin.path, line: None, column: None, message });
            return;
        }
        list.push(Arc::new(plugin));
        list.sort_by(|a, b| a.version.cmp(&b.version));
    }

    /// Problems found while loading (malformed headers, unreadable files).
    pub fn problems(&self) -> &[PluginLoadError] {
        &self.problems
    }

    /// The shared helper files sent with every plugin.
    pub fn lib(&self) -> &Arc<Vec<LibFile>> {
        &self.lib
    }

    /// Every plugin, by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values().flatten()
    }

    /// The newest version of each plugin.
    pub fn latest(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values().filter_map(|v| v.last())
    }

    /// All versions of one plugin, ascending.
    pub fn versions(&self, name: &str) -> &[Arc<Plugin>] {
        self.plugins.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Resolves `name` (highest version) or `name@version` (exact).
    pub fn resolve(&self, action: &str) -> Result<Arc<Plugin>, ResolveError> {
        let (name, version) = match action.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (action, None),
        };
        if !NAME_RE.is_match(name) {
            return Err(ResolveError::Invalid(action.to_owned()));
        }
        let list = self.plugins.get(name).ok_or_else(|| ResolveError::Unknown(name.to_owned()))?;
        match version {
            None => list.last().cloned().ok_or_else(|| ResolveError::Unknown(name.to_owned())),
            Some(v) => {
                let wanted = semver::Version::parse(v).map_err(|_| ResolveError::Invalid(action.to_owned()))?;
                list.iter().find(|p| p.version == wanted).cloned().ok_or_else(|| ResolveError::NoSuchVersion {
                    name: name.to_owned(),
                    version: v.to_owned(),
                    available: list.iter().map(|p| p.version.to_string()).collect::<Vec<_>>().join(", "),
                })
            }
        }
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    // Read at most one byte past the limit, so a file growing between a size check and the read cannot pass.
    let mut bytes = Vec::new();
    file.take(MAX_PLUGIN_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    check_text(&bytes)?;
    Ok(bytes)
}

/// A plugin or helper file must be text: within [`MAX_PLUGIN_BYTES`], without NUL.
fn check_text(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(format!("file is larger than the limit of {MAX_PLUGIN_BYTES} bytes"));
    }
    if bytes.contains(&0) {
        return Err("file contains a NUL byte: plugins and helpers must be text".into());
    }
    Ok(())
}

/// Extracts the YAML header: the lines between the first two `# ---` lines right after the shebang.
/// Returns the YAML text and the 1-based file line of its first line.
fn extract_header(text: &str) -> Result<(String, u64), (u64, String)> {
    let mut lines = text.lines().enumerate().peekable();
    if let Some((_, first)) = lines.peek()
        && first.starts_with("#!")
    {
        lines.next();
    }
    let Some((start_idx, start)) = lines.next() else {
        return Err((1, "empty file: expected a BPCS header".into()));
    };
    if start.trim_end() != "# ---" {
        return Err((
            start_idx as u64 + 1,
            "expected the BPCS header to open with `# ---` right after the shebang".into(),
        ));
    }
    let mut yaml = String::new();
    for (idx, line) in lines {
        let trimmed = line.trim_end();
        if trimmed == "# ---" {
            return Ok((yaml, start_idx as u64 + 2));
        }
        let Some(rest) = trimmed.strip_prefix('#') else {
            return Err((idx as u64 + 1, "header line does not start with `#` (close the header with `# ---`)".into()));
        };
        yaml.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        yaml.push('\n');
    }
    Err((start_idx as u64 + 1, "header opened with `# ---` is never closed".into()))
}

/// Loads and validates one plugin file; every problem in the header is reported.
pub fn load_plugin(path: &Path) -> Result<Plugin, Vec<PluginLoadError>> {
    let bytes = read_bounded(path)
        .map_err(|message| vec![PluginLoadError { path: path.to_owned(), line: None, column: None, message }])?;
    parse_plugin(path, bytes)
}

/// Validates the contents of the plugin file at `path` (read by the caller); `path` names the file in errors
/// and its stem must equal the header's `name`.
pub fn parse_plugin(path: &Path, bytes: Vec<u8>) -> Result<Plugin, Vec<PluginLoadError>> {
    let err = |line: Option<u64>, column: Option<u64>, message: String| PluginLoadError {
        path: path.to_owned(),
        line,
        column,
        message: cut(&message, MESSAGE_CHARS),
    };
    check_text(&bytes).map_err(|m| vec![err(None, None, m)])?;
    let text = std::str::from_utf8(&bytes).map_err(|e| vec![err(None, None, format!("not UTF-8: {e}"))])?;
    let (yaml, first_line) = extract_header(text).map_err(|(line, m)| vec![err(Some(line), None, m)])?;
    let options = serde_saphyr::options! { strict_booleans: true, budget: yaml_budget() };
    let header: HeaderConfig = serde_saphyr::from_str_with_options(&yaml, options).map_err(|e| {
        let (line, column) = match e.location() {
            Some(loc) => (Some(first_line + loc.line().saturating_sub(1)), Some(loc.column() + 2)),
            None => (Some(first_line), None),
        };
        let message = e.to_string().lines().next().unwrap_or("invalid header").to_owned();
        vec![err(line, column, format!("invalid BPCS header: {message}"))]
    })?;
    // Semantic problems point at the line of the key they concern (the header's first line if not found). The
    // lines of the keys are found in one pass: a search per error made a header with 10,000 bad argument names
    // take seconds (quadratic).
    let key_lines = key_lines(&yaml);
    let field_lines = arg_field_lines(&yaml);
    let at = |key: &str, indent: usize| -> Option<u64> {
        let offset = key_lines.get(&(indent, key)).copied();
        Some(first_line + offset.unwrap_or(0) as u64)
    };
    // An argument's problem points at the field it concerns (`pattern:`, `default:`), else at the argument.
    let at_field = |arg: &str, field: &str| -> Option<u64> {
        match field_lines.get(&(arg, field)).or_else(|| field_lines.get(&(arg, ""))) {
            Some(offset) => Some(first_line + *offset as u64),
            None => at(arg, 2),
        }
    };
    let mut errors = Vec::new();
    if header.bpcs != BPCS_VERSION {
        errors.push(err(
            at("bpcs", 0),
            None,
            format!("bpcs: `{}` is not supported (this RUNE speaks {BPCS_VERSION})", excerpt(&header.bpcs)),
        ));
    }
    if !NAME_RE.is_match(&header.name) {
        errors.push(err(
            at("name", 0),
            None,
            format!("name `{}` must match {}", excerpt(&header.name), NAME_RE.as_str()),
        ));
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if stem != header.name {
        errors.push(err(
            at("name", 0),
            None,
            format!("name `{}` must equal the file name `{}`", excerpt(&header.name), excerpt(stem)),
        ));
    }
    let version = semver::Version::parse(&header.version)
        .map_err(|e| {
            errors.push(err(
                at("version", 0),
                None,
                format!("version `{}` is not semver: {e}", excerpt(&header.version)),
            ))
        })
        .ok();
    if header.description.trim().is_empty() {
        errors.push(err(at("description", 0), None, "description must not be empty".into()));
    }
    for tag in &header.tags {
        if !TAG_RE.is_match(tag) {
            errors.push(err(at("tags", 0), None, format!("tag `{}` must match {}", excerpt(tag), TAG_RE.as_str())));
        }
    }
    if header.timeout == 0 || header.timeout > MAX_TIMEOUT_SECS {
        errors.push(err(
            at("timeout", 0),
            None,
            format!("timeout {} must be within 1..={MAX_TIMEOUT_SECS}", header.timeout),
        ));
    }
    for cmd in &header.requires {
        if !COMMAND_RE.is_match(cmd) {
            errors.push(err(
                at("requires", 0),
                None,
                format!("requires: `{}` is not a plain command name", excerpt(cmd)),
            ));
        }
    }
    let mut args = BTreeMap::new();
    for (name, raw) in header.args {
        if !ARG_NAME_RE.is_match(&name) {
            errors.push(err(
                at_field(&name, ""),
                None,
                format!("argument name `{}` must match {}", excerpt(&name), ARG_NAME_RE.as_str()),
            ));
            continue;
        }
        let pattern_re = match raw.pattern.as_deref().map(|p| Regex::new(&anchor(p))) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                errors.push(err(at_field(&name, "pattern"), None, format!("argument `{name}`: invalid pattern: {e}")));
                continue;
            }
        };
        let mut spec = ArgSpec {
            arg_type: raw.arg_type,
            required: raw.required,
            default: None,
            pattern: raw.pattern,
            pattern_re,
            description: raw.description,
            secret: raw.secret,
        };
        if spec.secret && (spec.arg_type != crate::bpcs::ArgType::String || raw.default.is_some()) {
            errors.push(err(
                at_field(&name, "secret"),
                None,
                format!("argument `{name}` is secret: it must be a string without a default (a default is no secret)"),
            ));
        }
        if let Some(default) = raw.default {
            match spec.check(&name, &RawArg::Json(default)) {
                Ok(v) => spec.default = Some(v),
                Err(e) => errors.push(err(at_field(&name, "default"), None, format!("default: {e}"))),
            }
        }
        if spec.required && spec.default.is_some() {
            errors.push(err(
                at_field(&name, "default"),
                None,
                format!("argument `{name}` is required and has a default; pick one"),
            ));
        }
        args.insert(name, spec);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(version) = version else { return Err(errors) };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Plugin {
        name: header.name,
        version,
        description: header.description,
        tags: header.tags,
        class: header.class,
        needs_root: header.needs_root,
        timeout: Duration::from_secs(header.timeout),
        requires: header.requires,
        args,
        path: path.to_owned(),
        sha256,
        source: bytes.into(),
    })
}

/// The most characters of header text (a name, a command, a value) quoted in a [`PluginLoadError`], and of one
/// message: the YAML parser quotes unknown fields and variants whole, and a header may be 512 KiB.
const EXCERPT_CHARS: usize = 80;
const MESSAGE_CHARS: usize = 1024;

/// Header text for an error message, cut to [`EXCERPT_CHARS`].
fn excerpt(text: &str) -> String {
    cut(text, EXCERPT_CHARS)
}

/// `text` cut to `max` characters, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

/// The first line (0-based) of each block-mapping key of the header, by (indent, key): `key:` ends a line or
/// `key: ` starts one.
fn key_lines(yaml: &str) -> HashMap<(usize, &str), usize> {
    let mut lines = HashMap::new();
    for (i, line) in yaml.lines().enumerate() {
        let rest = line.trim_start_matches(' ');
        let indent = line.len() - rest.len();
        let key = rest.find(": ").map_or_else(|| rest.strip_suffix(':'), |end| rest.get(..end));
        if let Some(key) = key {
            lines.entry((indent, key)).or_insert(i);
        }
    }
    lines
}

/// The first line (0-based) of each argument's fields, by (argument, field), and of the argument itself under
/// field `""`, in one pass (like [`key_lines`]): block style (`pattern:` on a line of its own under the argument)
/// and flow style (`n: { type: integer, default: 3 }`, every field on the argument's line).
fn arg_field_lines(yaml: &str) -> HashMap<(&str, &str), usize> {
    let mut lines = HashMap::new();
    let mut in_args = false;
    let mut arg_indent: Option<usize> = None;
    let mut current: Option<&str> = None;
    for (i, line) in yaml.lines().enumerate() {
        let rest = line.trim_start_matches(' ');
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let indent = line.len() - rest.len();
        let (key, value) = match rest.find(": ") {
            Some(end) => (rest.get(..end), rest.get(end + 2..).unwrap_or_default()),
            None => (rest.strip_suffix(':'), ""),
        };
        if indent == 0 {
            in_args = key == Some("args");
            arg_indent = None;
            current = None;
            continue;
        }
        if !in_args {
            continue;
        }
        let level = *arg_indent.get_or_insert(indent);
        if indent == level {
            current = key;
            let Some(arg) = key else { continue };
            lines.entry((arg, "")).or_insert(i);
            if let Some(flow) = value.trim().strip_prefix('{') {
                for field in flow.split(',').filter_map(|f| f.split_once(':').map(|(k, _)| k.trim())) {
                    lines.entry((arg, field)).or_insert(i);
                }
            }
        } else if indent > level
            && let (Some(arg), Some(field)) = (current, key)
        {
            lines.entry((arg, field)).or_insert(i);
        }
    }
    lines
}

/// Patterns must match the whole value: always wrapped in `^(?:…)$`, so `^a|b$` cannot match `xb` or `ay`.
fn anchor(p: &str) -> String {
    format!("^(?:{p})$")
}

/// The default value of an argument, for display.
pub fn default_display(v: &Option<ArgValue>) -> String {
    v.as_ref().map(ArgValue::as_env_string).unwrap_or_default()
}

/// The YAML parser's budget, tighter than its default in one place: anchors may retain at most 50,000 events
/// (default 1,000,000, about 150 MB: a 1.4 KB alias bomb held that much before the parser refused it). No
/// hand-written configuration file comes near it.
fn yaml_budget() -> Option<serde_saphyr::Budget> {
    serde_saphyr::budget! { max_recorded_anchor_events: 50_000 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write test plugin");
        path
    }

    const GOOD: &str = "#!/usr/bin/env bash\n# ---\n# bpcs: \"0.1\"\n# name: good\n# version: 1.2.0\n# description: d\n# class: diagnostic\n# args:\n#   n:\n#     type: integer\n#     default: 3\n# ---\necho\n";

    #[test]
    fn loads_good_and_reports_bad_with_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "good.sh", GOOD);
        write(
            dir.path(),
            "bad.sh",
            "#!/usr/bin/env bash\n# ---\n# bpcs: \"0.1\"\n# name: bad\n# version: 1.0.0\n# description: d\n# class: diagnostic\n# colour: red\n# ---\n",
        );
        write(dir.path(), "noheader.sh", "#!/bin/bash\necho hi\n");
        let registry = Registry::load(&[dir.path().to_owned()]);
        assert_eq!(registry.latest().count(), 1);
        let problems = registry.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        let bad = problems.iter().find(|p| p.path.ends_with("bad.sh")).expect("bad.sh reported");
        assert_eq!(bad.line, Some(8), "{bad}");
        assert!(bad.message.contains("colour"), "{bad}");
        let noheader = problems.iter().find(|p| p.path.ends_with("noheader.sh")).expect("noheader reported");
        assert_eq!(noheader.line, Some(2));
    }

    #[test]
    fn resolves_highest_and_exact_versions() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        write(a.path(), "good.sh", GOOD);
        write(b.path(), "good.sh", &GOOD.replace("1.2.0", "1.10.0"));
        let registry = Registry::load(&[a.path().to_owned(), b.path().to_owned()]);
        assert_eq!(registry.resolve("good").expect("resolves").version.to_string(), "1.10.0");
        assert_eq!(registry.resolve("good@1.2.0").expect("resolves").version.to_string(), "1.2.0");
        assert!(matches!(registry.resolve("good@2.0.0"), Err(ResolveError::NoSuchVersion { .. })));
        assert!(matches!(registry.resolve("nope"), Err(ResolveError::Unknown(_))));
        assert!(matches!(registry.resolve("../etc"), Err(ResolveError::Invalid(_))));
    }

    #[test]
    fn patterns_are_always_anchored() {
        let re = Regex::new(&anchor("^a|b$")).expect("valid");
        assert!(re.is_match("a") && re.is_match("b"));
        assert!(!re.is_match("a; reboot") && !re.is_match("reboot; b"));
    }

    #[test]
    fn header_errors_are_all_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "multi.sh",
            "#!/bin/bash\n# ---\n# bpcs: \"0.2\"\n# name: other\n# version: one\n# description: d\n# class: diagnostic\n# timeout: 0\n# requires: [\"rm -rf\"]\n# ---\n",
        );
        let errors = load_plugin(&path).expect_err("invalid");
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn argument_errors_point_at_their_lines() {
        // Regression (hostile-input corpus, generated `10000 invalid arg names`): each error searched the header
        // for its line, 10,000 errors took seconds. The lines are now found in one pass; same positions.
        let text = "#!/bin/bash\n# ---\n# bpcs: \"0.1\"\n# name: p\n# version: 1.0.0\n# description: d\n# class: diagnostic\n# args:\n#   Bad: { type: string }\n#   ok: { type: string }\n#   Worse:\n#     type: string\n# ---\n";
        let errors = parse_plugin(Path::new("p.sh"), text.as_bytes().to_vec()).expect_err("invalid");
        let lines: Vec<Option<u64>> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(9), Some(11)], "{errors:?}");
    }

    #[test]
    fn argument_field_errors_point_at_the_field() {
        let text = "#!/bin/bash\n# ---\n# bpcs: \"0.1\"\n# name: p\n# version: 1.0.0\n# description: d\n# class: diagnostic\n# args:\n#   a:\n#     type: string\n#     pattern: \"([\"\n#   b:\n#     type: integer\n#     default: x\n#   c:\n#     type: integer\n#     secret: true\n#   d: { type: integer, required: true, default: 3 }\n# ---\n";
        let errors = parse_plugin(Path::new("p.sh"), text.as_bytes().to_vec()).expect_err("invalid");
        let lines: Vec<(Option<u64>, &str)> =
            errors.iter().map(|e| (e.line, e.message.split(':').next().unwrap_or_default())).collect();
        assert_eq!(
            lines,
            [
                (Some(11), "argument `a`"),
                (Some(14), "default"),
                (Some(17), "argument `c` is secret"),
                (Some(18), "argument `d` is required and has a default; pick one")
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn header_errors_quote_values_in_part() {
        // Regression (hostile-input fuzzer, tests/corpus/plugin_header/crash-*): an unknown field or variant, a
        // `requires` entry or a name came back whole, up to the 512 KiB a plugin may have.
        let long = "x".repeat(100_000);
        let head = "#!/bin/bash\n# ---\n# bpcs: \"0.1\"\n# version: 1.0.0\n# description: d\n# timeout: 5\n";
        for extra in [
            format!("# name: p\n# class: {long}\n"),
            format!("# name: p\n# class: diagnostic\n# {long}: 1\n"),
            format!("# name: p\n# class: diagnostic\n# requires: [\"{long};\"]\n"),
            format!("# name: {long}\n# class: diagnostic\n# tags: [\"{long}\"]\n"),
        ] {
            let text = format!("{head}{extra}# ---\n");
            let errors = parse_plugin(Path::new("p.sh"), text.into_bytes()).expect_err("invalid");
            for e in errors {
                assert!(e.to_string().chars().count() < 2048, "an error of {} characters", e.to_string().len());
            }
        }
    }
}
