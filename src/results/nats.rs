//! Publishing results and decisions on NATS: `<results>.<action>.<host>` with `Nats-Msg-Id` = run id and the
//! correlation id in a header; `<decisions>.<rule>` for decisions. With a results stream configured, results go
//! through JetStream and wait for the stream's ack (retried), so a result is not lost across a reconnect.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;

use super::ResultEnvelope;
use super::publish::{Publish, PublishError};

/// Header carrying the correlation id on every message RUNE publishes (and read from incoming ones).
pub const CORRELATION_HEADER: &str = "Rune-Correlation-Id";
/// How many times a JetStream publish is tried before the result is reported as not published.
const PUBLISH_ATTEMPTS: u32 = 5;

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
    /// Set when a results stream is configured: results are published through it and acknowledged.
    jetstream: Option<jetstream::Context>,
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
        NatsPublisher {
            client,
            jetstream,
            results_prefix: results_prefix.into(),
            decisions_prefix: decisions_prefix.into(),
        }
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
                Some(js) => {
                    // The stream deduplicates on Nats-Msg-Id, so a retry after a lost ack never stores twice.
                    let mut last = String::new();
                    for attempt in 0..PUBLISH_ATTEMPTS {
                        if attempt > 0 {
                            tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                        }
                        match js.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await {
                            Ok(ack) => match ack.await {
                                Ok(_) => return Ok(()),
                                Err(e) => last = e.to_string(),
                            },
                            Err(e) => last = e.to_string(),
                        }
                        tracing::warn!(subject, attempt, error = %last, "result publish not acknowledged; retrying");
                    }
                    Err(self.error(&subject, format!("not acknowledged after {PUBLISH_ATTEMPTS} attempts: {last}")))
                }
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
