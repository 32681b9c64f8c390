//! NATS intake: core subscriptions in a queue group, a durable JetStream pull consumer (ack only after every
//! decision is recorded, poison messages to a dead-letter subject), and chatops request/reply.
//!
//! Which adapter a message needs: the `Rune-Format` header when present, else the first subject token that
//! names a format (`rune.alerts.grafana.prod` → grafana), else `generic`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use chrono::Utc;
use futures::{FutureExt as _, StreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::bridge::{AcceptError, Bridge};
use crate::event::{Event, Intake, Limits, Source, is_correlation_id};
use crate::gate::dedup::DedupStore;
use crate::results::nats::{CORRELATION_HEADER, decode_token};

/// Header naming the payload format of a message (`alertmanager`, `grafana`, `generic`).
pub const FORMAT_HEADER: &str = "Rune-Format";
/// Longest payload text copied into a dead-letter record.
const DEAD_LETTER_PAYLOAD_BYTES: usize = 4096;

/// The adapter for a message (chatops only through the requests subject, never from an alerts subject).
pub fn format_for(subject: &str, headers: Option<&HeaderMap>) -> Result<Source, String> {
    if let Some(value) = headers.and_then(|h| h.get(FORMAT_HEADER)) {
        return match value.as_str() {
            "alertmanager" => Ok(Source::Alertmanager),
            "grafana" => Ok(Source::Grafana),
            "generic" => Ok(Source::Generic),
            other => Err(format!(
                "header {FORMAT_HEADER}: unknown format {} (alertmanager, grafana, generic)",
                crate::sources::quote(other)
            )),
        };
    }
    for token in subject.split('.') {
        match token {
            "alertmanager" => return Ok(Source::Alertmanager),
            "grafana" => return Ok(Source::Grafana),
            "generic" => return Ok(Source::Generic),
            _ => {}
        }
    }
    Ok(Source::Generic)
}

fn header_correlation(headers: Option<&HeaderMap>) -> Result<Option<String>, String> {
    match headers.and_then(|h| h.get(CORRELATION_HEADER)) {
        None => Ok(None),
        Some(v) if is_correlation_id(v.as_str()) => Ok(Some(v.as_str().to_owned())),
        Some(_) => Err(format!("header {CORRELATION_HEADER}: not a valid correlation id")),
    }
}

/// Parses one alert message into events (the subject it arrived on is the events' subject).
pub fn parse_message(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    limits: &Limits,
) -> Result<Vec<Event>, String> {
    let format = format_for(subject, headers)?;
    let correlation = header_correlation(headers)?;
    let intake = Intake { subject, received_at: Utc::now(), correlation_id: correlation.as_deref() };
    crate::sources::parse(format, payload, &intake, limits).map_err(|e| e.to_string())
}

/// The record published on the dead-letter subject for a message RUNE cannot use.
fn dead_letter_record(subject: &str, payload: &[u8], error: &str, deliveries: Option<i64>) -> Value {
    let shown = &payload[..payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)];
    json!({
        "record": "dead_letter",
        "@timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "subject": subject,
        "error": error,
        "deliveries": deliveries,
        "payload_bytes": payload.len(),
        "payload": String::from_utf8_lossy(shown),
        "payload_truncated": payload.len() > DEAD_LETTER_PAYLOAD_BYTES,
    })
}

async fn dead_letter(client: &async_nats::Client, dead_letter: &str, record: &Value) {
    let body = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
    if let Err(e) = client.publish(dead_letter.to_owned(), body).await {
        tracing::error!(error = %e, subject = dead_letter, "dead-letter record not published");
    }
}

/// Core NATS: subscribes to every alerts subject in `queue_group` (each message to one instance of the group)
/// until `shutdown`. At-most-once: a message that arrives while no instance is subscribed is lost — use
/// JetStream mode where that matters.
pub async fn run_core<D: DedupStore>(
    client: async_nats::Client,
    subjects: Vec<String>,
    queue_group: String,
    dead_letter_subject: String,
    bridge: Bridge<D>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut subscriptions = Vec::with_capacity(subjects.len());
    for s in subjects {
        subscriptions.push(client.queue_subscribe(s, queue_group.clone()).await?);
    }
    let mut messages = futures::stream::select_all(subscriptions);
    loop {
        let message: Message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = messages.next() => match m { Some(m) => m, None => break },
        };
        let subject = message.subject.to_string();
        match parse_message(&subject, message.headers.as_ref(), &message.payload, &limits) {
            Ok(events) => {
                if let Err(e) = bridge.accept(events).await {
                    tracing::error!(error = %e, subject, "alert not fully recorded (core NATS cannot redeliver)");
                }
            }
            Err(error) => {
                bridge.metrics().payload_refused("nats");
                tracing::warn!(subject, error, "alert refused; published to the dead-letter subject");
                let record = dead_letter_record(&subject, &message.payload, &error, None);
                dead_letter(&client, &dead_letter_subject, &record).await;
            }
        }
    }
    Ok(())
}

