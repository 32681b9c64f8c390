//! Rule templates: minijinja in strict mode (a missing field is an error, never an empty string), with a fuel
//! limit and no loader (no file access), rendered against a read-only view of the event.
//!
//! Rule files are input like any other, so a template's memory is bounded, not only its output: MiniJinja's fuel
//! counts instructions, not bytes, and `{% set a = a ~ a %}` in a loop doubles a string per step. A template may
//! therefore use expressions and `if` blocks only — no `set`, `for`, `macro`, `call`, `filter` or `with` blocks,
//! no `*` or `**` (string repetition), no `range`/`namespace` — and only the filters of [`FILTERS`], whose result
//! is never longer than their input, or capped at [`MAX_VALUE_BYTES`] (`replace`, `join`). Without variables
//! that can be reassigned, every value a render holds is a combination of the event's fields and the
//! template's own literals, each at most [`MAX_VALUE_BYTES`] long, at most one per token of a 1 KiB source.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{Environment, UndefinedBehavior};

use crate::event::{AlertStatus, Event};

/// Instructions one render may execute: enough for any sane template, not for a loop over a huge range.
const FUEL: u64 = 20_000;
/// Longest rendered text accepted (the BPCS argument limit is the same order).
pub const MAX_RENDERED_BYTES: usize = 4096;
/// Longest template source. MiniJinja compiles a chain (`a|f|f…`, `1+1+…`, `a.b.c…`) recursively, one stack
/// frame per link, without a depth limit: a few thousand links overflow a 2 MiB thread stack and abort the
/// process. 1 KiB holds at most ~500 links, and any template a rule needs.
pub const MAX_TEMPLATE_BYTES: usize = 1024;

/// Top-level names a template may use.
pub const VARIABLES: &[&str] = &[
    "labels",
    "annotations",
    "status",
    "source",
    "subject",
    "fingerprint",
    "starts_at",
    "received_at",
    "correlation_id",
    "event_id",
    "rule",
    "target",
];

/// MiniJinja's global functions (not variables, but reported among undeclared names).
const GLOBAL_FUNCTIONS: &[&str] = &["range", "dict", "namespace", "debug"];

/// Global functions a template may call.
const FUNCTIONS: &[&str] = &["dict"];

/// Block tags a template may use.
const BLOCKS: &[&str] = &["if", "elif", "else", "endif"];

/// Filters a template may use: MiniJinja's built-ins whose result is never longer than their input (or than the
/// longest of their arguments), RUNE's own, and `replace` and `join` capped at [`MAX_VALUE_BYTES`]. Left out:
/// those that grow a value by a factor or a width given as an argument (`center`, `indent`, `wordwrap`,
/// `format`, `escape`, `urlencode`, `tojson`, `pprint`, `batch`) and `map`, which applies a filter named by a
/// string.
pub const FILTERS: &[&str] = &[
    "abs",
    "attr",
    "bool",
    "capitalize",
    "count",
    "d",
    "default",
    "dictsort",
    "first",
    "float",
    "int",
    "items",
    "join",
    "last",
    "length",
    "list",
    "lower",
    "max",
    "min",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "short_host",
    "sort",
    "split",
    "string",
    "strip_port",
    "sum",
    "title",
    "trim",
    "truncate",
    "unique",
    "upper",
];

/// MiniJinja built-ins left out of [`FILTERS`] (named as not allowed rather than unknown).
const DISALLOWED_FILTERS: &[&str] = &[
    "batch",
    "center",
    "chain",
    "e",
    "escape",
    "format",
    "indent",
    "lines",
    "map",
    "pprint",
    "slice",
    "tojson",
    "urlencode",
    "wordwrap",
];

/// Longest value `replace` and `join` may make (the rendered text is at most [`MAX_RENDERED_BYTES`] anyway).
pub const MAX_VALUE_BYTES: usize = 4 * MAX_RENDERED_BYTES;

/// A writer that refuses to grow past [`MAX_RENDERED_BYTES`].
struct CappedWriter {
    buf: Vec<u8>,
    overflow: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > MAX_RENDERED_BYTES {
            self.overflow = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// All templates of one rule set, compiled once.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(32);
        env.add_filter("strip_port", strip_port);
        env.add_filter("short_host", short_host);
        env.add_filter("replace", replace);
        env.add_filter("join", join);
        Templates { env }
    }

