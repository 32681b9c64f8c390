//! An SSM-compatible endpoint on loopback for integration tests: the Run Command subset of the AWS JSON 1.1
//! protocol, executing every command locally the way the SSM agent does on Linux, with scripted misbehaviour
//! per instance.
//!
//! [`SsmEndpoint::start`] (or [`SsmEndpoint::builder`]) serves HTTP/1.1 on `127.0.0.1:<free port>` from its own
//! thread and its own tokio runtime, so it works from sync and async tests alike; [`SsmEndpoint::client`] is a
//! real `aws_sdk_ssm::Client` pointed at it. Dropping the endpoint kills the process group of every command
//! still running and removes the scripts and working directories.
//!
//! Operations: `SendCommand`, `GetCommandInvocation`, `ListCommandInvocations`, `CancelCommand`. Every request is
//! logged ([`SsmEndpoint::requests`]) before it is answered, refused ones included.
//!
//! Facts this module relies on (checked in the aws-sdk-ssm 1.133 sources, the SSM service model and the SSM
//! agent's sources):
//! - Requests are `POST /` with `X-Amz-Target: AmazonSSM.<Operation>` and a JSON body with the model's member
//!   names. Signatures are not checked, but an `Authorization` header is required, as by AWS.
//! - Errors are HTTP 400 (403 for a missing `Authorization`) with `x-amzn-ErrorType: <Code>` and
//!   `{"__type":"<Code>","message":"..."}`. The SDK takes the code from the header first, then `__type`; a code
//!   the operation models becomes its typed variant (`SendCommandError::InvalidInstanceId`), any other one
//!   (`ThrottlingException`, `AccessDeniedException`, `ValidationException`) an unhandled error whose `code()`
//!   is that code. The SDK's retry classifier treats `ThrottlingException` as throttling whatever the status.
//!   A non-2xx answer without a code would not be a service error at all, hence `__type` on every error.
//! - Timestamps of `Command`, `CommandInvocation` and `CommandPlugin` are epoch seconds as JSON numbers;
//!   `GetCommandInvocation`'s `ExecutionStartDateTime`/`ExecutionEndDateTime` are ISO 8601 strings with
//!   milliseconds (`2020-02-19T18:18:03.419Z`), `ExecutionElapsedTime` an ISO 8601 duration (`PT0.091S`), all
//!   empty strings until known. `ResponseCode` is always sent (the SDK reads a missing one as 0): -1 until the
//!   command has run.
//! - The agent writes the commands joined by `\n` (plus a final `\n`) to `_script.sh` (mode 0700) and runs
//!   `sh -c <script path>` in its own process group. The document accepts an `executionTimeout` of 1..=172800
//!   (else `InvalidParameters`); the agent turns anything outside 5..=172800 into its default of 3600. On expiry
//!   the group is SIGKILLed: `TimedOut` / `ExecutionTimedOut`, ResponseCode 137. A cancelled command's group is
//!   killed the same way (`Cancelled`, 137; -1 when it never started).
//! - `StandardOutputContent` is the first 24,000 bytes of stdout, `StandardErrorContent` the first 8,000 bytes of
//!   stderr (the agent reads them through a byte limit, no suffix; a character cut in two becomes U+FFFD), and
//!   both are empty until the invocation has ended. `ListCommandInvocations`' plugin `Output` is the agent's
//!   combined stdout + `\n----------ERROR-------\n` + stderr within 2,400 bytes, with its truncation markers.
//! - Invocations that never run end as `Failed` with StatusDetails `Undeliverable` or `Terminated` (the status
//!   enum has no such values), or `TimedOut` / `DeliveryTimedOut` when `TimeoutSeconds` passes before they
//!   start. `Delayed` exists only for invocations; a plugin that has not started is `Pending`.
//! - Constraints the service checks and the SDK does not: `Comment` at most 100 characters, `TimeoutSeconds` in
//!   30..=2592000, instance ids `i-` + 8 or 17 word characters (or `mi-` + 17), at most 50 of them. Breaking one
//!   is a `ValidationException` here as there.
//! - With `OutputS3BucketName` the agent uploads the whole stdout and stderr to
//!   `<OutputS3KeyPrefix>/<command id>/<instance id>/awsrunShellScript/0.awsrunShellScript/{stdout,stderr}` when
//!   the plugin ends, before the status is final. The endpoint does the same into the S3 server given to
//!   [`SsmEndpointBuilder::s3_output`] (moto's), through the real `aws-sdk-s3`; without one nothing is uploaded.
//!   A failed upload does not change the invocation's status.
//! - Not served: `Targets` (a `ValidationException` here), paging (`MaxResults`/`NextToken` are ignored and
//!   everything is listed), `ListCommandInvocations` filters. An unknown `CommandId` lists nothing.
//! - Processes are spawned from the endpoint's thread with `PR_SET_PDEATHSIG` = SIGKILL: if the test process dies
//!   without dropping the endpoint, the shells die with it (what they started in the background may not).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The document every endpoint accepts.
pub const RUN_SHELL_SCRIPT: &str = "AWS-RunShellScript";
/// The plugin of `AWS-RunShellScript` (and of every document registered with [`SsmEndpointBuilder::document`]).
pub const PLUGIN_NAME: &str = "aws:runShellScript";
/// Bytes of stdout in `StandardOutputContent`.
pub const STDOUT_LIMIT: usize = 24_000;
/// Bytes of stderr in `StandardErrorContent`.
pub const STDERR_LIMIT: usize = 8_000;
/// Bytes of stdout and stderr kept for the S3 output bucket.
pub const S3_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;
/// Bytes of the combined plugin `Output` of `ListCommandInvocations` (the agent's `MaximumPluginOutputSize`).
pub const PLUGIN_OUTPUT_LIMIT: usize = 2_400;
/// ResponseCode of a command whose process group was killed (timeout, cancel): 128 + SIGKILL, as the agent.
pub const KILLED_RESPONSE_CODE: i32 = 137;
/// ResponseCode of an invocation that has not run (yet).
pub const NOT_RUN_RESPONSE_CODE: i32 = -1;
/// Region of the client from [`SsmEndpoint::client`].
pub const REGION: &str = "us-east-1";
/// Account named in error messages.
pub const ACCOUNT_ID: &str = "123456789012";

const LOOPBACK: &str = "127.0.0.1";
const CONTENT_TYPE_JSON_1_1: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "AmazonSSM.";
/// The agent's `executionTimeout`: default and accepted range (anything else becomes the default).
const DEFAULT_EXECUTION_TIMEOUT_SECS: u64 = 3600;
const EXECUTION_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 5..=172_800;
/// The document's `allowedPattern` for `executionTimeout` accepts 1..=172800; the agent then applies its range.
const DOCUMENT_EXECUTION_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=172_800;
/// `TimeoutSeconds` (the delivery timeout): accepted range, and what `Command.TimeoutSeconds` shows without one.
const TIMEOUT_SECONDS: std::ops::RangeInclusive<i64> = 30..=2_592_000;
const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;
const MAX_COMMENT_CHARS: usize = 100;
const MAX_INSTANCE_IDS: usize = 50;
/// Requests larger than this are refused (SSM documents are at most 64 KB; parameters far less).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// After a process group was killed: bound on waiting for its output pipes to close.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// On drop: bound on waiting for every command's runner to kill its group and finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Client timeouts: generous against a loaded machine, short against a dead endpoint.
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
const ERROR_TITLE: &str = "\n----------ERROR-------\n";
const OUTPUT_TRUNCATED: &str = "\n---Output truncated---";
const ERROR_TRUNCATED: &str = "\n---Error truncated----";

