//! Chatops requests: one JSON object naming an action, a target host and arguments becomes one firing event.
//!
//! The request skips rule matching (it names its action itself), not the gates. Its labels are `action`,
//! `target` and `requester`; its fingerprint covers those and the arguments, so the same request repeated is
//! recognisably the same.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::{Checker, Object, Text, quote};
use crate::event::{AdapterError, AlertStatus, ChatopsRequest, Event, Intake, Limits, Source, fingerprint_of};

static ACTION_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]*(@[0-9A-Za-z.+-]+)?$").unwrap_or_else(|_| unreachable!()));
static TARGET_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]*$").unwrap_or_else(|_| unreachable!()));

/// A chatops request as sent. RUNE's own format, so an unknown field is a typo and an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatopsRequestConfig<'a> {
    /// `plugin` or `plugin@version`.
    #[serde(borrow)]
    action: Option<Text<'a>>,
    /// An inventory host name.
    #[serde(borrow)]
    target: Option<Text<'a>>,
    #[serde(borrow)]
    args: Option<ArgMap<'a>>,
    #[serde(borrow)]
    requester: Option<Text<'a>>,
    #[serde(borrow)]
    correlation_id: Option<Text<'a>>,
}

/// An argument value: a JSON string, integer or boolean. Floats, null, arrays and objects are refused while
/// parsing, so the error names the argument.
enum ArgValue<'a> {
    Text(Text<'a>),
    Integer(serde_json::Number),
    Boolean(bool),
}

impl<'de: 'a, 'a> Deserialize<'de> for ArgValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgValueVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ArgValueVisitor<'a> {
            type Value = ArgValue<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ArgValue<'a>, E> {
                Ok(ArgValue::Boolean(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ArgValue<'a>, E> {
                Ok(ArgValue::Integer(v.into()))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ArgValue<'a>, E> {
                Ok(ArgValue::Integer(v.into()))
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<ArgValue<'a>, E> {
                Ok(ArgValue::Text(Text(v.into())))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ArgValue<'a>, E> {
                Ok(ArgValue::Text(Text(v.to_owned().into())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ArgValue<'a>, E> {
                Ok(ArgValue::Text(Text(v.into())))
            }
        }

        deserializer.deserialize_any(ArgValueVisitor(PhantomData))
    }
}

/// The `args` object in payload order, duplicates kept for the checks to refuse.
struct ArgMap<'a>(Vec<(Text<'a>, ArgValue<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for ArgMap<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgMapVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ArgMapVisitor<'a> {
            type Value = ArgMap<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of arguments")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArgMap<'a>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<Text<'a>, ArgValue<'a>>()? {
                    entries.push(entry);
                }
                Ok(ArgMap(entries))
            }
        }

        deserializer.deserialize_map(ArgMapVisitor(PhantomData))
    }
}

/// The one event of a chatops request.
pub fn parse(body: &[u8], intake: &Intake<'_>, limits: &Limits) -> Result<Vec<Event>, AdapterError> {
    let check = Checker::new(Source::Chatops, limits);
    let text = check.body(body)?;
    check.intake(intake)?;
    let Object(config): Object<ChatopsRequestConfig<'_>> = check.decode(text)?;

    let action = check.short_text(check.required(config.action, || "action".to_owned())?, || "action".to_owned())?;
    if !ACTION_RE.is_match(&action) {
        return Err(check.error(
            "action",
            format!(
                "{} is not `plugin` or `plugin@version` (^[a-z0-9][a-z0-9_-]*(@[0-9A-Za-z.+-]+)?$)",
                quote(&action)
            ),
        ));
    }
    let target = check.short_text(check.required(config.target, || "target".to_owned())?, || "target".to_owned())?;
    if !TARGET_RE.is_match(&target) {
        return Err(
            check.error("target", format!("{} is not a host name (^[A-Za-z0-9][A-Za-z0-9._-]*$)", quote(&target)))
        );
    }
    let requester = check.required(config.requester, || "requester".to_owned())?;
    let requester = check.non_empty_text(requester, || "requester".to_owned())?;
    let args = arguments(&check, config.args.unwrap_or(ArgMap(Vec::new())))?;
    let correlation_id = check.correlation_id(intake, config.correlation_id, || "correlation_id".to_owned())?;

    let labels: BTreeMap<String, String> = [
        ("action".to_owned(), action.clone()),
        ("target".to_owned(), target.clone()),
        ("requester".to_owned(), requester.clone()),
    ]
    .into_iter()
    .collect();
    let mut identity = labels.clone();
    let args_json = serde_json::to_string(&args).map_err(|e| check.error("args", e.to_string()))?;
    identity.insert("args".to_owned(), args_json);
    let fingerprint = fingerprint_of(&identity);

    let raw: Arc<str> = Arc::from(text);
    Ok(vec![Event {
        status: AlertStatus::Firing,
        labels,
        fingerprint,
        correlation_id,
        request: Some(ChatopsRequest { action, target, args, requester }),
        ..check.event(intake, &raw)
    }])
}

