//! The Bash Plugin Communication Spec (BPCS) v0.1: header, input and output types, and their validation.
//!
//! The prose spec is `docs/bpcs.md`; the JSON Schemas in `docs/schemas/` are compiled into the binary and
//! every plugin output (and every input RUNE builds) is validated against them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec version this build speaks.
pub const BPCS_VERSION: &str = "0.1";

/// Largest stdout a plugin may produce; past it RUNE ends the run and reports a protocol error.
pub const MAX_STDOUT_BYTES: usize = 1024 * 1024;
/// Most stderr a plugin may write; past it RUNE ends the run (a flood, not logging).
pub const MAX_STDERR_BYTES: usize = 16 * 1024 * 1024;
/// How much of a plugin's stderr RUNE keeps (the tail).
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// Longest `summary` accepted.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// Longest value of one argument, in bytes.
pub const MAX_ARG_BYTES: usize = 64 * 1024;

/// Exit codes 120..=127 belong to the RUNE runner, not to plugins.
pub mod runner_exit {
    /// The plugin itself exited with a code in 120..=127 (reserved), e.g. 127 for a command not found.
    pub const RESERVED_BY_PLUGIN: i32 = 120;
    /// A command named in `requires` is missing on the target.
    pub const REQUIRES_MISSING: i32 = 121;
    /// The plugin needs root and the runner is not root.
    pub const NEEDS_ROOT: i32 = 122;
    /// `sudo: installed`: the plugin is not installed on the host, or its installed copy differs from RUNE's.
    pub const NOT_INSTALLED: i32 = 123;
    /// The timeout expired (GNU `timeout` convention).
    pub const TIMEOUT: i32 = 124;
    /// The runner could not prepare the run (temp dir, decoding).
    pub const RUNNER_FAILED: i32 = 125;
}

const OUTPUT_SCHEMA: &str = include_str!("../docs/schemas/bpcs-output.schema.json");
const INPUT_SCHEMA: &str = include_str!("../docs/schemas/bpcs-input.schema.json");

/// Safety class of a plugin, declared in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SafetyClass {
    /// Reads state, changes nothing.
    Diagnostic,
    /// Changes the host (restarts, cleans up).
    Remediation,
}

/// Type of a declared argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgType {
    String,
    Integer,
    Boolean,
}

/// One argument as declared in the header (raw form).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgSpecConfig {
    #[serde(rename = "type")]
    pub arg_type: ArgType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The value is a secret (a password, a token): results, decisions, logs and the audit trail never show it.
    #[serde(default)]
    pub secret: bool,
}

/// The plugin header as written (raw form; see [`crate::plugins`] for the validated one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConfig {
    pub bpcs: String,
    pub name: String,
    pub version: String,
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub class: SafetyClass,
    #[serde(default)]
    pub needs_root: bool,
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub args: BTreeMap<String, ArgSpecConfig>,
}

fn default_timeout() -> u64 {
    60
}

/// A validated argument declaration.
#[derive(Debug, Clone, Serialize)]
pub struct ArgSpec {
    #[serde(rename = "type")]
    pub arg_type: ArgType,
    pub required: bool,
    pub default: Option<ArgValue>,
    /// The pattern as written in the header (shown to users).
    pub pattern: Option<String>,
    /// The same pattern, anchored to match the whole value.
    #[serde(skip)]
    pub pattern_re: Option<Regex>,
    pub description: Option<String>,
    /// Never shown: results and decision records show `<redacted>` (header `secret: true`; strings only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// A typed argument value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    Boolean(bool),
    Integer(i64),
    String(String),
}

impl ArgValue {
    /// The value as the plugin sees it in `RUNE_ARG_<name>`.
    pub fn as_env_string(&self) -> String {
        match self {
            ArgValue::Boolean(b) => b.to_string(),
            ArgValue::Integer(i) => i.to_string(),
            ArgValue::String(s) => s.clone(),
        }
    }
}

/// Why an argument set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("unknown argument `{0}` (declared: {1})")]
    Unknown(String, String),
    #[error("missing required argument `{0}`")]
    Missing(String),
    #[error("argument `{name}`: expected {expected}, got {got:?}")]
    WrongType { name: String, expected: &'static str, got: String },
    #[error("argument `{name}`: value does not match the declared pattern `{pattern}`")]
    Pattern { name: String, pattern: String },
    #[error("argument `{name}`: {reason}")]
    Invalid { name: String, reason: String },
}

