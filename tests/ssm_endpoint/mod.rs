//! The SSM-compatible test endpoint (`support::ssm`) against the real `aws_sdk_ssm::Client`: commands really run,
//! statuses, outputs and errors arrive as the SDK models them, and no process outlives a timeout, a cancel or
//! the endpoint itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::get_command_invocation::{GetCommandInvocationError, GetCommandInvocationOutput};
use aws_sdk_ssm::operation::send_command::SendCommandError;
use aws_sdk_ssm::types::{CommandInvocationStatus, CommandPluginStatus};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::ssm::{
    InstanceBehavior, KILLED_RESPONSE_CODE, NOT_RUN_RESPONSE_CODE, Operation, PLUGIN_NAME, RUN_SHELL_SCRIPT,
    STDERR_LIMIT, STDOUT_LIMIT, SsmEndpoint,
};

const INSTANCE: &str = "i-0123456789abcdef0";
const OTHER: &str = "i-0fedcba9876543210";
/// Well-formed, but registered nowhere.
const UNKNOWN: &str = "i-00000000000dead00";
/// Bound on anything that should end "soon" (a command, a kill, a visibility window).
const EVENTUALLY: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Sends `commands` to `instances` with AWS-RunShellScript and returns the command id.
async fn send(client: &Client, instances: &[&str], commands: &[&str], parameters: &[(&str, &str)]) -> String {
    let mut request = client
        .send_command()
        .document_name(RUN_SHELL_SCRIPT)
        .comment("rune test")
        .parameters("commands", commands.iter().map(|c| (*c).to_owned()).collect());
    for instance in instances {
        request = request.instance_ids(*instance);
    }
    for (name, value) in parameters {
        request = request.parameters(*name, vec![(*value).to_owned()]);
    }
    let output = request.send().await.unwrap_or_else(|e| panic!("SendCommand: {}", DisplayErrorContext(e)));
    let command = output.command.unwrap_or_else(|| panic!("SendCommand answered without a Command"));
    command.command_id.unwrap_or_else(|| panic!("SendCommand answered without a CommandId"))
}

async fn get(client: &Client, command_id: &str, instance: &str) -> GetCommandInvocationOutput {
    client
        .get_command_invocation()
        .command_id(command_id)
        .instance_id(instance)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetCommandInvocation {command_id} on {instance}: {}", DisplayErrorContext(e)))
}

fn is_terminal(status: Option<&CommandInvocationStatus>) -> bool {
    matches!(
        status,
        Some(
            CommandInvocationStatus::Success
                | CommandInvocationStatus::Failed
                | CommandInvocationStatus::Cancelled
                | CommandInvocationStatus::TimedOut
        )
    )
}

/// Polls until the invocation has ended; panics after [`EVENTUALLY`].
async fn wait_until_ended(client: &Client, command_id: &str, instance: &str) -> GetCommandInvocationOutput {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let output = get(client, command_id, instance).await;
        if is_terminal(output.status()) {
            return output;
        }
        assert!(Instant::now() < deadline, "{command_id} on {instance} still {:?}", output.status());
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `path` holds a pid and returns it.
async fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Ok(pid) = text.trim().parse() {
            return pid;
        }
        assert!(Instant::now() < deadline, "{} never got a pid", path.display());
        tokio::time::sleep(POLL).await;
    }
}

/// `kill -0` succeeds, and the process is not a zombie waiting for a lazy PID 1 to reap it.
fn is_alive(pid: u32) -> bool {
    let signalled = Command::new("kill").args(["-0", &pid.to_string()]).output().is_ok_and(|o| o.status.success());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    signalled && !matches!(state, Some('Z' | 'X') | None)
}

async fn assert_gone(pids: &[u32], context: &str) {
    let deadline = Instant::now() + EVENTUALLY;
    while pids.iter().any(|pid| is_alive(*pid)) {
        assert!(Instant::now() < deadline, "{context}: processes {pids:?} survived");
        tokio::time::sleep(POLL).await;
    }
}