/// The operations the endpoint serves (`X-Amz-Target: AmazonSSM.<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    SendCommand,
    GetCommandInvocation,
    ListCommandInvocations,
    CancelCommand,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::SendCommand,
        Operation::GetCommandInvocation,
        Operation::ListCommandInvocations,
        Operation::CancelCommand,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::SendCommand => "SendCommand",
            Operation::GetCommandInvocation => "GetCommandInvocation",
            Operation::ListCommandInvocations => "ListCommandInvocations",
            Operation::CancelCommand => "CancelCommand",
        }
    }

    fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// How one managed instance behaves; `InstanceBehavior::default()` is an online instance that runs every
/// command at once. Calls "name" an instance when it is in their `InstanceId`/`InstanceIds` (or, for
/// `ListCommandInvocations` and `CancelCommand` without one, when it is one of the command's instances).
#[derive(Clone, Debug, Default)]
pub struct InstanceBehavior {
    /// `GetCommandInvocation` answers `InvocationDoesNotExist` for the first N calls (not throttled ones) for
    /// each invocation on this instance: SSM is eventually consistent right after `SendCommand`.
    pub not_found_polls: u32,
    /// ... and for this long after the `SendCommand`, whichever ends later. `ListCommandInvocations` leaves the
    /// invocation out during this window.
    pub not_found_for: Duration,
    /// The first N calls of each operation that name this instance get `ThrottlingException`.
    pub throttle_first: u32,
    /// Every Nth call of each operation that names this instance gets `ThrottlingException` (0: never).
    pub throttle_every: u32,
    /// The operations `throttle_first`/`throttle_every` apply to; empty means all of them.
    pub throttle_operations: Vec<Operation>,
    /// The invocation stays `Pending` for the first half of this and `Delayed` for the second before it runs.
    pub start_delay: Duration,
    /// Nothing runs: after `start_delay` the invocation is `Failed` / `Undeliverable`, ResponseCode -1.
    pub undeliverable: bool,
    /// Nothing runs: after `start_delay` the invocation is `Failed` / `Terminated`, ResponseCode -1.
    pub terminated: bool,
    /// `SendCommand` naming this instance answers `InvalidInstanceId`, like for an unknown instance.
    pub offline: bool,
    /// `SendCommand` naming this instance answers `AccessDeniedException`.
    pub access_denied: bool,
    /// Kills commands on this instance after this long instead of their `executionTimeout` (whose minimum is
    /// 5 s on a real agent): for quick timeout tests.
    pub execution_timeout: Option<Duration>,
}

/// One request as received: the operation named by `X-Amz-Target` (without `AmazonSSM.`) and the JSON body
/// (`Value::Null` when it was not JSON).
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub operation: String,
    pub body: Value,
}

/// Instances and documents of an endpoint; [`SsmEndpointBuilder::start`] starts it.
#[derive(Clone, Debug, Default)]
pub struct SsmEndpointBuilder {
    instances: Vec<(String, InstanceBehavior)>,
    documents: Vec<String>,
    s3: Option<String>,
}

impl SsmEndpointBuilder {
    /// Registers a managed instance. Panics unless `id` looks like one (`i-` + 8 or 17 word characters, or
    /// `mi-` + 17): the service refuses other ids before looking them up.
    pub fn instance(mut self, id: &str, behavior: InstanceBehavior) -> Self {
        assert!(is_instance_id(id), "{id:?} is not an SSM instance id (i-0123456789abcdef0)");
        self.instances.push((id.to_owned(), behavior));
        self
    }

    /// Accepts `name` as a document that runs like `AWS-RunShellScript` (same parameters, same plugin).
    pub fn document(mut self, name: &str) -> Self {
        self.documents.push(name.to_owned());
        self
    }

    /// Uploads output to this S3-compatible server (moto's URL) for commands sent with `OutputS3BucketName`.
    pub fn s3_output(mut self, url: &str) -> Self {
        self.s3 = Some(url.to_owned());
        self
    }

    /// Binds a free loopback port and starts serving; panics with the reason when it cannot.
    pub fn start(self) -> SsmEndpoint {
        let dir = tempfile::Builder::new().prefix("rune-ssm-").tempdir().unwrap_or_else(|e| {
            panic!("cannot create the SSM endpoint directory in {}: {e}", std::env::temp_dir().display())
        });
        // The agent hands the script path to `sh -c` unquoted; so does this endpoint.
        let shown = dir.path().display().to_string();
        assert!(
            shown.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)),
            "the SSM endpoint directory {shown} has characters a shell would interpret: set TMPDIR to a plain path"
        );
        let listener = std::net::TcpListener::bind((LOOPBACK, 0))
            .unwrap_or_else(|e| panic!("cannot bind the SSM endpoint to {LOOPBACK}:0: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("cannot read the SSM endpoint's address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("cannot make the SSM endpoint's listener non-blocking: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the SSM endpoint's runtime: {e}"));
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .unwrap_or_else(|e| panic!("cannot register the SSM endpoint's listener: {e}"))
        };
        let mut documents: HashSet<String> = self.documents.into_iter().collect();
        documents.insert(RUN_SHELL_SCRIPT.to_owned());
        let shared = Arc::new(Shared {
            instances: self.instances.into_iter().collect(),
            documents,
            s3: self.s3.as_deref().map(s3_client),
            dir: dir.path().to_owned(),
            state: Mutex::new(State::default()),
            stopping: CancellationToken::new(),
            runners: TaskTracker::new(),
        });
        let (shutdown, stop) = oneshot::channel();
        let serving = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("ssm-endpoint-{}", addr.port()))
            .spawn(move || runtime.block_on(serve(listener, serving, stop)))
            .unwrap_or_else(|e| panic!("cannot spawn the SSM endpoint thread: {e}"));
        SsmEndpoint { addr, shared, shutdown: Some(shutdown), thread: Some(thread), dir }
    }
}

/// A running SSM-compatible endpoint; see the module documentation.
pub struct SsmEndpoint {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Sent (or dropped) by `Drop`: the server stops accepting, every runner kills its process group, and the
    /// endpoint's thread returns.
    shutdown: Option<oneshot::Sender<()>>,
    /// The endpoint's thread (its runtime runs the server and the commands); joined by `Drop`.
    thread: Option<JoinHandle<()>>,
    /// Scripts and working directories. Declared last: removed after `Drop::drop` has stopped every command.
    dir: tempfile::TempDir,
}

impl SsmEndpoint {
    /// An endpoint with these online instances (default behaviour) and only `AWS-RunShellScript`.
    pub fn start(instance_ids: &[&str]) -> SsmEndpoint {
        instance_ids
            .iter()
            .fold(SsmEndpoint::builder(), |builder, id| builder.instance(id, InstanceBehavior::default()))
            .start()
    }

