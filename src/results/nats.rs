//! Publishing results and decisions on NATS: `<results>.<action>.<host>` with `Nats-Msg-Id` = run id and the
//! correlation id in a header; `<decisions>.<rule>` for decisions. With a results stream configured, results go
//! through JetStream and are kept in an [`Outbox`] until the stream acknowledges them (retried for
//! `results.retry_for`), so a result is not lost across a reconnect or an outage. Without one they are core NATS
//! publishes: handed to the client's queue, sent when connected, at most once (docs/results.md says exactly what
//! survives an outage).

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;

use super::ResultEnvelope;
use super::outbox::{Outbox, OutboxSettings};
use super::publish::{Publish, PublishError};
use crate::metrics::Metrics;

/// Header carrying the correlation id on every message RUNE publishes (and read from incoming ones).
pub const CORRELATION_HEADER: &str = "Rune-Correlation-Id";

/// Encodes any text as one NATS subject token, reversibly: bytes outside `[A-Za-z0-9_-]` become `%XX`
/// (so `web-1.prod` → `web-1%2Eprod`; no `.`, `*`, `>` or whitespace can reach a subject).
pub fn encode_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// The inverse of [`encode_token`] (None for text it could not have produced: a literal `.`, lowercase or signed
/// hex, an escaped `a`, an empty token; each subject has one spelling).
pub fn decode_token(token: &str) -> Option<String> {
    if token == "%00" {
        return Some(String::new());
    }
    let text = decode_percent(token)?;
    (encode_token(&text) == token).then_some(text)
}

fn decode_percent(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The NATS sink of the bridge.
pub struct NatsPublisher {
    client: async_nats::Client,
    /// Set when a results stream is configured: results are published through it and kept in the outbox until
    /// acknowledged.
    jetstream: Option<(jetstream::Context, Outbox)>,
    results_prefix: String,
    decisions_prefix: String,
}

impl NatsPublisher {
    pub fn new(
        client: async_nats::Client,
        jetstream: Option<jetstream::Context>,
        results_prefix: impl Into<String>,
        decisions_prefix: impl Into<String>,
    ) -> NatsPublisher {
        let outbox = || Outbox::new(OutboxSettings::default(), Metrics::new());
        NatsPublisher {
            client,
            jetstream: jetstream.map(|js| (js, outbox())),
            results_prefix: results_prefix.into(),
            decisions_prefix: decisions_prefix.into(),
        }
    }

    /// With a results stream: how long results are retried and how many are kept (`results.retry_for`,
    /// `results.max_pending`), counted in `metrics` (the daemon's).
    pub fn with_outbox(mut self, settings: OutboxSettings, metrics: Metrics) -> NatsPublisher {
        if let Some((_, outbox)) = &mut self.jetstream {
            *outbox = Outbox::new(settings, metrics);
        }
        self
    }

    /// Results kept and not yet acknowledged by the results stream (0 without one).
    pub fn pending_results(&self) -> usize {
        self.jetstream.as_ref().map_or(0, |(_, outbox)| outbox.pending())
    }

    /// `<results>.<action>.<host>`, both encoded as single tokens.
    pub fn result_subject(&self, envelope: &ResultEnvelope) -> String {
        format!("{}.{}.{}", self.results_prefix, encode_token(&envelope.action), encode_token(&envelope.host))
    }

    fn error(&self, subject: &str, e: impl std::fmt::Display) -> PublishError {
        PublishError { sink: format!("nats {subject}"), message: e.to_string() }
    }
}

impl Publish for NatsPublisher {
    fn result<'a>(&'a self, envelope: &'a ResultEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let subject = self.result_subject(envelope);
            let payload = Bytes::from(serde_json::to_vec(envelope).map_err(|e| self.error(&subject, e))?);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", envelope.run_id.as_str());
            headers.insert(CORRELATION_HEADER, envelope.correlation_id.as_str());
            match &self.jetstream {
                None => self
                    .client
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                    .map_err(|e| self.error(&subject, e)),
                Some((js, outbox)) => {
                    let (js, client, kept_subject) = (js.clone(), self.client.clone(), subject.clone());
                    let attempt = move || {
                        let (js, client, subject) = (js.clone(), client.clone(), kept_subject.clone());
                        let (headers, payload) = (headers.clone(), payload.clone());
                        async move {
                            // While disconnected a publish would only wait in the client's queue and its ack time
                            // out: skip the attempt rather than pile copies up for the reconnection.
                            if client.connection_state() != async_nats::connection::State::Connected {
                                return Err("not connected to NATS".to_owned());
                            }
                            // The stream deduplicates on Nats-Msg-Id, so a retry after a lost ack never stores
                            // twice (within its duplicate window).
                            let ack =
                                js.publish_with_headers(subject, headers, payload).await.map_err(|e| e.to_string())?;
                            ack.await.map(drop).map_err(|e| e.to_string())
                        }
                    };
                    outbox.send(envelope.run_id.clone(), subject, attempt).await;
                    Ok(())
                }
            }
        })
    }

    fn drain(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            match &self.jetstream {
                Some((_, outbox)) => outbox.drain(deadline).await,
                None => Vec::new(),
            }
        })
    }

    fn decision<'a>(&'a self, rule: &'a str, decision: &'a Value) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let subject = format!("{}.{}", self.decisions_prefix, encode_token(rule));
            let payload = Bytes::from(serde_json::to_vec(decision).map_err(|e| self.error(&subject, e))?);
            let mut headers = HeaderMap::new();
            if let Some(c) = decision["correlation_id"].as_str() {
                headers.insert(CORRELATION_HEADER, c);
            }
            self.client
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| self.error(&subject, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tokens_round_trip_and_cannot_inject_subjects() {
        for host in ["web-1", "web-1.prod.example", "a.>", "*", "a b", "", "ü", "%2E", "x_y-z"] {
            let token = encode_token(host);
            assert!(!token.is_empty());
            assert!(!token.contains(['.', '*', '>', ' ']), "{host} -> {token}");
            assert_eq!(decode_token(&token).as_deref(), Some(host), "{token}");
        }
        assert_eq!(encode_token("web-1.prod"), "web-1%2Eprod");
        assert_eq!(decode_token("%G0"), None);
        assert_eq!(decode_token("%2"), None);
    }

    #[test]
    fn only_canonical_tokens_decode() {
        // Regression (hostile-input corpus, tests/corpus/token): these decoded although encode never makes them.
        for token in ["", "a.b", "%2e", "%+F", "%61", "web-1%2eprod", "a b", "*", ">"] {
            assert_eq!(decode_token(token), None, "{token:?}");
        }
        assert_eq!(decode_token("web-1%2Eprod").as_deref(), Some("web-1.prod"));
    }
}
