//! Where settings come from: the file (YAML or TOML, parsed here with positions), the `RUNE_*` environment
//! overrides, their layering by the `config` crate, and the shape check that reports every unknown key and
//! every wrongly typed value at once.

use std::collections::HashMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use ::config::builder::DefaultState;
use ::config::{ConfigBuilder, Environment, Map, Source, Value, ValueKind};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::ConfigError;
use super::model::{LIST_FIELDS, SettingsConfig};

/// Largest configuration file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Variables that carry their own meaning for the CLI (`--config`, `--log`, …), never settings overrides.
pub const CLI_VARIABLES: &[&str] =
    &["RUNE_CONFIG", "RUNE_LOG", "RUNE_LOG_FORMAT", "RUNE_PLUGINS_DIR", "RUNE_RULES_DIR", "RUNE_INVENTORY"];

/// Top-level sections; a `RUNE_<SECTION>_…` variable with a single `_` is probably a mistyped override.
const SECTIONS: &[&str] = &["nats", "webhook", "chatops", "paths", "limits", "results", "metrics", "log", "ssm"];

/// The shape check stops after this many errors (each one removes a value, so this bounds the retries).
const MAX_SHAPE_ERRORS: usize = 100;

/// One environment override: the variable and the dotted field it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    pub var: String,
    pub field: String,
}

/// Where every value came from, to put a position (or a variable name) on each error.
#[derive(Debug, Default)]
pub struct Layers {
    /// The file as given (for messages), and the folder its relative paths are relative to.
    pub file: Option<(String, PathBuf)>,
    /// Dotted path → position of its key in the file.
    pub key_positions: HashMap<String, (u64, u64)>,
    /// Dotted path (`a.b`, `a.list[2]`) → position of its value in the file.
    pub value_positions: HashMap<String, (u64, u64)>,
    pub env: Vec<EnvOverride>,
}

impl Layers {
    /// The variable that set `field` or one of its parents.
    pub fn env_var(&self, field: &str) -> Option<&str> {
        self.env.iter().find(|o| is_within(field, &o.field)).map(|o| o.var.as_str())
    }

    /// Whether `field` (or a parent of it) was written in the file and not overridden by the environment.
    pub fn written_in_file(&self, field: &str) -> bool {
        self.env_var(field).is_none() && ancestors(field).any(|f| self.key_positions.contains_key(f))
    }

    /// Position (or variable) of `field`: `key` points at the key (unknown keys), otherwise at the value.
    pub fn locate(&self, field: &str, key: bool) -> (Option<(String, u64, u64)>, Option<String>) {
        if let Some(var) = self.env_var(field) {
            return (None, Some(var.to_owned()));
        }
        let Some((file, _)) = &self.file else {
            return (None, self.env.iter().find(|o| is_within(&o.field, field)).map(|o| o.var.clone()));
        };
        let exact = if key {
            self.key_positions.get(field).or_else(|| self.value_positions.get(field))
        } else {
            self.value_positions.get(field).or_else(|| self.key_positions.get(field))
        };
        let found = exact.or_else(|| ancestors(field).skip(1).find_map(|f| self.key_positions.get(f)));
        match found {
            Some(&(line, column)) => (Some((file.clone(), line, column)), None),
            // Not in the file: a default, or set by a variable below it (`nats.auth` from RUNE_NATS__AUTH__…).
            None => match self.env.iter().find(|o| is_within(&o.field, field)) {
                Some(o) => (None, Some(o.var.clone())),
                None => (None, None),
            },
        }
    }
}

/// `field` is `parent` or lies below it (`a.b.c` within `a.b`; `a.b[1]` within `a.b`).
pub fn is_within(field: &str, parent: &str) -> bool {
    field == parent
        || (field.starts_with(parent) && matches!(field.as_bytes().get(parent.len()), Some(b'.') | Some(b'[')))
}

/// `a.b[1].c`, `a.b[1]`, `a.b`, `a`.
fn ancestors(field: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(field);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.rfind(['.', '[']).map(|i| &current[..i]);
        Some(current)
    })
}

