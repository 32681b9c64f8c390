//! Prometheus Alertmanager webhook payloads (version 4): one event per alert. Grafana's webhook reuses the shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::{Checker, MISSING, MapKind, Object, PayloadMeta, Text, TextMap, quote};
use crate::event::{AdapterError, AlertStatus, Event, Intake, Limits, Source, fingerprint_of};

/// A webhook payload reduced to what RUNE reads. Every other field (`groupLabels`, `commonLabels`, `externalURL`,
/// Grafana's `orgId`, `values`, ...) is skipped unread, so senders may add fields without breaking RUNE.
#[derive(Deserialize)]
pub(super) struct WebhookPayload<'a> {
    #[serde(borrow)]
    version: Option<Text<'a>>,
    #[serde(borrow, rename = "groupKey")]
    group_key: Option<Text<'a>>,
    #[serde(rename = "truncatedAlerts")]
    truncated_alerts: Option<u64>,
    #[serde(borrow)]
    receiver: Option<Text<'a>>,
    #[serde(borrow)]
    alerts: Option<Vec<Object<WebhookAlert<'a>>>>,
}

/// One alert of a webhook payload, reduced to what RUNE reads (not `endsAt`, `generatorURL`, ...).
#[derive(Deserialize)]
struct WebhookAlert<'a> {
    status: Option<AlertStatus>,
    #[serde(borrow)]
    labels: Option<TextMap<'a>>,
    #[serde(borrow)]
    annotations: Option<TextMap<'a>>,
    #[serde(borrow, rename = "startsAt")]
    starts_at: Option<Text<'a>>,
    #[serde(borrow)]
    fingerprint: Option<Text<'a>>,
}

/// Where the senders of the webhook shape differ.
pub(super) struct Dialect {
    pub(super) format: Source,
    /// The one `version` accepted.
    pub(super) version: &'static str,
    /// Whether `version` must be present.
    pub(super) version_required: bool,
    /// Whether each alert must bring its `fingerprint`; if not, a missing one is [`fingerprint_of`] the labels.
    pub(super) fingerprint_required: bool,
}

const ALERTMANAGER: Dialect =
    Dialect { format: Source::Alertmanager, version: "4", version_required: true, fingerprint_required: true };

/// One event per alert of an Alertmanager webhook payload.
pub fn parse(body: &[u8], intake: &Intake<'_>, limits: &Limits) -> Result<Vec<Event>, AdapterError> {
    parse_with_meta(body, intake, limits).map(|(events, _)| events)
}

/// Like [`parse`], plus the payload's group key, receiver and count of alerts left out.
pub fn parse_with_meta(
    body: &[u8],
    intake: &Intake<'_>,
    limits: &Limits,
) -> Result<(Vec<Event>, PayloadMeta), AdapterError> {
    parse_webhook(&ALERTMANAGER, body, intake, limits)
}