/// JetStream alerts stream and its durable consumer.
#[derive(Debug, Clone)]
pub struct JetStreamIntake {
    pub stream: String,
    pub subjects: Vec<String>,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub durable: String,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    /// Redelivery delays after a nak; the last one repeats.
    pub backoff: Vec<Duration>,
    pub dead_letter_subject: String,
    /// Messages decided at once (lanes by alert fingerprint).
    pub concurrency: usize,
}

impl JetStreamIntake {
    /// The alerts stream as the intake creates it (file storage, a 2-minute `Nats-Msg-Id` dedup window).
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: self.subjects.clone(),
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }
}

/// JetStream: a durable pull consumer shared by every instance (each message to one of them).
///
/// Messages are decided `concurrency` at a time, in as many lanes: a message goes to the lane of its first alert's
/// fingerprint, so the messages of one alert (firing, then resolved) are decided in the order they came. A
/// message is acked only after every decision it produced is recorded and every run it admitted has *started*
/// ([`Bridge::accept_started`]); while it waits (for a run slot) it is kept alive with in-progress acks. A failure
/// naks it for redelivery (with backoff); a payload that cannot be parsed, or whose last delivery failed, goes to
/// the dead-letter subject and is terminated. A message in progress when shutdown comes is given back (nak) for
/// another instance. Each event carries the message's identity (`<stream>:<stream sequence>:<place>`), which owns
/// its runs' pending dedup claims: a redelivery takes them over instead of being suppressed as a duplicate.
pub async fn run_jetstream<D: DedupStore>(
    client: async_nats::Client,
    settings: JetStreamIntake,
    bridge: Bridge<D>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(settings.stream_config())
        .await
        .map_err(|e| format!("alerts stream {}: {e}", settings.stream))?;
    let mut consumer: pull::Stream = stream
        .get_or_create_consumer(
            &settings.durable,
            pull::Config {
                durable_name: Some(settings.durable.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: settings.max_deliver,
                backoff: settings.backoff.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", settings.durable))?
        .messages()
        .await
        .map_err(|e| format!("consumer {} messages: {e}", settings.durable))?;
    let settings = Arc::new(settings);
    let lanes = settings.concurrency.max(1);
    // A lane's task starts with its first message, so an idle daemon pays nothing for many lanes.
    let mut senders: Vec<Option<tokio::sync::mpsc::Sender<Job>>> = (0..lanes).map(|_| None).collect();
    let mut workers = tokio::task::JoinSet::new();
    let mut lane_failed = false;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.next() => m,
        };
        let message = match next {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "JetStream consumer error; continuing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Some(Ok(m)) => m,
        };
        let info = message.info().ok().map(|i| (i.delivered, i.stream_sequence));
        let subject = message.subject.to_string();
        let parsed = parse_message(&subject, message.headers.as_ref(), &message.payload, &limits);
        let lane = match &parsed {
            Ok(events) => events.first().map_or(0, |e| lane_of(&e.fingerprint, lanes)),
            Err(_) => 0,
        };
        let job = Job { message, subject, deliveries: info.map(|i| i.0), sequence: info.map(|i| i.1), parsed };
        let Some(slot) = senders.get_mut(lane) else { break };
        let sender = slot.get_or_insert_with(|| {
            // One message waiting per lane besides the one being decided: the pull stops when the lanes are busy.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(1);
            let (client, settings, bridge, shutdown) =
                (client.clone(), settings.clone(), bridge.clone(), shutdown.clone());
            workers.spawn(async move {
                while let Some(job) = rx.recv().await {
                    handle(job, &client, &settings, &bridge, &shutdown).await;
                }
            });
            tx
        });
        // A place in the lane first, so that the message is still ours to give back if none comes.
        let permit = tokio::select! {
            permit = sender.reserve() => permit,
            _ = shutdown.cancelled() => {
                let _ = job.message.ack_with(HAND_BACK).await;
                break;
            }
        };
        match permit {
            Ok(permit) => permit.send(job),
            Err(_) => {
                // The lane's task ended (it panicked): give the message back and stop this intake loudly.
                let _ = job.message.ack_with(AckKind::Nak(None)).await;
                lane_failed = true;
                break;
            }
        }
    }
    // Stop the lanes: each finishes (or gives back) what it holds.
    drop(senders);
    while workers.join_next().await.is_some() {}
    // What the pull already fetched but no lane took goes back now, for another instance, instead of waiting out
    // its ack_wait. (Only what is buffered: a pull still in flight delivers into a stream nobody reads.)
    let mut buffered = Vec::new();
    while let Some(Some(Ok(message))) = consumer.next().now_or_never() {
        buffered.push(message);
    }
    // Unsubscribed first: a pull request of ours still waiting on the server must not take them again.
    drop(consumer);
    let mut handed_back = 0_usize;
    let give_back = async {
        for message in buffered {
            let _ = message.ack_with(HAND_BACK).await;
            handed_back += 1;
        }
    };
    if tokio::time::timeout(HAND_BACK_TIMEOUT, give_back).await.is_err() {
        tracing::warn!(
            handed_back,
            "JetStream intake: gave up handing back buffered messages (they return after ack_wait)"
        );
    } else if handed_back > 0 {
        tracing::info!(handed_back, "JetStream intake: buffered messages handed back for another instance");
    }
    match lane_failed {
        true => Err("a decision lane of the JetStream intake ended unexpectedly; the intake stopped".into()),
        false => Ok(()),
    }
}

/// How a message is given back at shutdown: a nak with a short delay, so that the server redelivers it after this
/// instance's waiting pull requests are gone (an immediate nak can be redelivered into one of them, and then waits
/// out its ack_wait).
const HAND_BACK: AckKind = AckKind::Nak(Some(Duration::from_secs(1)));

/// How long the intake spends handing back buffered messages when it stops.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(2);

/// One pulled message on its way to a lane.
struct Job {
    message: jetstream::Message,
    subject: String,
    deliveries: Option<i64>,
    sequence: Option<u64>,
    parsed: Result<Vec<Event>, String>,
}

/// The lane of an alert fingerprint (FNV-1a: stable, cheap, no allocation).
fn lane_of(fingerprint: &str, lanes: usize) -> usize {
    let hash =
        fingerprint.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % lanes as u64) as usize
}