    pub fn builder() -> SsmEndpointBuilder {
        SsmEndpointBuilder::default()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the scripts and working directories live (`<dir>/<command id>/<instance id>/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Client configuration for this endpoint: region `us-east-1`, static credentials, latest behaviour version,
    /// retries disabled, short connect timeout. Nothing is read from the environment (no IMDS, no profile).
    /// Panics when an HTTP proxy is configured without `NO_PROXY` covering 127.0.0.1: the client would send
    /// the requests through it, off this machine.
    pub fn config(&self) -> aws_sdk_ssm::config::Builder {
        client_config(&self.url())
    }

    /// A real SDK client for this endpoint, configured by [`SsmEndpoint::config`].
    pub fn client(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::from_conf(self.config().build())
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.state).requests.clone()
    }

    /// The bodies of the requests for `operation`, in arrival order.
    pub fn request_bodies(&self, operation: Operation) -> Vec<Value> {
        lock(&self.shared.state)
            .requests
            .iter()
            .filter(|r| r.operation == operation.name())
            .map(|r| r.body.clone())
            .collect()
    }

    /// The process group of an invocation while its shell runs (`None` before it starts and once it ended).
    pub fn process_group(&self, command_id: &str, instance_id: &str) -> Option<u32> {
        let state = lock(&self.shared.state);
        state.invocation(command_id, instance_id).and_then(|(_, invocation)| invocation.process_group)
    }
}

impl Drop for SsmEndpoint {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`SsmEndpoint::config`] for any AWS-compatible server on loopback at `url` (moto's too).
pub fn client_config(url: &str) -> aws_sdk_ssm::config::Builder {
    refuse_proxies();
    aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(REGION))
        .credentials_provider(aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(url)
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_ssm::config::timeout::TimeoutConfig::builder()
                .connect_timeout(CLIENT_CONNECT_TIMEOUT)
                .operation_timeout(CLIENT_OPERATION_TIMEOUT)
                .build(),
        )
}

/// A real S3 client for an S3-compatible server on loopback at `url` (moto's), configured like
/// [`client_config`]; path-style addressing (no `<bucket>.127.0.0.1` host names).
pub fn s3_client(url: &str) -> aws_sdk_s3::Client {
    refuse_proxies();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .credentials_provider(aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(url)
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(CLIENT_CONNECT_TIMEOUT)
                .operation_timeout(CLIENT_OPERATION_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Panics when the SDK's HTTP client would send loopback requests to a proxy.
fn refuse_proxies() {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let proxy = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"].into_iter().find_map(set);
    let bypass = set("NO_PROXY").or_else(|| set("no_proxy")).unwrap_or_default();
    let bypassed = bypass.split(',').map(str::trim).any(|rule| rule == "*" || rule == LOOPBACK);
    assert!(
        proxy.is_none() || bypassed,
        "an HTTP proxy is configured ({}) and NO_PROXY does not name {LOOPBACK}: set NO_PROXY={LOOPBACK}",
        proxy.unwrap_or_default()
    );
}

// ---- state -----------------------------------------------------------------------------------------------

/// What the server and the runners share.
struct Shared {
    /// Where output goes for commands with an output bucket.
    s3: Option<aws_sdk_s3::Client>,
    instances: HashMap<String, InstanceBehavior>,
    documents: HashSet<String>,
    dir: PathBuf,
    state: Mutex<State>,
    /// Cancelled when the endpoint stops: every runner kills its process group and ends.
    stopping: CancellationToken,
    /// One task per invocation; the endpoint waits for them (bounded) before its thread returns.
    runners: TaskTracker,
}

#[derive(Default)]
struct State {
    /// In the order sent.
    commands: Vec<CommandRecord>,
    requests: Vec<LoggedRequest>,
    /// Calls per (instance, operation), for throttling.
    calls: HashMap<(String, Operation), u32>,
}

impl State {
    fn command(&self, command_id: &str) -> Option<&CommandRecord> {
        self.commands.iter().find(|c| c.id == command_id)
    }

    fn invocation(&self, command_id: &str, instance_id: &str) -> Option<(&CommandRecord, &Invocation)> {
        let command = self.command(command_id)?;
        let invocation = command.invocations.iter().find(|i| i.instance_id == instance_id)?;
        Some((command, invocation))
    }

    fn invocation_mut(&mut self, command_id: &str, instance_id: &str) -> Option<&mut Invocation> {
        let command = self.commands.iter_mut().find(|c| c.id == command_id)?;
        command.invocations.iter_mut().find(|i| i.instance_id == instance_id)
    }

    /// Counts one call of `operation` for each of `instances` and tells whether any of them throttles it.
    fn throttled(
        &mut self,
        behaviors: &HashMap<String, InstanceBehavior>,
        instances: &[String],
        op: Operation,
    ) -> bool {
        let mut throttled = false;
        for instance in instances {
            let Some(behavior) = behaviors.get(instance) else { continue };
            let calls = self.calls.entry((instance.clone(), op)).or_insert(0);
            *calls += 1;
            let applies = behavior.throttle_operations.is_empty() || behavior.throttle_operations.contains(&op);
            let every = behavior.throttle_every > 0 && calls.is_multiple_of(behavior.throttle_every);
            throttled |= applies && (*calls <= behavior.throttle_first || every);
        }
        throttled
    }
}

/// One `SendCommand`.
struct CommandRecord {
    id: String,
    document_name: String,
    document_version: String,
    comment: String,
    parameters: Value,
    instance_ids: Vec<String>,
    requested_at: SystemTime,
    timeout_seconds: Option<i64>,
    execution_timeout_secs: u64,
    output_s3_region: String,
    output_s3_bucket: String,
    output_s3_key_prefix: String,
    max_concurrency: String,
    max_errors: String,
    invocations: Vec<Invocation>,
}

impl CommandRecord {
    /// Where a real agent would have uploaded `stream` (`stdout`, `stderr`), or empty without a bucket:
    /// `https://s3.<region>.amazonaws.com/<bucket>/<prefix>/<command>/<instance>/awsrunShellScript/`
    /// `0.awsrunShellScript/<stream>` (the key layout is the agent's; the URL form is not verified). Uploaded
    /// only with [`SsmEndpointBuilder::s3_output`].
    fn output_url(&self, instance_id: &str, stream: &str) -> String {
        if self.output_s3_bucket.is_empty() {
            return String::new();
        }
        let prefix = if self.output_s3_key_prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.output_s3_key_prefix.trim_end_matches('/'))
        };
        format!(
            "https://s3.{}.amazonaws.com/{}/{prefix}{}/{instance_id}/awsrunShellScript/0.awsrunShellScript/{stream}",
            self.output_s3_region, self.output_s3_bucket, self.id
        )
    }
}

/// One instance's part of a command.
struct Invocation {
    instance_id: String,
    status: InvocationStatus,
    status_details: &'static str,
    response_code: i32,
    sent: Instant,
    started_at: Option<SystemTime>,
    ended_at: Option<SystemTime>,
    /// Lossy UTF-8 of the first [`STDOUT_LIMIT`] / [`STDERR_LIMIT`] bytes, set when the invocation ends.
    stdout: String,
    stderr: String,
    /// The shell's pid (= its process group) while it runs.
    process_group: Option<u32>,
    /// `GetCommandInvocation` calls that reached this invocation (for `not_found_polls`).
    get_calls: u32,
    /// Cancelled by `CancelCommand` (or the endpoint's stop): the runner kills the group and ends it.
    cancel: CancellationToken,
}

