//! Grafana unified alerting webhook payloads: one event per alert, through the Alertmanager adapter's shape.
//!
//! Grafana's payload is Alertmanager's webhook data plus fields of its own (`orgId`, `title`, `state`,
//! `message`, and per alert `values`, `valueString`, `silenceURL`, `dashboardURL`, `panelURL`), which RUNE does not
//! read. Its `version` is `"1"`; a payload without one is accepted. Alerts without a `fingerprint` (older Grafana)
//! get [`fingerprint_of`](crate::event::fingerprint_of) their labels.

use super::PayloadMeta;
use super::alertmanager::{Dialect, parse_webhook};
use crate::event::{AdapterError, Event, Intake, Limits, Source};

const GRAFANA: Dialect =
    Dialect { format: Source::Grafana, version: "1", version_required: false, fingerprint_required: false };

/// One event per alert of a Grafana webhook payload.
pub fn parse(body: &[u8], intake: &Intake<'_>, limits: &Limits) -> Result<Vec<Event>, AdapterError> {
    parse_with_meta(body, intake, limits).map(|(events, _)| events)
}

/// Like [`parse`], plus the payload's group key, receiver and count of alerts left out.
pub fn parse_with_meta(
    body: &[u8],
    intake: &Intake<'_>,
    limits: &Limits,
) -> Result<(Vec<Event>, PayloadMeta), AdapterError> {
    parse_webhook(&GRAFANA, body, intake, limits)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::event::{AlertStatus, fingerprint_of};
    use crate::sources::test_support::{assert_hostile_refused, assert_refusals, fixture, intake, parse_ok};

    const FORMAT: Source = Source::Grafana;

    fn time(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn fixtures_parse_to_their_events() {
        // (fixture, alert index, status, alertname, instance, severity, fingerprint, starts_at)
        let cases = [
            (
                "grafana-docker-down.json",
                0,
                AlertStatus::Firing,
                "DockerDown",
                "web-1:9100",
                "critical",
                "7ad363fda3cd841e",
                "2026-11-23T22:03:10+01:00",
            ),
            (
                "grafana-critical.json",
                0,
                AlertStatus::Firing,
                "HostDiskFull",
                "db-1:9100",
                "critical",
                "9ebf77f12ec0ce6c",
                "2026-11-23T21:58:50.157076+01:00",
            ),
            (
                "grafana-critical.json",
                1,
                AlertStatus::Resolved,
                "NomadClientDown",
                "web-2:4646",
                "critical",
                "e2e171ad1794f094",
                "2026-11-23T21:40:50.157076+01:00",
            ),
        ];
        for (name, index, status, alertname, instance, severity, fingerprint, starts_at) in cases {
            let events = parse_ok(FORMAT, &fixture(name));
            let event = events.get(index).unwrap_or_else(|| panic!("{name}: no event {index}"));
            assert_eq!(event.source, Source::Grafana, "{name}");
            assert_eq!(event.status, status, "{name}");
            assert_eq!(event.labels.get("alertname").map(String::as_str), Some(alertname), "{name}");
            assert_eq!(event.labels.get("instance").map(String::as_str), Some(instance), "{name}");
            assert_eq!(event.labels.get("severity").map(String::as_str), Some(severity), "{name}");
            assert_eq!(event.fingerprint, fingerprint, "{name}");
            assert_eq!(event.starts_at, time(starts_at), "{name}");
            assert!(event.annotations.contains_key("summary"), "{name}");
        }
    }

    #[test]
    fn meta_and_intake_correlation_id() {
        let intake = Intake { correlation_id: Some("grafana-7"), ..intake() };
        let (events, meta) = parse_with_meta(&fixture("grafana-docker-down.json"), &intake, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].correlation_id, "grafana-7");
        assert_eq!(meta.receiver.as_deref(), Some("rune"));
        assert_eq!(meta.truncated_alerts, 0);
        assert!(meta.group_key.is_some());
    }

    #[test]
    fn missing_fingerprint_and_version_are_filled_in() {
        let body = br#"{"receiver":"rune","status":"firing","orgId":1,"alerts":[{"status":"firing","labels":{"alertname":"DockerDown","instance":"web-1:9100"},"annotations":{},"values":null}]}"#;
        let events = parse_ok(FORMAT, body);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].fingerprint, fingerprint_of(&events[0].labels));
        assert_eq!(events[0].starts_at, None);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            ("Alertmanager version", br#"{"version":"4","alerts":[]}"#.to_vec(), "version", "\"4\" is not supported"),
            ("no alerts", br#"{"version":"1","orgId":1}"#.to_vec(), "alerts", "required"),
            (
                "legacy Grafana alert",
                br#"{"dashboardId":1,"evalMatches":[],"ruleName":"x","state":"alerting","title":"[Alerting] x"}"#
                    .to_vec(),
                "alerts",
                "required",
            ),
            (
                "no status",
                br#"{"version":"1","alerts":[{"labels":{"a":"b"},"fingerprint":"f"}]}"#.to_vec(),
                "alerts[0].status",
                "required",
            ),
            (
                "label value an object",
                br#"{"version":"1","alerts":[{"status":"firing","labels":{"a":{"b":"c"}}}]}"#.to_vec(),
                "alerts[0].labels.a",
                "expected a string",
            ),
            (
                "NUL in a label value",
                br#"{"version":"1","alerts":[{"status":"firing","labels":{"instance":"\u0000"}}]}"#.to_vec(),
                "alerts[0].labels.instance",
                "NUL",
            ),
            (
                "1,001 alerts",
                format!(
                    r#"{{"version":"1","alerts":[{}]}}"#,
                    vec![r#"{"status":"firing","labels":{}}"#; 1001].join(",")
                )
                .into_bytes(),
                "alerts",
                "(max_alerts)",
            ),
        ];
        assert_refusals(FORMAT, &cases);
    }

    #[test]
    fn hostile_bodies_are_refused_without_panic() {
        assert_hostile_refused(FORMAT);
    }
}