impl ArgSpec {
    /// Checks one raw value (from `--arg k=v`, a JSON file or a rule) against this declaration.
    pub fn check(&self, name: &str, raw: &RawArg) -> Result<ArgValue, ArgError> {
        let value = match (self.arg_type, raw) {
            (ArgType::String, RawArg::Text(s)) => ArgValue::String(s.clone()),
            (ArgType::String, RawArg::Json(Value::String(s))) => ArgValue::String(s.clone()),
            (ArgType::Integer, RawArg::Text(s)) => {
                s.trim().parse::<i64>().map(ArgValue::Integer).map_err(|_| wrong_type(name, "an integer", s))?
            }
            (ArgType::Integer, RawArg::Json(Value::Number(n))) => {
                n.as_i64().map(ArgValue::Integer).ok_or_else(|| wrong_type(name, "an integer", &n.to_string()))?
            }
            (ArgType::Boolean, RawArg::Text(s)) => match s.as_str() {
                "true" => ArgValue::Boolean(true),
                "false" => ArgValue::Boolean(false),
                _ => return Err(wrong_type(name, "true or false", s)),
            },
            (ArgType::Boolean, RawArg::Json(Value::Bool(b))) => ArgValue::Boolean(*b),
            (t, RawArg::Json(v)) => {
                let expected = match t {
                    ArgType::String => "a string",
                    ArgType::Integer => "an integer",
                    ArgType::Boolean => "a boolean",
                };
                // A JSON string is shown as its text (the error quotes it once), anything else as JSON.
                let got = match v {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                return Err(wrong_type(name, expected, &got));
            }
        };
        let text = value.as_env_string();
        if text.len() > MAX_ARG_BYTES {
            return Err(ArgError::Invalid {
                name: name.to_owned(),
                reason: format!("value is {} bytes, the limit is {MAX_ARG_BYTES}", text.len()),
            });
        }
        if text.contains('\0') {
            return Err(ArgError::Invalid { name: name.to_owned(), reason: "value contains a NUL byte".into() });
        }
        if let Some(re) = &self.pattern_re
            && !re.is_match(&text)
        {
            let pattern = self.pattern.clone().unwrap_or_else(|| re.as_str().to_owned());
            return Err(ArgError::Pattern { name: name.to_owned(), pattern });
        }
        Ok(value)
    }
}

fn wrong_type(name: &str, expected: &'static str, got: &str) -> ArgError {
    let mut got = got.to_owned();
    if got.len() > 64 {
        let mut cut = 64;
        while !got.is_char_boundary(cut) {
            cut -= 1;
        }
        got.truncate(cut);
        got.push('…');
    }
    ArgError::WrongType { name: name.to_owned(), expected, got }
}

/// An argument value before it is checked against the header.
#[derive(Debug, Clone, PartialEq)]
pub enum RawArg {
    /// From the command line (`--arg k=v`): typed by the declaration.
    Text(String),
    /// From JSON (`--args-json`, rules): must already have the declared type.
    Json(Value),
}

/// Validates a full argument set against the declarations: unknown, missing, type, pattern; applies defaults.
/// Every problem is reported, not just the first.
pub fn check_args(
    specs: &BTreeMap<String, ArgSpec>,
    raw: &BTreeMap<String, RawArg>,
) -> Result<BTreeMap<String, ArgValue>, Vec<ArgError>> {
    let mut errors = Vec::new();
    let mut out = BTreeMap::new();
    for name in raw.keys() {
        if !specs.contains_key(name) {
            let declared = if specs.is_empty() {
                "none".to_owned()
            } else {
                specs.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            };
            errors.push(ArgError::Unknown(name.clone(), declared));
        }
    }
    for (name, spec) in specs {
        match raw.get(name) {
            Some(value) => match spec.check(name, value) {
                Ok(v) => {
                    out.insert(name.clone(), v);
                }
                Err(e) => errors.push(e),
            },
            None => match (&spec.default, spec.required) {
                (Some(d), _) => {
                    out.insert(name.clone(), d.clone());
                }
                (None, true) => errors.push(ArgError::Missing(name.clone())),
                (None, false) => {}
            },
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// [`check_args`] for a set where the arguments named in `deferred` (secret references) get their values later:
/// each must be a declared string argument and is otherwise taken as given; the rest is checked in full.
pub fn check_args_deferring(
    specs: &BTreeMap<String, ArgSpec>,
    raw: &BTreeMap<String, RawArg>,
    deferred: &BTreeSet<String>,
) -> Result<(), Vec<ArgError>> {
    let mut errors = Vec::new();
    for name in deferred {
        match specs.get(name) {
            None => errors.push(ArgError::Unknown(name.clone(), specs.keys().cloned().collect::<Vec<_>>().join(", "))),
            Some(s) if s.arg_type != ArgType::String => errors.push(ArgError::Invalid {
                name: name.clone(),
                reason: "a secret reference (ssm:) can only fill a string argument".into(),
            }),
            Some(_) => {}
        }
    }
    let rest: BTreeMap<String, ArgSpec> =
        specs.iter().filter(|(k, _)| !deferred.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let raw: BTreeMap<String, RawArg> =
        raw.iter().filter(|(k, _)| !deferred.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Err(e) = check_args(&rest, &raw) {
        errors.extend(e);
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// The input document a plugin reads on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInput<'a> {
    pub bpcs: &'static str,
    pub run_id: &'a str,
    pub correlation_id: &'a str,
    pub action: &'a str,
    pub plugin: PluginRef<'a>,
    pub host: &'a str,
    pub dry_run: bool,
    pub timeout_s: u64,
    pub args: &'a BTreeMap<String, ArgValue>,
    pub trigger: &'a Value,
}

/// Name and version of the plugin, as carried in the input.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRef<'a> {
    pub name: &'a str,
    pub version: &'a str,
}

/// Status a plugin reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginStatus {
    Ok,
    Warn,
    Error,
    Skipped,
}

/// A validated plugin output object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginOutput {
    pub bpcs: String,
    pub status: PluginStatus,
    pub summary: String,
    pub data: Value,
    pub changed: bool,
}

/// How a plugin broke the output contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputViolation {
    #[error("no JSON object on stdout (the plugin printed nothing there; it ends with `bpcs_finish`)")]
    Empty,
    /// Not JSON at all: the parser's message, then how stdout starts.
    #[error("stdout is not valid JSON: {message}; stdout starts with {start}")]
    NotJson { message: String, start: String },
    /// Text (a log line, say) before the object: it belongs on stderr.
    #[error(
        "stdout has text before the JSON object (the object starts at byte {offset}): {text}; log lines belong on stderr"
    )]
    TextBefore { offset: usize, text: String },
    /// A second JSON value after the object (two `bpcs_finish`, or an object printed by hand and another).
    #[error("stdout holds more than one JSON value: a second one starts at byte {offset}: {text}")]
    SecondValue { offset: usize, text: String },
    /// Something that is not JSON after the object.
    #[error("stdout has text after the JSON object, at byte {offset}: {text}; only the object may be printed there")]
    TextAfter { offset: usize, text: String },
    #[error("output does not match the BPCS v0.1 output schema: {0}")]
    Schema(String),
    #[error("exit code {exit_code} disagrees with status `{status}` (ok|warn|skipped exit 0, error exits 1..=119)")]
    ExitCodeMismatch { exit_code: i32, status: String },
}

fn compiled(schema: &'static str, cell: &'static OnceLock<jsonschema::Validator>) -> &'static jsonschema::Validator {
    cell.get_or_init(|| {
        // The schemas are compiled into the binary and checked by the test suite; failing here is a build bug.
        let value: Value = serde_json::from_str(schema).unwrap_or(Value::Bool(false));
        jsonschema::validator_for(&value).unwrap_or_else(|_| {
            jsonschema::validator_for(&Value::Bool(false)).unwrap_or_else(|_| unreachable!("false schema compiles"))
        })
    })
}