impl Invocation {
    fn finish(&mut self, status: InvocationStatus, details: &'static str, response_code: i32) {
        self.status = status;
        self.status_details = details;
        self.response_code = response_code;
        self.ended_at = Some(SystemTime::now());
        self.process_group = None;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InvocationStatus {
    Pending,
    InProgress,
    Delayed,
    Success,
    Cancelled,
    TimedOut,
    Failed,
    Cancelling,
}

impl InvocationStatus {
    fn as_str(self) -> &'static str {
        match self {
            InvocationStatus::Pending => "Pending",
            InvocationStatus::InProgress => "InProgress",
            InvocationStatus::Delayed => "Delayed",
            InvocationStatus::Success => "Success",
            InvocationStatus::Cancelled => "Cancelled",
            InvocationStatus::TimedOut => "TimedOut",
            InvocationStatus::Failed => "Failed",
            InvocationStatus::Cancelling => "Cancelling",
        }
    }

    fn is_terminal(self) -> bool {
        matches!(
            self,
            InvocationStatus::Success
                | InvocationStatus::Cancelled
                | InvocationStatus::TimedOut
                | InvocationStatus::Failed
        )
    }

    /// `CommandPluginStatus` has neither `Delayed` nor `Cancelling`.
    fn plugin_status(self) -> &'static str {
        match self {
            InvocationStatus::Delayed => "Pending",
            InvocationStatus::Cancelling => "InProgress",
            other => other.as_str(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- HTTP ------------------------------------------------------------------------------------------------

/// Accepts connections until `stop` resolves (or its sender is dropped), then stops every command.
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else { continue };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(Arc::clone(&shared), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    drop(listener);
    shared.stopping.cancel();
    shared.runners.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, shared.runners.wait()).await;
}

/// An AWS JSON 1.1 error.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn client(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    fn throttling() -> ApiError {
        ApiError::client("ThrottlingException", "Rate exceeded")
    }

    fn serialization(message: impl Into<String>) -> ApiError {
        ApiError::client("SerializationException", message)
    }

    /// Coral's format: `N validation error(s) detected: A; B`.
    fn validation(problems: &[String]) -> ApiError {
        let plural = if problems.len() == 1 { "" } else { "s" };
        ApiError::client(
            "ValidationException",
            format!("{} validation error{plural} detected: {}", problems.len(), problems.join("; ")),
        )
    }
}

async fn handle(shared: Arc<Shared>, request: Request<hyper::body::Incoming>) -> Result<Response<String>, Infallible> {
    let (parts, body) = request.into_parts();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let operation_name = target.strip_prefix(TARGET_PREFIX).unwrap_or(&target).to_owned();
    let bytes = axum::body::to_bytes(axum::body::Body::new(body), MAX_BODY_BYTES).await;
    let body: Value = bytes.as_ref().ok().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
    lock(&shared.state).requests.push(LoggedRequest { operation: operation_name.clone(), body: body.clone() });
    let answer = if !parts.headers.contains_key(AUTHORIZATION) {
        Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "MissingAuthenticationTokenException",
            message: "Missing Authentication Token".into(),
        })
    } else if parts.method != Method::POST || parts.uri.path() != "/" {
        Err(ApiError::client(
            "UnknownOperationException",
            format!("{} {} is not an operation", parts.method, parts.uri),
        ))
    } else if bytes.is_err() {
        Err(ApiError::serialization(format!("the request body is larger than {MAX_BODY_BYTES} bytes")))
    } else {
        match (target.strip_prefix(TARGET_PREFIX).and_then(Operation::from_name), body.as_object()) {
            (None, _) => Err(ApiError::client("UnknownOperationException", format!("unknown target {target:?}"))),
            (Some(_), None) => Err(ApiError::serialization("the request body is not a JSON object")),
            (Some(operation), Some(fields)) => dispatch(&shared, operation, &Fields(fields)),
        }
    };
    Ok(match answer {
        Ok(value) => json_response(StatusCode::OK, &value, None),
        Err(error) => {
            let body = json!({"__type": error.code, "message": error.message});
            json_response(error.status, &body, Some(error.code))
        }
    })
}

fn json_response(status: StatusCode, body: &Value, error_type: Option<&'static str>) -> Response<String> {
    let mut response = Response::new(body.to_string());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON_1_1));
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    if let Some(code) = error_type {
        headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    }
    response
}

fn dispatch(shared: &Arc<Shared>, operation: Operation, fields: &Fields<'_>) -> Result<Value, ApiError> {
    match operation {
        Operation::SendCommand => send_command(shared, fields),
        Operation::GetCommandInvocation => get_command_invocation(shared, fields),
        Operation::ListCommandInvocations => list_command_invocations(shared, fields),
        Operation::CancelCommand => cancel_command(shared, fields),
    }
}

/// Typed access to a request's members; a member of the wrong JSON type is a `SerializationException`.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ApiError::serialization(format!("{name} must be a string, not {other}"))),
        }
    }

    fn strings(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => string_list(value)
                .map(Some)
                .ok_or_else(|| ApiError::serialization(format!("{name} must be a list of strings, not {value}"))),
        }
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::serialization(format!("{name} must be an integer, not {value}"))),
        }
    }

    fn boolean(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::serialization(format!("{name} must be a boolean, not {other}"))),
        }
    }

    fn object(&self, name: &str) -> Result<Option<&Map<String, Value>>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(ApiError::serialization(format!("{name} must be an object, not {other}"))),
        }
    }

    fn required_string(&self, name: &str, member: &str) -> Result<String, ApiError> {
        self.string(name)?.ok_or_else(|| {
            ApiError::validation(&[format!(
                "Value null at '{member}' failed to satisfy constraint: Member must not be null"
            )])
        })
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|v| v.as_str().map(str::to_owned)).collect()
}

// ---- operations ------------------------------------------------------------------------------------------