/// A script that records its shell's pid and a background sleep's pid in `dir`, says `started`, and waits.
fn sleeper(dir: &Path) -> String {
    format!("echo $$ > {dir}/shell.pid; sleep 60 & echo $! > {dir}/sleep.pid; echo started; wait", dir = dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_reports_its_exit_code_and_both_streams() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let client = endpoint.client();
    let command_id = send(&client, &[INSTANCE], &["echo out", "echo err >&2", "exit 3"], &[]).await;
    let output = wait_until_ended(&client, &command_id, INSTANCE).await;
    assert_eq!(output.status(), Some(&CommandInvocationStatus::Failed), "{output:?}");
    assert_eq!(output.status_details(), Some("Failed"));
    assert_eq!(output.response_code, 3);
    assert_eq!(output.standard_output_content(), Some("out\n"));
    assert_eq!(output.standard_error_content(), Some("err\n"));
    assert_eq!(output.plugin_name(), Some(PLUGIN_NAME));
    assert_eq!(output.comment(), Some("rune test"));
    assert_eq!(output.standard_output_url(), Some(""), "no S3 bucket, no URL");
    assert!(output.execution_start_date_time().is_some_and(|t| t.ends_with('Z')), "{output:?}");
    assert!(output.execution_elapsed_time().is_some_and(|t| t.starts_with("PT")), "{output:?}");

    let listed = client
        .list_command_invocations()
        .command_id(&command_id)
        .details(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListCommandInvocations: {}", DisplayErrorContext(e)));
    let invocations = listed.command_invocations();
    assert_eq!(invocations.len(), 1, "{listed:?}");
    assert_eq!(invocations[0].status(), Some(&CommandInvocationStatus::Failed));
    let plugin = &invocations[0].command_plugins()[0];
    assert_eq!(plugin.name(), Some(PLUGIN_NAME));
    assert_eq!(plugin.status(), Some(&CommandPluginStatus::Failed));
    assert_eq!(plugin.response_code, 3);
    assert_eq!(plugin.output(), Some("out\n\n----------ERROR-------\nerr\n"));

    let sent = endpoint.request_bodies(Operation::SendCommand);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["Comment"], "rune test");
    assert_eq!(sent[0]["Parameters"]["commands"], serde_json::json!(["echo out", "echo err >&2", "exit 3"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_command_runs_as_a_script_in_its_own_directory() {
    let endpoint = SsmEndpoint::start(&[INSTANCE, OTHER]);
    let client = endpoint.client();
    // Quotes, a here-document and a multi-line command survive: the commands become a file, not an argument.
    let commands = ["x='a \"quoted\" $value'", "cat <<'EOF'\n$x\nEOF", "printf '%s|%s\\n' \"$x\" \"$(pwd)\""];
    let command_id = send(&client, &[INSTANCE, OTHER], &commands, &[]).await;
    for instance in [INSTANCE, OTHER] {
        let output = wait_until_ended(&client, &command_id, instance).await;
        assert_eq!(output.status(), Some(&CommandInvocationStatus::Success), "{output:?}");
        assert_eq!(output.status_details(), Some("Success"));
        assert_eq!(output.response_code, 0);
        let stdout = output.standard_output_content().unwrap_or_default();
        let work = endpoint.dir().join(&command_id).join(instance).join("work");
        assert_eq!(stdout, format!("$x\na \"quoted\" $value|{}\n", work.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_cut_to_the_first_24000_and_8000_bytes() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let client = endpoint.client();
    // 30 KB of numbered lines on stdout, 10 KB on stderr.
    let command_id = send(&client, &[INSTANCE], &["seq 1 7000", "seq 1 2500 >&2"], &[]).await;
    let output = wait_until_ended(&client, &command_id, INSTANCE).await;
    assert_eq!(output.status(), Some(&CommandInvocationStatus::Success), "{output:?}");
    let all_out: String = (1..=7000).map(|n| format!("{n}\n")).collect();
    let all_err: String = (1..=2500).map(|n| format!("{n}\n")).collect();
    assert!(all_out.len() > 30_000 && all_err.len() > 10_000);
    let stdout = output.standard_output_content().unwrap_or_default();
    let stderr = output.standard_error_content().unwrap_or_default();
    assert_eq!(stdout.len(), STDOUT_LIMIT);
    assert_eq!(stdout, &all_out[..STDOUT_LIMIT], "the beginning is kept");
    assert_eq!(stderr.len(), STDERR_LIMIT);
    assert_eq!(stderr, &all_err[..STDERR_LIMIT]);

    let listed = client.list_command_invocations().command_id(&command_id).details(true).send().await;
    let listed = listed.unwrap_or_else(|e| panic!("ListCommandInvocations: {}", DisplayErrorContext(e)));
    let plugin_output = listed.command_invocations()[0].command_plugins()[0].output().unwrap_or_default().to_owned();
    assert!(plugin_output.len() <= 2_400, "{} bytes", plugin_output.len());
    assert!(plugin_output.contains("\n---Output truncated---\n----------ERROR-------\n1\n2\n"), "{plugin_output}");
    assert!(plugin_output.ends_with("\n---Error truncated----"), "{plugin_output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_does_not_exist_for_its_window_then_the_command_succeeds() {
    let window = Duration::from_millis(2500);
    let endpoint = SsmEndpoint::builder()
        .instance(INSTANCE, InstanceBehavior { not_found_polls: 3, ..InstanceBehavior::default() })
        .instance(OTHER, InstanceBehavior { not_found_for: window, ..InstanceBehavior::default() })
        .start();
    let client = endpoint.client();
    let before_send = Instant::now();
    let command_id = send(&client, &[INSTANCE, OTHER], &["echo visible"], &[]).await;
    // The typed variant, not just the code: that is what the transport will match on.
    let not_found = |result: Result<GetCommandInvocationOutput, SdkError<GetCommandInvocationError>>| match result {
        Err(e) => matches!(e.into_service_error(), GetCommandInvocationError::InvocationDoesNotExist(_)),
        Ok(output) => panic!("found: {output:?}"),
    };
    let poll =
        |instance: &'static str| client.get_command_invocation().command_id(&command_id).instance_id(instance).send();
    assert!(not_found(poll(OTHER).await), "right after SendCommand");
    for attempt in 1..=3 {
        assert!(not_found(poll(INSTANCE).await), "poll {attempt}");
    }
    let output = wait_until_ended(&client, &command_id, INSTANCE).await;
    assert_eq!(output.standard_output_content(), Some("visible\n"));

    let output = loop {
        match poll(OTHER).await {
            Ok(output) => {
                assert!(before_send.elapsed() >= window, "visible before its window ended");
                if is_terminal(output.status()) {
                    break output;
                }
            }
            Err(e) => assert!(
                e.as_service_error().is_some_and(GetCommandInvocationError::is_invocation_does_not_exist),
                "{}",
                DisplayErrorContext(&e)
            ),
        }
        assert!(before_send.elapsed() < EVENTUALLY, "never visible");
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(output.status(), Some(&CommandInvocationStatus::Success));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_a_throttling_exception_that_the_sdk_retries() {
    let throttled_sends = InstanceBehavior {
        throttle_first: 2,
        throttle_operations: vec![Operation::SendCommand],
        ..InstanceBehavior::default()
    };
    let every_second_poll = InstanceBehavior {
        throttle_every: 2,
        throttle_operations: vec![Operation::GetCommandInvocation],
        ..InstanceBehavior::default()
    };
    let endpoint =
        SsmEndpoint::builder().instance(INSTANCE, throttled_sends).instance(OTHER, every_second_poll).start();
    let client = endpoint.client();
    let error = client
        .send_command()
        .document_name(RUN_SHELL_SCRIPT)
        .instance_ids(INSTANCE)
        .parameters("commands", vec!["true".into()])
        .send()
        .await
        .err()
        .unwrap_or_else(|| panic!("the first SendCommand was not throttled"));
    assert_eq!(error.code(), Some("ThrottlingException"), "{}", DisplayErrorContext(&error));
    assert_eq!(error.message(), Some("Rate exceeded"));
    // Not modeled for SendCommand: an unhandled service error that carries the code.
    assert_eq!(error.as_service_error().and_then(ProvideErrorMetadata::code), Some("ThrottlingException"));

    // With standard retries the SDK classifies it as throttling and tries again: the third attempt gets through.
    let retrying = Client::from_conf(
        endpoint
            .config()
            .retry_config(
                aws_sdk_ssm::config::retry::RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(10)),
            )
            .build(),
    );
    let command_id = send(&retrying, &[INSTANCE], &["true"], &[]).await;
    assert_eq!(endpoint.request_bodies(Operation::SendCommand).len(), 3, "one throttled call, then one retried");
    wait_until_ended(&client, &command_id, INSTANCE).await;

    let command_id = send(&client, &[OTHER], &["true"], &[]).await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let result = client.get_command_invocation().command_id(&command_id).instance_id(OTHER).send().await;
        codes.push(result.err().and_then(|e| e.code().map(str::to_owned)));
    }
    let throttle = Some("ThrottlingException".to_owned());
    assert_eq!(codes, vec![None, throttle.clone(), None, throttle], "every second poll is throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_timeout_kills_the_process_group_and_reports_timed_out() {
    let quick = InstanceBehavior { execution_timeout: Some(Duration::from_secs(1)), ..InstanceBehavior::default() };
    let endpoint =
        SsmEndpoint::builder().instance(INSTANCE, InstanceBehavior::default()).instance(OTHER, quick).start();
    let client = endpoint.client();
    let pids = tempfile::tempdir().expect("tempdir");
    // 5 s is the agent's minimum; "2" would be read as its default of 3600 s.
    let command_id = send(&client, &[INSTANCE], &[&sleeper(pids.path())], &[("executionTimeout", "5")]).await;
    let shell = read_pid(&pids.path().join("shell.pid")).await;
    let sleep = read_pid(&pids.path().join("sleep.pid")).await;
    assert!(is_alive(sleep), "the background sleep runs");
    let running = get(&client, &command_id, INSTANCE).await;
    assert_eq!(running.status(), Some(&CommandInvocationStatus::InProgress), "{running:?}");
    assert_eq!(running.standard_output_content(), Some(""), "no output before the end");
    assert_eq!(running.response_code, NOT_RUN_RESPONSE_CODE, "-1 until the command has ended");

    // The instance's override cuts the same 5 s timeout to 1 s.
    let quick_pids = tempfile::tempdir().expect("tempdir");
    let quick_id = send(&client, &[OTHER], &[&sleeper(quick_pids.path())], &[("executionTimeout", "5")]).await;
    let quick_sleep = read_pid(&quick_pids.path().join("sleep.pid")).await;
    let quick = wait_until_ended(&client, &quick_id, OTHER).await;
    assert_eq!(quick.status(), Some(&CommandInvocationStatus::TimedOut), "{quick:?}");
    assert_gone(&[quick_sleep], "after the 1 s override").await;
    let still = get(&client, &command_id, INSTANCE).await;
    assert_eq!(still.status(), Some(&CommandInvocationStatus::InProgress), "the 5 s command still runs: {still:?}");

    let output = wait_until_ended(&client, &command_id, INSTANCE).await;
    assert_eq!(output.status(), Some(&CommandInvocationStatus::TimedOut), "{output:?}");
    assert_eq!(output.status_details(), Some("ExecutionTimedOut"));
    assert_eq!(output.response_code, KILLED_RESPONSE_CODE);
    assert_eq!(output.standard_output_content(), Some("started\n"), "output until the kill is kept");
    assert!(output.execution_elapsed_time().is_some_and(|t| t.starts_with("PT5.")), "{output:?}");
    assert_gone(&[shell, sleep], "after the execution timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_command_kills_the_process_group() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let client = endpoint.client();
    let pids = tempfile::tempdir().expect("tempdir");
    let command_id = send(&client, &[INSTANCE], &[&sleeper(pids.path())], &[]).await;
    let shell = read_pid(&pids.path().join("shell.pid")).await;
    let sleep = read_pid(&pids.path().join("sleep.pid")).await;
    assert!(endpoint.process_group(&command_id, INSTANCE).is_some(), "the shell runs in its own group");
    client
        .cancel_command()
        .command_id(&command_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CancelCommand: {}", DisplayErrorContext(e)));
    let output = wait_until_ended(&client, &command_id, INSTANCE).await;
    assert_eq!(output.status(), Some(&CommandInvocationStatus::Cancelled), "{output:?}");
    assert_eq!(output.status_details(), Some("Cancelled"));
    assert_gone(&[shell, sleep], "after CancelCommand").await;
    assert_eq!(endpoint.process_group(&command_id, INSTANCE), None);

    let unknown = client.cancel_command().command_id("00000000-0000-0000-0000-000000000000").send().await;
    let unknown = unknown.err().unwrap_or_else(|| panic!("an unknown command was cancelled"));
    assert!(unknown.as_service_error().is_some_and(|e| e.is_invalid_command_id()), "{}", DisplayErrorContext(&unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_offline_and_denied_instances_and_bad_requests_are_refused() {
    let endpoint = SsmEndpoint::builder()
        .instance(INSTANCE, InstanceBehavior::default())
        .instance(OTHER, InstanceBehavior { offline: true, ..InstanceBehavior::default() })
        .instance("i-0aaaaaaaaaaaaaaa1", InstanceBehavior { access_denied: true, ..InstanceBehavior::default() })
        .document("RUNE-Run")
        .start();
    let client = endpoint.client();
    for instance in [UNKNOWN, OTHER] {
        let error = client
            .send_command()
            .document_name(RUN_SHELL_SCRIPT)
            .instance_ids(INSTANCE)
            .instance_ids(instance)
            .parameters("commands", vec!["touch /nonexistent-dir/never".into()])
            .send()
            .await
            .err()
            .unwrap_or_else(|| panic!("{instance} was accepted"));
        match error.as_service_error() {
            Some(SendCommandError::InvalidInstanceId(e)) => {
                assert!(e.message().is_some_and(|m| m.contains(instance)), "{e:?}");
            }
            _ => panic!("{instance}: {}", DisplayErrorContext(&error)),
        }
    }
    let denied = client
        .send_command()
        .document_name(RUN_SHELL_SCRIPT)
        .instance_ids("i-0aaaaaaaaaaaaaaa1")
        .parameters("commands", vec!["true".into()])
        .send()
        .await
        .err()
        .unwrap_or_else(|| panic!("access was not denied"));
    assert_eq!(denied.code(), Some("AccessDeniedException"), "{}", DisplayErrorContext(&denied));

    let refused = |request: aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder| async move {
        request.send().await.err().unwrap_or_else(|| panic!("accepted"))
    };
    let base = || client.send_command().document_name(RUN_SHELL_SCRIPT).instance_ids(INSTANCE);
    let error = refused(base().document_name("AWS-Nope").parameters("commands", vec!["true".into()])).await;
    assert!(error.as_service_error().is_some_and(SendCommandError::is_invalid_document), "{error:?}");
    let error = refused(base().parameters("command", vec!["true".into()])).await;
    assert!(error.as_service_error().is_some_and(SendCommandError::is_invalid_parameters), "{error:?}");
    let error = refused(base().parameters("commands", vec!["true".into()]).comment("c".repeat(101))).await;
    assert_eq!(error.code(), Some("ValidationException"), "a Comment over 100 characters: {error:?}");
    let error = refused(base().parameters("commands", vec!["true".into()]).timeout_seconds(10)).await;
    assert_eq!(error.code(), Some("ValidationException"), "TimeoutSeconds under 30: {error:?}");
    assert!(error.message().is_some_and(|m| m.contains("timeoutSeconds")), "{error:?}");

    // A registered document runs like AWS-RunShellScript.
    let command = client
        .send_command()
        .document_name("RUNE-Run")
        .instance_ids(INSTANCE)
        .parameters("commands", vec!["echo custom".into()])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}", DisplayErrorContext(e)));
    let command_id = command.command().and_then(|c| c.command_id()).unwrap_or_default().to_owned();
    let output = wait_until_ended(&client, &command_id, INSTANCE).await;
    assert_eq!(output.standard_output_content(), Some("custom\n"));
    assert_eq!(output.document_name(), Some("RUNE-Run"));

    let error = client.get_command_invocation().command_id(&command_id).instance_id(OTHER).send().await;
    let error = error.err().unwrap_or_else(|| panic!("an invocation on another instance was found"));
    assert!(error.as_service_error().is_some_and(GetCommandInvocationError::is_invocation_does_not_exist));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_undeliverable_and_terminated_invocations() {
    let delayed = InstanceBehavior { start_delay: Duration::from_millis(1200), ..InstanceBehavior::default() };
    let undeliverable = InstanceBehavior { undeliverable: true, ..InstanceBehavior::default() };
    let terminated = InstanceBehavior { terminated: true, ..InstanceBehavior::default() };
    let endpoint = SsmEndpoint::builder()
        .instance(INSTANCE, delayed)
        .instance(OTHER, undeliverable)
        .instance("i-0bbbbbbbbbbbbbbb2", terminated)
        .start();
    let client = endpoint.client();
    let marker = tempfile::tempdir().expect("tempdir");
    let touch = format!("touch {}/ran-$(hostname)-$$", marker.path().display());
    let command_id = send(&client, &[INSTANCE, OTHER, "i-0bbbbbbbbbbbbbbb2"], &[&touch], &[]).await;
    let mut seen = Vec::new();
    let output = loop {
        let output = get(&client, &command_id, INSTANCE).await;
        if let Some(status) = output.status()
            && seen.last() != Some(status)
        {
            seen.push(status.clone());
        }
        if is_terminal(output.status()) {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(output.status(), Some(&CommandInvocationStatus::Success), "{output:?}");
    assert_eq!(seen.first(), Some(&CommandInvocationStatus::Pending), "{seen:?}");
    assert!(seen.contains(&CommandInvocationStatus::Delayed), "{seen:?}");
    for (instance, details) in [(OTHER, "Undeliverable"), ("i-0bbbbbbbbbbbbbbb2", "Terminated")] {
        let output = wait_until_ended(&client, &command_id, instance).await;
        assert_eq!(output.status(), Some(&CommandInvocationStatus::Failed), "{output:?}");
        assert_eq!(output.status_details(), Some(details));
        assert_eq!(output.response_code, NOT_RUN_RESPONSE_CODE);
    }
    let ran = std::fs::read_dir(marker.path()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(ran, 1, "only the delayed instance ran the command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_endpoint_kills_running_commands() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let client = endpoint.client();
    let pids = tempfile::tempdir().expect("tempdir");
    send(&client, &[INSTANCE], &[&sleeper(pids.path())], &[]).await;
    let shell = read_pid(&pids.path().join("shell.pid")).await;
    let sleep = read_pid(&pids.path().join("sleep.pid")).await;
    let scripts = endpoint.dir().to_owned();
    drop(endpoint);
    assert_gone(&[shell, sleep], "after the endpoint was dropped").await;
    assert!(!scripts.exists(), "the scripts directory is removed");
}

#[test]
fn requests_without_authorization_or_with_an_unknown_target_are_refused() {
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let post = |headers: &str| -> (String, Value) {
        let body = r#"{"CommandId":"x","InstanceId":"i-0123456789abcdef0"}"#;
        let mut stream = TcpStream::connect(endpoint.addr()).expect("connect to the endpoint");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-amz-json-1.1\r\n{headers}Content-Length: \
             {}\r\nConnection: close\r\n\r\n{body}",
            endpoint.addr(),
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no body in {response}"));
        (head.to_owned(), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
    };
    let (head, body) = post("X-Amz-Target: AmazonSSM.GetCommandInvocation\r\n");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-amzn-errortype: missingauthenticationtokenexception"), "{head}");
    assert_eq!(body["__type"], "MissingAuthenticationTokenException");
    let (head, body) =
        post("X-Amz-Target: AmazonSSM.DescribeInstanceInformation\r\nAuthorization: AWS4-HMAC-SHA256 x\r\n");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(body["__type"], "UnknownOperationException");
    let (head, body) = post("X-Amz-Target: AmazonSSM.GetCommandInvocation\r\nAuthorization: AWS4-HMAC-SHA256 x\r\n");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(body["__type"], "InvocationDoesNotExist");
    let logged: Vec<String> = endpoint.requests().into_iter().map(|r| r.operation).collect();
    assert_eq!(logged, ["GetCommandInvocation", "DescribeInstanceInformation", "GetCommandInvocation"]);
}