fn output_validator() -> &'static jsonschema::Validator {
    static CELL: OnceLock<jsonschema::Validator> = OnceLock::new();
    compiled(OUTPUT_SCHEMA, &CELL)
}

fn input_validator() -> &'static jsonschema::Validator {
    static CELL: OnceLock<jsonschema::Validator> = OnceLock::new();
    compiled(INPUT_SCHEMA, &CELL)
}

/// The most characters of one schema error: the validator's messages quote the offending value whole, and a
/// plugin's value may be as long as its output (a megabyte), which would then fill the result's `error`.
const SCHEMA_ERROR_CHARS: usize = 300;

fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(5)
        .map(|e| {
            let path = e.instance_path().to_string();
            let text = if path.is_empty() { e.to_string() } else { format!("{path}: {e}") };
            match text.char_indices().nth(SCHEMA_ERROR_CHARS) {
                Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
                None => text,
            }
        })
        .collect();
    if errors.is_empty() { None } else { Some(errors.join("; ")) }
}

/// Validates an input document against the input schema (RUNE checks what it sends, too).
pub fn validate_input(input: &Value) -> Result<(), String> {
    match schema_errors(input_validator(), input) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// How much of the offending text a violation quotes.
const EXCERPT_CHARS: usize = 60;

/// The first characters of `text`, quoted and escaped (control characters shown as escapes).
fn excerpt(text: &str) -> String {
    let cut = text.char_indices().nth(EXCERPT_CHARS).map_or(text.len(), |(i, _)| i);
    let more = if cut < text.len() { "…" } else { "" };
    format!("{:?}{more}", text.get(..cut).unwrap_or_default())
}

/// Where a JSON object starts further into `text`, when stdout began with something else (log lines): the first
/// `{` at the start of a line (or anywhere, as a last try) from which an object parses. A few tries at most, so a
/// megabyte of garbage costs a few parses.
fn object_after_text(text: &str) -> Option<usize> {
    let line_starts = text.match_indices("\n{").map(|(i, _)| i + 1);
    let candidates: Vec<usize> = line_starts.take(4).chain(text.find('{')).collect();
    candidates.into_iter().filter(|&i| i > 0).find(|&i| {
        let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        matches!(stream.next(), Some(Ok(Value::Object(_))))
    })
}

/// Parses a plugin's stdout into its output object: exactly one JSON object, schema-valid. Each way of breaking
/// that is its own [`OutputViolation`], quoting the offending text and its byte offset in stdout.
/// Invalid UTF-8 is replaced with U+FFFD before parsing (documented in docs/bpcs.md).
pub fn parse_output(stdout: &[u8]) -> Result<PluginOutput, OutputViolation> {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim_start();
    let lead = text.len() - trimmed.len();
    let trimmed = trimmed.trim_end();
    if trimmed.is_empty() {
        return Err(OutputViolation::Empty);
    }
    let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
    let value = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            return Err(match object_after_text(trimmed) {
                Some(at) => OutputViolation::TextBefore { offset: lead + at, text: excerpt(&trimmed[..at]) },
                None => OutputViolation::NotJson { message: e.to_string(), start: excerpt(trimmed) },
            });
        }
        None => return Err(OutputViolation::Empty),
    };
    let end = stream.byte_offset();
    if let Some(next) = stream.next() {
        let rest = trimmed.get(end..).unwrap_or_default();
        let at = end + (rest.len() - rest.trim_start().len());
        let (offset, text) = (lead + at, excerpt(rest.trim_start()));
        return Err(match next {
            Ok(_) => OutputViolation::SecondValue { offset, text },
            Err(_) => OutputViolation::TextAfter { offset, text },
        });
    }
    if let Some(e) = schema_errors(output_validator(), &value) {
        return Err(OutputViolation::Schema(e));
    }
    serde_json::from_value(value).map_err(|e| OutputViolation::Schema(e.to_string()))
}