fn send_command(shared: &Arc<Shared>, fields: &Fields<'_>) -> Result<Value, ApiError> {
    let document_name = fields.string("DocumentName")?;
    let instance_ids = fields.strings("InstanceIds")?.unwrap_or_default();
    let comment = fields.string("Comment")?.unwrap_or_default();
    let timeout_seconds = fields.integer("TimeoutSeconds")?;
    let max_concurrency = fields.string("MaxConcurrency")?.unwrap_or_else(|| "50".into());
    let max_errors = fields.string("MaxErrors")?.unwrap_or_else(|| "0".into());
    let output_s3_bucket = fields.string("OutputS3BucketName")?.unwrap_or_default();
    let output_s3_key_prefix = fields.string("OutputS3KeyPrefix")?.unwrap_or_default();
    let output_s3_region = fields.string("OutputS3Region")?.unwrap_or_default();
    let document_version = fields.string("DocumentVersion")?.unwrap_or_else(|| "$DEFAULT".into());
    let parameters = fields.object("Parameters")?.cloned().unwrap_or_default();
    let targets = fields.0.get("Targets").and_then(Value::as_array).is_some_and(|t| !t.is_empty());

    let mut problems = Vec::new();
    if document_name.is_none() {
        problems.push("Value null at 'documentName' failed to satisfy constraint: Member must not be null".into());
    }
    if comment.chars().count() > MAX_COMMENT_CHARS {
        problems.push(format!(
            "Value '{comment}' at 'comment' failed to satisfy constraint: Member must have length less than or \
             equal to {MAX_COMMENT_CHARS}"
        ));
    }
    if let Some(t) = timeout_seconds.filter(|t| !TIMEOUT_SECONDS.contains(t)) {
        let bound = if t < *TIMEOUT_SECONDS.start() {
            format!("greater than or equal to {}", TIMEOUT_SECONDS.start())
        } else {
            format!("less than or equal to {}", TIMEOUT_SECONDS.end())
        };
        problems.push(format!(
            "Value '{t}' at 'timeoutSeconds' failed to satisfy constraint: Member must have value {bound}"
        ));
    }
    if instance_ids.len() > MAX_INSTANCE_IDS {
        problems.push(format!(
            "Value at 'instanceIds' failed to satisfy constraint: Member must have length less than or equal to \
             {MAX_INSTANCE_IDS}"
        ));
    }
    if let Some(bad) = instance_ids.iter().find(|id| !is_instance_id(id)) {
        problems.push(format!(
            "Value '[{bad}]' at 'instanceIds' failed to satisfy constraint: Member must satisfy constraint: [Member \
             must satisfy regular expression pattern: (^i-(\\w{{8}}|\\w{{17}})$)|(^mi-\\w{{17}}$)]"
        ));
    }
    if !is_rate(&max_concurrency, false) {
        problems.push(format!("Value '{max_concurrency}' at 'maxConcurrency' failed to satisfy constraint"));
    }
    if !is_rate(&max_errors, true) {
        problems.push(format!("Value '{max_errors}' at 'maxErrors' failed to satisfy constraint"));
    }
    if instance_ids.is_empty() {
        let why = if targets { "Targets are not supported by this test endpoint" } else { "no InstanceIds" };
        problems.push(format!("SendCommand needs InstanceIds: {why}"));
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(&problems));
    }
    let document_name = document_name.unwrap_or_default();

    let mut state = lock(&shared.state);
    if state.throttled(&shared.instances, &instance_ids, Operation::SendCommand) {
        return Err(ApiError::throttling());
    }
    if !shared.documents.contains(&document_name) {
        return Err(ApiError::client("InvalidDocument", format!("Document with name {document_name} does not exist.")));
    }
    let plan = parse_parameters(&parameters)?;
    let mut seen = HashSet::new();
    if let Some(duplicate) = instance_ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(ApiError::client("DuplicateInstanceId", format!("Instance {duplicate} is listed more than once")));
    }
    if let Some(denied) = instance_ids.iter().find(|id| shared.instances.get(*id).is_some_and(|b| b.access_denied)) {
        return Err(ApiError::client(
            "AccessDeniedException",
            format!(
                "User: arn:aws:iam::{ACCOUNT_ID}:user/test is not authorized to perform: ssm:SendCommand on resource: \
                 arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/{denied} because no identity-based policy allows the \
                 ssm:SendCommand action"
            ),
        ));
    }
    let invalid: Vec<&str> = instance_ids
        .iter()
        .filter(|id| shared.instances.get(*id).is_none_or(|b| b.offline))
        .map(String::as_str)
        .collect();
    if !invalid.is_empty() {
        return Err(ApiError::client(
            "InvalidInstanceId",
            format!("Instances [[{}]] not in a valid state for account {ACCOUNT_ID}", invalid.join(", ")),
        ));
    }

    let command_id = uuid::Uuid::new_v4().to_string();
    let now = SystemTime::now();
    let sent = Instant::now();
    let mut invocations = Vec::new();
    for instance_id in &instance_ids {
        let behavior = shared.instances.get(instance_id).cloned().unwrap_or_default();
        let invocation = Invocation {
            instance_id: instance_id.clone(),
            status: InvocationStatus::Pending,
            status_details: "Pending",
            response_code: NOT_RUN_RESPONSE_CODE,
            sent,
            started_at: None,
            ended_at: None,
            stdout: String::new(),
            stderr: String::new(),
            process_group: None,
            get_calls: 0,
            cancel: shared.stopping.child_token(),
        };
        let run = Run {
            shared: Arc::clone(shared),
            command_id: command_id.clone(),
            instance_id: instance_id.clone(),
            script: plan.script.clone(),
            working_directory: plan.working_directory.clone(),
            execution_timeout: behavior.execution_timeout.unwrap_or(Duration::from_secs(plan.execution_timeout_secs)),
            delivery_timeout: timeout_seconds.and_then(|t| u64::try_from(t).ok()).map(Duration::from_secs),
            cancel: invocation.cancel.clone(),
            behavior,
            sent,
        };
        shared.runners.spawn(run.run());
        invocations.push(invocation);
    }
    let record = CommandRecord {
        id: command_id,
        document_name,
        document_version,
        comment,
        parameters: Value::Object(parameters),
        instance_ids,
        requested_at: now,
        timeout_seconds,
        execution_timeout_secs: plan.execution_timeout_secs,
        output_s3_region: if output_s3_region.is_empty() { REGION.into() } else { output_s3_region },
        output_s3_bucket,
        output_s3_key_prefix,
        max_concurrency,
        max_errors,
        invocations,
    };
    let answer = json!({"Command": command_json(&record)});
    state.commands.push(record);
    Ok(answer)
}

/// What the document's parameters ask for.
struct Plan {
    /// The commands joined by `\n`, with a final `\n`, as the agent writes `_script.sh`.
    script: String,
    working_directory: Option<PathBuf>,
    execution_timeout_secs: u64,
}

/// `commands` (required, at least one), `workingDirectory`, `executionTimeout`; anything else is
/// `InvalidParameters`, like the service does for `AWS-RunShellScript`.
fn parse_parameters(parameters: &Map<String, Value>) -> Result<Plan, ApiError> {
    let invalid = |message: String| ApiError::client("InvalidParameters", message);
    if let Some(unknown) =
        parameters.keys().find(|k| !["commands", "workingDirectory", "executionTimeout"].contains(&k.as_str()))
    {
        return Err(invalid(format!("Parameter \"{unknown}\" is not defined in the document")));
    }
    let list = |name: &str| -> Result<Vec<String>, ApiError> {
        match parameters.get(name) {
            None => Ok(Vec::new()),
            Some(value) => {
                string_list(value).ok_or_else(|| invalid(format!("Parameter \"{name}\" must be a list of strings")))
            }
        }
    };
    let commands = list("commands")?;
    if commands.is_empty() {
        return Err(invalid("Parameter \"commands\" is required and must have at least one item".into()));
    }
    let working_directory =
        list("workingDirectory")?.into_iter().next().filter(|d| d.starts_with('/')).map(PathBuf::from);
    let execution_timeout_secs = match list("executionTimeout")?.first() {
        None => DEFAULT_EXECUTION_TIMEOUT_SECS,
        Some(text) => {
            let allowed = text.parse::<u64>().ok().filter(|s| DOCUMENT_EXECUTION_TIMEOUT_SECS.contains(s));
            let Some(seconds) = allowed else {
                return Err(invalid(format!(
                    "Parameter \"executionTimeout\" value {text:?} does not match the allowed pattern"
                )));
            };
            agent_execution_timeout(seconds)
        }
    };
    Ok(Plan { script: commands.join("\n") + "\n", working_directory, execution_timeout_secs })
}