/// The checked arguments: at most `max_labels`, names `^[a-z][a-z0-9_]*$` within `max_key_bytes`, string values
/// within `max_label_value_bytes` and without NUL, no name given twice.
fn arguments(check: &Checker<'_>, raw: ArgMap<'_>) -> Result<BTreeMap<String, serde_json::Value>, AdapterError> {
    let limits = check.limits;
    if raw.0.len() > limits.max_labels {
        return Err(check.over_limit("args", raw.0.len(), "arguments", limits.max_labels, "max_labels"));
    }
    let mut args = BTreeMap::new();
    for (Text(name), value) in raw.0 {
        if name.len() > limits.max_key_bytes {
            return Err(check.error(
                "args",
                format!(
                    "name {} is {} bytes, over the limit of {} bytes (max_key_bytes)",
                    quote(&name),
                    name.len(),
                    limits.max_key_bytes
                ),
            ));
        }
        let valid_name = name.as_bytes().split_first().is_some_and(|(first, rest)| {
            first.is_ascii_lowercase()
                && rest.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        });
        if !valid_name {
            return Err(check.error("args", format!("name {} does not match ^[a-z][a-z0-9_]*$", quote(&name))));
        }
        let value = match value {
            ArgValue::Text(Text(text)) => {
                if text.len() > limits.max_label_value_bytes {
                    return Err(check.over_limit(
                        format!("args.{name}"),
                        text.len(),
                        "bytes",
                        limits.max_label_value_bytes,
                        "max_label_value_bytes",
                    ));
                }
                if text.contains('\0') {
                    return Err(check.error(format!("args.{name}"), "contains a NUL character"));
                }
                serde_json::Value::String(text.into_owned())
            }
            ArgValue::Integer(number) => serde_json::Value::Number(number),
            ArgValue::Boolean(flag) => serde_json::Value::Bool(flag),
        };
        match args.entry(name.into_owned()) {
            Entry::Vacant(entry) => {
                entry.insert(value);
            }
            Entry::Occupied(entry) => return Err(check.error(format!("args.{}", entry.key()), "name given twice")),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sources::test_support::{assert_hostile_refused, assert_refusals, fixture, intake, parse_ok};

    const FORMAT: Source = Source::Chatops;

    #[test]
    fn fixture_parses_to_its_request() {
        let events = parse_ok(FORMAT, &fixture("chatops-request.json"));
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!((event.source, event.status), (Source::Chatops, AlertStatus::Firing));
        let request = event.request.as_ref().unwrap_or_else(|| panic!("no request"));
        assert_eq!(request.action, "restart-docker@1.0.0");
        assert_eq!(request.target, "web-1");
        assert_eq!(request.requester, "alice");
        assert_eq!(request.args.get("service"), Some(&json!("docker")));
        assert_eq!(request.args.get("verify_timeout"), Some(&json!(30)));
        let labels: Vec<(&str, &str)> = event.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [("action", "restart-docker@1.0.0"), ("requester", "alice"), ("target", "web-1")]);
        assert_eq!(event.correlation_id, "slack:C024BE91L:1732395914.000200");
        assert_eq!(event.fingerprint.len(), 16);
        assert!(event.annotations.is_empty() && event.starts_at.is_none());
    }

    #[test]
    fn fingerprint_covers_the_arguments() {
        let fingerprint = |body: &str| parse_ok(FORMAT, body.as_bytes())[0].fingerprint.clone();
        let base = r#"{"action":"restart-docker","target":"web-1","requester":"alice","args":{"n":1}}"#;
        assert_eq!(fingerprint(base), fingerprint(base));
        assert_ne!(fingerprint(base), fingerprint(&base.replace(r#""n":1"#, r#""n":"1""#)));
        assert_ne!(fingerprint(base), fingerprint(&base.replace(r#""n":1"#, r#""n":2"#)));
        assert_ne!(fingerprint(base), fingerprint(&base.replace("alice", "bob")));
        let no_args = r#"{"action":"noop","target":"web-1","requester":"alice"}"#;
        assert!(parse_ok(FORMAT, no_args.as_bytes())[0].request.as_ref().is_some_and(|r| r.args.is_empty()));
    }

    #[test]
    fn intake_correlation_id_wins() {
        let intake = Intake { correlation_id: Some("hdr-9"), ..intake() };
        let events =
            parse(&fixture("chatops-request.json"), &intake, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events[0].correlation_id, "hdr-9");
    }

    #[test]
    fn refusals_name_the_field() {
        let with = |field: &str, value: &str| {
            let mut object = serde_json::Map::new();
            for (k, v) in [("action", r#""restart-docker""#), ("target", r#""web-1""#), ("requester", r#""alice""#)] {
                object.insert(k.to_owned(), serde_json::from_str(v).unwrap_or_default());
            }
            let mut text = serde_json::Value::Object(object).to_string();
            text.pop();
            format!(r#"{text},"{field}":{value}}}"#).into_bytes()
        };
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            ("an array", br#"["noop","web-1",null,"alice"]"#.to_vec(), ".", "expected an object"),
            ("no action", br#"{"target":"web-1","requester":"alice"}"#.to_vec(), "action", "required"),
            ("no target", br#"{"action":"noop","requester":"alice"}"#.to_vec(), "target", "required"),
            ("no requester", br#"{"action":"noop","target":"web-1"}"#.to_vec(), "requester", "required"),
            ("empty requester", br#"{"action":"noop","target":"web-1","requester":""}"#.to_vec(), "requester", "empty"),
            (
                "requester with newline",
                br#"{"action":"noop","target":"web-1","requester":"al\nice"}"#.to_vec(),
                "requester",
                "control character",
            ),
            (
                "action uppercase",
                br#"{"action":"Restart","target":"web-1","requester":"a"}"#.to_vec(),
                "action",
                "plugin@version",
            ),
            (
                "action with space",
                br#"{"action":"noop; rm","target":"web-1","requester":"a"}"#.to_vec(),
                "action",
                "plugin@version",
            ),
            (
                "action empty version",
                br#"{"action":"noop@","target":"web-1","requester":"a"}"#.to_vec(),
                "action",
                "plugin@version",
            ),
            (
                "target with slash",
                br#"{"action":"noop","target":"../etc","requester":"a"}"#.to_vec(),
                "target",
                "host name",
            ),
            (
                "target a number",
                br#"{"action":"noop","target":1,"requester":"a"}"#.to_vec(),
                "target",
                "expected a string",
            ),
            ("unknown field", with("host", r#""web-1""#), "host", "unknown field `host`"),
            ("float arg", with("args", r#"{"n":1.5}"#), "args.n", "expected a string, an integer or a boolean"),
            ("null arg", with("args", r#"{"n":null}"#), "args.n", "invalid type: null"),
            ("array arg", with("args", r#"{"n":[1]}"#), "args.n", "invalid type: sequence"),
            ("object arg", with("args", r#"{"n":{"a":1}}"#), "args.n", "invalid type: map"),
            ("huge integer arg", with("args", r#"{"n":18446744073709551616}"#), "args.n", "floating point"),
            ("args a list", with("args", r#"["n"]"#), "args", "an object of arguments"),
            ("bad arg name", with("args", r#"{"N":1}"#), "args", "does not match"),
            ("arg name given twice", with("args", r#"{"n":1,"n":2}"#), "args.n", "twice"),
            ("NUL in an arg", with("args", r#"{"n":"a\u0000"}"#), "args.n", "NUL"),
            (
                "long arg",
                with("args", &format!(r#"{{"n":"{}"}}"#, "x".repeat(4097))),
                "args.n",
                "(max_label_value_bytes)",
            ),
            (
                "10,000 args",
                with(
                    "args",
                    &format!("{{{}}}", (0..10_000).map(|i| format!(r#""a{i}":1"#)).collect::<Vec<_>>().join(",")),
                ),
                "args",
                "10000 arguments, over the limit of 256 arguments (max_labels)",
            ),
            ("bad correlation id", with("correlation_id", r#""a/b""#), "correlation_id", "not a correlation id"),
            ("action given twice", with("action", r#""noop""#), ".", "duplicate field `action`"),
        ];
        assert_refusals(FORMAT, &cases);
        let long_action = format!(r#"{{"action":"{}","target":"web-1","requester":"a"}}"#, "a".repeat(1025));
        assert_refusals(FORMAT, &[("long action", long_action.into_bytes(), "action", "(max_field_bytes)")]);
    }

    #[test]
    fn hostile_bodies_are_refused_without_panic() {
        assert_hostile_refused(FORMAT);
    }
}
