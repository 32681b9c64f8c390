//! The `ssm` transport: runs the runner program on a managed instance through AWS Systems Manager Run Command
//! (`SendCommand` with `AWS-RunShellScript` or a configured document), polls `GetCommandInvocation` until the
//! command ends, and cancels it at the deadline.
//!
//! Nothing from an alert is interpolated into the command: the SSM command is a fixed script holding two base64
//! literals (the wrapper `ssm_wrap.sh` and the runner program, which carries the BPCS input), decoded on the host
//! into a private directory. SSM returns at most 24,000 characters of stdout and 8,000 of stderr, from the start;
//! so the wrapper keeps the runner's output in files and prints one frame — byte counts, stdout gzip'd and
//! base64'd, an end line — then the tail of stderr. A frame cut short by the inline limit marks the output
//! truncated (see docs/transports.md).

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::get_command_invocation::{GetCommandInvocationError, GetCommandInvocationOutput};
use aws_sdk_ssm::operation::list_command_invocations::ListCommandInvocationsError;
use aws_sdk_ssm::operation::send_command::SendCommandError;
use aws_sdk_ssm::types::CommandInvocationStatus;
use base64::Engine as _;
use tokio::time::Instant;

use super::{BoxFuture, Invocation, OutputSink, RawOutcome, Transport, TransportError};
use crate::inventory::{Host, S3Output, SsmTarget, TransportKind};

/// The S3 client that reads full output from an output bucket.
pub type S3Client = aws_sdk_s3::Client;

const WRAPPER: &str = include_str!("ssm_wrap.sh");

/// Characters of stdout `GetCommandInvocation` returns inline.
pub const INLINE_STDOUT_CHARS: usize = 24_000;
/// Characters of stderr `GetCommandInvocation` returns inline; the wrapper prints at most this much of the tail.
pub const INLINE_STDERR_CHARS: usize = 8_000;
/// `executionTimeout` bounds of `AWS-RunShellScript`.
const EXECUTION_TIMEOUT_SECS: (u64, u64) = (5, 172_800);
/// `TimeoutSeconds` (delivery) bounds of `SendCommand`.
const DELIVERY_TIMEOUT_SECS: (u64, u64) = (30, 2_592_000);
/// At most this many errors in a row (other than "not there yet" and throttling) end the polling.
const MAX_POLL_ERRORS: u32 = 5;

/// How the transport talks to SSM.
#[derive(Debug, Clone)]
pub struct SsmSettings {
    /// How long a command may wait for delivery to the instance (`TimeoutSeconds`; 30 s at least).
    pub delivery_timeout: Duration,
    /// First wait before polling `GetCommandInvocation`; each later wait grows by half, up to `poll_max`.
    pub poll_first: Duration,
    pub poll_max: Duration,
    /// How long `InvocationDoesNotExist` after `SendCommand` means "not there yet" (eventual consistency).
    pub not_found_grace: Duration,
}

impl Default for SsmSettings {
    fn default() -> SsmSettings {
        SsmSettings {
            delivery_timeout: Duration::from_secs(60),
            poll_first: Duration::from_millis(100),
            poll_max: Duration::from_secs(3),
            not_found_grace: Duration::from_secs(30),
        }
    }
}

/// Runs plugins through SSM Run Command. Clients (one per region) are built on first use from the standard AWS
/// configuration chain (environment, profile, instance role; `AWS_ENDPOINT_URL_SSM` for VPC endpoints and
/// tests). Cloning gives another handle to the same clients.
#[derive(Clone, Default)]
pub struct SsmTransport {
    settings: Arc<SsmSettings>,
    clients: Clients<Client>,
    /// For output buckets, by the bucket's region.
    s3_clients: Clients<S3Client>,
}

/// AWS clients of one service, one per region (None: the configuration chain's own), built on first use; or one
/// fixed client for every region (tests, mocks). Clones share them.
#[derive(Clone)]
struct Clients<C> {
    by_region: Arc<tokio::sync::Mutex<HashMap<Option<String>, C>>>,
    fixed: Option<C>,
}

impl<C> Default for Clients<C> {
    fn default() -> Self {
        Clients { by_region: Arc::default(), fixed: None }
    }
}

impl<C: Clone> Clients<C> {
    fn fixed(client: C) -> Clients<C> {
        Clients { fixed: Some(client), ..Clients::default() }
    }

    async fn get(&self, region: Option<&str>, build: impl FnOnce(&aws_config::SdkConfig) -> C) -> C {
        if let Some(c) = &self.fixed {
            return c.clone();
        }
        let mut clients = self.by_region.lock().await;
        if let Some(c) = clients.get(&region.map(str::to_owned)) {
            return c.clone();
        }
        let client = build(&aws_sdk_config(region).await);
        clients.insert(region.map(str::to_owned), client.clone());
        client
    }
}

impl std::fmt::Debug for SsmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsmTransport").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl SsmTransport {
    pub fn new(settings: SsmSettings) -> SsmTransport {
        SsmTransport { settings: Arc::new(settings), ..SsmTransport::default() }
    }

    /// A transport that uses `client` for every host, whatever its region.
    pub fn with_client(settings: SsmSettings, client: Client) -> SsmTransport {
        SsmTransport { settings: Arc::new(settings), clients: Clients::fixed(client), ..SsmTransport::default() }
    }

    /// Reads output buckets with `client`, whatever their region.
    pub fn with_s3_client(self, client: S3Client) -> SsmTransport {
        SsmTransport { s3_clients: Clients::fixed(client), ..self }
    }

    /// The client for `target`'s output bucket; None when it has none.
    async fn s3_client(&self, target: &SsmTarget) -> Option<S3Client> {
        let output = target.output.as_ref()?;
        let region = output.region.as_deref().or(target.region.as_deref());
        Some(self.s3_clients.get(region, S3Client::new).await)
    }

    async fn client(&self, region: Option<&str>) -> Client {
        self.clients.get(region, Client::new).await
    }
}