/// Reads the file and the environment, layers them with the `config` crate, and deserializes the result into
/// the raw settings, collecting every shape error. `None` means the file could not be read or parsed at all.
pub fn layer(
    path: Option<&Path>,
    env: &[(String, String)],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Option<(SettingsConfig, Layers, Vec<String>)> {
    let mut layers = Layers::default();
    let mut builder = ConfigBuilder::<DefaultState>::default();
    if let Some(path) = path {
        let display = path.display().to_string();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        layers.file = Some((display.clone(), dir));
        let tree = match read_file(path) {
            Ok(tree) => tree,
            Err(mut file_errors) => {
                errors.append(&mut file_errors);
                return None;
            }
        };
        let mut table = Map::new();
        let tree = match tree.kind {
            // A file of comments only.
            FileKind::Null => FileNode { kind: FileKind::Map(Vec::new()), ..tree },
            _ => tree,
        };
        let FileKind::Map(entries) = tree.kind else {
            errors.push(ConfigError::at_file(
                &display,
                tree.line,
                tree.column,
                "",
                "the file must be a mapping of sections (nats, webhook, …)".into(),
            ));
            return None;
        };
        for (key, node) in entries {
            // The `config` crate reads top-level keys as paths: `nats.urls` would land inside `nats`.
            if key.name.contains(['.', '[', ']']) {
                errors.push(ConfigError::at_file(&display, key.line, key.column, &key.name, "unknown key".into()));
                continue;
            }
            layers.key_positions.insert(key.name.clone(), (key.line, key.column));
            if let Some(value) = to_value(node, &key.name, &display, &mut layers) {
                table.insert(key.name, value);
            }
        }
        builder = builder.add_source(FileSource { table });
    }

    let mut overrides = Map::new();
    for (var, value) in env {
        let Some(rest) = var.get(..5).filter(|p| p.eq_ignore_ascii_case("RUNE_")).map(|_| &var[5..]) else {
            continue;
        };
        if !rest.contains("__") {
            let lower = rest.to_ascii_lowercase();
            if !CLI_VARIABLES.contains(&var.as_str()) && SECTIONS.iter().any(|s| lower.starts_with(&format!("{s}_"))) {
                warnings.push(ConfigError::env(
                    var,
                    "",
                    "ignored: settings overrides separate levels with `__`, e.g. RUNE_WEBHOOK__LISTEN".into(),
                ));
            }
            continue;
        }
        let field = rest.to_ascii_lowercase().replace("__", ".");
        if field.split('.').any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) {
            errors.push(ConfigError::env(
                var,
                &field,
                "not a settings path: levels are letters, digits and `_`, separated by `__`".into(),
            ));
            continue;
        }
        layers.env.push(EnvOverride { var: var.clone(), field });
        overrides.insert(var.clone(), value.clone());
    }
    // Values stay strings (no `try_parsing`): it would turn a client name `007` into `7`. The typed fields
    // accept strings (`true`, `30`), and the list fields are split below.
    builder = builder.add_source(
        Environment::default().prefix("RUNE").prefix_separator("_").separator("__").source(Some(overrides)),
    );
    let merged = match builder.build().and_then(|c| c.collect()) {
        Ok(m) => m,
        Err(e) => {
            errors.push(ConfigError { field: String::new(), location: None, env: None, message: e.to_string() });
            return None;
        }
    };
    let mut root = Value::new(None, ValueKind::Table(merged));
    for o in &layers.env {
        if LIST_FIELDS.contains(&o.field.as_str()) {
            split_list(&mut root, &o.field);
        }
    }
    let (settings, pruned) = shape_check(root, &layers, errors);
    Some((settings, layers, pruned))
}

