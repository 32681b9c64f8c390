//! The webhook intake server: `POST /hooks/{alertmanager,grafana,generic}` authenticated, bounded, parsed by the
//! adapters, and handed whole to an [`EventSink`]. Rules, NATS and runs are all behind the sink.
//!
//! One request goes through, in order, refusing at the first failure (see `docs/events.md`, "Webhooks"):
//!
//! ```text
//! auth headers (401) ─> Content-Type (415) ─> X-Correlation-Id (400) ─> Content-Length (413)
//!   ─> body, bounded and within request_timeout (413, 408) ─> HMAC of the body (401) ─> adapter (400)
//!   ─> sink.submit within what is left of request_timeout (503) ─> 202 {accepted, event_ids, correlation_ids}
//! ```
//!
//! Everything before the body comes from the headers alone, so a request without credentials, with a wrong bearer
//! token, the wrong type or an oversized length is refused without reading its body (an HMAC signature can only be
//! checked against the body, once it is read within its bounds). [`router`] gives the routes; [`serve`] runs them on a
//! TCP listener with a header read timeout, per-source limits (connections at accept, requests before routing: 429),
//! optional TLS and a graceful shutdown. The daemon adds its own routes (health, metrics) with
//! [`axum::Router::merge`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::bridge::Bridge;
use crate::event::{AdapterError, Event, Intake, Limits, Source, is_correlation_id};
use crate::gate::dedup::DedupStore;
use crate::gate::ratelimit::{RateLimited, RateSpec};
use crate::metrics::Metrics;
use crate::sources::per_source::{
    ConnectionPermit, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUESTS_PER_SECOND, PerSource, SourceKey,
};
use crate::sources::tls::ServerTls;
use crate::sources::{parse_with_meta, quote};

/// The header a sender may name the correlation id of its payload in; it wins over any id in the payload.
pub const CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// The formats served, each at `POST /hooks/<format>`. Chatops requests do not come in by webhook.
pub const FORMATS: [Source; 3] = [Source::Alertmanager, Source::Grafana, Source::Generic];

/// The realm named in `WWW-Authenticate` challenges.
const REALM: &str = "rune";

/// How long the accept loop waits after an error that is not one connection's (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The default of [`WebhookConfig::request_timeout`].
pub fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Where accepted payloads go: the engine in-process, or a NATS alerts stream.
///
/// The trait returns `impl Future` rather than a boxed one: [`router`] is generic over the sink, so no `dyn
/// EventSink` is needed and a submission costs no allocation. A daemon that picks its sink at run time wraps the
/// choices in an enum that implements this trait.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one payload whole. `events` are parsed and validated (possibly none: an Alertmanager payload may
    /// carry no alerts); `body` is the payload exactly as received, for publishing as is; `correlation_id` is the
    /// sender's `X-Correlation-Id`, already in every event.
    ///
    /// `Ok` means the sink has taken responsibility for the payload: the sender is told 202 and will not send it
    /// again. `Err` means nothing was taken, and the sender is told 503 so that it retries. The future may be
    /// dropped before it ends (request timeout, server shutdown); the sender is then told 503 or nothing and
    /// retries, so a payload a dropped submission did deliver may arrive twice (dedup covers that).
    fn submit(
        &self,
        format: Source,
        body: Bytes,
        events: Vec<Event>,
        correlation_id: Option<String>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The in-process sink: the events go straight to the bridge, and the sender is told 202 once every decision is
/// recorded (`rune serve` without `webhook.publish_to_nats`).
pub struct BridgeSink<D: DedupStore>(pub Bridge<D>);

impl<D: DedupStore> EventSink for BridgeSink<D> {
    async fn submit(
        &self,
        _format: Source,
        _body: Bytes,
        events: Vec<Event>,
        _correlation_id: Option<String>,
    ) -> Result<(), SinkError> {
        self.0.accept(events).await.map(drop).map_err(|e| SinkError::Unavailable(e.to_string()))
    }
}

/// Why a sink did not take a payload. The message goes back to the sender in the 503 body, so it must not carry
/// secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink cannot take payloads now (NATS unreachable, the engine's queue full, shutting down); retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// A shared secret: a bearer token or an HMAC key, as bytes. Its `Debug` shows no part of it.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// The secret, taken exactly as given (a loader reading it from a file trims the line end itself).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, EmptySecret> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(EmptySecret);
        }
        Ok(Secret(bytes.into()))
    }

    fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An empty secret would let anyone through who sends an empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret may not be empty")]
pub struct EmptySecret;

/// How one endpoint authenticates its senders. There is no default: leaving an endpoint open is a choice
/// spelled [`EndpointAuth::None`].
#[derive(Debug, Clone)]
pub enum EndpointAuth {
    /// Anyone who can reach the listener may submit. Only for a listener on a trusted network.
    None,
    /// `Authorization: Bearer <token>` (Alertmanager's `http_config.authorization`, Grafana's "Authorization
    /// header"). The token is compared by its SHA-256, in constant time, so neither its bytes nor its length leak.
    Bearer(Secret),
    /// The hex HMAC-SHA256 of the raw body under `secret`, in `header`, optionally after `sha256=` (Grafana's
    /// "HMAC signature", whose default header is `X-Grafana-Alerting-Signature`). Checked in constant time. It
    /// proves who sent the body, not when: a captured request can be replayed.
    Hmac { secret: Secret, header: HeaderName },
}

/// Each endpoint: served with its authentication (an explicit choice, `None` included), or not served at all.
#[derive(Debug, Clone)]
pub struct HookAuth {
    /// `None`: the endpoint is not served (404), as when the configuration leaves it out.
    pub alertmanager: Option<EndpointAuth>,
    pub grafana: Option<EndpointAuth>,
    pub generic: Option<EndpointAuth>,
}

/// What [`router`] needs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// From the end of the request headers to the response: reading the body and the sink's submission. Past it, a
    /// body still arriving is refused with 408, a submission not finished with 503. [`serve`] takes its own header
    /// read timeout.
    pub request_timeout: Duration,
    /// Passed to the adapters. `limits.max_body_bytes` is also the HTTP body limit, enforced while reading (and on
    /// `Content-Length` before reading), so there is one body limit, not two that could disagree.
    pub limits: Limits,
    pub auth: HookAuth,
    /// Told of every refused payload before the refusal is answered (the daemon records it in the audit trail);
    /// the answer waits for it, so a client flooding bad requests is slowed by the trail, not the trail flooded.
    pub on_refusal: Option<RefusalHook>,
}

/// A payload an endpoint refused: what [`WebhookConfig::on_refusal`] is told.
#[derive(Debug, Clone)]
pub struct RefusedPayload {
    pub format: Source,
    pub peer: Option<SocketAddr>,
    pub status: u16,
    pub error: String,
}

/// See [`WebhookConfig::on_refusal`].
#[derive(Clone)]
pub struct RefusalHook(pub Arc<dyn Fn(RefusedPayload) -> futures::future::BoxFuture<'static, ()> + Send + Sync>);

impl fmt::Debug for RefusalHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefusalHook")
    }
}

impl WebhookConfig {
    /// The given authentication with the default timeout and limits.
    pub fn new(auth: HookAuth) -> Self {
        WebhookConfig { request_timeout: default_request_timeout(), limits: Limits::default(), auth, on_refusal: None }
    }
}