/// Decides one message and acks, naks or dead-letters it.
async fn handle<D: DedupStore>(
    job: Job,
    client: &async_nats::Client,
    settings: &JetStreamIntake,
    bridge: &Bridge<D>,
    shutdown: &CancellationToken,
) {
    let Job { message, subject, deliveries, sequence, parsed } = job;
    if shutdown.is_cancelled() {
        // Not started here: give it back at once for another instance.
        let _ = message.ack_with(HAND_BACK).await;
        return;
    }
    let last_try = deliveries.is_some_and(|d| settings.max_deliver > 0 && d >= settings.max_deliver);
    let outcome = match parsed {
        Err(error) => Err((error, true)),
        Ok(mut events) => {
            if let Some(sequence) = sequence {
                for (place, event) in events.iter_mut().enumerate() {
                    event.delivery = Some(Arc::from(format!("{}:{sequence}:{place}", settings.stream)));
                }
            }
            let accepted = bridge.accept_started(events);
            tokio::pin!(accepted);
            // Keep the message ours while its runs wait for a slot. With a backoff the server's ack deadline is
            // the first backoff delay, not ack_wait.
            let deadline = settings.backoff.first().map_or(settings.ack_wait, |b| (*b).min(settings.ack_wait));
            let every = (deadline / 2).max(Duration::from_millis(500));
            let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let accepted = loop {
                tokio::select! {
                    a = &mut accepted => break a,
                    _ = progress.tick() => {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            };
            match accepted {
                Ok(_) => Ok(()),
                Err(AcceptError::ShuttingDown) => {
                    let _ = message.ack_with(HAND_BACK).await;
                    return;
                }
                Err(e) => Err((e.to_string(), false)),
            }
        }
    };
    match outcome {
        Ok(()) => {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, subject, "ack failed; the alert may be redelivered (dedup suppresses it)");
            }
        }
        Err((error, poison)) if poison || last_try => {
            bridge.metrics().payload_refused("jetstream");
            tracing::warn!(subject, error, deliveries, "alert dead-lettered");
            let record = dead_letter_record(&subject, &message.payload, &error, deliveries);
            dead_letter(client, &settings.dead_letter_subject, &record).await;
            let _ = message.ack_with(AckKind::Term).await;
        }
        Err((error, _)) => {
            let n = usize::try_from(deliveries.unwrap_or(1).max(1) - 1).unwrap_or(0);
            let delay = settings.backoff.get(n).or(settings.backoff.last()).copied().unwrap_or(Duration::from_secs(1));
            tracing::warn!(
                subject,
                error,
                deliveries,
                delay_ms = delay.as_millis() as u64,
                "alert not recorded; will be redelivered"
            );
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

/// Chatops: request/reply on `<prefix>.<action>` in `queue_group`. The reply is the decision (accepted, or
/// refused with its reason); the result follows on the results subject with the same correlation id.
pub async fn run_requests<D: DedupStore>(
    client: async_nats::Client,
    prefix: String,
    queue_group: String,
    results_prefix: String,
    bridge: Bridge<D>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.queue_subscribe(format!("{prefix}.*"), queue_group).await?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = requests.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = message.reply.clone() else {
            tracing::warn!(subject = %message.subject, "chatops request without a reply subject; ignored");
            continue;
        };
        let answer = answer_request(&message, &prefix, &results_prefix, &bridge, &limits).await;
        let body = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
        if let Err(e) = client.publish(reply, body).await {
            tracing::warn!(error = %e, "chatops reply not sent");
        }
    }
    Ok(())
}

async fn answer_request<D: DedupStore>(
    message: &Message,
    prefix: &str,
    results_prefix: &str,
    bridge: &Bridge<D>,
    limits: &Limits,
) -> Value {
    let refuse = |reason: &str, detail: String| json!({"accepted": false, "reason": reason, "detail": detail});
    let subject = message.subject.as_str();
    let action_token = subject.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')).unwrap_or("");
    let Some(subject_action) = decode_token(action_token) else {
        return refuse("invalid_request", format!("subject `{subject}` does not name an action"));
    };
    let correlation = match header_correlation(message.headers.as_ref()) {
        Ok(c) => c,
        Err(e) => return refuse("invalid_request", e),
    };
    let intake = Intake { subject, received_at: Utc::now(), correlation_id: correlation.as_deref() };
    let events = match crate::sources::parse(Source::Chatops, &message.payload, &intake, limits) {
        Ok(events) => events,
        Err(e) => return refuse("invalid_request", e.to_string()),
    };
    let named = events.first().and_then(|e| e.request.as_ref()).map(|r| r.action.clone()).unwrap_or_default();
    let plugin_name = named.split('@').next().unwrap_or("");
    if plugin_name != subject_action {
        return refuse(
            "invalid_request",
            format!("the subject asks for `{subject_action}` but the payload for `{named}`"),
        );
    }
    let correlation_id = events.first().map(|e| e.correlation_id.clone()).unwrap_or_default();
    match bridge.decide(events).await {
        Ok(records) => {
            let Some(record) = records.into_iter().next() else {
                return refuse("invalid_request", "no decision".into());
            };
            let accepted = record["decision"] == "admitted";
            let host = record["host"].as_str().map(crate::results::nats::encode_token).unwrap_or_default();
            let mut answer = json!({
                "accepted": accepted,
                "correlation_id": correlation_id,
                "decision": record,
            });
            if accepted {
                answer["results_subject"] =
                    json!(format!("{results_prefix}.{}.{host}", crate::results::nats::encode_token(plugin_name)));
            } else {
                answer["reason"] = record["reason"].clone();
                answer["detail"] = record["detail"].clone();
            }
            answer
        }
        Err(e) => refuse("unavailable", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_header_or_subject() {
        let mut h = HeaderMap::new();
        h.insert(FORMAT_HEADER, "grafana");
        assert_eq!(format_for("rune.alerts.x", Some(&h)), Ok(Source::Grafana));
        assert_eq!(format_for("rune.alerts.alertmanager.prod", None), Ok(Source::Alertmanager));
        assert_eq!(format_for("rune.alerts.prod", None), Ok(Source::Generic));
        let mut bad = HeaderMap::new();
        bad.insert(FORMAT_HEADER, "chatops");
        assert!(format_for("rune.alerts", Some(&bad)).is_err());
        // Regression (hostile-input property tests): the header's value came back whole in the error (and so in
        // the dead-letter record and the log line).
        let mut long = HeaderMap::new();
        long.insert(FORMAT_HEADER, "x".repeat(100_000).as_str());
        assert!(format_for("rune.alerts", Some(&long)).err().unwrap_or_default().len() < 200);
    }

    #[test]
    fn dead_letter_records_are_bounded() {
        let payload = vec![b'x'; 10_000];
        let r = dead_letter_record("rune.alerts.generic", &payload, "bad", Some(5));
        assert_eq!(r["payload_bytes"], 10_000);
        assert_eq!(r["payload_truncated"], true);
        assert_eq!(r["payload"].as_str().map(str::len), Some(DEAD_LETTER_PAYLOAD_BYTES));
    }
}
