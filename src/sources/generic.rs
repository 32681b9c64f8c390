//! RUNE's generic event: one JSON object, or an array of them, each becoming one event (docs/events.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::{Checker, MapKind, Object, Text, TextMap};
use crate::event::{AdapterError, AlertStatus, Event, Intake, Limits, Source, fingerprint_of};

/// One generic event as sent. RUNE's own format, so an unknown field is a typo and an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericEventConfig<'a> {
    /// Defaults to firing.
    status: Option<AlertStatus>,
    #[serde(borrow)]
    labels: Option<TextMap<'a>>,
    #[serde(borrow)]
    annotations: Option<TextMap<'a>>,
    /// Defaults to [`fingerprint_of`] the labels.
    #[serde(borrow)]
    fingerprint: Option<Text<'a>>,
    #[serde(borrow)]
    starts_at: Option<Text<'a>>,
    #[serde(borrow)]
    correlation_id: Option<Text<'a>>,
}

/// One event per object of a generic payload (a single object, or an array of at most `max_alerts`).
pub fn parse(body: &[u8], intake: &Intake<'_>, limits: &Limits) -> Result<Vec<Event>, AdapterError> {
    let check = Checker::new(Source::Generic, limits);
    let text = check.body(body)?;
    check.intake(intake)?;
    let in_array = text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('[');
    let objects: Vec<Object<GenericEventConfig<'_>>> =
        if in_array { check.decode(text)? } else { vec![check.decode(text)?] };
    if objects.len() > limits.max_alerts {
        return Err(check.over_limit(".", objects.len(), "events", limits.max_alerts, "max_alerts"));
    }

    let raw: Arc<str> = Arc::from(text);
    let mut events = Vec::with_capacity(objects.len());
    for (i, Object(object)) in objects.into_iter().enumerate() {
        let at = |name: &str| if in_array { format!("[{i}].{name}") } else { name.to_owned() };
        let labels = check.required(object.labels, || at("labels"))?;
        let labels = check.map(labels, MapKind::Labels, &|| at("labels"))?;
        let annotations = match object.annotations {
            Some(annotations) => check.map(annotations, MapKind::Annotations, &|| at("annotations"))?,
            None => BTreeMap::new(),
        };
        let fingerprint = match object.fingerprint {
            Some(fingerprint) => check.non_empty_text(fingerprint, || at("fingerprint"))?,
            None => fingerprint_of(&labels),
        };
        let starts_at = check.time(object.starts_at, || at("starts_at"))?;
        let correlation_id = check.correlation_id(intake, object.correlation_id, || at("correlation_id"))?;
        events.push(Event {
            status: object.status.unwrap_or(AlertStatus::Firing),
            labels,
            annotations,
            fingerprint,
            starts_at,
            correlation_id,
            ..check.event(intake, &raw)
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::sources::test_support::{assert_hostile_refused, assert_refusals, fixture, intake, parse_ok};

    const FORMAT: Source = Source::Generic;

    #[test]
    fn fixture_parses_to_its_event() {
        let events = parse_ok(FORMAT, &fixture("generic-event.json"));
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.source, Source::Generic);
        assert_eq!(event.status, AlertStatus::Firing);
        assert_eq!(event.labels.get("alertname").map(String::as_str), Some("DockerDown"));
        assert_eq!(event.labels.get("instance").map(String::as_str), Some("web-1:9100"));
        assert_eq!(event.labels.get("severity").map(String::as_str), Some("critical"));
        assert_eq!(event.fingerprint, fingerprint_of(&event.labels));
        assert_eq!(event.correlation_id, "ticket-4711");
        assert_eq!(
            event.starts_at,
            DateTime::parse_from_rfc3339("2026-11-23T21:03:04Z").ok().map(|t| t.with_timezone(&Utc))
        );
        assert!(event.annotations.contains_key("summary"));
    }

    #[test]
    fn defaults_arrays_and_correlation_ids() {
        let events = parse_ok(FORMAT, br#"{"labels":{"a":"b"}}"#);
        assert_eq!(events[0].status, AlertStatus::Firing);
        assert!(events[0].annotations.is_empty());
        assert_eq!(events[0].starts_at, None);

        let body = br#" [ {"labels":{"a":"1"},"status":"resolved","fingerprint":"fp-1","correlation_id":"c-1"},
                          {"labels":{"a":"2"}} ] "#;
        let events = parse_ok(FORMAT, body);
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].status, events[0].fingerprint.as_str()), (AlertStatus::Resolved, "fp-1"));
        assert_eq!(events[0].correlation_id, "c-1");
        assert!(Arc::ptr_eq(&events[0].raw, &events[1].raw));
        assert_ne!(events[1].correlation_id, events[0].correlation_id);
        assert!(parse_ok(FORMAT, b"[]").is_empty());

        let intake = Intake { correlation_id: Some("hdr-1"), ..intake() };
        let events = parse(body, &intake, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(events.iter().all(|e| e.correlation_id == "hdr-1"), "the intake's id wins over the payload's");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            ("no labels", br#"{"status":"firing"}"#.to_vec(), "labels", "required"),
            ("no labels in an array", br#"[{"labels":{}},{"status":"firing"}]"#.to_vec(), "[1].labels", "required"),
            ("array of arrays", br#"[["firing",{"a":"b"}]]"#.to_vec(), "[0]", "expected an object"),
            ("typo", br#"{"labels":{},"stauts":"firing"}"#.to_vec(), "stauts", "unknown field `stauts`"),
            ("camelCase startsAt", br#"{"labels":{},"startsAt":"x"}"#.to_vec(), "startsAt", "unknown field"),
            ("bad status", br#"{"labels":{},"status":"FIRING"}"#.to_vec(), "status", "unknown variant"),
            ("raw newline in a label name", b"{\"labels\":{\"a\n\":\"x\"}}".to_vec(), "labels", "control character"),
            ("label value true", br#"{"labels":{"a":true}}"#.to_vec(), "labels.a", "expected a string"),
            (
                "label value null",
                br#"[{"labels":{}},{"labels":{"a":null}}]"#.to_vec(),
                "[1].labels.a",
                "expected a string",
            ),
            ("NUL in a label value", br#"{"labels":{"host":"web-1\u0000"}}"#.to_vec(), "labels.host", "NUL"),
            ("NUL in an annotation", br#"{"labels":{},"annotations":{"d":"\u0000"}}"#.to_vec(), "annotations.d", "NUL"),
            (
                "bad correlation id",
                br#"{"labels":{},"correlation_id":"a b"}"#.to_vec(),
                "correlation_id",
                "not a correlation id",
            ),
            (
                "long correlation id",
                format!(r#"{{"labels":{{}},"correlation_id":"{}"}}"#, "c".repeat(129)).into_bytes(),
                "correlation_id",
                "not a correlation id",
            ),
            ("bad starts_at", br#"{"labels":{},"starts_at":"2026-11-23 21:03"}"#.to_vec(), "starts_at", "RFC 3339"),
            (
                "control in fingerprint",
                br#"{"labels":{},"fingerprint":"a\nb"}"#.to_vec(),
                "fingerprint",
                "control character",
            ),
            (
                "1,001 events",
                format!("[{}]", vec![r#"{"labels":{}}"#; 1001].join(",")).into_bytes(),
                ".",
                "1001 events, over the limit of 1000 events (max_alerts)",
            ),
            (
                "10,000 labels",
                format!(
                    r#"{{"labels":{{{}}}}}"#,
                    (0..10_000).map(|i| format!(r#""l{i}":"v""#)).collect::<Vec<_>>().join(",")
                )
                .into_bytes(),
                "labels",
                "(max_labels)",
            ),
        ];
        assert_refusals(FORMAT, &cases);
    }

    #[test]
    fn hostile_bodies_are_refused_without_panic() {
        assert_hostile_refused(FORMAT);
    }
}