/// The agent's range check: values it does not accept become its default.
fn agent_execution_timeout(seconds: u64) -> u64 {
    if EXECUTION_TIMEOUT_SECS.contains(&seconds) { seconds } else { DEFAULT_EXECUTION_TIMEOUT_SECS }
}

fn get_command_invocation(shared: &Arc<Shared>, fields: &Fields<'_>) -> Result<Value, ApiError> {
    let command_id = fields.required_string("CommandId", "commandId")?;
    let instance_id = fields.required_string("InstanceId", "instanceId")?;
    let plugin_name = fields.string("PluginName")?;
    let mut state = lock(&shared.state);
    if state.throttled(&shared.instances, std::slice::from_ref(&instance_id), Operation::GetCommandInvocation) {
        return Err(ApiError::throttling());
    }
    let does_not_exist = || ApiError::client("InvocationDoesNotExist", "");
    let behavior = shared.instances.get(&instance_id).cloned().unwrap_or_default();
    let invocation = state.invocation_mut(&command_id, &instance_id).ok_or_else(does_not_exist)?;
    invocation.get_calls += 1;
    if invocation.get_calls <= behavior.not_found_polls || invocation.sent.elapsed() < behavior.not_found_for {
        return Err(does_not_exist());
    }
    if plugin_name.as_deref().is_some_and(|p| p != PLUGIN_NAME) {
        return Err(ApiError::client(
            "InvalidPluginName",
            format!("{} is not a plugin of this document", plugin_name.unwrap_or_default()),
        ));
    }
    let (command, invocation) = state.invocation(&command_id, &instance_id).ok_or_else(does_not_exist)?;
    Ok(invocation_result_json(command, invocation))
}

fn list_command_invocations(shared: &Arc<Shared>, fields: &Fields<'_>) -> Result<Value, ApiError> {
    let command_id = fields.string("CommandId")?;
    let instance_id = fields.string("InstanceId")?;
    let details = fields.boolean("Details")?;
    let mut state = lock(&shared.state);
    let named = match (&instance_id, &command_id) {
        (Some(instance), _) => vec![instance.clone()],
        (None, Some(command)) => state.command(command).map(|c| c.instance_ids.clone()).unwrap_or_default(),
        (None, None) => Vec::new(),
    };
    if state.throttled(&shared.instances, &named, Operation::ListCommandInvocations) {
        return Err(ApiError::throttling());
    }
    let mut listed = Vec::new();
    for command in state.commands.iter().rev() {
        if command_id.as_ref().is_some_and(|id| *id != command.id) {
            continue;
        }
        for invocation in &command.invocations {
            if instance_id.as_ref().is_some_and(|id| *id != invocation.instance_id) {
                continue;
            }
            let hidden_for = shared.instances.get(&invocation.instance_id).map(|b| b.not_found_for).unwrap_or_default();
            if invocation.sent.elapsed() < hidden_for {
                continue;
            }
            listed.push(command_invocation_json(command, invocation, details));
        }
    }
    Ok(json!({"CommandInvocations": listed}))
}

fn cancel_command(shared: &Arc<Shared>, fields: &Fields<'_>) -> Result<Value, ApiError> {
    let command_id = fields.required_string("CommandId", "commandId")?;
    let instance_ids = fields.strings("InstanceIds")?;
    let mut state = lock(&shared.state);
    let named = match &instance_ids {
        Some(ids) => ids.clone(),
        None => state.command(&command_id).map(|c| c.instance_ids.clone()).unwrap_or_default(),
    };
    if state.throttled(&shared.instances, &named, Operation::CancelCommand) {
        return Err(ApiError::throttling());
    }
    let Some(command) = state.commands.iter_mut().find(|c| c.id == command_id) else {
        return Err(ApiError::client("InvalidCommandId", format!("Command {command_id} does not exist")));
    };
    if let Some(unknown) = named.iter().find(|id| !command.instance_ids.contains(id)) {
        return Err(ApiError::client(
            "InvalidInstanceId",
            format!("Instance {unknown} is not a target of command {command_id}"),
        ));
    }
    for invocation in command.invocations.iter_mut().filter(|i| named.contains(&i.instance_id)) {
        if !invocation.status.is_terminal() {
            invocation.status = InvocationStatus::Cancelling;
            invocation.status_details = "Cancelling";
            invocation.cancel.cancel();
        }
    }
    Ok(json!({}))
}

// ---- JSON shapes -----------------------------------------------------------------------------------------

fn command_json(command: &CommandRecord) -> Value {
    let requested = epoch_seconds(command.requested_at);
    let delivery = command.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    json!({
        "CommandId": command.id,
        "DocumentName": command.document_name,
        "DocumentVersion": command.document_version,
        "Comment": command.comment,
        "ExpiresAfter": requested + delivery as f64 + command.execution_timeout_secs as f64,
        "Parameters": command.parameters,
        "InstanceIds": command.instance_ids,
        "Targets": [],
        "RequestedDateTime": requested,
        "Status": "Pending",
        "StatusDetails": "Pending",
        "OutputS3Region": command.output_s3_region,
        "OutputS3BucketName": command.output_s3_bucket,
        "OutputS3KeyPrefix": command.output_s3_key_prefix,
        "MaxConcurrency": command.max_concurrency,
        "MaxErrors": command.max_errors,
        "TargetCount": command.instance_ids.len(),
        "CompletedCount": 0,
        "ErrorCount": 0,
        "DeliveryTimedOutCount": 0,
        "ServiceRole": "",
        "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
        "TimeoutSeconds": delivery,
    })
}

/// `GetCommandInvocation`'s answer.
fn invocation_result_json(command: &CommandRecord, invocation: &Invocation) -> Value {
    let ended = invocation.status.is_terminal();
    let elapsed = match (invocation.started_at, invocation.ended_at) {
        (Some(start), Some(end)) => iso8601_duration(end.duration_since(start).unwrap_or_default()),
        _ => String::new(),
    };
    json!({
        "CommandId": command.id,
        "InstanceId": invocation.instance_id,
        "Comment": command.comment,
        "DocumentName": command.document_name,
        "DocumentVersion": command.document_version,
        "PluginName": PLUGIN_NAME,
        "ResponseCode": invocation.response_code,
        "ExecutionStartDateTime": invocation.started_at.map(iso8601).unwrap_or_default(),
        "ExecutionElapsedTime": elapsed,
        "ExecutionEndDateTime": invocation.started_at.and(invocation.ended_at).map(iso8601).unwrap_or_default(),
        "Status": invocation.status.as_str(),
        "StatusDetails": invocation.status_details,
        "StandardOutputContent": if ended { invocation.stdout.as_str() } else { "" },
        "StandardOutputUrl": command.output_url(&invocation.instance_id, "stdout"),
        "StandardErrorContent": if ended { invocation.stderr.as_str() } else { "" },
        "StandardErrorUrl": command.output_url(&invocation.instance_id, "stderr"),
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
    })
}

