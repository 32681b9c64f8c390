//! Payload adapters: pure functions from a received body to normalised [`Event`]s, one module per format.
//!
//! Each adapter reads only the fields RUNE needs, straight into typed structs that borrow from the body (no
//! `serde_json::Value` pass), then checks them against [`Limits`]. A refused payload is one [`AdapterError`]
//! naming the field path (`alerts[3].labels.instance`, `.` for the whole body). Serde's own errors get their
//! path from `serde_path_to_error` in a second parse that runs only after the first one failed: path tracking
//! copies every object key it passes, which would double the cost of every good payload.
//!
//! - [`alertmanager`]: Prometheus Alertmanager webhook, payload version 4; also the shape Grafana's reuses.
//! - [`grafana`]: Grafana unified alerting webhook.
//! - [`generic`]: RUNE's own event shape, one object or an array of them.
//! - [`chatops`]: a request naming its action, target and arguments.
//! - [`nats`]: the NATS intake (core subscriptions, JetStream consumer, chatops request/reply) feeding the bridge.
//!
//! [`webhook`] is the HTTP intake in front of the first three: authentication, body bounds, then the adapter.

pub mod alertmanager;
pub mod chatops;
pub mod generic;
pub mod grafana;
pub mod nats;
pub mod per_source;
pub mod tls;
pub mod webhook;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_path_to_error::Segment;

use crate::event::{AdapterError, AlertStatus, Event, Intake, Limits, Source, is_correlation_id, is_label_name};

/// What a payload says about itself besides its alerts. Only Alertmanager and Grafana payloads carry any of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadMeta {
    /// The alert group the payload is about (`groupKey`).
    pub group_key: Option<String>,
    /// Alerts of the group that the sender left out (its `max_alerts`): RUNE never sees them. Also logged.
    pub truncated_alerts: u64,
    /// The sender's receiver (contact point) name.
    pub receiver: Option<String>,
}

/// Turns one payload of `format` into its events; see [`parse_with_meta`].
pub fn parse(format: Source, body: &[u8], intake: &Intake<'_>, limits: &Limits) -> Result<Vec<Event>, AdapterError> {
    parse_with_meta(format, body, intake, limits).map(|(events, _)| events)
}

/// Turns one payload of `format` into its events (possibly none), plus what the payload says about itself.
pub fn parse_with_meta(
    format: Source,
    body: &[u8],
    intake: &Intake<'_>,
    limits: &Limits,
) -> Result<(Vec<Event>, PayloadMeta), AdapterError> {
    match format {
        Source::Alertmanager => alertmanager::parse_with_meta(body, intake, limits),
        Source::Grafana => grafana::parse_with_meta(body, intake, limits),
        Source::Generic => generic::parse(body, intake, limits).map(|events| (events, PayloadMeta::default())),
        Source::Chatops => chatops::parse(body, intake, limits).map(|events| (events, PayloadMeta::default())),
    }
}

/// The most characters of payload text quoted back in an error message.
const QUOTE_CHARS: usize = 64;
/// The most characters of a field path or a serde message in an error.
const ERROR_TEXT_CHARS: usize = 512;

/// The message for an absent required field.
const MISSING: &str = "required field is missing";

/// Which kind of string map a [`TextMap`] is, for its limits.
#[derive(Debug, Clone, Copy)]
enum MapKind {
    Labels,
    Annotations,
}

/// The checks of one payload: knows its format and limits, and builds field paths only when there is an error.
struct Checker<'l> {
    format: Source,
    limits: &'l Limits,
}

impl<'l> Checker<'l> {
    fn new(format: Source, limits: &'l Limits) -> Self {
        Checker { format, limits }
    }

    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> AdapterError {
        AdapterError { format: self.format, field: field.into(), message: message.into() }
    }

    /// `size` `unit` is more than `limit` allows; `name` is the [`Limits`] field, so operators know what to raise.
    fn over_limit(&self, field: impl Into<String>, size: usize, unit: &str, limit: usize, name: &str) -> AdapterError {
        self.error(field, format!("{size} {unit}, over the limit of {limit} {unit} ({name})"))
    }