/// The peer of a connection, put into each request's extensions by [`serve`] for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The webhook routes, `POST /hooks/<format>` for each of [`FORMATS`], with JSON 404 and 405 answers.
///
/// The daemon adds its own routes with `router(..).merge(own)`; `own` must not set a fallback (axum refuses to
/// merge two). The request timeout and body limit apply to the webhook routes only.
pub fn router<S: EventSink>(config: WebhookConfig, sink: Arc<S>) -> Router {
    let WebhookConfig { request_timeout, limits, auth, on_refusal } = config;
    let intake = Arc::new(Shared { sink, limits, request_timeout, on_refusal });
    let mut router = Router::new();
    for (format, auth) in
        [(Source::Alertmanager, auth.alertmanager), (Source::Grafana, auth.grafana), (Source::Generic, auth.generic)]
    {
        let Some(auth) = auth else { continue };
        let endpoint = Arc::new(Endpoint { format, subject: format!("hooks.{format}"), auth: Check::new(auth) });
        let intake = Arc::clone(&intake);
        let handler = move |request: Request| handle(Arc::clone(&intake), Arc::clone(&endpoint), request);
        router = router.route(&format!("/hooks/{format}"), post(handler).fallback(method_not_allowed));
    }
    router.fallback(not_found)
}

/// How [`serve`] treats connections.
#[derive(Clone)]
pub struct ListenerOptions {
    /// A client gets this long to send each request's headers, to sit idle between requests on a kept-alive
    /// connection, and to finish a TLS handshake.
    pub header_read_timeout: Duration,
    /// Connections and requests per source address.
    pub per_source: Arc<PerSource>,
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
    /// Where refusals by the listener itself (per-source limits, failed handshakes) are counted.
    pub metrics: Metrics,
}

impl ListenerOptions {
    /// Plain HTTP with the default per-source limits of the settings.
    pub fn new(header_read_timeout: Duration) -> ListenerOptions {
        let rate = NonZeroU32::new(DEFAULT_REQUESTS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let connections = NonZeroUsize::new(DEFAULT_MAX_CONNECTIONS).unwrap_or(NonZeroUsize::MIN);
        ListenerOptions {
            header_read_timeout,
            per_source: PerSource::new(RateSpec::per_second(rate, rate), connections),
            tls: None,
            metrics: Metrics::default(),
        }
    }
}

/// Serves `router` on `listener` (HTTP/1.1, over TLS when configured) until `shutdown` resolves, then stops
/// accepting, lets each connection finish the request it is in, and returns when all have closed.
///
/// A connection from a source that has `max_connections` open already is closed at once; a request over its
/// source's rate gets 429 with `Retry-After` before it is routed. A client gets `header_read_timeout` for its TLS
/// handshake, to send each request's headers, and no longer to sit idle between requests on a kept-alive
/// connection (30 s, hyper's own default, suits Alertmanager and Grafana, whose HTTP clients open a new connection
/// when an idle one was closed); after that the route's own timeout applies. Together they bound how long a
/// shutdown waits.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ListenerOptions,
    shutdown: impl Future<Output = ()>,
) {
    // Every connection task, so that shutdown can wait for them all.
    let connections = TaskTracker::new();
    // Cancelled once `shutdown` resolves: each connection then finishes its request in flight and closes.
    let closing = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(permit) = options.per_source.connect(peer.ip()) else {
                    options.metrics.webhook_refused("too_many_connections");
                    debug!(peer = %peer, max = options.per_source.max_connections(), "webhook listener: connection closed, its source has too many open");
                    continue;
                };
                let connection =
                    serve_connection(stream, peer, permit, router.clone(), options.clone(), closing.clone());
                connections.spawn(connection);
            }
            // One connection's trouble, over before it began.
            Err(e) if is_connection_error(&e) => debug!(error = %e, "webhook listener: a connection failed at accept"),
            Err(e) => {
                warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "webhook listener: accept failed; retrying");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// One connection: the TLS handshake when configured (within the header read timeout), then HTTP/1.1 with
/// keep-alive, until the client closes, a timeout ends it, or `closing` asks it to finish its request in flight.
/// `permit` holds the connection's place in its source's count until it ends.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
    router: Router,
    options: ListenerOptions,
    closing: CancellationToken,
) {
    let Some(tls) = &options.tls else {
        serve_http(hyper_util::rt::TokioIo::new(stream), peer, permit.key(), router, &options, closing).await;
        return;
    };
    let handshake = tokio::select! {
        handshake = timeout(options.header_read_timeout, tls.acceptor().accept(stream)) => handshake,
        () = closing.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            serve_http(hyper_util::rt::TokioIo::new(stream), peer, permit.key(), router, &options, closing).await;
        }
        Ok(Err(e)) => {
            options.metrics.webhook_refused("tls_handshake");
            debug!(peer = %peer, error = %e, "webhook listener: TLS handshake failed");
        }
        Err(_) => {
            options.metrics.webhook_refused("tls_handshake");
            debug!(peer = %peer, timeout = ?options.header_read_timeout, "webhook listener: no TLS handshake within the header read timeout");
        }
    }
}

/// HTTP/1.1 on one (plain or TLS) connection; each request first takes a permit of its source's rate.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    source: SourceKey,
    router: Router,
    options: &ListenerOptions,
    closing: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let per_source = Arc::clone(&options.per_source);
    let metrics = options.metrics.clone();
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        let limited = per_source.request(source).err();
        let router = router.clone();
        let metrics = metrics.clone();
        async move {
            if let Some(limited) = limited {
                metrics.webhook_refused("rate_limited");
                debug!(peer = %peer, source = %source, retry_after = ?limited.retry_after, "webhook request over its source's rate");
                return Ok::<_, Infallible>(HookError::RateLimited { from: source, limited }.into_response());
            }
            tower::ServiceExt::oneshot(router, request).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(options.header_read_timeout);
    let mut connection = pin!(builder.serve_connection(io, service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(peer = %peer, error = %e, "webhook connection ended with an error");
    }
}

/// What every endpoint shares.
struct Shared<S> {
    sink: Arc<S>,
    limits: Limits,
    request_timeout: Duration,
    on_refusal: Option<RefusalHook>,
}

/// One endpoint: its format, intake subject and authentication.
struct Endpoint {
    format: Source,
    /// `hooks.<format>`.
    subject: String,
    auth: Check,
}

/// [`EndpointAuth`] made ready for checking: a bearer token is kept only as its SHA-256.
enum Check {
    Open,
    Bearer { token_sha256: [u8; 32] },
    Hmac { key: Secret, header: HeaderName },
}

impl Check {
    fn new(auth: EndpointAuth) -> Self {
        match auth {
            EndpointAuth::None => Check::Open,
            EndpointAuth::Bearer(token) => Check::Bearer { token_sha256: Sha256::digest(token.expose()).into() },
            EndpointAuth::Hmac { secret, header } => Check::Hmac { key: secret, header },
        }
    }

    /// What the headers alone can tell. A bearer token is checked here in full; an HMAC signature only found and
    /// decoded, to be checked against the body once it is read.
    fn headers(&self, headers: &HeaderMap) -> Result<Option<Vec<u8>>, HookError> {
        match self {
            Check::Open => Ok(None),
            Check::Bearer { token_sha256 } => {
                let token = bearer_token(headers)?;
                let given: [u8; 32] = Sha256::digest(token).into();
                if bool::from(given[..].ct_eq(&token_sha256[..])) {
                    Ok(None)
                } else {
                    Err(HookError::Unauthorized(AuthFailure::WrongBearer))
                }
            }
            Check::Hmac { header, .. } => signature(headers, header).map(Some),
        }
    }

    /// Checks the signature the headers gave against the body.
    fn body(&self, signature: Option<&[u8]>, body: &[u8]) -> Result<(), HookError> {
        let (Check::Hmac { key, header }, Some(signature)) = (self, signature) else { return Ok(()) };
        let wrong = || HookError::Unauthorized(AuthFailure::WrongSignature(header.clone()));
        // HMAC takes keys of any length; an error here would be a bug in the hmac crate, and it still refuses.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()).map_err(|_| wrong())?;
        mac.update(body);
        mac.verify_slice(signature).map_err(|_| wrong())
    }
}

/// The token of the one `Authorization: Bearer <token>` header (scheme in any case).
fn bearer_token(headers: &HeaderMap) -> Result<&[u8], HookError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(HookError::Unauthorized(if headers.contains_key(AUTHORIZATION) {
            AuthFailure::MalformedBearer
        } else {
            AuthFailure::MissingBearer
        }));
    };
    let value = value.as_bytes();
    let (scheme, token) = match value.iter().position(|b| *b == b' ') {
        Some(space) => (&value[..space], value[space..].trim_ascii_start()),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Err(HookError::Unauthorized(AuthFailure::MalformedBearer));
    }
    Ok(token)
}