    /// Compiles `source` under `name`; syntax errors are reported here, at load time.
    pub fn add(&mut self, name: String, source: String) -> Result<(), TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError(format!(
                "the template is {} bytes, over the limit of {MAX_TEMPLATE_BYTES} bytes",
                source.len()
            )));
        }
        check_language(&source)?;
        self.env.add_template_owned(name, source).map_err(|e| TemplateError(describe(&e)))
    }

    /// Renders a compiled template.
    pub fn render(&self, name: &str, context: &Value) -> Result<String, TemplateError> {
        let template = self.env.get_template(name).map_err(|e| TemplateError(describe(&e)))?;
        // Written through a capped buffer: a loop cannot build megabytes before the size check.
        let mut capped = CappedWriter { buf: Vec::new(), overflow: false };
        let result = template.render_captured_to(context, &mut capped).map(drop);
        if capped.overflow {
            return Err(TemplateError(format!("rendered text is longer than the limit of {MAX_RENDERED_BYTES} bytes")));
        }
        result.map_err(|e| TemplateError(describe(&e)))?;
        let out = String::from_utf8(capped.buf).map_err(|_| TemplateError("rendered text is not UTF-8".into()))?;
        if out.contains('\0') {
            return Err(TemplateError("rendered text contains a NUL byte".into()));
        }
        Ok(out)
    }

    /// Load-time trial render against a stand-in event: reports unknown filters, tests, functions and methods
    /// (errors that depend on real values, such as a failed `int` conversion, are left to run time).
    pub fn probe(&self, name: &str, probe: ProbeContext) -> Result<(), TemplateError> {
        use minijinja::ErrorKind;
        let template = self.env.get_template(name).map_err(|e| TemplateError(describe(&e)))?;
        match template.render(Value::from_object(probe)) {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnknownFilter
                        | ErrorKind::UnknownTest
                        | ErrorKind::UnknownFunction
                        | ErrorKind::UnknownMethod
                ) =>
            {
                Err(TemplateError(describe(&e)))
            }
            _ => Ok(()),
        }
    }

    /// Does the template read this top-level variable?
    pub fn reads(&self, name: &str, variable: &str) -> bool {
        self.env.get_template(name).is_ok_and(|t| t.undeclared_variables(false).contains(variable))
    }

    /// The dotted label and annotation names a template reads (`labels.instance` → ("labels", "instance")),
    /// and any top-level name that is not a template variable.
    pub fn references(&self, name: &str) -> (Vec<(String, String)>, Vec<String>) {
        let Ok(template) = self.env.get_template(name) else {
            return (Vec::new(), Vec::new());
        };
        let mut fields = Vec::new();
        let mut unknown = Vec::new();
        for var in template.undeclared_variables(true) {
            let mut parts = var.splitn(2, '.');
            let top = parts.next().unwrap_or_default();
            match (top, parts.next()) {
                ("labels" | "annotations", Some(field)) => {
                    let field = field.split('.').next().unwrap_or(field);
                    fields.push((top.to_owned(), field.to_owned()));
                }
                (top, _) if !VARIABLES.contains(&top) && !GLOBAL_FUNCTIONS.contains(&top) => {
                    unknown.push(top.to_owned())
                }
                _ => {}
            }
        }
        fields.sort();
        unknown.sort();
        unknown.dedup();
        (fields, unknown)
    }
}

/// Refuses what a rule template may not use (see the module doc), naming it and its line.
fn check_language(source: &str) -> Result<(), TemplateError> {
    use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
    use minijinja::syntax::SyntaxConfig;
    let refuse = |what: String, line: u16| Err(TemplateError(format!("{what} (template line {line})")));
    let mut previous: Option<Token<'_>> = None;
    let mut block_keyword = false;
    for token in tokenize(source, false, SyntaxConfig, WhitespaceConfig::default()) {
        let (token, span) = token.map_err(|e| TemplateError(describe(&e)))?;
        let line = span.start_line;
        if block_keyword {
            block_keyword = false;
            match &token {
                Token::Ident(name) if BLOCKS.contains(name) => {}
                Token::Ident(name) => {
                    return refuse(format!("`{{% {name} %}}` blocks are not allowed: only if/elif/else/endif"), line);
                }
                _ => return refuse("a block must start with if, elif, else or endif".into(), line),
            }
        }
        match (&previous, &token) {
            (_, Token::BlockStart) => block_keyword = true,
            (_, Token::Mul | Token::Pow) => {
                return refuse("`*` and `**` are not allowed (string repetition has no memory bound)".into(), line);
            }
            (Some(Token::Pipe), Token::Ident(name)) if DISALLOWED_FILTERS.contains(name) => {
                return refuse(
                    format!("filter `{name}` is not allowed in rule templates (it can grow a value without bound)"),
                    line,
                );
            }
            (Some(Token::Pipe), Token::Ident(name)) if !FILTERS.contains(name) => {
                return refuse(format!("unknown filter `{name}`"), line);
            }
            (Some(Token::Dot | Token::Pipe), _) => {}
            (_, Token::Ident(name)) if GLOBAL_FUNCTIONS.contains(name) && !FUNCTIONS.contains(name) => {
                return refuse(format!("function `{name}` is not allowed in rule templates"), line);
            }
            _ => {}
        }
        previous = Some(token);
    }
    Ok(())
}