/// Checks that the exit code agrees with the reported status.
pub fn check_exit_code(output: &PluginOutput, exit_code: i32) -> Result<(), OutputViolation> {
    let agrees = match output.status {
        PluginStatus::Ok | PluginStatus::Warn | PluginStatus::Skipped => exit_code == 0,
        PluginStatus::Error => (1..=119).contains(&exit_code),
    };
    if agrees {
        Ok(())
    } else {
        Err(OutputViolation::ExitCodeMismatch {
            exit_code,
            status: serde_json::to_value(output.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_compile() {
        let v: Value = serde_json::from_str(OUTPUT_SCHEMA).expect("output schema is JSON");
        jsonschema::validator_for(&v).expect("output schema compiles");
        let v: Value = serde_json::from_str(INPUT_SCHEMA).expect("input schema is JSON");
        jsonschema::validator_for(&v).expect("input schema compiles");
    }

    #[test]
    fn parses_one_object() {
        let out = parse_output(
            br#" {"bpcs":"0.1","status":"ok","summary":"s","data":{},"changed":false}
"#,
        )
        .expect("valid");
        assert_eq!(out.status, PluginStatus::Ok);
    }

    #[test]
    fn schema_errors_quote_values_only_in_part() {
        // Regression (hostile-input corpus, tests/corpus/bpcs_output): a megabyte `summary` or `status` came back
        // whole in the error, and so in the result envelope.
        for field in ["summary", "status", "x"] {
            let mut out =
                serde_json::json!({"bpcs": "0.1", "status": "ok", "summary": "s", "data": {}, "changed": false});
            out[field] = Value::String("v".repeat(1 << 20));
            let Err(e) = parse_output(out.to_string().as_bytes()) else { panic!("{field}: a megabyte value passed") };
            assert!(e.to_string().len() < 2048, "{field}: error of {} bytes", e.to_string().len());
        }
    }

    #[test]
    fn output_violations() {
        assert_eq!(parse_output(b"  \n"), Err(OutputViolation::Empty));
        let Err(e) = parse_output(b"hello") else { panic!("hello parsed") };
        assert!(matches!(e, OutputViolation::NotJson { .. }), "{e:?}");
        assert!(e.to_string().contains(r#"starts with "hello""#), "{e}");
        let two = br#"{"bpcs":"0.1","status":"ok","summary":"s","data":{},"changed":false}{"a":1}"#;
        let Err(e) = parse_output(two) else { panic!("two objects parsed") };
        assert_eq!(e, OutputViolation::SecondValue { offset: 68, text: r#""{\"a\":1}""#.into() });
        assert!(e.to_string().contains("more than one JSON value"), "{e}");
        let text_after = br#"{"bpcs":"0.1","status":"ok","summary":"s","data":{},"changed":false} done"#;
        assert_eq!(parse_output(text_after), Err(OutputViolation::TextAfter { offset: 69, text: r#""done""#.into() }));
        let noise = b"restarting docker\n{\"bpcs\":\"0.1\",\"status\":\"ok\",\"summary\":\"s\",\"data\":{},\"changed\":false}\n";
        let Err(e) = parse_output(noise) else { panic!("noise parsed") };
        assert_eq!(e, OutputViolation::TextBefore { offset: 18, text: r#""restarting docker\n""#.into() });
        assert!(e.to_string().contains("log lines belong on stderr"), "{e}");
        let bad_status = br#"{"bpcs":"0.1","status":"fine","summary":"s","data":{},"changed":false}"#;
        let Err(e) = parse_output(bad_status) else { panic!("status fine parsed") };
        assert!(matches!(e, OutputViolation::Schema(_)), "{e:?}");
        assert!(e.to_string().contains("/status") && e.to_string().contains("fine"), "{e}");
        let extra = br#"{"bpcs":"0.1","status":"ok","summary":"s","data":{},"changed":false,"x":1}"#;
        assert!(matches!(parse_output(extra), Err(OutputViolation::Schema(_))));
        let not_object = br#"[1,2]"#;
        assert!(matches!(parse_output(not_object), Err(OutputViolation::Schema(_))));
    }

    #[test]
    fn exit_code_must_agree() {
        let mut out =
            parse_output(br#"{"bpcs":"0.1","status":"ok","summary":"s","data":{},"changed":false}"#).expect("valid");
        assert!(check_exit_code(&out, 0).is_ok());
        assert!(check_exit_code(&out, 1).is_err());
        out.status = PluginStatus::Error;
        assert!(check_exit_code(&out, 1).is_ok());
        assert!(check_exit_code(&out, 0).is_err());
    }

    fn spec(t: ArgType, pattern: Option<&str>) -> ArgSpec {
        ArgSpec {
            arg_type: t,
            required: false,
            default: None,
            pattern: pattern.map(str::to_owned),
            pattern_re: pattern.map(|p| Regex::new(p).expect("test regex")),
            description: None,
            secret: false,
        }
    }

    #[test]
    fn args_are_typed_and_checked() {
        let mut specs = BTreeMap::new();
        specs.insert("n".to_owned(), spec(ArgType::Integer, None));
        specs.insert("flag".to_owned(), spec(ArgType::Boolean, None));
        let mut s = spec(ArgType::String, Some("^[a-z]+$"));
        s.required = true;
        specs.insert("name".to_owned(), s);
        let mut raw = BTreeMap::new();
        raw.insert("n".to_owned(), RawArg::Text("12".into()));
        raw.insert("flag".to_owned(), RawArg::Json(Value::Bool(true)));
        raw.insert("name".to_owned(), RawArg::Text("abc".into()));
        let ok = check_args(&specs, &raw).expect("valid args");
        assert_eq!(ok["n"], ArgValue::Integer(12));
        raw.insert("name".to_owned(), RawArg::Text("$(touch /tmp/x)".into()));
        raw.insert("n".to_owned(), RawArg::Text("twelve".into()));
        raw.insert("bogus".to_owned(), RawArg::Text("1".into()));
        let errors = check_args(&specs, &raw).expect_err("invalid args");
        assert_eq!(errors.len(), 3, "{errors:?}");
        raw.clear();
        let errors = check_args(&specs, &raw).expect_err("missing");
        assert_eq!(errors, vec![ArgError::Missing("name".into())]);
    }
}