/// `a,b, c` → `[a, b, c]`; an empty variable is an empty list.
fn split_list(root: &mut Value, field: &str) {
    let segments: Vec<Segment> = field.split('.').map(|k| Segment::Key(k.to_owned())).collect();
    if let Some(value) = node_mut(root, &segments)
        && let ValueKind::String(text) = &value.kind
    {
        let items =
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::new(None, s.to_owned())).collect();
        value.kind = ValueKind::Array(items);
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(root: &'a mut Value, segments: &[Segment]) -> Option<&'a mut Value> {
    let mut node = root;
    for s in segments {
        node = match (s, &mut node.kind) {
            (Segment::Key(k), ValueKind::Table(t)) => t.get_mut(k)?,
            (Segment::Index(i), ValueKind::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

fn path_string(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Deserializes the merged tree; on each error, reports it, removes the offending value and tries again, so
/// every unknown key and wrongly typed value is reported. Returns the removed paths too: the compile step
/// keeps quiet about them (their defaults stood in).
fn shape_check(mut root: Value, layers: &Layers, errors: &mut Vec<ConfigError>) -> (SettingsConfig, Vec<String>) {
    let mut pruned = Vec::new();
    for _ in 0..MAX_SHAPE_ERRORS {
        let error = match serde_path_to_error::deserialize::<_, SettingsConfig>(root.clone()) {
            Ok(settings) => return (settings, pruned),
            Err(e) => e,
        };
        let mut segments: Vec<Segment> = error
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let mut message = shape_message(error.inner());
        let unknown = unknown_field(&message);
        if let Some(name) = &unknown {
            if !matches!(segments.last(), Some(Segment::Key(k)) if k == name) {
                segments.push(Segment::Key(name.clone()));
            }
            let forms: Vec<String> = ["file", "env", "ref"]
                .iter()
                .map(|form| format!("`{name}_{form}`"))
                .filter(|form| message.contains(form.as_str()))
                .collect();
            if let Some((last, [first, rest @ ..])) = forms.split_last() {
                let others: String = rest.iter().map(|f| format!(", {f}")).collect();
                message.push_str(&format!(" (secrets are never written in the file: use {first}{others} or {last})"));
            } else if let [only] = forms.as_slice() {
                message.push_str(&format!(" (secrets are never written in the file: use {only})"));
            }
        }
        let field = path_string(&segments);
        let (location, env) = layers.locate(&field, unknown.is_some());
        errors.push(ConfigError { field: field.clone(), location, env, message });
        // Remove the value; in a list, the whole list (removing one item would renumber the others).
        while matches!(segments.last(), Some(Segment::Index(_))) {
            segments.pop();
        }
        let Some((last, parent)) = segments.split_last() else { break };
        let removed = match (last, node_mut(&mut root, parent)) {
            (Segment::Key(k), Some(Value { kind: ValueKind::Table(t), .. })) => t.remove(k).is_some(),
            _ => false,
        };
        if !removed {
            break;
        }
        pruned.push(path_string(&segments));
    }
    (SettingsConfig::default(), pruned)
}

/// The message of a shape error, without the `config` crate's own key and origin (RUNE prints its own).
fn shape_message(e: &::config::ConfigError) -> String {
    match e {
        ::config::ConfigError::Type { unexpected, expected, .. } => {
            format!("invalid type: {unexpected}, expected {expected}")
        }
        ::config::ConfigError::At { error, .. } => shape_message(error),
        ::config::ConfigError::Message(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The name in serde's "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// The file as a `config` source: its already-parsed top-level table.
#[derive(Debug, Clone)]
struct FileSource {
    table: Map<String, Value>,
}

impl Source for FileSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, ::config::ConfigError> {
        Ok(self.table.clone())
    }
}

/// Converts one parsed node to a `config` value, recording positions. A null value is the same as an absent
/// key (a section whose keys are all commented out is empty, not an error).
fn to_value(node: FileNode, path: &str, origin: &str, layers: &mut Layers) -> Option<Value> {
    // A mapping's own position is its first key's; an error about a section points at the section's key.
    if !matches!(node.kind, FileKind::Map(_)) {
        layers.value_positions.insert(path.to_owned(), (node.line, node.column));
    }
    let kind = match node.kind {
        FileKind::Null => return None,
        FileKind::Bool(b) => ValueKind::Boolean(b),
        FileKind::Int(i) => ValueKind::I64(i),
        FileKind::UInt(u) => ValueKind::U64(u),
        FileKind::Float(f) => ValueKind::Float(f),
        FileKind::Str(s) => ValueKind::String(s),
        FileKind::Seq(items) => ValueKind::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    to_value(item, &format!("{path}[{i}]"), origin, layers)
                        .unwrap_or_else(|| Value::new(None, ValueKind::Nil))
                })
                .collect(),
        ),
        FileKind::Map(entries) => {
            let mut table = Map::new();
            for (key, value) in entries {
                let child = format!("{path}.{}", key.name);
                layers.key_positions.insert(child.clone(), (key.line, key.column));
                if let Some(v) = to_value(value, &child, origin, layers) {
                    table.insert(key.name, v);
                }
            }
            ValueKind::Table(table)
        }
    };
    Some(Value::new(Some(&origin.to_owned()), kind))
}

/// A parsed file, format-independent, every node with its 1-based line and column.
#[derive(Debug)]
pub struct FileNode {
    pub kind: FileKind,
    pub line: u64,
    pub column: u64,
}

#[derive(Debug)]
pub enum FileKind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<FileNode>),
    Map(Vec<(FileKey, FileNode)>),
}

#[derive(Debug)]
pub struct FileKey {
    pub name: String,
    pub line: u64,
    pub column: u64,
}

/// Reads and parses the file by its extension: `.yaml`/`.yml` (serde-saphyr) or `.toml` (toml).
pub fn read_file(path: &Path) -> Result<FileNode, Vec<ConfigError>> {
    let display = path.display().to_string();
    let whole = |message: String| vec![ConfigError::at_file(&display, 0, 0, "", message)];
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    if !matches!(extension.as_str(), "yaml" | "yml" | "toml") {
        return Err(whole("unknown configuration file type: the name must end in .yaml, .yml or .toml".into()));
    }
    // Checked before opening: opening a FIFO would block until something writes to it.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(whole("not a regular file".into())),
        Ok(_) => {}
        Err(e) => return Err(whole(format!("cannot read: {e}"))),
    }
    let file = std::fs::File::open(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| whole(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(whole(format!("the file is larger than the limit of {MAX_FILE_BYTES} bytes")));
    }
    let text =
        String::from_utf8(bytes).map_err(|e| whole(format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to())))?;
    if extension == "toml" { parse_toml(&text, &display) } else { parse_yaml(&text, &display) }
}

/// Parses YAML text with positions. An empty document is an empty mapping.
pub fn parse_yaml(text: &str, file: &str) -> Result<FileNode, Vec<ConfigError>> {
    if text.trim().is_empty() {
        return Ok(FileNode { kind: FileKind::Map(Vec::new()), line: 1, column: 1 });
    }
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_str_with_options::<serde_saphyr::Spanned<YamlNode>>(text, options) {
        Ok(root) => Ok(from_yaml(root)),
        Err(e) => {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            Err(vec![ConfigError::at_file(file, line, column, "", parser_message(&e.to_string()))])
        }
    }
}

/// Parses TOML text with positions.
pub fn parse_toml(text: &str, file: &str) -> Result<FileNode, Vec<ConfigError>> {
    match toml::from_str::<toml::Spanned<TomlNode>>(text) {
        Ok(root) => Ok(from_toml(root, &LineIndex::new(text))),
        Err(e) => {
            let (line, column) = e.span().map(|s| LineIndex::new(text).position(s.start)).unwrap_or((0, 0));
            Err(vec![ConfigError::at_file(file, line, column, "", parser_message(e.message()))])
        }
    }
}

/// The parser's first line, without its own `line N column M` prefix (RUNE prints file:line:column itself).
fn parser_message(s: &str) -> String {
    let line = s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid file");
    let rest = line.strip_prefix("error: ").unwrap_or(line);
    match rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((position, message)) if position.contains(" column ") => message.to_owned(),
        _ => rest.to_owned(),
    }
}

/// Byte offset → 1-based line and column (in characters).
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { text, starts }
    }

    fn position(&self, offset: usize) -> (u64, u64) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self.text.get(start..offset.min(self.text.len())).map(|s| s.chars().count()).unwrap_or(0) + 1;
        (line as u64, column as u64)
    }
}