/// `replace`, refused before it allocates a result longer than [`MAX_VALUE_BYTES`] (an empty `from` inserts `to`
/// between every two characters).
fn replace(value: &str, from: &str, to: &str) -> Result<String, minijinja::Error> {
    let hits = if from.is_empty() { value.chars().count() + 1 } else { value.matches(from).count() };
    let length = (value.len() - hits * from.len()).saturating_add(hits.saturating_mul(to.len()));
    if length > MAX_VALUE_BYTES {
        return Err(too_long("replace", length));
    }
    Ok(value.replace(from, to))
}

/// `join` (of a sequence's items, by an optional joiner), refused past [`MAX_VALUE_BYTES`].
fn join(value: &Value, joiner: Option<&str>) -> Result<String, minijinja::Error> {
    let joiner = joiner.unwrap_or("");
    let items = value.try_iter()?;
    let mut out = String::new();
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(joiner);
        }
        match item.as_str() {
            Some(text) => out.push_str(text),
            None => out.push_str(&item.to_string()),
        }
        if out.len() > MAX_VALUE_BYTES {
            return Err(too_long("join", out.len()));
        }
    }
    Ok(out)
}

fn too_long(filter: &str, length: usize) -> minijinja::Error {
    minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("{filter} would make {length} bytes, over the limit of {MAX_VALUE_BYTES}"),
    )
}

fn describe(e: &minijinja::Error) -> String {
    let mut text = e.kind().to_string();
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}

/// `web-1:9100` → `web-1`, `[::1]:9100` → `::1`; a bare host or IPv6 address is returned as is.
pub fn strip_port(value: &str) -> String {
    if let Some(rest) = value.strip_prefix('[')
        && let Some((host, _)) = rest.split_once(']')
    {
        return host.to_owned();
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_owned()
        }
        _ => value.to_owned(),
    }
}

/// `web-1.prod.example.com` → `web-1` (the first DNS label; IP addresses are returned as is).
pub fn short_host(value: &str) -> String {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return value.to_owned();
    }
    value.split('.').next().unwrap_or(value).to_owned()
}

/// What a template sees: the event, the rule, and (for dedup keys) the rendered target.
#[derive(Debug)]
pub struct EventContext {
    pub event: Arc<Event>,
    pub rule: Arc<str>,
    pub target: Option<Arc<str>>,
    /// Replaces the event's status (a resolved event renders its firing twin's dedup key).
    pub status: Option<AlertStatus>,
}

impl EventContext {
    pub fn into_value(self) -> Value {
        Value::from_object(self)
    }
}

impl Object for EventContext {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let e = &self.event;
        Some(match key.as_str()? {
            "labels" => Value::from_object(FieldMap { event: e.clone(), annotations: false }),
            "annotations" => Value::from_object(FieldMap { event: e.clone(), annotations: true }),
            "status" => Value::from(self.status.unwrap_or(e.status).as_str()),
            "source" => Value::from(e.source.as_str()),
            "subject" => Value::from(e.subject.as_str()),
            "fingerprint" => Value::from(e.fingerprint.as_str()),
            "starts_at" => Value::from(e.starts_at?.to_rfc3339()),
            "received_at" => Value::from(e.received_at.to_rfc3339()),
            "correlation_id" => Value::from(e.correlation_id.as_str()),
            "event_id" => Value::from(e.id.to_string()),
            "rule" => Value::from(&*self.rule),
            "target" => Value::from(&**self.target.as_ref()?),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(VARIABLES)
    }
}

/// The labels or annotations of an event, as a template map.
#[derive(Debug)]
struct FieldMap {
    event: Arc<Event>,
    annotations: bool,
}

impl FieldMap {
    fn map(&self) -> &BTreeMap<String, String> {
        if self.annotations { &self.event.annotations } else { &self.event.labels }
    }
}

impl Object for FieldMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.map().get(key.as_str()?).map(|v| Value::from(v.as_str()))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.map().keys().map(|k| Value::from(k.as_str())).collect())
    }
}

/// The load-time stand-in for an event: every label and annotation exists, so a trial render finds syntax,
/// filter and variable-name mistakes without an event at hand.
#[derive(Debug)]
pub struct ProbeContext;