impl SsmTransport {
    /// Several hosts' runs in one `SendCommand` ([`run_many`]); the hosts share region and document (the caller
    /// groups them) and each has an `ssm` section.
    pub async fn execute_many(
        &self,
        runs: &[(&Host, &Invocation)],
        max_concurrency: usize,
        comment: &str,
    ) -> Vec<Result<RawOutcome, TransportError>> {
        let mut members = Vec::with_capacity(runs.len());
        for (host, invocation) in runs {
            match &host.ssm {
                Some(target) => members.push(Member { target, invocation }),
                None => {
                    let e = TransportError::Spawn(format!("host `{}` has no `ssm` section", host.name));
                    return runs.iter().map(|_| Err(e.clone())).collect();
                }
            }
        }
        let Some(first) = members.first() else { return Vec::new() };
        let client = self.client(first.target.region.as_deref()).await;
        let s3 = self.s3_client(first.target).await;
        run_many(&client, s3.as_ref(), &self.settings, &members, max_concurrency, comment).await
    }
}

impl Transport for SsmTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Ssm
    }

    fn execute<'a>(
        &'a self,
        host: &'a Host,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<RawOutcome, TransportError>> {
        Box::pin(async move {
            let target = host
                .ssm
                .as_ref()
                .ok_or_else(|| TransportError::Spawn(format!("host `{}` has no `ssm` section", host.name)))?;
            let client = self.client(target.region.as_deref()).await;
            let s3 = self.s3_client(target).await;
            run(&client, s3.as_ref(), &self.settings, target, invocation).await
        })
    }
}

/// The standard AWS configuration chain (environment, profile, instance role; `AWS_ENDPOINT_URL_SSM`), in
/// `region` when given, with every call bounded: a hung request cannot hold a run (its slot, lease and claim)
/// past its deadline. For the SSM transport and Parameter Store alike.
pub async fn aws_sdk_config(region: Option<&str>) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(30))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_owned()));
    }
    loader.load().await
}

/// One run: send, poll until the command ends or the deadline passes (then cancel and clean up), decode. `s3`
/// reads the full output when the target has an output bucket and the inline part is cut.
pub async fn run(
    client: &Client,
    s3: Option<&S3Client>,
    settings: &SsmSettings,
    target: &SsmTarget,
    invocation: &Invocation,
) -> Result<RawOutcome, TransportError> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let script = command_script(invocation, &nonce)?;
    let command_id = send(client, settings, target, invocation, vec![script]).await?;
    let deadline = Instant::now() + settings.delivery_timeout + invocation.deadline;
    // Once the command is accepted, every ending but a final status cancels it and cleans up: a run RUNE stops
    // following must not go on (its host lease is released with the result).
    match poll(client, settings, &command_id, &target.instance_id, deadline).await {
        Ok(Polled::Done(out)) => {
            let raw = read_outcome(s3, Member { target, invocation }, &out, &command_id, &nonce).await;
            if raw.deadline_hit {
                // The agent's own execution timeout: it killed the script; what the runner left is cleaned up.
                clean_up(client, settings, target, invocation, &nonce).await;
            }
            Ok(raw)
        }
        Ok(Polled::Deadline) => {
            cancel_and_clean(client, settings, &command_id, &[(Member { target, invocation }, &nonce)]).await;
            Ok(RawOutcome { deadline_hit: true, ..RawOutcome::default() })
        }
        Err(e) => {
            cancel_and_clean(client, settings, &command_id, &[(Member { target, invocation }, &nonce)]).await;
            Err(e)
        }
    }
}

/// The `commands` parameter: POSIX sh (the agent runs it with `sh`) that makes a private dir, decodes the wrapper
/// and the runner program into it, and runs the wrapper with bash.
pub fn command_script(invocation: &Invocation, nonce: &str) -> Result<String, TransportError> {
    let wrapper = wrapper(invocation, nonce)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Base64 holds no quote: both literals are taken as they are by the shell.
    Ok(format!(
        "umask 077\nd=\"${{TMPDIR:-/tmp}}/rune-ssm-{nonce}\"; mkdir -m 700 -- \"$d\" || exit 125\n\
         printf '%s' '{}' | base64 -d >\"$d/wrap.sh\" && printf '%s' '{}' | base64 -d >\"$d/runner.in\" || {{ rm -rf -- \"$d\"; exit 125; }}\n\
         exec bash --noprofile --norc \"$d/wrap.sh\" \"$d\"\n",
        b64.encode(wrapper),
        b64.encode(&invocation.stdin),
    ))
}