/// Defines a node type holding its children in `$spanned` wrappers, deserialized with `deserialize_any`.
macro_rules! spanned_node {
    ($node:ident, $spanned:ident) => {
        enum $node {
            Null,
            Bool(bool),
            Int(i64),
            UInt(u64),
            Float(f64),
            Str(String),
            Seq(Vec<$spanned<$node>>),
            Map(Vec<($spanned<String>, $spanned<$node>)>),
        }

        impl<'de> Deserialize<'de> for $node {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct NodeVisitor;

                impl<'de> Visitor<'de> for NodeVisitor {
                    type Value = $node;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a value")
                    }

                    fn visit_unit<E: de::Error>(self) -> Result<$node, E> {
                        Ok($node::Null)
                    }

                    fn visit_none<E: de::Error>(self) -> Result<$node, E> {
                        Ok($node::Null)
                    }

                    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<$node, D::Error> {
                        $node::deserialize(d)
                    }

                    fn visit_bool<E: de::Error>(self, v: bool) -> Result<$node, E> {
                        Ok($node::Bool(v))
                    }

                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$node, E> {
                        Ok($node::Int(v))
                    }

                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$node, E> {
                        Ok(i64::try_from(v).map($node::Int).unwrap_or($node::UInt(v)))
                    }

                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$node, E> {
                        Ok($node::Float(v))
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$node, E> {
                        Ok($node::Str(v.to_owned()))
                    }

                    fn visit_string<E: de::Error>(self, v: String) -> Result<$node, E> {
                        Ok($node::Str(v))
                    }

                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$node, A::Error> {
                        let mut items = Vec::new();
                        while let Some(item) = seq.next_element()? {
                            items.push(item);
                        }
                        Ok($node::Seq(items))
                    }

                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$node, A::Error> {
                        let mut entries = Vec::new();
                        while let Some(entry) = map.next_entry()? {
                            entries.push(entry);
                        }
                        Ok($node::Map(entries))
                    }
                }

                deserializer.deserialize_any(NodeVisitor)
            }
        }
    };
}