impl Object for ProbeContext {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        if !VARIABLES.contains(&key) {
            return None;
        }
        Some(match key {
            "labels" | "annotations" => Value::from_object(ProbeMap),
            "status" => Value::from("firing"),
            _ => Value::from("probe"),
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(VARIABLES)
    }
}

#[derive(Debug)]
struct ProbeMap;

impl Object for ProbeMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        key.as_str().map(|_| Value::from("probe-1:9100"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;

    #[test]
    fn long_chains_are_refused_before_they_overflow_the_stack() {
        // Regression (hostile-input corpus, tests/corpus/templates/bad-filter-chain-*): a chain of 2,000 filters
        // overflowed the stack while compiling (a process abort, not an error).
        for link in ["|upper", "+1", ".a", "[0]", "~1"] {
            let long = format!("{{{{ labels.x{} }}}}", link.repeat(2000));
            let e = Templates::new().add("t".into(), long).err().map(|e| e.0).unwrap_or_default();
            assert!(e.contains("over the limit"), "{link}: {e}");
            // The longest chain the limit lets through compiles, on a thread with the default stack.
            let most = format!("{{{{ labels.x{} }}}}", link.repeat((MAX_TEMPLATE_BYTES - 20) / link.len()));
            let compiled = std::thread::spawn(move || Templates::new().add("t".into(), most).is_ok()).join();
            assert_eq!(compiled.ok(), Some(true), "{link}");
        }
    }

    fn event(labels: &[(&str, &str)]) -> Arc<Event> {
        Arc::new(Event {
            id: uuid::Uuid::nil(),
            source: Source::Alertmanager,
            subject: "hooks.alertmanager".into(),
            status: AlertStatus::Firing,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: [("summary".to_string(), "disk full".to_string())].into_iter().collect(),
            fingerprint: "abc".into(),
            starts_at: None,
            received_at: chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
            correlation_id: "c-1".into(),
            request: None,
            delivery: None,
            raw: Arc::from(""),
        })
    }

    fn render(source: &str, e: &Arc<Event>) -> Result<String, TemplateError> {
        let mut t = Templates::new();
        t.add("t".into(), source.into())?;
        let ctx =
            EventContext { event: e.clone(), rule: Arc::from("r"), target: Some(Arc::from("web-1")), status: None };
        t.render("t", &ctx.into_value())
    }

    #[test]
    fn renders_fields_and_filters() {
        let e = event(&[("instance", "web-1.prod.example:9100"), ("job", "node")]);
        let cases = [
            ("{{ labels.instance | strip_port }}", Ok("web-1.prod.example")),
            ("{{ labels.instance | strip_port | short_host }}", Ok("web-1")),
            ("{{ labels['job'] }}/{{ status }}/{{ source }}", Ok("node/firing/alertmanager")),
            ("{{ annotations.summary | upper }}", Ok("DISK FULL")),
            ("{{ fingerprint }}:{{ target }}:{{ rule }}", Ok("abc:web-1:r")),
            ("{% if labels.missing is defined %}x{% else %}y{% endif %}", Ok("y")),
            ("{{ labels.missing | default('none') }}", Ok("none")),
        ];
        for (source, want) in cases {
            assert_eq!(render(source, &e).as_deref().map_err(|_| ()), want.map_err(|_: ()| ()), "{source}");
        }
    }

    #[test]
    fn missing_fields_unknown_filters_and_runaway_loops_are_errors() {
        let e = event(&[("job", "node")]);
        for source in [
            "{{ labels.instance }}",
            "{{ nosuchvar }}",
            "{{ labels.job | nosuchfilter }}",
            "{% for i in range(100000) %}{{ i }}{% endfor %}",
            "{{ 'x' * 5000 }}",
            "{% for i in range(5000) %}xx{% endfor %}",
        ] {
            assert!(render(source, &e).is_err(), "{source} should fail");
        }
        assert!(Templates::new().add("bad".into(), "{{ labels.x ".into()).is_err());
    }

    #[test]
    fn strip_port_cases() {
        for (input, want) in [
            ("web-1:9100", "web-1"),
            ("web-1", "web-1"),
            ("[::1]:9100", "::1"),
            ("::1", "::1"),
            ("10.0.0.1:22", "10.0.0.1"),
            ("host:", "host:"),
            ("host:abc", "host:abc"),
        ] {
            assert_eq!(strip_port(input), want, "{input}");
        }
        assert_eq!(short_host("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn references_lists_fields_and_unknown_names() {
        let mut t = Templates::new();
        t.add("t".into(), "{{ labels.instance }}{{ annotations.summary }}{{ status }}{{ nope }}".into())
            .unwrap_or_default();
        let (fields, unknown) = t.references("t");
        assert_eq!(
            fields,
            vec![("annotations".to_owned(), "summary".to_owned()), ("labels".to_owned(), "instance".to_owned())]
        );
        assert_eq!(unknown, vec!["nope".to_owned()]);
    }
}