/// One entry of `ListCommandInvocations`.
fn command_invocation_json(command: &CommandRecord, invocation: &Invocation, details: bool) -> Value {
    let plugins = if details {
        let output = if invocation.status.is_terminal() {
            plugin_output(&invocation.stdout, &invocation.stderr)
        } else {
            String::new()
        };
        let mut plugin = json!({
            "Name": PLUGIN_NAME,
            "Status": invocation.status.plugin_status(),
            "StatusDetails": invocation.status_details,
            "ResponseCode": invocation.response_code,
            "Output": output,
            "StandardOutputUrl": command.output_url(&invocation.instance_id, "stdout"),
            "StandardErrorUrl": command.output_url(&invocation.instance_id, "stderr"),
            "OutputS3Region": command.output_s3_region,
            "OutputS3BucketName": command.output_s3_bucket,
            "OutputS3KeyPrefix": command.output_s3_key_prefix,
        });
        if let Some(start) = invocation.started_at {
            plugin["ResponseStartDateTime"] = json!(epoch_seconds(start));
            if let Some(end) = invocation.ended_at {
                plugin["ResponseFinishDateTime"] = json!(epoch_seconds(end));
            }
        }
        vec![plugin]
    } else {
        Vec::new()
    };
    json!({
        "CommandId": command.id,
        "InstanceId": invocation.instance_id,
        "InstanceName": "",
        "Comment": command.comment,
        "DocumentName": command.document_name,
        "DocumentVersion": command.document_version,
        "RequestedDateTime": epoch_seconds(command.requested_at),
        "Status": invocation.status.as_str(),
        "StatusDetails": invocation.status_details,
        "TraceOutput": "",
        "StandardOutputUrl": command.output_url(&invocation.instance_id, "stdout"),
        "StandardErrorUrl": command.output_url(&invocation.instance_id, "stderr"),
        "CommandPlugins": plugins,
        "ServiceRole": "",
        "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false},
    })
}

/// The agent's `TruncateOutput(stdout, stderr, 2400)`: both in full when they fit, else the beginning of the
/// longer one (or of both) with its truncation marker. Lengths are bytes, as in the agent.
pub fn plugin_output(stdout: &str, stderr: &str) -> String {
    let title = if stderr.is_empty() { "" } else { ERROR_TITLE };
    let available = PLUGIN_OUTPUT_LIMIT - title.len();
    let (out, err) = (stdout.len(), stderr.len());
    if out + err < available {
        return format!("{stdout}{title}{stderr}");
    }
    if out > available / 2 && err > available / 2 {
        let each = (available - ERROR_TRUNCATED.len() - OUTPUT_TRUNCATED.len()) / 2;
        return format!("{}{OUTPUT_TRUNCATED}{title}{}{ERROR_TRUNCATED}", prefix(stdout, each), prefix(stderr, each));
    }
    if out < available / 2 {
        let keep = available - ERROR_TRUNCATED.len() - out;
        return format!("{stdout}{title}{}{ERROR_TRUNCATED}", prefix(stderr, keep));
    }
    let keep = available - OUTPUT_TRUNCATED.len() - err;
    format!("{}{OUTPUT_TRUNCATED}{title}{stderr}", prefix(stdout, keep))
}