/// The signature in `header`: 64 hex digits (either case), optionally after `sha256=`, decoded.
fn signature(headers: &HeaderMap, header: &HeaderName) -> Result<Vec<u8>, HookError> {
    let mut values = headers.get_all(header).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) => value.as_bytes(),
        (None, _) => return Err(HookError::Unauthorized(AuthFailure::MissingSignature(header.clone()))),
        (Some(_), Some(_)) => return Err(HookError::Unauthorized(AuthFailure::MalformedSignature(header.clone()))),
    };
    let hex_digits = match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"sha256=") => &value[7..],
        _ => value,
    };
    match hex::decode(hex_digits) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => Err(HookError::Unauthorized(AuthFailure::MalformedSignature(header.clone()))),
    }
}

/// `application/json`, in any case, with no charset or `utf-8` (JSON is UTF-8: RFC 8259).
fn check_content_type(headers: &HeaderMap) -> Result<(), HookError> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) => value,
        (None, _) => return Err(HookError::UnsupportedMediaType("no Content-Type; send application/json".into())),
        (Some(_), Some(_)) => return Err(HookError::UnsupportedMediaType("more than one Content-Type".into())),
    };
    let refuse = || {
        let given = quote(&String::from_utf8_lossy(value.as_bytes()));
        HookError::UnsupportedMediaType(format!("Content-Type {given} is not application/json"))
    };
    let text = value.to_str().map_err(|_| refuse())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(refuse());
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        if name.trim().eq_ignore_ascii_case("charset") && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err(HookError::UnsupportedMediaType(format!(
                "Content-Type {} has a charset other than utf-8",
                quote(text)
            )));
        }
    }
    Ok(())
}

/// The one `X-Correlation-Id` header, if any, when it is a correlation id.
fn correlation_header(headers: &HeaderMap) -> Result<Option<String>, HookError> {
    let mut values = headers.get_all(CORRELATION_HEADER).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err(HookError::BadCorrelationId("X-Correlation-Id given more than once".into())),
    };
    match value.to_str() {
        Ok(id) if is_correlation_id(id) => Ok(Some(id.to_owned())),
        _ => Err(HookError::BadCorrelationId(format!(
            "X-Correlation-Id {} is not a correlation id: 1 to 128 characters of [A-Za-z0-9._:-]",
            quote(&String::from_utf8_lossy(value.as_bytes()))
        ))),
    }
}

/// Refuses a declared `Content-Length` over `limit` before any body byte is read.
fn check_content_length(headers: &HeaderMap, limit: usize) -> Result<Option<usize>, HookError> {
    let Some(declared) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) else {
        return Ok(None);
    };
    match usize::try_from(declared) {
        Ok(declared) if declared <= limit => Ok(Some(declared)),
        _ => Err(HookError::BodyTooLarge { declared: Some(declared), limit }),
    }
}

/// Reads the body, refusing it as soon as more than `limit` bytes have arrived (whatever `Content-Length` said).
async fn read_body(body: Body, limit: usize, declared: Option<usize>) -> Result<Bytes, HookError> {
    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| HookError::BodyRead(e.to_string()))?;
        if chunk.len() > limit - buffer.len() {
            return Err(HookError::BodyTooLarge { declared: None, limit });
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// The answer to a taken payload: `event_ids[i]` and `correlation_ids[i]` are those of the same event.
#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    event_ids: Vec<uuid::Uuid>,
    correlation_ids: Vec<String>,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        json_response(StatusCode::ACCEPTED, &self)
    }
}

/// The answer to a refused request. `field` is the payload field path of an adapter error, else null.
#[derive(Serialize)]
struct Refused<'a> {
    error: &'a str,
    field: Option<&'a str>,
}

/// One request to an endpoint, with its one log line.
async fn handle<S: EventSink>(intake: Arc<Shared<S>>, endpoint: Arc<Endpoint>, request: Request) -> Response {
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
    let format = endpoint.format;
    match receive(&intake, &endpoint, request).await {
        Ok(accepted) => {
            info!(
                %format,
                peer = ?peer,
                accepted = accepted.accepted,
                correlation_id = accepted.correlation_ids.first().map(String::as_str),
                "webhook payload accepted"
            );
            accepted.into_response()
        }
        Err(e) => {
            let status = e.status();
            if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
                warn!(%format, peer = ?peer, status = status.as_u16(), error = %e, "webhook payload refused");
            } else {
                info!(%format, peer = ?peer, status = status.as_u16(), error = %e, "webhook payload refused");
            }
            if let Some(hook) = &intake.on_refusal {
                let error = match &e {
                    HookError::Payload(adapter) => adapter.to_string(),
                    other => other.to_string(),
                };
                (hook.0)(RefusedPayload { format, peer, status: status.as_u16(), error }).await;
            }
            e.into_response()
        }
    }
}

/// The steps of the module doc, in order.
async fn receive<S: EventSink>(
    intake: &Shared<S>,
    endpoint: &Endpoint,
    request: Request,
) -> Result<Accepted, HookError> {
    let received_at = Utc::now();
    let deadline = Instant::now() + intake.request_timeout;
    let limit = intake.limits.max_body_bytes;
    let (parts, body) = request.into_parts();

    let signature = endpoint.auth.headers(&parts.headers)?;
    check_content_type(&parts.headers)?;
    let correlation_id = correlation_header(&parts.headers)?;
    let declared = check_content_length(&parts.headers, limit)?;

    let body = timeout_at(deadline, read_body(body, limit, declared))
        .await
        .map_err(|_| HookError::Timeout(intake.request_timeout))??;
    endpoint.auth.body(signature.as_deref(), &body)?;

    let context = Intake { subject: &endpoint.subject, received_at, correlation_id: correlation_id.as_deref() };
    let (events, meta) =
        parse_with_meta(endpoint.format, &body, &context, &intake.limits).map_err(HookError::Payload)?;
    if let Some(group_key) = &meta.group_key {
        debug!(format = %endpoint.format, group_key, events = events.len(), "webhook payload parsed");
    }
    let accepted = Accepted {
        accepted: events.len(),
        event_ids: events.iter().map(|e| e.id).collect(),
        correlation_ids: events.iter().map(|e| e.correlation_id.clone()).collect(),
    };

    timeout_at(deadline, intake.sink.submit(endpoint.format, body, events, correlation_id))
        .await
        .map_err(|_| HookError::SinkTimeout(intake.request_timeout))?
        .map_err(HookError::Sink)?;
    Ok(accepted)
}