    /// The body as text: within `max_body_bytes`, and UTF-8.
    fn body<'b>(&self, body: &'b [u8]) -> Result<&'b str, AdapterError> {
        if body.len() > self.limits.max_body_bytes {
            return Err(self.over_limit(".", body.len(), "bytes", self.limits.max_body_bytes, "max_body_bytes"));
        }
        std::str::from_utf8(body).map_err(|e| {
            self.error(".", format!("body is not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()))
        })
    }

    /// What the intake brings besides the body, checked once per payload: it ends up in every event and log line.
    fn intake(&self, intake: &Intake<'_>) -> Result<(), AdapterError> {
        let subject = intake.subject;
        if subject.len() > self.limits.max_field_bytes {
            return Err(self.over_limit(
                "<intake>.subject",
                subject.len(),
                "bytes",
                self.limits.max_field_bytes,
                "max_field_bytes",
            ));
        }
        if subject.is_empty() || subject.chars().any(char::is_control) {
            return Err(
                self.error("<intake>.subject", format!("{} is empty or has control characters", quote(subject)))
            );
        }
        match intake.correlation_id {
            Some(id) if !is_correlation_id(id) => Err(self.error(
                "<intake>.correlation_id",
                format!("{} is not a correlation id: 1 to 128 characters of [A-Za-z0-9._:-]", quote(id)),
            )),
            _ => Ok(()),
        }
    }

    /// Deserializes the whole text as `T`. A failure is parsed again with path tracking, to name the field.
    fn decode<'de, T: Deserialize<'de>>(&self, text: &'de str) -> Result<T, AdapterError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let first_error = match T::deserialize(&mut deserializer).and_then(|value| deserializer.end().map(|()| value)) {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let (field, error) = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
            Err(e) => (field_path(e.path()), e.into_inner()),
            // Only trailing characters fail outside the value; the whole body is at fault.
            Ok(_) => (".".to_owned(), deserializer.end().err().unwrap_or(first_error)),
        };
        Err(self.error(printable(&field, ERROR_TEXT_CHARS), printable(&error.to_string(), ERROR_TEXT_CHARS)))
    }

    fn required<T>(&self, value: Option<T>, field: impl FnOnce() -> String) -> Result<T, AdapterError> {
        value.ok_or_else(|| self.error(field(), MISSING))
    }

    /// A label or annotation map: at most `max_labels` entries, valid names within `max_key_bytes`, values within
    /// their limit and without NUL, no name given twice (JSON parsers disagree on which copy wins).
    fn map(
        &self,
        raw: TextMap<'_>,
        kind: MapKind,
        field: &dyn Fn() -> String,
    ) -> Result<BTreeMap<String, String>, AdapterError> {
        let limits = self.limits;
        let (what, max_value, value_limit) = match kind {
            MapKind::Labels => ("labels", limits.max_label_value_bytes, "max_label_value_bytes"),
            MapKind::Annotations => ("annotations", limits.max_annotation_value_bytes, "max_annotation_value_bytes"),
        };
        if raw.0.len() > limits.max_labels {
            return Err(self.over_limit(field(), raw.0.len(), what, limits.max_labels, "max_labels"));
        }
        let mut map = BTreeMap::new();
        for (Text(name), Text(value)) in raw.0 {
            if name.len() > limits.max_key_bytes {
                return Err(self.error(
                    field(),
                    format!(
                        "name {} is {} bytes, over the limit of {} bytes (max_key_bytes)",
                        quote(&name),
                        name.len(),
                        limits.max_key_bytes
                    ),
                ));
            }
            if !is_label_name(&name) {
                return Err(
                    self.error(field(), format!("name {} does not match ^[A-Za-z_][A-Za-z0-9_.:/-]*$", quote(&name)))
                );
            }
            if value.len() > max_value {
                return Err(self.over_limit(
                    format!("{}.{name}", field()),
                    value.len(),
                    "bytes",
                    max_value,
                    value_limit,
                ));
            }
            if value.contains('\0') {
                return Err(self.error(format!("{}.{name}", field()), "contains a NUL character"));
            }
            match map.entry(name.into_owned()) {
                Entry::Vacant(entry) => {
                    entry.insert(value.into_owned());
                }
                Entry::Occupied(entry) => {
                    return Err(self.error(format!("{}.{}", field(), entry.key()), "name given twice"));
                }
            }
        }
        Ok(map)
    }

    /// A short identifying string (fingerprint, group key, receiver, requester): at most `max_field_bytes`, no
    /// control characters (it goes into log lines as it is).
    fn short_text(&self, Text(value): Text<'_>, field: impl FnOnce() -> String) -> Result<String, AdapterError> {
        if value.len() > self.limits.max_field_bytes {
            return Err(self.over_limit(field(), value.len(), "bytes", self.limits.max_field_bytes, "max_field_bytes"));
        }
        match value.chars().find(|c| c.is_control()) {
            Some('\0') => Err(self.error(field(), "contains a NUL character")),
            Some(c) => Err(self.error(field(), format!("contains the control character {c:?}"))),
            None => Ok(value.into_owned()),
        }
    }

    /// Like [`Checker::short_text`], and not empty.
    fn non_empty_text(&self, value: Text<'_>, field: impl Fn() -> String) -> Result<String, AdapterError> {
        let value = self.short_text(value, &field)?;
        if value.is_empty() {
            return Err(self.error(field(), "is empty"));
        }
        Ok(value)
    }

    /// An RFC 3339 time. Years before 1970 mean "unset": Alertmanager sends `0001-01-01T00:00:00Z` for that.
    fn time(
        &self,
        value: Option<Text<'_>>,
        field: impl FnOnce() -> String,
    ) -> Result<Option<DateTime<Utc>>, AdapterError> {
        let Some(Text(value)) = value else { return Ok(None) };
        match DateTime::parse_from_rfc3339(&value) {
            Ok(time) => {
                let time = time.with_timezone(&Utc);
                Ok((time.year() >= 1970).then_some(time))
            }
            Err(e) => Err(self.error(field(), format!("{} is not an RFC 3339 time ({e})", quote(&value)))),
        }
    }

    /// The event's correlation id: the intake's (already checked), else the payload's (checked here, even when
    /// the intake's wins), else a new UUID v7.
    fn correlation_id(
        &self,
        intake: &Intake<'_>,
        payload: Option<Text<'_>>,
        field: impl FnOnce() -> String,
    ) -> Result<String, AdapterError> {
        let payload = match payload {
            Some(Text(id)) if is_correlation_id(&id) => Some(id),
            Some(Text(id)) => {
                return Err(self.error(
                    field(),
                    format!("{} is not a correlation id: 1 to 128 characters of [A-Za-z0-9._:-]", quote(&id)),
                ));
            }
            None => None,
        };
        Ok(match (intake.correlation_id, payload) {
            (Some(id), _) => id.to_owned(),
            (None, Some(id)) => id.into_owned(),
            (None, None) => uuid::Uuid::now_v7().to_string(),
        })
    }

    /// An event with what every event of one payload shares filled in; the adapter sets the rest.
    fn event(&self, intake: &Intake<'_>, raw: &Arc<str>) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            source: self.format,
            subject: intake.subject.to_owned(),
            status: AlertStatus::Firing,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            fingerprint: String::new(),
            starts_at: None,
            received_at: intake.received_at,
            correlation_id: String::new(),
            request: None,
            delivery: None,
            raw: Arc::clone(raw),
        }
    }
}