/// The webhook shape, as spoken by `dialect`.
pub(super) fn parse_webhook(
    dialect: &Dialect,
    body: &[u8],
    intake: &Intake<'_>,
    limits: &Limits,
) -> Result<(Vec<Event>, PayloadMeta), AdapterError> {
    let check = Checker::new(dialect.format, limits);
    let text = check.body(body)?;
    check.intake(intake)?;
    let Object(payload): Object<WebhookPayload<'_>> = check.decode(text)?;

    match payload.version {
        Some(Text(version)) if version != dialect.version => {
            return Err(check.error(
                "version",
                format!(
                    "payload version {} is not supported; RUNE reads version {:?}",
                    quote(&version),
                    dialect.version
                ),
            ));
        }
        None if dialect.version_required => return Err(check.error("version", MISSING)),
        _ => {}
    }
    let alerts = check.required(payload.alerts, || "alerts".to_owned())?;
    if alerts.len() > limits.max_alerts {
        return Err(check.over_limit("alerts", alerts.len(), "alerts", limits.max_alerts, "max_alerts"));
    }
    let meta = PayloadMeta {
        group_key: payload.group_key.map(|key| check.short_text(key, || "groupKey".to_owned())).transpose()?,
        truncated_alerts: payload.truncated_alerts.unwrap_or(0),
        receiver: payload.receiver.map(|name| check.short_text(name, || "receiver".to_owned())).transpose()?,
    };
    if meta.truncated_alerts > 0 {
        tracing::warn!(
            format = %dialect.format,
            group_key = meta.group_key.as_deref().unwrap_or(""),
            receiver = meta.receiver.as_deref().unwrap_or(""),
            truncated_alerts = meta.truncated_alerts,
            alerts = alerts.len(),
            "payload is truncated: the sender left out alerts of this group, RUNE never sees them"
        );
    }

    let raw: Arc<str> = Arc::from(text);
    let mut events = Vec::with_capacity(alerts.len());
    for (i, Object(alert)) in alerts.into_iter().enumerate() {
        let at = |name: &str| format!("alerts[{i}].{name}");
        let status = check.required(alert.status, || at("status"))?;
        let labels = check.required(alert.labels, || at("labels"))?;
        let labels = check.map(labels, MapKind::Labels, &|| at("labels"))?;
        let annotations = match alert.annotations {
            Some(annotations) => check.map(annotations, MapKind::Annotations, &|| at("annotations"))?,
            None => BTreeMap::new(),
        };
        let fingerprint = match alert.fingerprint {
            Some(fingerprint) => check.non_empty_text(fingerprint, || at("fingerprint"))?,
            None if dialect.fingerprint_required => return Err(check.error(at("fingerprint"), MISSING)),
            None => fingerprint_of(&labels),
        };
        let starts_at = check.time(alert.starts_at, || at("startsAt"))?;
        let correlation_id = check.correlation_id(intake, None, String::new)?;
        events.push(Event {
            status,
            labels,
            annotations,
            fingerprint,
            starts_at,
            correlation_id,
            ..check.event(intake, &raw)
        });
    }
    Ok((events, meta))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::sources::test_support::{
        assert_hostile_refused, assert_refusals, fixture, intake, parse_err, parse_ok, received_at,
    };

    const FORMAT: Source = Source::Alertmanager;

    fn time(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
    }

    /// An alert object with the given labels JSON and extra fields; a payload around alerts.
    fn alert(labels: &str, extra: &str) -> String {
        format!(r#"{{"status":"firing","labels":{labels},"annotations":{{}},"fingerprint":"0123456789abcdef"{extra}}}"#)
    }

    fn payload(alerts: &[String]) -> Vec<u8> {
        format!(
            r#"{{"version":"4","groupKey":"{{}}:{{}}","status":"firing","receiver":"rune","alerts":[{}]}}"#,
            alerts.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn fixtures_parse_to_their_events() {
        // (fixture, alert index, status, alertname, instance, fingerprint, starts_at)
        let cases = [
            (
                "alertmanager-docker-down.json",
                0,
                AlertStatus::Firing,
                "DockerDown",
                "web-1:9100",
                "63e969905a0da6b2",
                "2026-11-23T21:03:04.5Z",
            ),
            (
                "alertmanager-docker-down.json",
                1,
                AlertStatus::Resolved,
                "DockerDown",
                "web-2:9100",
                "f874c80b1806eba1",
                "2026-11-23T20:41:04.5Z",
            ),
            (
                "alertmanager-nomad-client-down.json",
                0,
                AlertStatus::Firing,
                "NomadClientDown",
                "web-2:4646",
                "0cbc76839cf2799e",
                "2026-11-23T21:05:19.031Z",
            ),
            (
                "alertmanager-critical-disk.json",
                0,
                AlertStatus::Firing,
                "HostDiskFull",
                "db-1:9100",
                "1ff4380ef94c2016",
                "2026-11-23T20:58:49.87Z",
            ),
            (
                "alertmanager-truncated.json",
                1,
                AlertStatus::Firing,
                "HostHighCpuLoad",
                "web-2:9100",
                "5131263fbc5ff140",
                "2026-11-23T21:00:34Z",
            ),
        ];
        for (name, index, status, alertname, instance, fingerprint, starts_at) in cases {
            let events = parse_ok(FORMAT, &fixture(name));
            let event = events.get(index).unwrap_or_else(|| panic!("{name}: no event {index}"));
            assert_eq!(event.source, Source::Alertmanager, "{name}");
            assert_eq!(event.status, status, "{name}");
            assert_eq!(event.labels.get("alertname").map(String::as_str), Some(alertname), "{name}");
            assert_eq!(event.labels.get("instance").map(String::as_str), Some(instance), "{name}");
            assert_eq!(event.fingerprint, fingerprint, "{name}");
            assert_eq!(event.starts_at, time(starts_at), "{name}");
            assert_eq!(event.subject, "hooks.test");
            assert_eq!(event.received_at, received_at());
            assert!(event.request.is_none());
            assert!(crate::event::is_correlation_id(&event.correlation_id));
        }
    }

    #[test]
    fn docker_down_fixture_is_one_firing_and_one_resolved_alert_sharing_the_raw_body() {
        let body = fixture("alertmanager-docker-down.json");
        let events = parse_ok(FORMAT, &body);
        assert_eq!(events.len(), 2);
        let [firing, resolved] = [&events[0], &events[1]];
        assert_eq!(firing.labels.get("severity").map(String::as_str), Some("critical"));
        assert_eq!(firing.labels.get("job").map(String::as_str), Some("node"));
        assert_eq!(firing.labels.len(), 5);
        assert!(firing.annotations.contains_key("summary"));
        assert!(Arc::ptr_eq(&firing.raw, &resolved.raw));
        assert_eq!(firing.raw.as_bytes(), body.as_slice());
        assert_ne!(firing.id, resolved.id);
        assert_ne!(firing.correlation_id, resolved.correlation_id, "one new correlation id per event");
    }

    #[test]
    fn truncated_alerts_are_reported_not_refused() {
        let (events, meta) = parse_with_meta(&fixture("alertmanager-truncated.json"), &intake(), &Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 2);
        assert_eq!(meta.truncated_alerts, 3);
        assert_eq!(meta.receiver.as_deref(), Some("rune"));
        assert_eq!(meta.group_key.as_deref(), Some(r#"{}/{severity="warning"}:{alertname="HostHighCpuLoad"}"#));
    }

    #[test]
    fn intake_correlation_id_wins() {
        let intake = Intake { correlation_id: Some("nats-msg-42"), ..intake() };
        let events = parse(&fixture("alertmanager-docker-down.json"), &intake, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(events.iter().all(|e| e.correlation_id == "nats-msg-42"));
    }

    #[test]
    fn unset_and_odd_times() {
        let unset = payload(&[alert(r#"{"a":"b"}"#, r#","startsAt":"0001-01-01T00:00:00Z""#)]);
        assert_eq!(parse_ok(FORMAT, &unset)[0].starts_at, None);
        let offset = payload(&[alert(r#"{"a":"b"}"#, r#","startsAt":"2018-08-03T09:52:26.739266876+02:00""#)]);
        assert_eq!(parse_ok(FORMAT, &offset)[0].starts_at, time("2018-08-03T07:52:26.739266876Z"));
        let absent = payload(&[alert(r#"{"a":"b"}"#, "")]);
        assert_eq!(parse_ok(FORMAT, &absent)[0].starts_at, None);
    }

    #[test]
    fn unknown_fields_and_empty_alerts_are_accepted() {
        let body = payload(&[alert(r#"{"a":"b"}"#, r#","endsAt":"x","newField":{"deep":[1,2,{"x":null}]}"#)]);
        assert_eq!(parse_ok(FORMAT, &body).len(), 1);
        assert!(parse_ok(FORMAT, &payload(&[])).is_empty());
        let escaped = payload(&[alert(r#"{"a":"line\nnext \u00e9"}"#, "")]);
        assert_eq!(parse_ok(FORMAT, &escaped)[0].labels.get("a").map(String::as_str), Some("line\nnext é"));
    }

    #[test]
    fn refusals_name_the_field() {
        let ok_alert = alert(r#"{"a":"b"}"#, "");
        let many_labels =
            format!("{{{}}}", (0..10_000).map(|i| format!("\"l{i}\":\"v\"")).collect::<Vec<_>>().join(","));
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            ("no version", br#"{"alerts":[]}"#.to_vec(), "version", "required"),
            ("version 3", br#"{"version":"3","alerts":[]}"#.to_vec(), "version", "\"3\" is not supported"),
            ("version as number", br#"{"version":4,"alerts":[]}"#.to_vec(), "version", "expected a string"),
            ("no alerts", br#"{"version":"4"}"#.to_vec(), "alerts", "required"),
            ("top-level array", br#"[{"version":"4","alerts":[]}]"#.to_vec(), ".", "expected an object"),
            (
                "alert as an array",
                br#"{"version":"4","alerts":[["firing",{},{},null,"f"]]}"#.to_vec(),
                "alerts[0]",
                "expected an object",
            ),
            ("alerts not a list", br#"{"version":"4","alerts":{}}"#.to_vec(), "alerts", "invalid type"),
            ("alert not an object", br#"{"version":"4","alerts":[3]}"#.to_vec(), "alerts[0]", "expected an object"),
            (
                "no status",
                payload(&[ok_alert.clone(), r#"{"labels":{},"fingerprint":"f"}"#.to_owned()]),
                "alerts[1].status",
                "required",
            ),
            (
                "unknown status",
                payload(&[r#"{"status":"pending","labels":{},"fingerprint":"f"}"#.to_owned()]),
                "alerts[0].status",
                "unknown variant `pending`",
            ),
            (
                "no labels",
                payload(&[r#"{"status":"firing","fingerprint":"f"}"#.to_owned()]),
                "alerts[0].labels",
                "required",
            ),
            (
                "no fingerprint",
                payload(&[r#"{"status":"firing","labels":{}}"#.to_owned()]),
                "alerts[0].fingerprint",
                "required",
            ),
            (
                "empty fingerprint",
                payload(&[alert("{}", "").replace("0123456789abcdef", "")]),
                "alerts[0].fingerprint",
                "empty",
            ),
            (
                "label value a number",
                payload(&[
                    ok_alert.clone(),
                    ok_alert.clone(),
                    ok_alert.clone(),
                    alert(r#"{"a":"b","instance":9100}"#, ""),
                ]),
                "alerts[3].labels.instance",
                "expected a string",
            ),
            ("labels a list", payload(&[alert(r#"["a"]"#, "")]), "alerts[0].labels", "expected an object of strings"),
            (
                "NUL in a label value",
                payload(&[alert(r#"{"instance":"web-1\u0000"}"#, "")]),
                "alerts[0].labels.instance",
                "NUL",
            ),
            (
                "NUL in a fingerprint",
                payload(&[alert("{}", "").replace("0123456789abcdef", r"ab\u0000")]),
                "alerts[0].fingerprint",
                "NUL",
            ),
            ("bad label name", payload(&[alert(r#"{"a b":"c"}"#, "")]), "alerts[0].labels", "does not match"),
            ("label name given twice", payload(&[alert(r#"{"a":"1","a":"2"}"#, "")]), "alerts[0].labels.a", "twice"),
            (
                "long label name",
                payload(&[alert(&format!(r#"{{"{}":"v"}}"#, "k".repeat(129)), "")]),
                "alerts[0].labels",
                "129 bytes, over the limit of 128 bytes (max_key_bytes)",
            ),
            (
                "long label value",
                payload(&[alert(&format!(r#"{{"k":"{}"}}"#, "v".repeat(4097)), "")]),
                "alerts[0].labels.k",
                "4097 bytes, over the limit of 4096 bytes (max_label_value_bytes)",
            ),
            (
                "long annotation value",
                payload(&[alert("{}", "").replace(
                    r#""annotations":{}"#,
                    &format!(r#""annotations":{{"d":"{}"}}"#, "v".repeat(16 * 1024 + 1)),
                )]),
                "alerts[0].annotations.d",
                "(max_annotation_value_bytes)",
            ),
            (
                "10,000 labels",
                payload(&[alert(&many_labels, "")]),
                "alerts[0].labels",
                "10000 labels, over the limit of 256 labels (max_labels)",
            ),
            (
                "1,001 alerts",
                payload(&vec![ok_alert.clone(); 1001]),
                "alerts",
                "1001 alerts, over the limit of 1000 alerts (max_alerts)",
            ),
            (
                "long groupKey",
                format!(r#"{{"version":"4","groupKey":"{}","alerts":[]}}"#, "g".repeat(1025)).into_bytes(),
                "groupKey",
                "(max_field_bytes)",
            ),
            (
                "negative truncatedAlerts",
                br#"{"version":"4","truncatedAlerts":-1,"alerts":[]}"#.to_vec(),
                "truncatedAlerts",
                "invalid value",
            ),
            (
                "bad startsAt",
                payload(&[alert("{}", r#","startsAt":"yesterday""#)]),
                "alerts[0].startsAt",
                "not an RFC 3339 time",
            ),
            (
                "duplicate field",
                br#"{"version":"4","alerts":[],"alerts":[]}"#.to_vec(),
                ".",
                "duplicate field `alerts`",
            ),
        ];
        assert_refusals(FORMAT, &cases);
    }

    #[test]
    fn hostile_bodies_are_refused_without_panic() {
        assert_hostile_refused(FORMAT);
        // serde_json skips unread fields without recursion, so deep nesting there costs no stack.
        let deep = |open: &str, close: &str| {
            format!(r#"{{"version":"4","alerts":[],"x":{}0{}}}"#, open.repeat(100_000), close.repeat(100_000))
        };
        assert!(parse_ok(FORMAT, deep("[", "]").as_bytes()).is_empty());
        assert!(parse_ok(FORMAT, deep(r#"{"a":"#, "}").as_bytes()).is_empty());
        // Where RUNE reads a value, the typed shape refuses nesting within a level or two.
        let e = parse_err(FORMAT, format!(r#"{{"version":"4","alerts":{}"#, "[".repeat(100_000)).as_bytes());
        assert!(e.field.starts_with("alerts[0]"), "{e}");
    }

    /// A typical one-alert payload: 8 labels, 2 annotations, Alertmanager's own field order.
    fn typical_payload() -> Vec<u8> {
        concat!(
            r#"{"receiver":"rune","status":"firing","#,
            r#""alerts":[{"status":"firing","labels":{"alertname":"DockerDown","instance":"web-1:9100","job":"node","name":"docker.service","severity":"critical","state":"active","team":"platform","type":"simple"},"#,
            r#""annotations":{"description":"docker.service on web-1:9100 has not been active for 2 minutes.","summary":"Docker is down on web-1"},"#,
            r#""startsAt":"2026-11-23T21:03:04.5Z","endsAt":"0001-01-01T00:00:00Z","#,
            r#""generatorURL":"http://127.0.0.1:9090/graph?g0.expr=node_systemd_unit_state%7Bname%3D%22docker.service%22%2Cstate%3D%22active%22%7D+%3D%3D+0\u0026g0.tab=1","#,
            r#""fingerprint":"53e0449042ef61bd"}],"#,
            r#""groupLabels":{"alertname":"DockerDown"},"#,
            r#""commonLabels":{"alertname":"DockerDown","instance":"web-1:9100","job":"node","name":"docker.service","severity":"critical","state":"active","team":"platform","type":"simple"},"#,
            r#""commonAnnotations":{"description":"docker.service on web-1:9100 has not been active for 2 minutes.","summary":"Docker is down on web-1"},"#,
            r#""externalURL":"http://127.0.0.1:9093","version":"4","groupKey":"{}/{severity=\"critical\"}:{alertname=\"DockerDown\"}","truncatedAlerts":0}"#,
        )
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn typical_payload_is_what_the_measurement_claims() {
        let events = parse_ok(FORMAT, &typical_payload());
        assert_eq!((events.len(), events[0].labels.len(), events[0].annotations.len()), (1, 8, 2));
    }

    /// Time per typical payload; run with `cargo test --release --lib sources::alertmanager -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check: run by hand in release mode"]
    fn measure_typical_payload() {
        let body = typical_payload();
        let (intake, limits) = (intake(), Limits::default());
        assert_eq!(parse(&body, &intake, &limits).map(|e| e.len()), Ok(1));
        let rounds = 200_000;
        let start = Instant::now();
        for _ in 0..rounds {
            let events = parse(std::hint::black_box(&body), &intake, &limits);
            std::hint::black_box(events).ok();
        }
        let each = start.elapsed() / rounds;
        println!(
            "alertmanager: {each:?} per 1-alert payload (8 labels, 2 annotations), {:.0} payloads/s",
            1.0 / each.as_secs_f64()
        );
    }
}