/// Why a request was refused: one variant per stage, each with its status code.
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("{0}")]
    Unauthorized(AuthFailure),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    BadCorrelationId(String),
    #[error("{}", body_too_large(*declared, *limit))]
    BodyTooLarge { declared: Option<u64>, limit: usize },
    #[error("the body did not arrive within the request timeout of {0:?}")]
    Timeout(Duration),
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Payload(AdapterError),
    #[error("not taken, retry later: {0}")]
    Sink(SinkError),
    #[error("not taken, retry later: the sink did not answer within the request timeout of {0:?}")]
    SinkTimeout(Duration),
    #[error("no such endpoint; the webhooks are POST /hooks/alertmanager, /hooks/grafana and /hooks/generic")]
    NotFound,
    #[error("method {0} is not allowed here; use POST")]
    MethodNotAllowed(Method),
    #[error("too many requests from {from}; retry after {} s", retry_after_header(limited))]
    RateLimited { from: SourceKey, limited: RateLimited },
}

/// Whole seconds until the next permit, at least 1 (the value of `Retry-After`).
fn retry_after_header(limited: &RateLimited) -> u64 {
    limited.retry_after.as_secs_f64().ceil().max(1.0) as u64
}

fn body_too_large(declared: Option<u64>, limit: usize) -> String {
    match declared {
        Some(declared) => {
            format!("Content-Length {declared} is over the limit of {limit} bytes (max_body_bytes)")
        }
        None => format!("body is over the limit of {limit} bytes (max_body_bytes)"),
    }
}

/// What was wrong with the credentials. The messages say what is missing or malformed, never what was expected.
#[derive(Debug, thiserror::Error)]
enum AuthFailure {
    #[error("missing `Authorization: Bearer <token>` header")]
    MissingBearer,
    #[error("the Authorization header is not one `Bearer <token>`")]
    MalformedBearer,
    #[error("wrong bearer token")]
    WrongBearer,
    #[error("missing signature header {0}")]
    MissingSignature(HeaderName),
    #[error("signature header {0} is not one hex HMAC-SHA256 (64 hex digits, optionally after `sha256=`)")]
    MalformedSignature(HeaderName),
    #[error("signature in {0} does not match the body")]
    WrongSignature(HeaderName),
}