use serde_saphyr::Spanned as YamlSpanned;
use toml::Spanned as TomlSpanned;

spanned_node!(YamlNode, YamlSpanned);
spanned_node!(TomlNode, TomlSpanned);

fn from_yaml(node: YamlSpanned<YamlNode>) -> FileNode {
    let (line, column) = (node.referenced.line(), node.referenced.column());
    let kind = match node.value {
        YamlNode::Null => FileKind::Null,
        YamlNode::Bool(b) => FileKind::Bool(b),
        YamlNode::Int(i) => FileKind::Int(i),
        YamlNode::UInt(u) => FileKind::UInt(u),
        YamlNode::Float(f) => FileKind::Float(f),
        YamlNode::Str(s) => FileKind::Str(s),
        YamlNode::Seq(items) => FileKind::Seq(items.into_iter().map(from_yaml).collect()),
        YamlNode::Map(entries) => FileKind::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = FileKey { name: k.value, line: k.referenced.line(), column: k.referenced.column() };
                    (key, from_yaml(v))
                })
                .collect(),
        ),
    };
    FileNode { kind, line, column }
}

fn from_toml(node: TomlSpanned<TomlNode>, index: &LineIndex<'_>) -> FileNode {
    let (line, column) = index.position(node.span().start);
    let kind = match node.into_inner() {
        TomlNode::Null => FileKind::Null,
        TomlNode::Bool(b) => FileKind::Bool(b),
        TomlNode::Int(i) => FileKind::Int(i),
        TomlNode::UInt(u) => FileKind::UInt(u),
        TomlNode::Float(f) => FileKind::Float(f),
        TomlNode::Str(s) => FileKind::Str(s),
        TomlNode::Seq(items) => FileKind::Seq(items.into_iter().map(|i| from_toml(i, index)).collect()),
        TomlNode::Map(entries) => FileKind::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let (line, column) = index.position(k.span().start);
                    (FileKey { name: k.into_inner(), line, column }, from_toml(v, index))
                })
                .collect(),
        ),
    };
    FileNode { kind, line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_and_within() {
        let all: Vec<&str> = ancestors("a.b[1].c").collect();
        assert_eq!(all, ["a.b[1].c", "a.b[1]", "a.b", "a"]);
        assert!(is_within("a.b[1]", "a.b"));
        assert!(is_within("a.b.c", "a.b"));
        assert!(is_within("a.b", "a.b"));
        assert!(!is_within("a.bc", "a.b"));
    }

    #[test]
    fn yaml_and_toml_positions() {
        let yaml = parse_yaml("nats:\n  urls: [\"nats://a:4222\"]\n  name: x\n", "f.yaml").unwrap();
        let toml = parse_toml("[nats]\nurls = [\"nats://a:4222\"]\nname = \"x\"\n", "f.toml").unwrap();
        for (tree, want) in [(yaml, [(1, 1), (2, 3), (3, 3)]), (toml, [(1, 2), (2, 1), (3, 1)])] {
            let FileKind::Map(top) = tree.kind else { panic!() };
            let (nats_key, nats) = &top[0];
            assert_eq!((nats_key.name.as_str(), nats_key.line, nats_key.column), ("nats", want[0].0, want[0].1));
            let FileKind::Map(inner) = &nats.kind else { panic!() };
            let mut positions: Vec<(u64, u64)> = inner.iter().map(|(k, _)| (k.line, k.column)).collect();
            positions.sort();
            assert_eq!(positions, want[1..]);
        }
    }

    #[test]
    fn line_index_counts_characters() {
        let index = LineIndex::new("ab\nçd\n");
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(3), (2, 1));
        assert_eq!(index.position(5), (2, 2));
    }
}