/// The wrapper for one run (see `ssm_wrap.sh`).
fn wrapper(invocation: &Invocation, nonce: &str) -> Result<String, TransportError> {
    if invocation.command.is_empty() {
        return Err(TransportError::Spawn("an SSM run needs the runner command (no session runs over SSM)".into()));
    }
    let out_keep = (invocation.stdout_cap + 1).to_string();
    let err_keep = (invocation.stderr_budget + 1).to_string();
    let err_tail = invocation.stderr_tail.min(INLINE_STDERR_CHARS - 100).to_string();
    let drain_steps = (super::EXIT_DRAIN_GRACE.as_millis() / 10).to_string();
    crate::mediator::render(WRAPPER, |name| match name {
        "COMMAND" => Some(invocation.command.as_str()),
        "OUT_KEEP" => Some(&out_keep),
        "ERR_KEEP" => Some(&err_keep),
        "ERR_TAIL" => Some(&err_tail),
        "NONCE" => Some(nonce),
        "DRAIN_STEPS" => Some(&drain_steps),
        _ => None,
    })
    .map_err(TransportError::Spawn)
}

async fn send(
    client: &Client,
    settings: &SsmSettings,
    target: &SsmTarget,
    invocation: &Invocation,
    commands: Vec<String>,
) -> Result<String, TransportError> {
    send_to(client, settings, target, std::slice::from_ref(&target.instance_id), invocation, commands, 1).await
}

/// `SendCommand` of `commands` to `instance_ids` with `target`'s document.
async fn send_to(
    client: &Client,
    settings: &SsmSettings,
    target: &SsmTarget,
    instance_ids: &[String],
    invocation: &Invocation,
    commands: Vec<String>,
    max_concurrency: usize,
) -> Result<String, TransportError> {
    let execution = invocation.deadline.as_secs().clamp(EXECUTION_TIMEOUT_SECS.0, EXECUTION_TIMEOUT_SECS.1);
    let delivery = settings.delivery_timeout.as_secs().clamp(DELIVERY_TIMEOUT_SECS.0, DELIVERY_TIMEOUT_SECS.1);
    let mut request = client.send_command().set_instance_ids(Some(instance_ids.to_vec()));
    if instance_ids.len() > 1 {
        request = request
            .max_concurrency(max_concurrency.clamp(1, instance_ids.len()).to_string())
            .max_errors(instance_ids.len().to_string());
    }
    if let Some(output) = &target.output {
        // The agent finds the bucket's region itself (`OutputS3Region` is ignored by the service).
        request = request.output_s3_bucket_name(&output.bucket).set_output_s3_key_prefix(output.key_prefix.clone());
    }
    let request = request
        .document_name(&target.document)
        .set_document_version(target.document_version.clone())
        .parameters("commands", commands)
        .parameters("executionTimeout", vec![execution.to_string()])
        .timeout_seconds(i32::try_from(delivery).unwrap_or(i32::MAX))
        .comment(&invocation.comment);
    // SendCommand has no idempotency token: the SDK must not resend it on its own (a lost answer would run the
    // plugin twice). A throttled send was not accepted and is retried here; after an unclear failure (timeout,
    // connection, 5xx) the command is looked up by its comment, which names the run.
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=SEND_ATTEMPTS {
        let no_retry =
            aws_sdk_ssm::config::Builder::default().retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled());
        let answer = request.clone().customize().config_override(no_retry).send().await;
        let e = match answer {
            Ok(sent) => {
                return sent
                    .command()
                    .and_then(|c| c.command_id())
                    .map(str::to_owned)
                    .ok_or_else(|| TransportError::Protocol("SendCommand answered without a command id".into()));
            }
            Err(e) => e,
        };
        let code = e.code().unwrap_or("");
        if is_throttling(code) && attempt < SEND_ATTEMPTS {
            tokio::time::sleep(jitter(wait)).await;
            wait *= 2;
            continue;
        }
        let unclear = e.as_service_error().is_none() || e.raw_response().is_some_and(|r| r.status().is_server_error());
        if unclear {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(id) = find_sent(client, &instance_ids[0], &invocation.comment).await {
                    tracing::warn!(command_id = %id, error = %error_chain(&e), "SSM SendCommand failed but the command was accepted");
                    return Ok(id);
                }
            }
        }
        return Err(send_error(e));
    }
    Err(TransportError::Unreachable("SSM SendCommand: throttled on every attempt".into()))
}

/// How many times a throttled `SendCommand` is tried.
const SEND_ATTEMPTS: u32 = 4;

fn is_throttling(code: &str) -> bool {
    code.contains("Throttl") || code == "TooManyRequestsException" || code == "RequestLimitExceeded"
}

/// The id of the command sent to `instance_id` with `comment` (the run's own, so unique), if SSM lists it.
async fn find_sent(client: &Client, instance_id: &str, comment: &str) -> Option<String> {
    let listed = client.list_commands().instance_id(instance_id).send().await.ok()?;
    listed.commands().iter().find(|c| c.comment() == Some(comment)).and_then(|c| c.command_id()).map(str::to_owned)
}

fn send_error(e: SdkError<SendCommandError>) -> TransportError {
    let code = e.code().unwrap_or("").to_owned();
    let message = e.message().map(str::to_owned).unwrap_or_else(|| e.to_string());
    match e.as_service_error() {
        Some(SendCommandError::InvalidInstanceId(_)) => TransportError::Unreachable(format!(
            "SSM: the instance is not a managed instance, is not running or its agent is offline ({message})"
        )),
        Some(SendCommandError::InvalidDocument(_)) => {
            TransportError::Spawn(format!("SSM: document refused: {message}"))
        }
        _ if code.contains("AccessDenied") || code == "UnrecognizedClientException" || code.contains("Signature") => {
            TransportError::AuthFailed(format!("SSM SendCommand: {code}: {message}"))
        }
        _ if code.is_empty() => TransportError::Unreachable(format!("SSM API: {}", error_chain(&e))),
        _ => TransportError::Protocol(format!("SSM SendCommand: {code}: {message}")),
    }
}