impl HookError {
    fn status(&self) -> StatusCode {
        match self {
            HookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HookError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HookError::BadCorrelationId(_) | HookError::BodyRead(_) | HookError::Payload(_) => StatusCode::BAD_REQUEST,
            HookError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HookError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            HookError::Sink(_) | HookError::SinkTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            HookError::NotFound => StatusCode::NOT_FOUND,
            HookError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HookError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whether the refusal came before the whole body was read: the connection cannot carry another request, and
    /// `Connection: close` tells the client so.
    fn body_unread(&self) -> bool {
        match self {
            HookError::Unauthorized(failure) => !matches!(failure, AuthFailure::WrongSignature(_)),
            HookError::UnsupportedMediaType(_)
            | HookError::BadCorrelationId(_)
            | HookError::BodyTooLarge { .. }
            | HookError::Timeout(_)
            | HookError::BodyRead(_)
            | HookError::RateLimited { .. } => true,
            HookError::Payload(_)
            | HookError::Sink(_)
            | HookError::SinkTimeout(_)
            | HookError::NotFound
            | HookError::MethodNotAllowed(_) => false,
        }
    }

    /// The `WWW-Authenticate` challenge of a bearer refusal (RFC 6750).
    fn challenge(&self) -> Option<HeaderValue> {
        let HookError::Unauthorized(failure) = self else { return None };
        match failure {
            AuthFailure::MissingBearer => Some(format!("Bearer realm=\"{REALM}\"")),
            AuthFailure::MalformedBearer => Some(format!("Bearer realm=\"{REALM}\", error=\"invalid_request\"")),
            AuthFailure::WrongBearer => Some(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")),
            AuthFailure::MissingSignature(_) | AuthFailure::MalformedSignature(_) | AuthFailure::WrongSignature(_) => {
                None
            }
        }
        .and_then(|challenge| HeaderValue::from_str(&challenge).ok())
    }
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        let message = match &self {
            HookError::Payload(e) => e.message.clone(),
            other => other.to_string(),
        };
        let field = match &self {
            HookError::Payload(e) => Some(e.field.as_str()),
            _ => None,
        };
        let mut response = json_response(self.status(), &Refused { error: &message, field });
        if let Some(challenge) = self.challenge() {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        if self.body_unread() {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let HookError::RateLimited { limited, .. } = &self {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_header(limited)));
        }
        response
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    // Strings, numbers and ids only: serializing cannot fail, and if it did the status still says what happened.
    let body = serde_json::to_string(body).unwrap_or_default();
    (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

async fn not_found() -> Response {
    HookError::NotFound.into_response()
}

async fn method_not_allowed(method: Method) -> Response {
    HookError::MethodNotAllowed(method).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::routing::get;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::*;
    use crate::sources::test_support::fixture;

    /// One `submit` call as the sink saw it.
    struct Submission {
        format: Source,
        body: Bytes,
        events: Vec<Event>,
        correlation_id: Option<String>,
    }

    #[derive(Default, Clone, Copy)]
    enum Behaviour {
        #[default]
        Accept,
        Fail(&'static str),
        /// Never answers (the request timeout must end the wait).
        Hang,
    }

    /// The test double of the engine or NATS: records what it takes.
    #[derive(Default)]
    struct RecordingSink {
        behaviour: Behaviour,
        submissions: Mutex<Vec<Submission>>,
    }

    impl RecordingSink {
        fn with(behaviour: Behaviour) -> Arc<Self> {
            Arc::new(RecordingSink { behaviour, ..RecordingSink::default() })
        }

        fn taken(&self) -> std::sync::MutexGuard<'_, Vec<Submission>> {
            self.submissions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }

    impl EventSink for RecordingSink {
        async fn submit(
            &self,
            format: Source,
            body: Bytes,
            events: Vec<Event>,
            correlation_id: Option<String>,
        ) -> Result<(), SinkError> {
            match self.behaviour {
                Behaviour::Accept => {
                    self.taken().push(Submission { format, body, events, correlation_id });
                    Ok(())
                }
                Behaviour::Fail(message) => Err(SinkError::Unavailable(message.to_owned())),
                Behaviour::Hang => std::future::pending().await,
            }
        }
    }

    const TOKEN: &str = "s3cret-token";
    const HMAC_KEY: &str = "hmac-key";
    const SIGNATURE_HEADER: &str = "x-grafana-alerting-signature";

    fn secret(text: &str) -> Secret {
        Secret::new(text).expect("non-empty")
    }

    fn bearer() -> EndpointAuth {
        EndpointAuth::Bearer(secret(TOKEN))
    }

    fn hmac_auth() -> EndpointAuth {
        EndpointAuth::Hmac { secret: secret(HMAC_KEY), header: HeaderName::from_static(SIGNATURE_HEADER) }
    }

    fn all(auth: EndpointAuth) -> WebhookConfig {
        WebhookConfig::new(HookAuth {
            alertmanager: Some(auth.clone()),
            grafana: Some(auth.clone()),
            generic: Some(auth),
        })
    }

    fn sign(key: &str, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("any key length");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Request {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(body).expect("valid request")
    }

    /// A JSON POST of `body` with its Content-Length, as a real sender makes it.
    fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
        let length = body.len().to_string();
        let mut all = vec![("content-type", "application/json"), ("content-length", length.as_str())];
        all.extend_from_slice(headers);
        request("POST", path, &all, Body::from(body.to_vec()))
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        json: serde_json::Value,
    }

    impl Answer {
        fn error(&self) -> &str {
            self.json["error"].as_str().unwrap_or_default()
        }
    }

    async fn call(router: &Router, request: Request) -> Answer {
        let response = router.clone().oneshot(request).await.unwrap_or_else(|never| match never {});
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("response body");
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
        Answer { status, headers, json }
    }

    fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
        headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn every_fixture_is_accepted_with_its_event_ids() {
        let directory = format!("{}/tests/fixtures/events", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(&directory)
            .expect("fixtures directory")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut tried = 0;
        for name in names {
            let Some(format) = FORMATS.into_iter().find(|f| name.starts_with(f.as_str())) else { continue };
            let sink = RecordingSink::with(Behaviour::Accept);
            let router = router(all(EndpointAuth::None), Arc::clone(&sink));
            let body = fixture(&name);
            let answer = call(&router, post(&format!("/hooks/{format}"), &[], &body)).await;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{name}: {}", answer.json);

            let taken = sink.taken();
            assert_eq!(taken.len(), 1, "{name}");
            let submission = &taken[0];
            assert_eq!(submission.format, format, "{name}");
            assert_eq!(submission.body.as_ref(), body.as_slice(), "{name}: the raw body is passed on as is");
            assert_eq!(submission.correlation_id, None, "{name}");
            let expected = crate::sources::parse(
                format,
                &body,
                &Intake { subject: "hooks.x", received_at: Utc::now(), correlation_id: None },
                &Limits::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!expected.is_empty(), "{name}");
            assert_eq!(answer.json["accepted"], expected.len(), "{name}");
            let ids: Vec<String> = submission.events.iter().map(|e| e.id.to_string()).collect();
            assert_eq!(answer.json["event_ids"], json!(ids), "{name}");
            let correlation: Vec<&str> = submission.events.iter().map(|e| e.correlation_id.as_str()).collect();
            assert_eq!(answer.json["correlation_ids"], json!(correlation), "{name}");
            for event in &submission.events {
                assert_eq!(event.subject, format!("hooks.{format}"), "{name}");
                assert_eq!(event.source, format, "{name}");
            }
            tried += 1;
        }
        assert!(tried >= 5, "only {tried} fixtures found in {directory}");
    }

    /// (case, auth, extra headers, status, WWW-Authenticate)
    type AuthCase<'a> = (&'a str, EndpointAuth, Vec<(&'static str, &'a str)>, StatusCode, Option<&'a str>);

    #[tokio::test]
    async fn authentication() {
        let body = fixture("generic-event.json");
        let good = sign(HMAC_KEY, &body);
        let prefixed = format!("sha256={good}");
        let upper = good.to_uppercase();
        let other_body = sign(HMAC_KEY, b"{}");
        let other_key = sign("another-key", &body);
        let bearer_ok = format!("Bearer {TOKEN}");
        let bearer_lower = format!("bearer {TOKEN}");
        let bearer_longer = format!("Bearer {TOKEN}x");
        let basic = format!("Basic {TOKEN}");
        let missing = "Bearer realm=\"rune\"";
        let invalid = "Bearer realm=\"rune\", error=\"invalid_token\"";
        let malformed = "Bearer realm=\"rune\", error=\"invalid_request\"";

        let cases: Vec<AuthCase<'_>> = vec![
            ("none", EndpointAuth::None, vec![], StatusCode::ACCEPTED, None),
            ("bearer ok", bearer(), vec![("authorization", &bearer_ok)], StatusCode::ACCEPTED, None),
            ("bearer scheme in any case", bearer(), vec![("authorization", &bearer_lower)], StatusCode::ACCEPTED, None),
            ("bearer missing", bearer(), vec![], StatusCode::UNAUTHORIZED, Some(missing)),
            ("bearer wrong", bearer(), vec![("authorization", "Bearer nope")], StatusCode::UNAUTHORIZED, Some(invalid)),
            (
                "bearer with a suffix",
                bearer(),
                vec![("authorization", &bearer_longer)],
                StatusCode::UNAUTHORIZED,
                Some(invalid),
            ),
            (
                "basic instead of bearer",
                bearer(),
                vec![("authorization", &basic)],
                StatusCode::UNAUTHORIZED,
                Some(malformed),
            ),
            (
                "bearer without token",
                bearer(),
                vec![("authorization", "Bearer ")],
                StatusCode::UNAUTHORIZED,
                Some(malformed),
            ),
            (
                "bearer given twice",
                bearer(),
                vec![("authorization", &bearer_ok), ("authorization", &bearer_ok)],
                StatusCode::UNAUTHORIZED,
                Some(malformed),
            ),
            (
                "bearer missing beats a wrong Content-Type",
                bearer(),
                vec![("content-type", "text/plain")],
                StatusCode::UNAUTHORIZED,
                Some(missing),
            ),
            ("hmac ok", hmac_auth(), vec![(SIGNATURE_HEADER, &good)], StatusCode::ACCEPTED, None),
            ("hmac with sha256= prefix", hmac_auth(), vec![(SIGNATURE_HEADER, &prefixed)], StatusCode::ACCEPTED, None),
            ("hmac in upper-case hex", hmac_auth(), vec![(SIGNATURE_HEADER, &upper)], StatusCode::ACCEPTED, None),
            ("hmac missing", hmac_auth(), vec![], StatusCode::UNAUTHORIZED, None),
            (
                "hmac of another body",
                hmac_auth(),
                vec![(SIGNATURE_HEADER, &other_body)],
                StatusCode::UNAUTHORIZED,
                None,
            ),
            (
                "hmac under another key",
                hmac_auth(),
                vec![(SIGNATURE_HEADER, &other_key)],
                StatusCode::UNAUTHORIZED,
                None,
            ),
            ("hmac not hex", hmac_auth(), vec![(SIGNATURE_HEADER, "sha256=zz")], StatusCode::UNAUTHORIZED, None),
            ("hmac cut short", hmac_auth(), vec![(SIGNATURE_HEADER, &good[..62])], StatusCode::UNAUTHORIZED, None),
            (
                "a bearer token does not open an hmac endpoint",
                hmac_auth(),
                vec![("authorization", &bearer_ok)],
                StatusCode::UNAUTHORIZED,
                None,
            ),
        ];
        for (case, auth, headers, status, challenge) in cases {
            let sink = RecordingSink::with(Behaviour::Accept);
            let router = router(all(auth), Arc::clone(&sink));
            // A later header of the same name replaces post()'s, so a case can set its own Content-Type.
            let mut request = post("/hooks/generic", &[], &body);
            for (name, value) in &headers {
                let name = HeaderName::from_static(name);
                let value = HeaderValue::from_str(value).expect("header value");
                if name == CONTENT_TYPE {
                    request.headers_mut().insert(name, value);
                } else {
                    request.headers_mut().append(name, value);
                }
            }
            let answer = call(&router, request).await;
            assert_eq!(answer.status, status, "{case}: {}", answer.json);
            assert_eq!(header(&answer.headers, "www-authenticate"), challenge, "{case}");
            let taken = sink.taken().len();
            if status == StatusCode::ACCEPTED {
                assert_eq!(taken, 1, "{case}");
            } else {
                assert_eq!(taken, 0, "{case}: nothing may reach the sink");
                assert_eq!(answer.json["field"], serde_json::Value::Null, "{case}");
                assert!(!answer.error().is_empty(), "{case}");
                assert!(!answer.error().contains(TOKEN) && !answer.error().contains(HMAC_KEY), "{case}");
            }
        }
    }

    #[tokio::test]
    async fn each_endpoint_has_its_own_auth() {
        let sink = RecordingSink::with(Behaviour::Accept);
        let config = WebhookConfig::new(HookAuth {
            alertmanager: Some(bearer()),
            grafana: Some(hmac_auth()),
            generic: Some(EndpointAuth::None),
        });
        let router = router(config, Arc::clone(&sink));
        let alertmanager = fixture("alertmanager-docker-down.json");
        let grafana = fixture("grafana-critical.json");
        let generic = fixture("generic-event.json");
        assert_eq!(
            call(&router, post("/hooks/alertmanager", &[], &alertmanager)).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(call(&router, post("/hooks/grafana", &[], &grafana)).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&router, post("/hooks/generic", &[], &generic)).await.status, StatusCode::ACCEPTED);
        let signature = sign(HMAC_KEY, &grafana);
        let answer = call(&router, post("/hooks/grafana", &[(SIGNATURE_HEADER, &signature)], &grafana)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        assert_eq!(sink.taken().len(), 2);
    }

    #[tokio::test]
    async fn body_limits() {
        let body = fixture("generic-event.json");
        let at_limit = |limit: usize| {
            let mut config = all(EndpointAuth::None);
            config.limits.max_body_bytes = limit;
            config
        };
        // Streamed in small chunks without a Content-Length, as chunked transfer encoding arrives.
        let streamed = |body: &[u8]| {
            let chunks: Vec<Result<Bytes, io::Error>> =
                body.chunks(16).map(|chunk| Ok(Bytes::copy_from_slice(chunk))).collect();
            request(
                "POST",
                "/hooks/generic",
                &[("content-type", "application/json")],
                Body::from_stream(futures::stream::iter(chunks)),
            )
        };

        let sink = RecordingSink::with(Behaviour::Accept);
        let exact = router(at_limit(body.len()), Arc::clone(&sink));
        assert_eq!(call(&exact, streamed(&body)).await.status, StatusCode::ACCEPTED);
        assert_eq!(call(&exact, post("/hooks/generic", &[], &body)).await.status, StatusCode::ACCEPTED);

        let small = router(at_limit(body.len() - 1), Arc::clone(&sink));
        let answer = call(&small, streamed(&body)).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.json);
        assert_eq!(answer.error(), format!("body is over the limit of {} bytes (max_body_bytes)", body.len() - 1));
        assert_eq!(answer.json["field"], serde_json::Value::Null);
        assert_eq!(header(&answer.headers, "connection"), Some("close"));

        let answer = call(&small, post("/hooks/generic", &[], &body)).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            answer.error(),
            format!("Content-Length {} is over the limit of {} bytes (max_body_bytes)", body.len(), body.len() - 1)
        );

        // A declared length over the limit is refused before the body is read: this body fails when read.
        let unreadable = Body::from_stream(futures::stream::once(async {
            Err::<Bytes, io::Error>(io::Error::other("the body was read"))
        }));
        let huge = request(
            "POST",
            "/hooks/generic",
            &[("content-type", "application/json"), ("content-length", "10000000000")],
            unreadable,
        );
        let answer = call(&router(all(EndpointAuth::None), Arc::clone(&sink)), huge).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.json);
        assert!(
            answer.error().starts_with("Content-Length 10000000000 is over the limit of 1048576 bytes"),
            "{}",
            answer.error()
        );

        assert_eq!(sink.taken().len(), 2, "only the two bodies within the limit were taken");
    }

    #[tokio::test]
    async fn content_type_must_be_json() {
        let body = fixture("generic-event.json");
        let cases = [
            (Some("application/json"), StatusCode::ACCEPTED),
            (Some("application/json; charset=utf-8"), StatusCode::ACCEPTED),
            (Some("Application/JSON;charset=\"UTF-8\""), StatusCode::ACCEPTED),
            (None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Some("text/plain"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Some("application/x-www-form-urlencoded"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Some("application/jsonp"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Some("application/json; charset=latin1"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ];
        for (content_type, status) in cases {
            let sink = RecordingSink::with(Behaviour::Accept);
            let router = router(all(EndpointAuth::None), Arc::clone(&sink));
            let headers: Vec<(&str, &str)> = content_type.map(|c| ("content-type", c)).into_iter().collect();
            let request = request("POST", "/hooks/generic", &headers, Body::from(body.clone()));
            let answer = call(&router, request).await;
            assert_eq!(answer.status, status, "{content_type:?}: {}", answer.json);
            assert_eq!(sink.taken().len(), usize::from(status == StatusCode::ACCEPTED), "{content_type:?}");
        }
    }

    #[tokio::test]
    async fn a_malformed_payload_is_refused_with_its_field_path() {
        let sink = RecordingSink::with(Behaviour::Accept);
        let router = router(all(EndpointAuth::None), Arc::clone(&sink));
        let cases: [(&str, &[u8], &str, &str); 4] = [
            (
                "/hooks/alertmanager",
                br#"{"version":"4","alerts":[{"status":"firing","fingerprint":"f1"}]}"#,
                "alerts[0].labels",
                "required field is missing",
            ),
            (
                "/hooks/grafana",
                br#"{"alerts":[{"status":"firing","labels":{"a":1}}]}"#,
                "alerts[0].labels.a",
                "invalid type",
            ),
            ("/hooks/generic", br#"{"labels":{"a":"b"},"stauts":"firing"}"#, "stauts", "unknown field"),
            ("/hooks/generic", b"labels: {}", ".", "expected value"),
        ];
        for (path, body, field, message) in cases {
            let answer = call(&router, post(path, &[], body)).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}: {}", answer.json);
            assert_eq!(answer.json["field"], field, "{path}: {}", answer.json);
            assert!(answer.error().contains(message), "{path}: {}", answer.json);
        }
        assert_eq!(sink.taken().len(), 0);
    }

    #[tokio::test]
    async fn correlation_header() {
        let body = fixture("generic-event.json");
        let sink = RecordingSink::with(Behaviour::Accept);
        let router = router(all(EndpointAuth::None), Arc::clone(&sink));

        for bad in [vec!["a b"], vec![&"x".repeat(129)], vec!["ok-1", "ok-2"]] {
            let headers: Vec<(&str, &str)> = bad.iter().map(|v| ("x-correlation-id", *v)).collect();
            let answer = call(&router, post("/hooks/generic", &headers, &body)).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", answer.json);
            assert_eq!(answer.json["field"], serde_json::Value::Null);
            assert!(answer.error().contains("X-Correlation-Id"), "{}", answer.json);
        }
        assert_eq!(sink.taken().len(), 0);

        // The header wins over the payload's own `correlation_id` ("ticket-4711").
        let answer = call(&router, post("/hooks/generic", &[("X-Correlation-Id", "ops:42")], &body)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
        assert_eq!(answer.json["correlation_ids"], json!(["ops:42"]));
        {
            let taken = sink.taken();
            assert_eq!(taken[0].correlation_id.as_deref(), Some("ops:42"));
            assert_eq!(taken[0].events[0].correlation_id, "ops:42");
        }

        let alerts = fixture("alertmanager-truncated.json");
        let answer = call(&router, post("/hooks/alertmanager", &[("x-correlation-id", "batch-7")], &alerts)).await;
        assert_eq!(answer.json["correlation_ids"], json!(["batch-7", "batch-7"]), "{}", answer.json);
    }

    #[tokio::test]
    async fn a_sink_error_is_503_and_nothing_is_accepted() {
        let sink = RecordingSink::with(Behaviour::Fail("NATS unavailable"));
        let router = router(all(EndpointAuth::None), Arc::clone(&sink));
        let answer = call(&router, post("/hooks/alertmanager", &[], &fixture("alertmanager-docker-down.json"))).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.error(), "not taken, retry later: NATS unavailable");
        assert_eq!(answer.json["field"], serde_json::Value::Null);
        assert!(answer.json.get("accepted").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_that_does_not_answer_is_503_at_the_request_timeout() {
        let sink = RecordingSink::with(Behaviour::Hang);
        let router = router(all(EndpointAuth::None), Arc::clone(&sink));
        let answer = call(&router, post("/hooks/generic", &[], &fixture("generic-event.json"))).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.error().contains("did not answer within the request timeout of 10s"), "{}", answer.json);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_408() {
        let sink = RecordingSink::with(Behaviour::Accept);
        let router = router(all(EndpointAuth::None), Arc::clone(&sink));
        let first = futures::stream::once(async { Ok::<_, io::Error>(Bytes::from_static(b"{\"labels\":")) });
        let body = Body::from_stream(first.chain(futures::stream::pending()));
        let request = request("POST", "/hooks/generic", &[("content-type", "application/json")], body);
        let answer = call(&router, request).await;
        assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT, "{}", answer.json);
        assert_eq!(header(&answer.headers, "connection"), Some("close"));
        assert_eq!(sink.taken().len(), 0);
    }

    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let sink = RecordingSink::with(Behaviour::Accept);
        // The daemon's own routes, merged onto the same router.
        let daemon = Router::new().route("/healthz", get(|| async { "ok" }));
        let router = router(all(EndpointAuth::None), Arc::clone(&sink)).merge(daemon);

        for path in ["/", "/hooks", "/hooks/chatops", "/hooks/generic/", "/hooks/nope"] {
            let answer = call(&router, post(path, &[], b"{}")).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
            assert!(answer.error().starts_with("no such endpoint"), "{path}: {}", answer.json);
        }
        for method in ["GET", "PUT", "DELETE"] {
            let answer = call(&router, request(method, "/hooks/alertmanager", &[], Body::empty())).await;
            assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(header(&answer.headers, "allow"), Some("POST"), "{method}");
            assert_eq!(answer.error(), format!("method {method} is not allowed here; use POST"));
        }
        let response = router.clone().oneshot(request("GET", "/healthz", &[], Body::empty())).await;
        let response = response.unwrap_or_else(|never| match never {});
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(sink.taken().len(), 0);
    }

    #[test]
    fn secrets_do_not_show_and_may_not_be_empty() {
        let auth = EndpointAuth::Hmac { secret: secret("hunter2"), header: CORRELATION_HEADER };
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert_eq!(Secret::new("").err(), Some(EmptySecret));
    }

    /// Reads until the server closes the connection (or resets it), within a generous bound.
    async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
        let mut received = Vec::new();
        let read = async {
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("the server closed the connection");
        String::from_utf8_lossy(&received).into_owned()
    }

    #[tokio::test]
    async fn serves_over_tcp_and_cuts_slow_clients() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let sink = RecordingSink::with(Behaviour::Accept);
        let config = WebhookConfig {
            request_timeout: Duration::from_millis(300),
            ..WebhookConfig::new(HookAuth {
                alertmanager: Some(bearer()),
                grafana: Some(bearer()),
                generic: Some(bearer()),
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router(config, Arc::clone(&sink)),
            ListenerOptions::new(Duration::from_millis(300)),
            async {
                let _ = stopped.await;
            },
        ));

        // A whole request, as Alertmanager sends it.
        let body = fixture("alertmanager-docker-down.json");
        let mut client = TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "POST /hooks/alertmanager HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nX-Correlation-Id: tcp-1\r\nConnection: close\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await.expect("write head");
        client.write_all(&body).await.expect("write body");
        let response = read_until_closed(&mut client).await;
        assert!(response.starts_with("HTTP/1.1 202 Accepted\r\n"), "{response}");
        assert!(response.contains("{\"accepted\":2,\"event_ids\":[\""), "{response}");
        assert!(response.contains("\"correlation_ids\":[\"tcp-1\",\"tcp-1\"]}"), "{response}");
        assert_eq!(sink.taken().len(), 1);

        // A client that announces a body and never finishes it is cut at the request timeout.
        let mut slow = TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "POST /hooks/alertmanager HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"version\":"
        );
        slow.write_all(head.as_bytes()).await.expect("write head");
        let response = read_until_closed(&mut slow).await;
        assert!(response.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{response}");
        assert!(response.to_ascii_lowercase().contains("connection: close"), "{response}");

        // A client that never finishes its headers is cut at the header read timeout.
        let mut slower = TcpStream::connect(address).await.expect("connect");
        slower.write_all(b"POST /hooks/alertmanager HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        read_until_closed(&mut slower).await;

        // Unauthenticated over the network: 401 without the body being waited for.
        let mut stranger = TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "POST /hooks/alertmanager HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n"
        );
        stranger.write_all(head.as_bytes()).await.expect("write head");
        let response = read_until_closed(&mut stranger).await;
        assert!(response.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{response}");
        assert!(response.to_ascii_lowercase().contains("www-authenticate: bearer realm=\"rune\""), "{response}");
        assert_eq!(sink.taken().len(), 1);

        // Shutdown with an idle keep-alive connection open: the server closes it and returns.
        let mut idle = TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "POST /hooks/alertmanager HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        idle.write_all(head.as_bytes()).await.expect("write head");
        idle.write_all(&body).await.expect("write body");
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.expect("response");
        assert_eq!(&first, b"HTTP/1.1 202");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(20), server).await.expect("serve returned").expect("serve task");
        read_until_closed(&mut idle).await;
        assert_eq!(sink.taken().len(), 2);
    }

    #[tokio::test]
    async fn every_refused_payload_is_told_to_the_refusal_hook_before_the_answer() {
        let told: Arc<Mutex<Vec<RefusedPayload>>> = Arc::default();
        let hook = {
            let told = Arc::clone(&told);
            RefusalHook(Arc::new(move |refused| {
                let told = Arc::clone(&told);
                Box::pin(async move { told.lock().unwrap_or_else(|e| e.into_inner()).push(refused) })
            }))
        };
        let sink = RecordingSink::with(Behaviour::Accept);
        let router = router(WebhookConfig { on_refusal: Some(hook), ..all(bearer()) }, Arc::clone(&sink));
        let ok = call(&router, post("/hooks/generic", &[("authorization", &format!("Bearer {TOKEN}"))], b"{}")).await;
        assert_eq!(ok.status, StatusCode::BAD_REQUEST);
        let wrong = call(&router, post("/hooks/grafana", &[("authorization", "Bearer nope")], b"{}")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let told = told.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let seen: Vec<(Source, u16)> = told.iter().map(|r| (r.format, r.status)).collect();
        assert_eq!(seen, [(Source::Generic, 400), (Source::Grafana, 401)]);
        assert!(told[1].error.contains("wrong bearer token"), "{told:?}");
        assert!(!told[1].error.contains("nope"), "the given token is not repeated: {told:?}");
    }

    /// A server with these listener options on 127.0.0.1:0, bearer-authenticated generic endpoint.
    async fn start_listener(
        options: ListenerOptions,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>, Arc<RecordingSink>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let sink = RecordingSink::with(Behaviour::Accept);
        let config = WebhookConfig::new(HookAuth { alertmanager: None, grafana: None, generic: Some(bearer()) });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(config, Arc::clone(&sink)), options, async {
            let _ = stopped.await;
        }));
        (address, stop, server, sink)
    }

    /// A connection to `address` from the loopback address `from` (each is its own source).
    async fn connect_from(from: &str, address: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{from}:0").parse().expect("address")).expect("bind the source address");
        socket.connect(address).await.expect("connect")
    }

    /// One generic event, POSTed with `Connection: close`; the whole answer.
    async fn post_generic(stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin)) -> String {
        let body = br#"{"labels":{"alertname":"A","instance":"h"}}"#;
        let head = format!(
            "POST /hooks/generic HTTP/1.1\r\nHost: rune\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
            return String::new();
        }
        read_until_closed(stream).await
    }

    fn per_source(count: u32, max_connections: usize) -> Arc<PerSource> {
        let count = NonZeroU32::new(count).expect("count");
        // `count` per hour: nothing comes back while the test runs.
        let spec = RateSpec::new(count, Duration::from_secs(3600), count).expect("rate");
        PerSource::new(spec, NonZeroUsize::new(max_connections).expect("max"))
    }

    #[tokio::test]
    async fn each_source_has_its_own_request_rate_and_connection_count() {
        let options = ListenerOptions { per_source: per_source(2, 2), ..ListenerOptions::new(Duration::from_secs(10)) };
        let metrics = options.metrics.clone();
        let (address, stop, server, sink) = start_listener(options).await;

        for _ in 0..2 {
            let answer = post_generic(&mut connect_from("127.0.0.1", address).await).await;
            assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
        }
        // The third from the same source: 429 with Retry-After, before routing (the sink sees nothing).
        let answer = post_generic(&mut connect_from("127.0.0.1", address).await).await;
        assert!(answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("retry-after: 1800\r\n"), "{answer}");
        assert!(lower.contains("connection: close\r\n"), "{answer}");
        assert!(answer.contains(r#"{"error":"too many requests from 127.0.0.1; retry after 1800 s","#), "{answer}");
        assert_eq!(sink.taken().len(), 2);
        // Another source is not affected.
        let answer = post_generic(&mut connect_from("127.0.0.2", address).await).await;
        assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");

        // Connections: two idle ones from 127.0.0.3 are kept, a third from there is closed at once (no answer),
        // while 127.0.0.4 connects.
        let idle_1 = connect_from("127.0.0.3", address).await;
        let idle_2 = connect_from("127.0.0.3", address).await;
        let answer = post_generic(&mut connect_from("127.0.0.3", address).await).await;
        assert_eq!(answer, "", "a third connection from one source is closed unanswered");
        let answer = post_generic(&mut connect_from("127.0.0.4", address).await).await;
        assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
        // Closing one gives its slot back (once the server has seen the close).
        drop(idle_1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = post_generic(&mut connect_from("127.0.0.3", address).await).await;
            if answer.starts_with("HTTP/1.1 202 Accepted\r\n") {
                break;
            }
            assert!(Instant::now() < deadline, "the closed connection's slot never came back: {answer:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(idle_2);
        let text = metrics.encode();
        assert!(text.contains("rune_webhook_listener_refused_total{reason=\"rate_limited\"} 1\n"), "{text}");
        assert!(text.contains("rune_webhook_listener_refused_total{reason=\"too_many_connections\"}"), "{text}");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(20), server).await.expect("serve returned").expect("serve task");
    }

    async fn https_post(
        connector: &tokio_rustls::TlsConnector,
        address: SocketAddr,
    ) -> Result<(String, Vec<u8>), String> {
        let tcp = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let served =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        Ok((post_generic(&mut tls).await, served))
    }

    #[tokio::test]
    async fn tls_serves_https_cuts_plain_and_silent_clients_and_reloads_a_renewed_certificate() {
        use crate::sources::tls::test_pki::{TestPki, client};
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path(), "rune");
        let (cert, key) = pki.issue("server", true);
        let files = crate::config::WebhookTls { cert_file: cert.clone(), key_file: key.clone(), client_ca_file: None };
        let tls = Arc::new(ServerTls::load(&files).expect("load"));
        let options =
            ListenerOptions { tls: Some(Arc::clone(&tls)), ..ListenerOptions::new(Duration::from_millis(500)) };
        let metrics = options.metrics.clone();
        let (address, stop, server, sink) = start_listener(options).await;
        let connector = client(&pki.ca_file(), None);

        let (answer, first_cert) = https_post(&connector, address).await.expect("https");
        assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
        assert_eq!(sink.taken().len(), 1);

        // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
        let answer = post_generic(&mut TcpStream::connect(address).await.expect("connect")).await;
        assert!(!answer.contains("HTTP/1.1"), "{answer:?}");
        // A client that connects and never says hello is cut at the header read timeout.
        let mut silent = TcpStream::connect(address).await.expect("connect");
        assert_eq!(read_until_closed(&mut silent).await, "");
        assert_eq!(sink.taken().len(), 1);

        // A renewed certificate (new key too) is served from the next connection on, without a restart.
        let (new_cert, new_key) = pki.issue("renewed", true);
        std::fs::copy(&new_cert, &cert).expect("copy");
        std::fs::copy(&new_key, &key).expect("copy");
        assert_eq!(tls.reload_if_changed(), Ok(true));
        assert_eq!(tls.reload_if_changed(), Ok(false), "nothing changed since");
        let (answer, renewed) = https_post(&connector, address).await.expect("https");
        assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
        assert_ne!(renewed, first_cert, "the renewed certificate is served");
        // Half a renewal (a certificate whose key is not there yet): refused, the working pair stays in use.
        let (other_cert, _) = pki.issue("half", true);
        std::fs::copy(&other_cert, &cert).expect("copy");
        let refused = tls.reload_if_changed().expect_err("a mismatched pair does not load");
        assert!(refused.to_string().contains("not usable together"), "{refused}");
        let (answer, served) = https_post(&connector, address).await.expect("https");
        assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
        assert_eq!(served, renewed);

        let text = metrics.encode();
        assert!(text.contains("rune_webhook_listener_refused_total{reason=\"tls_handshake\"} 2\n"), "{text}");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(20), server).await.expect("serve returned").expect("serve task");
    }

    #[tokio::test]
    async fn mutual_tls_takes_only_clients_with_a_certificate_from_the_client_ca() {
        use crate::sources::tls::test_pki::{TestPki, client};
        let dir = tempfile::tempdir().expect("tempdir");
        let servers = TestPki::new(dir.path(), "servers");
        let clients = TestPki::new(dir.path(), "clients");
        let strangers = TestPki::new(dir.path(), "strangers");
        let (cert, key) = servers.issue("server", true);
        let files =
            crate::config::WebhookTls { cert_file: cert, key_file: key, client_ca_file: Some(clients.ca_file()) };
        let tls = Arc::new(ServerTls::load(&files).expect("load"));
        let options = ListenerOptions { tls: Some(tls), ..ListenerOptions::new(Duration::from_secs(2)) };
        let (address, stop, server, sink) = start_listener(options).await;

        let (alertmanager_cert, alertmanager_key) = clients.issue("alertmanager", false);
        let (stranger_cert, stranger_key) = strangers.issue("stranger", false);
        for (what, identity) in [
            ("no client certificate", None),
            ("a certificate from another CA", Some((stranger_cert.as_path(), stranger_key.as_path()))),
        ] {
            // TLS 1.3 may finish the client's side of the handshake before the server refuses: either way no
            // HTTP answer comes.
            let answer = https_post(&client(&servers.ca_file(), identity), address).await;
            assert!(!answer.as_ref().is_ok_and(|(a, _)| a.contains("HTTP/1.1")), "{what}: {answer:?}");
        }
        assert_eq!(sink.taken().len(), 0);
        let identity = Some((alertmanager_cert.as_path(), alertmanager_key.as_path()));
        let (answer, _) = https_post(&client(&servers.ca_file(), identity), address).await.expect("https");
        assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
        assert_eq!(sink.taken().len(), 1);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(20), server).await.expect("serve returned").expect("serve task");
    }
}