/// At most `bytes` bytes of `text`, cut back to a character boundary.
fn prefix(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn epoch_seconds(time: SystemTime) -> f64 {
    let millis = time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    millis as f64 / 1000.0
}

/// `2020-02-19T18:18:03.419Z`
fn iso8601(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// `PT0.091S`, `PT1M2.500S`, `PT1H0.271S`
fn iso8601_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total % 3600 / 60, total % 60);
    let mut text = String::from("PT");
    if hours > 0 {
        text.push_str(&format!("{hours}H"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}M"));
    }
    text.push_str(&format!("{seconds}.{:03}S", duration.subsec_millis()));
    text
}

/// `i-` + 8 or 17 word characters, or `mi-` + 17 (the model's pattern).
fn is_instance_id(id: &str) -> bool {
    let word = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (id.strip_prefix("mi-"), id.strip_prefix("i-")) {
        (Some(rest), _) => rest.len() == 17 && word(rest),
        (None, Some(rest)) => (rest.len() == 8 || rest.len() == 17) && word(rest),
        (None, None) => false,
    }
}

/// `MaxConcurrency` (`[1-9][0-9]*` or 1%..100%) and `MaxErrors` (which also allows 0 and 0%).
fn is_rate(text: &str, zero_allowed: bool) -> bool {
    let (digits, percent) = match text.strip_suffix('%') {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    let Ok(value) = digits.parse::<u64>() else { return false };
    let canonical = digits == value.to_string();
    canonical && digits.len() <= 7 && (value > 0 || zero_allowed) && (!percent || value <= 100)
}

// ---- running commands ------------------------------------------------------------------------------------

/// Everything one invocation's runner needs.
struct Run {
    shared: Arc<Shared>,
    command_id: String,
    instance_id: String,
    script: String,
    working_directory: Option<PathBuf>,
    execution_timeout: Duration,
    /// `TimeoutSeconds`: the invocation must have started by then.
    delivery_timeout: Option<Duration>,
    behavior: InstanceBehavior,
    sent: Instant,
    /// Ends the invocation as cancelled: `CancelCommand` or the endpoint's stop.
    cancel: CancellationToken,
}

/// How a wait ended early.
enum Interrupted {
    Cancelled,
    DeliveryTimedOut,
}

/// How an execution that did not run to its end stopped.
#[derive(Clone, Copy)]
enum Stop {
    TimedOut,
    Cancelled,
}

impl Run {
    async fn run(self) {
        if let Err(interrupted) = self.deliver().await {
            match interrupted {
                Interrupted::Cancelled => self.finish(InvocationStatus::Cancelled, "Cancelled", NOT_RUN_RESPONSE_CODE),
                Interrupted::DeliveryTimedOut => {
                    self.finish(InvocationStatus::TimedOut, "DeliveryTimedOut", NOT_RUN_RESPONSE_CODE)
                }
            }
            return;
        }
        if self.behavior.undeliverable {
            self.finish(InvocationStatus::Failed, "Undeliverable", NOT_RUN_RESPONSE_CODE);
        } else if self.behavior.terminated {
            self.finish(InvocationStatus::Failed, "Terminated", NOT_RUN_RESPONSE_CODE);
        } else {
            self.execute().await;
        }
    }

    /// `Pending` for the first half of `start_delay`, `Delayed` for the second.
    async fn deliver(&self) -> Result<(), Interrupted> {
        let delay = self.behavior.start_delay;
        self.wait_until(self.sent + delay / 2).await?;
        if !delay.is_zero() {
            self.update(|invocation| {
                if invocation.status == InvocationStatus::Pending {
                    invocation.status = InvocationStatus::Delayed;
                    invocation.status_details = "Delayed";
                }
            });
        }
        self.wait_until(self.sent + delay).await
    }

    async fn wait_until(&self, deadline: Instant) -> Result<(), Interrupted> {
        let delivery_deadline = self.delivery_timeout.map(|t| self.sent + t);
        let delivery_first = delivery_deadline.is_some_and(|d| d <= deadline);
        tokio::select! {
            () = self.cancel.cancelled() => Err(Interrupted::Cancelled),
            () = tokio::time::sleep_until(delivery_deadline.filter(|_| delivery_first).unwrap_or(deadline)) => {
                if delivery_first { Err(Interrupted::DeliveryTimedOut) } else { Ok(()) }
            }
        }
    }

    async fn execute(&self) {
        let dir = self.shared.dir.join(&self.command_id).join(&self.instance_id);
        let work = dir.join("work");
        let script = dir.join("_script.sh");
        if let Err(e) = write_script(&script, &self.script).and_then(|()| fs::create_dir_all(&work)) {
            return self.fail_to_start(format!("cannot write {}: {e}", script.display()));
        }
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&script)
            .current_dir(self.working_directory.as_deref().unwrap_or(&work))
            // As the agent (2.3.x and later) sets them for Run Command scripts.
            .env("AWS_SSM_INSTANCE_ID", &self.instance_id)
            .env("AWS_SSM_REGION_NAME", REGION)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of this process. The death signal follows
        // the spawning thread: the endpoint's own, which lives until every command has been stopped.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return self.fail_to_start(format!("cannot run sh -c {}: {e}", script.display())),
        };
        let group = child.id();
        self.update(|invocation| {
            // A cancel that came in meanwhile stays `Cancelling`; the token ends the run below.
            if invocation.status != InvocationStatus::Cancelling {
                invocation.status = InvocationStatus::InProgress;
                invocation.status_details = "InProgress";
            }
            invocation.started_at = Some(SystemTime::now());
            invocation.process_group = group;
        });
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = tokio::spawn(capture_both(
            child.stdout.take(),
            Arc::clone(&stdout),
            child.stderr.take(),
            Arc::clone(&stderr),
        ));
        let deadline = Instant::now() + self.execution_timeout;
        let exited = tokio::select! {
            status = child.wait() => Ok(status),
            () = tokio::time::sleep_until(deadline) => Err(Stop::TimedOut),
            () = self.cancel.cancelled() => Err(Stop::Cancelled),
        };
        let ended = match exited {
            // The shell is gone; its output ends when the last process holding the pipes is gone (the agent
            // waits for that too, within the same timeout).
            Ok(status) => tokio::select! {
                _ = &mut readers => Ok(status),
                () = tokio::time::sleep_until(deadline) => Err(Stop::TimedOut),
                () = self.cancel.cancelled() => Err(Stop::Cancelled),
            },
            Err(stop) => Err(stop),
        };
        if ended.is_err() {
            // When the shell was still running it has not been reaped, so its pid (= the group) is not reused.
            kill_group(group);
            let _ = child.wait().await;
            let _ = tokio::time::timeout(KILL_GRACE, &mut readers).await;
            readers.abort();
        }
        let stdout = std::mem::take(&mut *lock(&stdout));
        let stderr = std::mem::take(&mut *lock(&stderr));
        self.upload(&stdout, &stderr).await;
        let stdout = String::from_utf8_lossy(&stdout[..stdout.len().min(STDOUT_LIMIT)]).into_owned();
        let stderr = String::from_utf8_lossy(&stderr[..stderr.len().min(STDERR_LIMIT)]).into_owned();
        let (status, details, code) = match ended {
            Ok(Ok(status)) if status.success() => (InvocationStatus::Success, "Success", 0),
            Ok(Ok(status)) => (InvocationStatus::Failed, "Failed", exit_code(status)),
            Ok(Err(_)) => (InvocationStatus::Failed, "Failed", 1),
            Err(Stop::TimedOut) => (InvocationStatus::TimedOut, "ExecutionTimedOut", KILLED_RESPONSE_CODE),
            Err(Stop::Cancelled) => (InvocationStatus::Cancelled, "Cancelled", KILLED_RESPONSE_CODE),
        };
        self.update(|invocation| {
            invocation.stdout = stdout;
            invocation.stderr = stderr;
            invocation.finish(status, details, code);
        });
    }

    /// Uploads the output to the command's output bucket, as the agent does before the final status.
    async fn upload(&self, stdout: &[u8], stderr: &[u8]) {
        let Some(s3) = &self.shared.s3 else { return };
        let (bucket, prefix) = {
            let state = lock(&self.shared.state);
            match state.command(&self.command_id) {
                Some(c) if !c.output_s3_bucket.is_empty() => {
                    (c.output_s3_bucket.clone(), c.output_s3_key_prefix.trim_end_matches('/').to_owned())
                }
                _ => return,
            }
        };
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        for (stream, bytes) in [("stdout", stdout), ("stderr", stderr)] {
            let key = format!(
                "{prefix}{}/{}/awsrunShellScript/0.awsrunShellScript/{stream}",
                self.command_id, self.instance_id
            );
            let body = aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec());
            if let Err(e) = s3.put_object().bucket(&bucket).key(&key).body(body).send().await {
                eprintln!("ssm endpoint: upload of s3://{bucket}/{key} failed: {e:?}");
            }
        }
    }

    /// Like the agent when it cannot start the script: `Failed`, ResponseCode 1, the reason on stderr.
    fn fail_to_start(&self, reason: String) {
        self.update(|invocation| {
            invocation.started_at = Some(SystemTime::now());
            invocation.stderr = reason;
            invocation.finish(InvocationStatus::Failed, "Failed", 1);
        });
    }

    fn finish(&self, status: InvocationStatus, details: &'static str, response_code: i32) {
        self.update(|invocation| invocation.finish(status, details, response_code));
    }

    fn update(&self, change: impl FnOnce(&mut Invocation)) {
        let mut state = lock(&self.shared.state);
        if let Some(invocation) = state.invocation_mut(&self.command_id, &self.instance_id) {
            change(invocation);
        }
    }
}

/// `_script.sh`, mode 0700, created anew.
fn write_script(path: &Path, script: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o700).open(path)?;
    file.write_all(script.as_bytes())
}

/// Drains both pipes to their end, keeping the first [`S3_OUTPUT_LIMIT`] bytes of each.
async fn capture_both(
    stdout: Option<tokio::process::ChildStdout>,
    stdout_into: Arc<Mutex<Vec<u8>>>,
    stderr: Option<tokio::process::ChildStderr>,
    stderr_into: Arc<Mutex<Vec<u8>>>,
) {
    tokio::join!(capture(stdout, S3_OUTPUT_LIMIT, stdout_into), capture(stderr, S3_OUTPUT_LIMIT, stderr_into));
}

async fn capture(pipe: Option<impl AsyncRead + Unpin>, limit: usize, into: Arc<Mutex<Vec<u8>>>) {
    let Some(mut pipe) = pipe else { return };
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut kept = lock(&into);
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

/// The exit code, or 128 + the signal that ended the shell.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn kill_group(group: Option<u32>) {
    if let Some(group) = group.and_then(|g| i32::try_from(g).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group; it has no memory-safety preconditions.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
}