/// The error and its sources, one line (dispatch failures hide the cause below).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// How polling ended.
#[derive(Debug)]
pub enum Polled {
    /// A final status (Success, Failed, …) with what the invocation returned.
    Done(Box<GetCommandInvocationOutput>),
    /// The deadline passed first.
    Deadline,
}

/// Polls `GetCommandInvocation` with growing, jittered waits until a final status or the deadline. Statuses that
/// say the command did not run become errors; Success, Failed and a TimedOut execution are `Done`.
pub async fn poll(
    client: &Client,
    settings: &SsmSettings,
    command_id: &str,
    instance_id: &str,
    deadline: Instant,
) -> Result<Polled, TransportError> {
    let sent = Instant::now();
    let mut wait = settings.poll_first;
    let mut errors = 0u32;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Polled::Deadline);
        }
        tokio::time::sleep(jitter(wait).min(deadline - now)).await;
        wait = (wait + wait / 2).min(settings.poll_max);
        let answer = client.get_command_invocation().command_id(command_id).instance_id(instance_id).send().await;
        let out = match answer {
            Ok(out) => out,
            Err(e) => {
                if matches!(e.as_service_error(), Some(GetCommandInvocationError::InvocationDoesNotExist(_))) {
                    if sent.elapsed() < settings.not_found_grace {
                        continue;
                    }
                    return Err(TransportError::Unreachable(format!(
                        "SSM: invocation {command_id} on {instance_id} still does not exist {:?} after sending",
                        settings.not_found_grace
                    )));
                }
                let code = e.code().unwrap_or("");
                if is_throttling(code) {
                    wait = (wait * 2).min(settings.poll_max);
                    continue;
                }
                if code.contains("AccessDenied") {
                    return Err(TransportError::AuthFailed(format!(
                        "SSM GetCommandInvocation: {code}: {}",
                        e.message().unwrap_or("")
                    )));
                }
                errors += 1;
                if errors >= MAX_POLL_ERRORS {
                    return Err(TransportError::LostMidRun(format!(
                        "SSM: {errors} GetCommandInvocation errors in a row, last: {}",
                        error_chain(&e)
                    )));
                }
                continue;
            }
        };
        errors = 0;
        if ended(&out)? {
            return Ok(Polled::Done(Box::new(out)));
        }
        if let Some(e) = undelivered(out.status(), sent, settings) {
            return Err(e);
        }
    }
}

/// SSM itself gives up on delivery only after the delivery timeout *plus* the execution timeout: an instance
/// that has not picked the command up once the delivery timeout has passed is unreachable.
fn undelivered(
    status: Option<&CommandInvocationStatus>,
    sent: Instant,
    settings: &SsmSettings,
) -> Option<TransportError> {
    let waiting = matches!(status, Some(CommandInvocationStatus::Pending | CommandInvocationStatus::Delayed));
    (waiting && sent.elapsed() >= settings.delivery_timeout).then(|| {
        TransportError::Unreachable(format!(
            "SSM: the command did not reach the instance within {:?} (agent offline or instance stopped)",
            settings.delivery_timeout
        ))
    })
}

/// True when the invocation has ended in a way that has output to judge; false while it goes on; an error for
/// the endings that mean the plugin did not run (or ran beyond our view).
fn ended(out: &GetCommandInvocationOutput) -> Result<bool, TransportError> {
    ended_as(out.status(), out.status_details().unwrap_or(""))
}

/// [`ended`] for a status and its details (`GetCommandInvocation` or `ListCommandInvocations`). The API spells
/// details with spaces (`Delivery Timed Out`, `Access Denied`); they are compared without spaces or case.
fn ended_as(status: Option<&CommandInvocationStatus>, details: &str) -> Result<bool, TransportError> {
    let details: String = details.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect();
    let details = details.as_str();
    match status {
        None
        | Some(
            CommandInvocationStatus::Pending
            | CommandInvocationStatus::InProgress
            | CommandInvocationStatus::Delayed
            | CommandInvocationStatus::Cancelling,
        ) => Ok(false),
        // StatusDetails tells a script that failed from a command that never ran or was ended from outside.
        Some(CommandInvocationStatus::Failed) if details == "undeliverable" => Err(TransportError::Unreachable(
            "SSM: undeliverable: the instance is not managed, is stopped or terminated, or its agent is offline".into(),
        )),
        Some(CommandInvocationStatus::Failed) if details == "terminated" => Err(TransportError::LostMidRun(
            "SSM: terminated — the command's MaxErrors was reached before it ran here, or the instance stopped".into(),
        )),
        Some(CommandInvocationStatus::Failed) if details == "invalidplatform" => {
            Err(TransportError::Spawn("SSM: the document does not run on this instance's platform (not Linux?)".into()))
        }
        Some(CommandInvocationStatus::Failed) if details == "accessdenied" => {
            Err(TransportError::AuthFailed("SSM: access denied for the document or the instance (IAM policy)".into()))
        }
        Some(CommandInvocationStatus::Success | CommandInvocationStatus::Failed) => Ok(true),
        Some(CommandInvocationStatus::TimedOut) if details.contains("delivery") => Err(TransportError::Unreachable(
            "SSM: the command was not delivered to the instance in time (agent offline?)".into(),
        )),
        // The agent ended the script at `executionTimeout`: judged like a deadline (output, if any, is kept).
        Some(CommandInvocationStatus::TimedOut) => Ok(true),
        Some(CommandInvocationStatus::Cancelled) => {
            Err(TransportError::LostMidRun("SSM: the command was cancelled outside RUNE".into()))
        }
        Some(other) => Err(TransportError::Protocol(format!("SSM: unknown invocation status `{}`", other.as_str()))),
    }
}