/// A serde path as RUNE names fields: `alerts[3].labels.instance`, `.` for the whole body. A key that could not be
/// read (serde_path_to_error's `?`) ends the path at its object.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    if out.is_empty() { ".".to_owned() } else { out }
}

/// Payload text for an error message: debug-quoted (control characters escaped) and cut to [`QUOTE_CHARS`].
pub(crate) fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{:?}…", text.get(..end).unwrap_or_default()),
        None => format!("{text:?}"),
    }
}

/// Text that may hold payload bytes (a serde message, a path made of payload keys), made safe for one log line:
/// control characters escaped, cut to `max` characters of the result (escapes count: `\u{7f}` is six).
fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut count = 0;
    for c in text.chars() {
        let escaped = c.is_control().then(|| c.escape_default());
        let width = escaped.clone().map_or(1, Iterator::count);
        if count + width > max {
            out.push('…');
            break;
        }
        count += width;
        match escaped {
            Some(e) => out.extend(e),
            None => out.push(c),
        }
    }
    out
}

/// A derived struct read from a JSON object only. Serde's derived structs also take an array of their fields in
/// declaration order, which no sender means and which would turn a wrong shape into a baffling error.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

/// A JSON string, borrowed from the body when it holds no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

/// A JSON object of strings, in payload order and with duplicates kept, for [`Checker::map`] to judge.
struct TextMap<'a>(Vec<(Text<'a>, Text<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for TextMap<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextMapVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for TextMapVisitor<'a> {
            type Value = TextMap<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextMap<'a>, A::Error> {
                let mut entries = Vec::with_capacity(8);
                while let Some(entry) = map.next_entry::<Text<'a>, Text<'a>>()? {
                    entries.push(entry);
                }
                Ok(TextMap(entries))
            }
        }

        deserializer.deserialize_map(TextMapVisitor(PhantomData))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! What the adapter tests share: an intake, fixtures, and the bodies every adapter must refuse.

    use chrono::{DateTime, Utc};

    use crate::event::{AdapterError, Event, Intake, Limits, Source};

    pub fn received_at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T21:08:34Z").map(|t| t.with_timezone(&Utc)).unwrap_or_default()
    }

    pub fn intake() -> Intake<'static> {
        Intake { subject: "hooks.test", received_at: received_at(), correlation_id: None }
    }

    pub fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/events/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    /// The start of a body, for a failure message (some test bodies are a megabyte).
    fn head(body: &[u8]) -> String {
        String::from_utf8_lossy(body).chars().take(300).collect()
    }

    pub fn parse_ok(format: Source, body: &[u8]) -> Vec<Event> {
        super::parse(format, body, &intake(), &Limits::default())
            .unwrap_or_else(|e| panic!("{format} body should parse: {e}\n{}", head(body)))
    }

    pub fn parse_err(format: Source, body: &[u8]) -> AdapterError {
        match super::parse(format, body, &intake(), &Limits::default()) {
            Ok(events) => panic!("{format} body should be refused, got {} events\n{}", events.len(), head(body)),
            Err(e) => {
                assert_eq!(e.format, format);
                e
            }
        }
    }

    /// Checks a table of refused bodies: (name, body, field the error names, text its message contains).
    pub fn assert_refusals(format: Source, cases: &[(&str, Vec<u8>, &str, &str)]) {
        for (name, body, field, message) in cases {
            let e = parse_err(format, body);
            assert_eq!(e.field, *field, "{name}: {e}");
            assert!(e.message.contains(message), "{name}: message {:?} lacks {message:?}", e.message);
        }
    }

    /// Bodies no adapter accepts, with the field each error must name (`None`: any field).
    pub fn hostile_bodies() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
        let over_size = format!("{{\"x\":\"{}\"}}", "a".repeat(Limits::default().max_body_bytes));
        vec![
            ("empty", Vec::new(), Some(".")),
            ("whitespace", b" \n\t ".to_vec(), Some(".")),
            ("null", b"null".to_vec(), Some(".")),
            ("top-level string", b"\"firing\"".to_vec(), Some(".")),
            ("top-level number", b"42".to_vec(), Some(".")),
            ("invalid UTF-8", b"{\"labels\": {\"a\": \"\xff\xfe\"}}".to_vec(), Some(".")),
            ("over max_body_bytes", over_size.into_bytes(), Some(".")),
            ("trailing garbage", b"{} {}".to_vec(), None),
            ("100,000 [", "[".repeat(100_000).into_bytes(), None),
            ("100,000 { in a field", format!("{{\"x\":{}", "{\"a\":".repeat(100_000)).into_bytes(), None),
            ("100,000 [ in labels", format!("{{\"labels\":{}", "[".repeat(100_000)).into_bytes(), None),
            (
                "100,000 [ in alerts",
                format!("{{\"version\":\"4\",\"alerts\":{}", "[".repeat(100_000)).into_bytes(),
                None,
            ),
            ("unterminated", b"{\"alerts\": [".to_vec(), None),
        ]
    }

    pub fn assert_hostile_refused(format: Source) {
        for (name, body, field) in hostile_bodies() {
            let e = parse_err(format, &body);
            if let Some(field) = field {
                assert_eq!(e.field, field, "{name}: {e}");
            }
            assert!(!e.message.is_empty(), "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::test_support::intake;
    use super::*;

    /// Tokens of a JSON-ish grammar, biased toward the names and values the adapters look at.
    fn token() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "null",
            "true",
            "false",
            "0",
            "-1",
            "1.5",
            "1e999",
            "18446744073709551616",
            "\"4\"",
            "\"1\"",
            "\"firing\"",
            "\"resolved\"",
            "\"version\"",
            "\"alerts\"",
            "\"labels\"",
            "\"annotations\"",
            "\"status\"",
            "\"fingerprint\"",
            "\"startsAt\"",
            "\"starts_at\"",
            "\"truncatedAlerts\"",
            "\"groupKey\"",
            "\"action\"",
            "\"target\"",
            "\"args\"",
            "\"requester\"",
            "\"correlation_id\"",
            "\"restart-docker@1.2.0\"",
            "\"web-1\"",
            "\"alertname\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"0001-01-01T00:00:00Z\"",
            "\"2026-11-23T21:08:34.123+02:00\"",
            "\"a b\"",
            " ",
            "\\",
        ])
    }

    /// A JSON value made from the same vocabulary: well-formed, so parsing reaches the checks after serde.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let key = prop::sample::select(vec![
            "version",
            "alerts",
            "labels",
            "annotations",
            "status",
            "fingerprint",
            "startsAt",
            "starts_at",
            "groupKey",
            "truncatedAlerts",
            "receiver",
            "action",
            "target",
            "args",
            "requester",
            "correlation_id",
            "alertname",
            "x",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec![
                "4",
                "1",
                "firing",
                "resolved",
                "web-1",
                "0001-01-01T00:00:00Z",
                "\0",
                "a b",
                ""
            ])
            .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.clone().prop_map(str::to_owned), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn parse_all(body: &[u8]) {
        let limits = Limits { max_body_bytes: 4096, max_alerts: 4, max_labels: 4, ..Limits::default() };
        for format in Source::ALL {
            // Ok or Err are both fine; a panic fails the test.
            let _ = parse(format, body, &intake(), &limits);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            parse_all(&body);
        }

        #[test]
        fn json_ish_token_strings_never_panic(tokens in prop::collection::vec(token(), 0..64)) {
            parse_all(tokens.concat().as_bytes());
        }

        #[test]
        fn json_values_never_panic(value in json_value()) {
            parse_all(value.to_string().as_bytes());
        }
    }

    #[test]
    fn quote_and_printable_cut_and_escape() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        assert_eq!(quote(&"é".repeat(100)), format!("{:?}…", "é".repeat(QUOTE_CHARS)));
        assert_eq!(printable("a\u{0}b\u{1b}", 13), "a\\u{0}b\\u{1b}");
        assert_eq!(printable("abcdef", 3), "abc…");
        // Regression (hostile-input fuzzer, tests/corpus/generic/crash-*): escapes count toward the cut, so 512
        // characters of DEL no longer make 3 KB of `\u{7f}`.
        assert_eq!(printable("a\u{0}b\u{1b}", 10), "a\\u{0}b…");
        assert_eq!(printable(&"\u{7f}".repeat(1000), 512).chars().count(), 511);
    }

    #[test]
    fn every_format_refuses_an_intake_that_would_corrupt_logs() {
        let limits = Limits::default();
        for format in Source::ALL {
            let bad_id = Intake { correlation_id: Some("a\nb"), ..intake() };
            let e = parse(format, b"{}", &bad_id, &limits).err().map(|e| e.field);
            assert_eq!(e.as_deref(), Some("<intake>.correlation_id"), "{format}");
            let bad_subject = Intake { subject: "hooks\r\nx", ..intake() };
            let e = parse(format, b"{}", &bad_subject, &limits).err().map(|e| e.field);
            assert_eq!(e.as_deref(), Some("<intake>.subject"), "{format}");
        }
    }

    #[test]
    fn parse_with_meta_dispatches_by_format() {
        let body = test_support::fixture("alertmanager-truncated.json");
        let (events, meta) = parse_with_meta(Source::Alertmanager, &body, &intake(), &Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 2);
        assert_eq!(meta.truncated_alerts, 3);
        let body = test_support::fixture("generic-event.json");
        let (_, meta) =
            parse_with_meta(Source::Generic, &body, &intake(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta, PayloadMeta::default());
    }
}