/// Most instances in one `SendCommand` (the API's limit).
pub const MAX_FAN_OUT: usize = 50;

/// One host's run in a fan-out ([`run_many`]).
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub target: &'a SsmTarget,
    pub invocation: &'a Invocation,
}

/// Runs several hosts' invocations with one `SendCommand` (same document; at most [`MAX_FAN_OUT`]), `MaxConcurrency`
/// = `max_concurrency`, `MaxErrors` = all of them (RUNE judges each host; SSM stops none early). Every instance
/// decodes the whole table and picks its own wrapper and runner by `$AWS_SSM_INSTANCE_ID` (set by the agent since
/// 2.3). Statuses come from `ListCommandInvocations`, each finished host's output from one
/// `GetCommandInvocation`. One outcome per member, in order.
pub async fn run_many(
    client: &Client,
    s3: Option<&S3Client>,
    settings: &SsmSettings,
    members: &[Member<'_>],
    max_concurrency: usize,
    comment: &str,
) -> Vec<Result<RawOutcome, TransportError>> {
    let Some(first) = members.first() else { return Vec::new() };
    let nonces: Vec<String> = members.iter().map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    let script = match fan_out_script(members, &nonces) {
        Ok(s) => s,
        Err(e) => return members.iter().map(|_| Err(e.clone())).collect(),
    };
    let deadline_of = members.iter().map(|m| m.invocation.deadline).max().unwrap_or_default();
    let send = Invocation { deadline: deadline_of, comment: comment_of(comment), ..first.invocation.clone() };
    let ids: Vec<String> = members.iter().map(|m| m.target.instance_id.clone()).collect();
    let sent = send_to(client, settings, first.target, &ids, &send, vec![script], max_concurrency).await;
    let command_id = match sent {
        Ok(id) => id,
        Err(e) => return members.iter().map(|_| Err(e.clone())).collect(),
    };
    let deadline = Instant::now() + settings.delivery_timeout + deadline_of;
    let mut done: Vec<Option<Result<RawOutcome, TransportError>>> = members.iter().map(|_| None).collect();
    let sent_at = Instant::now();
    // An invocation the list shows ended is read at once (a short retry if it is not visible yet).
    let read_now = SsmSettings { poll_first: Duration::ZERO, poll_max: Duration::from_millis(200), ..settings.clone() };
    let mut wait = settings.poll_first;
    let mut errors = 0u32;
    while done.iter().any(Option::is_none) {
        let now = Instant::now();
        if now >= deadline {
            let open: Vec<usize> = (0..members.len()).filter(|&i| done[i].is_none()).collect();
            let runs: Vec<_> = open.iter().map(|&i| (members[i], nonces[i].as_str())).collect();
            cancel_and_clean(client, settings, &command_id, &runs).await;
            for i in open {
                done[i] = Some(Ok(RawOutcome { deadline_hit: true, ..RawOutcome::default() }));
            }
            break;
        }
        tokio::time::sleep(jitter(wait).min(deadline - now)).await;
        wait = (wait + wait / 2).min(settings.poll_max);
        let listed = match list_statuses(client, &command_id).await {
            Ok(l) => {
                errors = 0;
                l
            }
            Err(e) => {
                if is_throttling(e.code().unwrap_or("")) {
                    wait = (wait * 2).min(settings.poll_max);
                    continue;
                }
                errors += 1;
                if errors >= MAX_POLL_ERRORS {
                    let why = TransportError::LostMidRun(format!(
                        "SSM: {errors} ListCommandInvocations errors in a row, last: {}",
                        error_chain(&e)
                    ));
                    for d in done.iter_mut().filter(|d| d.is_none()) {
                        *d = Some(Err(why.clone()));
                    }
                }
                continue;
            }
        };
        for i in 0..members.len() {
            if done[i].is_some() {
                continue;
            }
            let Some((status, details)) = listed.get(&ids[i]) else {
                if sent_at.elapsed() >= settings.not_found_grace {
                    done[i] = Some(Err(TransportError::Unreachable(format!(
                        "SSM: no invocation for {} in command {command_id} {:?} after sending",
                        ids[i], settings.not_found_grace
                    ))));
                }
                continue;
            };
            match ended_as(status.as_ref(), details) {
                Ok(false) => done[i] = undelivered(status.as_ref(), sent_at, settings).map(Err),
                Err(e) => done[i] = Some(Err(e)),
                Ok(true) => {
                    let far = Instant::now() + settings.not_found_grace;
                    done[i] = Some(match poll(client, &read_now, &command_id, &ids[i], far).await {
                        Ok(Polled::Done(out)) => Ok(read_outcome(s3, members[i], &out, &command_id, &nonces[i]).await),
                        Ok(Polled::Deadline) => Err(TransportError::LostMidRun(format!(
                            "SSM: {} ended in the list but its invocation could not be read",
                            ids[i]
                        ))),
                        Err(e) => Err(e),
                    });
                }
            }
        }
    }
    // Hosts RUNE stopped following (or whose invocation ended abnormally) are cancelled and cleaned up: nothing
    // goes on unobserved. Cancelling an ended invocation does nothing.
    let failed: Vec<_> = (0..members.len())
        .filter(|&i| matches!(done[i], Some(Err(_))))
        .map(|i| (members[i], nonces[i].as_str()))
        .collect();
    if !failed.is_empty() {
        cancel_and_clean(client, settings, &command_id, &failed).await;
    }
    done.into_iter()
        .map(|d| d.unwrap_or_else(|| Err(TransportError::Protocol("SSM fan-out: no outcome".into()))))
        .collect()
}

/// Status and details of every invocation of a command, by instance id (all pages).
async fn list_statuses(
    client: &Client,
    command_id: &str,
) -> Result<HashMap<String, (Option<CommandInvocationStatus>, String)>, SdkError<ListCommandInvocationsError>> {
    let mut out = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = client.list_command_invocations().command_id(command_id).set_next_token(token.take()).send().await?;
        for inv in page.command_invocations() {
            if let Some(id) = inv.instance_id() {
                out.insert(id.to_owned(), (inv.status().cloned(), inv.status_details().unwrap_or("").to_owned()));
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(out),
        }
    }
}

/// The `commands` of a fan-out: the table of every member's wrapper and runner, gzip'd and base64'd, and the case
/// that finds this instance's offsets in it. Instance ids are validated (`i-`/`mi-` and hex digits).
fn fan_out_script(members: &[Member<'_>], nonces: &[String]) -> Result<String, TransportError> {
    use std::io::Write as _;
    let mut table = Vec::new();
    let mut cases = String::new();
    for (m, nonce) in members.iter().zip(nonces) {
        let wrapper = wrapper(m.invocation, nonce)?;
        let (w_off, w_len) = (table.len(), wrapper.len());
        table.extend_from_slice(wrapper.as_bytes());
        let (r_off, r_len) = (table.len(), m.invocation.stdin.len());
        table.extend_from_slice(&m.invocation.stdin);
        let id = &m.target.instance_id;
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(TransportError::Spawn(format!("SSM: `{id}` is not an instance id")));
        }
        cases.push_str(&format!("  {id}) w={w_off} wl={w_len} r={r_off} rl={r_len} n={nonce} ;;\n"));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&table).map_err(|e| TransportError::Spawn(format!("SSM fan-out table: {e}")))?;
    let gz = gz.finish().map_err(|e| TransportError::Spawn(format!("SSM fan-out table: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    Ok(format!(
        "umask 077\n\
         case \"${{AWS_SSM_INSTANCE_ID:-}}\" in\n{cases}  *) echo \"rune: no run for instance ${{AWS_SSM_INSTANCE_ID:-(unset: SSM agent older than 2.3?)}} in this command\" >&2; exit 125 ;;\nesac\n\
         d=\"${{TMPDIR:-/tmp}}/rune-ssm-$n\"; mkdir -m 700 -- \"$d\" || exit 125\n\
         printf '%s' '{b64}' | base64 -d | gzip -dc >\"$d/all\" \\\n\
         && tail -c +$((w + 1)) \"$d/all\" | head -c \"$wl\" >\"$d/wrap.sh\" \\\n\
         && tail -c +$((r + 1)) \"$d/all\" | head -c \"$rl\" >\"$d/runner.in\" \\\n\
         && rm -f -- \"$d/all\" || {{ echo 'rune: fan-out through SSM needs base64 and gzip on the host' >&2; rm -rf -- \"$d\"; exit 125; }}\n\
         exec bash --noprofile --norc \"$d/wrap.sh\" \"$d\"\n"
    ))
}

/// `text` cut to the 100 characters an SSM command comment may have.
fn comment_of(text: &str) -> String {
    text.chars().take(100).collect()
}

/// Waits vary by ±20 % so that many runs do not poll in step.
fn jitter(wait: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 401) as u32; // 0..=400
    wait * (800 + r) / 1000
}

/// Cancels the command on these runs' instances, then sends each run's cleanup ([`clean_up`]).
async fn cancel_and_clean(client: &Client, settings: &SsmSettings, command_id: &str, runs: &[(Member<'_>, &str)]) {
    let ids: Vec<String> = runs.iter().map(|(m, _)| m.target.instance_id.clone()).collect();
    if let Err(e) = client.cancel_command().command_id(command_id).set_instance_ids(Some(ids)).send().await {
        tracing::warn!(command_id, error = %error_chain(&e), "SSM CancelCommand failed");
    }
    for (m, nonce) in runs {
        clean_up(client, settings, m.target, m.invocation, nonce).await;
    }
}

/// Sends the invocation's cleanup (kills what its runner left, removes its dir) and removes the wrapper's dir
/// (`rune-ssm-<nonce>`: a killed wrapper never ran its exit trap), as a command of its own, without waiting for it.
async fn clean_up(client: &Client, settings: &SsmSettings, target: &SsmTarget, invocation: &Invocation, nonce: &str) {
    let cleanup = Invocation {
        deadline: Duration::from_secs(30),
        comment: comment_of(&format!("{} cleanup", invocation.comment)),
        ..invocation.clone()
    };
    let mut script = invocation.cleanup.clone();
    script.push_str(&format!("\nrm -rf -- \"${{TMPDIR:-/tmp}}/rune-ssm-{nonce}\"\n"));
    if let Err(e) = send(client, settings, target, &cleanup, vec![script]).await {
        tracing::warn!(instance = %target.instance_id, error = %e, "SSM cleanup command failed");
    }
}

/// What the invocation returned, decoded; when its frame was cut by the inline limit and the target has an
/// output bucket, decoded again from the agent's full copy in S3 (a copy that cannot be read leaves the cut
/// outcome, with the reason).
async fn read_outcome(
    s3: Option<&S3Client>,
    member: Member<'_>,
    out: &GetCommandInvocationOutput,
    command_id: &str,
    nonce: &str,
) -> RawOutcome {
    let Member { target, invocation } = member;
    let raw = outcome(invocation, out, out.standard_output_content().unwrap_or(""), nonce);
    let (Some(s3), Some(output), Some(_)) = (s3, target.output.as_ref(), raw.inline_limit) else { return raw };
    // The frame of `stdout_cap` + 1 bytes, gzip'd (at worst a little larger) and base64'd in 76-column lines.
    let limit = (invocation.stdout_cap as u64 + 1) * 3 / 2 + 64 * 1024;
    let why = match s3_stdout(s3, output, command_id, &target.instance_id, limit).await {
        Ok(full) => {
            let whole = outcome(invocation, out, &full, nonce);
            if whole.inline_limit.is_none() {
                return whole;
            }
            "the copy in S3 is cut short too".to_owned()
        }
        Err(e) => e,
    };
    RawOutcome { full_output_error: Some(why), ..raw }
}

/// Where the agent puts an invocation's output in the bucket: `<prefix>/<command id>/<instance id>/`, then the
/// document's plugin and step (`awsrunShellScript/0.awsrunShellScript/` for `AWS-RunShellScript`), then
/// `stdout` and `stderr`.
fn s3_output_prefix(output: &S3Output, command_id: &str, instance_id: &str) -> String {
    match &output.key_prefix {
        Some(p) => format!("{p}/{command_id}/{instance_id}/"),
        None => format!("{command_id}/{instance_id}/"),
    }
}

/// The invocation's stdout as the agent uploaded it (at most `limit` bytes). The key is listed rather than
/// built, since its plugin part depends on the document. Errors say what failed, for the result's message.
async fn s3_stdout(
    s3: &S3Client,
    output: &S3Output,
    command_id: &str,
    instance_id: &str,
    limit: u64,
) -> Result<String, String> {
    let prefix = s3_output_prefix(output, command_id, instance_id);
    let at = |what: &str| format!("s3://{}/{prefix}{what}", output.bucket);
    let mut attempt = 0;
    let key = loop {
        attempt += 1;
        let listed = s3
            .list_objects_v2()
            .bucket(&output.bucket)
            .prefix(&prefix)
            .max_keys(100)
            .send()
            .await
            .map_err(|e| format!("cannot list {}: {}", at(""), s3_error(&e)))?;
        let mut keys: Vec<&str> =
            listed.contents().iter().filter_map(|o| o.key()).filter(|k| k.ends_with("/stdout")).collect();
        keys.sort_unstable();
        if let Some(key) = keys.first() {
            break (*key).to_owned();
        }
        // The agent uploads when the plugin ends; a moment's lag is waited for, not more.
        if attempt >= 3 {
            return Err(format!("no stdout under {} (can the instance's role write to the bucket?)", at("")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let object = s3
        .get_object()
        .bucket(&output.bucket)
        .key(&key)
        .range(format!("bytes=0-{}", limit.saturating_sub(1)))
        .send()
        .await
        .map_err(|e| format!("cannot read s3://{}/{key}: {}", output.bucket, s3_error(&e)))?;
    let mut body = object.body.into_async_read();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::AsyncReadExt::take(&mut body, limit), &mut bytes)
        .await
        .map_err(|e| format!("cannot read s3://{}/{key}: {e}", output.bucket))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// An S3 error's code and message (or its chain when the service did not answer).
fn s3_error<E: std::error::Error + ProvideErrorMetadata + 'static>(e: &SdkError<E>) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => error_chain(e),
    }
}

/// What the invocation returned (`inline` is its stdout: the inline part, or the copy from S3), decoded into the
/// same outcome the other transports give.
fn outcome(invocation: &Invocation, out: &GetCommandInvocationOutput, inline: &str, nonce: &str) -> RawOutcome {
    let stderr = without_agent_note(out.standard_error_content().unwrap_or(""));
    let mut sink = OutputSink::new(invocation);
    let mut raw = RawOutcome::default();
    match Frame::parse(inline, nonce, invocation.stdout_cap) {
        Some(frame) => {
            sink.stdout(&frame.stdout);
            sink.stderr(stderr.as_bytes());
            sink.finish(&mut raw);
            if !frame.complete && frame.len <= invocation.stdout_cap as u64 {
                raw.inline_limit = Some(frame.len);
            }
            raw.stdout_truncated |= !frame.complete;
            raw.output_lingered = frame.lingered;
            raw.stderr_flooded |= frame.stderr_len > invocation.stderr_budget as u64;
        }
        None => {
            // The wrapper did not get as far as its frame (no bash, no base64, no temp dir): what SSM has.
            sink.stdout(inline.as_bytes());
            sink.stderr(stderr.as_bytes());
            sink.finish(&mut raw);
        }
    }
    raw.exit_code = match out.status() {
        // The agent killed the script at its execution timeout (its exit code, 137, says nothing more).
        Some(CommandInvocationStatus::TimedOut) => {
            raw.deadline_hit = true;
            None
        }
        _ if out.response_code() < 0 => None,
        _ => Some(out.response_code()),
    };
    raw
}

/// stderr without the line the SSM agent appends when a script exits non-zero (`failed to run commands: exit
/// status N`), so the runner's own last line stays last, as over SSH.
fn without_agent_note(stderr: &str) -> &str {
    let trimmed = stderr.trim_end_matches('\n');
    match trimmed.rfind('\n').map_or(("", trimmed), |i| (&trimmed[..=i], &trimmed[i + 1..])) {
        (before, last) if last.starts_with("failed to run commands: exit status") => before,
        _ => stderr,
    }
}

/// The wrapper's frame, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// The runner's stdout (a prefix of it when the frame is incomplete).
    pub stdout: Vec<u8>,
    /// Every byte of stdout arrived (the end line was there and the length matches).
    pub complete: bool,
    /// Bytes of stderr the runner wrote.
    pub stderr_len: u64,
    /// Bytes of stdout the runner wrote (the header's count).
    pub len: u64,
    /// Something the runner left behind held its output open past the exit grace; the wrapper stopped reading.
    pub lingered: bool,
}

impl Frame {
    /// Finds the frame of this run (`nonce`) in the inline stdout; None when there is none. At most `cap` + 1
    /// bytes are decoded.
    pub fn parse(inline: &str, nonce: &str, cap: usize) -> Option<Frame> {
        let header = format!("rune-ssm-frame 1 {nonce} ");
        let start = inline.find(&header)?;
        let rest = &inline[start + header.len()..];
        let (line, body) = rest.split_once('\n')?;
        let mut fields = line.split(' ');
        let len: u64 = fields.next()?.parse().ok()?;
        let stderr_len: u64 = fields.next()?.parse().ok()?;
        let encoding = fields.next()?;
        // Added later: absent in frames of older wrappers.
        let lingered = fields.next() == Some("1");
        let end = format!("rune-ssm-end {nonce}\n");
        let (stdout, ended) = match encoding {
            "gzip-base64" => {
                let (text, ended) = match body.find(&end) {
                    Some(i) => (&body[..i], true),
                    None => (body, false),
                };
                let mut clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                clean.truncate(clean.len() / 4 * 4);
                let gz = base64::engine::general_purpose::STANDARD.decode(&clean).ok()?;
                (gunzip_prefix(&gz, cap + 1), ended)
            }
            "raw" => {
                let take = usize::try_from(len).unwrap_or(usize::MAX).min(body.len()).min(cap + 1);
                let ended = body.get(take..).is_some_and(|after| after.starts_with(&format!("\n{end}")));
                (body.as_bytes()[..take].to_vec(), ended)
            }
            _ => return None,
        };
        let complete = ended && stdout.len() as u64 == len;
        Some(Frame { stdout, complete, stderr_len, len, lingered })
    }
}

/// Decompresses as much of `gz` as is intact, at most `limit` bytes.
fn gunzip_prefix(gz: &[u8], limit: usize) -> Vec<u8> {
    let mut decoder = flate2::read::GzDecoder::new(gz).take(limit as u64);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match decoder.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip_b64(data: &[u8]) -> String {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap());
        // As base64(1) prints it: 76 columns.
        b64.as_bytes().chunks(76).map(|c| format!("{}\n", std::str::from_utf8(c).unwrap())).collect()
    }

    #[test]
    fn a_whole_frame_decodes_and_a_cut_one_is_marked_incomplete() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{{\"line\":{i}}}\n").into_bytes()).collect();
        let text =
            format!("noise\nrune-ssm-frame 1 n1 {} 7 gzip-base64\n{}rune-ssm-end n1\n", data.len(), gzip_b64(&data));
        let frame = Frame::parse(&text, "n1", usize::MAX - 1).unwrap();
        assert!(frame.complete);
        assert_eq!(frame.stdout, data);
        assert_eq!(frame.stderr_len, 7);
        // SSM keeps the first 24,000 characters.
        let cut: String = text.chars().take(INLINE_STDOUT_CHARS).collect();
        let frame = Frame::parse(&cut, "n1", usize::MAX - 1).unwrap();
        assert!(!frame.complete);
        assert!(data.starts_with(&frame.stdout) && !frame.stdout.is_empty(), "a prefix survives");
        assert_eq!(Frame::parse(&text, "other", 10), None, "another run's frame is not this one");
    }

    #[test]
    fn raw_frames_take_the_declared_length() {
        let text = "rune-ssm-frame 1 n 5 0 raw\nab\ncd\nrune-ssm-end n\n";
        assert_eq!(
            Frame::parse(text, "n", 100),
            Some(Frame { stdout: b"ab\ncd".to_vec(), complete: true, stderr_len: 0, len: 5, lingered: false })
        );
        let cut = &text[..30];
        let frame = Frame::parse(cut, "n", 100).unwrap();
        assert!(!frame.complete);
    }

    #[test]
    fn the_script_carries_data_only_as_base64() {
        let invocation = Invocation {
            command: "bash --noprofile --norc -c 'boot'".into(),
            stdin: b"echo '$(rm -rf /)' `x` \"; a.> *".to_vec(),
            deadline: Duration::from_secs(60),
            stdout_cap: 1024,
            stderr_tail: 8192,
            stderr_budget: 4096,
            start_marker: b"go\n".to_vec(),
            cleanup: String::new(),
            comment: "rune test".into(),
            session: None,
        };
        let script = command_script(&invocation, "abc").unwrap();
        assert!(!script.contains("rm -rf /)"), "{script}");
        let literals: Vec<&str> = script.split('\'').skip(1).step_by(2).collect();
        for l in literals.iter().filter(|l| l.len() > 8) {
            assert!(l.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)), "{l}");
        }
    }
}

#[cfg(test)]
#[path = "ssm_tests.rs"]
mod poll_tests;
