//! The SSM polling state machine and status mapping against a mocked SDK client (aws-smithy-mocks): every status
//! path, without a server. The same paths run against a real HTTP endpoint in `tests/ssm/`.

use std::time::Duration;

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::error::ErrorMetadata;
use aws_sdk_ssm::operation::cancel_command::CancelCommandOutput;
use aws_sdk_ssm::operation::get_command_invocation::{GetCommandInvocationError, GetCommandInvocationOutput};
use aws_sdk_ssm::operation::send_command::{SendCommandError, SendCommandOutput};
use aws_sdk_ssm::types::error::{InvalidInstanceId, InvocationDoesNotExist};
use aws_sdk_ssm::types::{Command, CommandInvocationStatus};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use tokio::time::Instant;

use super::*;

const ID: &str = "11111111-2222-3333-4444-555555555555";
const INSTANCE: &str = "i-0123456789abcdef0";

fn settings() -> SsmSettings {
    SsmSettings::default()
}

fn invocation(status: CommandInvocationStatus, details: &str) -> GetCommandInvocationOutput {
    GetCommandInvocationOutput::builder()
        .command_id(ID)
        .instance_id(INSTANCE)
        .status(status)
        .status_details(details)
        .response_code(-1)
        .build()
}

fn finished(code: i32, stdout: &str, stderr: &str) -> GetCommandInvocationOutput {
    let status = if code == 0 { CommandInvocationStatus::Success } else { CommandInvocationStatus::Failed };
    GetCommandInvocationOutput::builder()
        .command_id(ID)
        .instance_id(INSTANCE)
        .status(status.clone())
        .status_details(status.as_str())
        .response_code(code)
        .standard_output_content(stdout)
        .standard_error_content(stderr)
        .build()
}

fn not_yet() -> GetCommandInvocationError {
    GetCommandInvocationError::InvocationDoesNotExist(InvocationDoesNotExist::builder().build())
}

fn throttled() -> GetCommandInvocationError {
    GetCommandInvocationError::generic(
        ErrorMetadata::builder().code("ThrottlingException").message("Rate exceeded").build(),
    )
}

fn internal() -> GetCommandInvocationError {
    GetCommandInvocationError::generic(ErrorMetadata::builder().code("InternalServerError").message("oops").build())
}

macro_rules! client {
    ($($rule:expr),+) => {
        mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [$($rule),+], |b| b.retry_config(RetryConfig::disabled()))
    };
}

async fn poll_far(client: &Client) -> Result<Polled, TransportError> {
    poll(client, &settings(), ID, INSTANCE, Instant::now() + Duration::from_secs(3600)).await
}

#[tokio::test(start_paused = true)]
async fn not_there_yet_then_pending_then_done() {
    let rule = mock!(Client::get_command_invocation)
        .sequence()
        .error(not_yet)
        .times(2)
        .output(|| invocation(CommandInvocationStatus::Pending, "Pending"))
        .output(|| invocation(CommandInvocationStatus::Delayed, "Delayed"))
        .output(|| invocation(CommandInvocationStatus::InProgress, "InProgress"))
        .output(|| finished(0, "out", "err"))
        .build();
    let client = client!(&rule);
    match poll_far(&client).await {
        Ok(Polled::Done(out)) => assert_eq!(out.response_code(), 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(rule.num_calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_and_goes_on() {
    let rule = mock!(Client::get_command_invocation)
        .sequence()
        .error(throttled)
        .times(3)
        .output(|| finished(3, "", ""))
        .build();
    let client = client!(&rule);
    let started = Instant::now();
    assert!(matches!(poll_far(&client).await, Ok(Polled::Done(_))));
    // 100 ms, then doubled for each throttle (capped at 3 s), each ±20 %: at least 0.08 + 0.24 + 0.48 + 0.96 s.
    assert!(started.elapsed() >= Duration::from_millis(1_700), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_command_that_never_appears_is_unreachable_after_the_grace() {
    let rule = mock!(Client::get_command_invocation).sequence().error(not_yet).repeatedly().build();
    let client = client!(&rule);
    match poll_far(&client).await {
        Err(TransportError::Unreachable(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn repeated_errors_end_the_run_and_single_ones_do_not() {
    let rule = mock!(Client::get_command_invocation)
        .sequence()
        .error(internal)
        .times(4)
        .output(|| finished(0, "", ""))
        .build();
    assert!(matches!(poll_far(&client!(&rule)).await, Ok(Polled::Done(_))), "4 in a row are tolerated");
    let rule = mock!(Client::get_command_invocation).sequence().error(internal).repeatedly().build();
    match poll_far(&client!(&rule)).await {
        Err(TransportError::LostMidRun(m)) => assert!(m.contains("5 GetCommandInvocation errors"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn every_ending_maps_to_its_transport_outcome() {
    use CommandInvocationStatus as S;
    let cases: Vec<(S, &str, &str)> = vec![
        (S::Failed, "Undeliverable", "unreachable"),
        (S::Failed, "Terminated", "lost"),
        (S::Failed, "InvalidPlatform", "spawn"),
        (S::Failed, "AccessDenied", "auth"),
        (S::Cancelled, "Cancelled", "lost"),
        (S::TimedOut, "DeliveryTimedOut", "unreachable"),
        (S::TimedOut, "ExecutionTimedOut", "done"),
        (S::Failed, "Failed", "done"),
        (S::Success, "Success", "done"),
    ];
    for (status, details, expected) in cases {
        let (s, d) = (status.clone(), details.to_owned());
        let rule = mock!(Client::get_command_invocation).then_output(move || invocation(s.clone(), &d));
        let got = match poll_far(&client!(&rule)).await {
            Ok(Polled::Done(_)) => "done",
            Ok(Polled::Deadline) => "deadline",
            Err(TransportError::Unreachable(_)) => "unreachable",
            Err(TransportError::LostMidRun(_)) => "lost",
            Err(TransportError::Spawn(_)) => "spawn",
            Err(TransportError::AuthFailed(_)) => "auth",
            Err(e) => panic!("{status:?}/{details}: {e}"),
        };
        assert_eq!(got, expected, "{status:?} / {details}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_polling_of_a_command_that_runs_on() {
    let rule = mock!(Client::get_command_invocation)
        .sequence()
        .output(|| invocation(CommandInvocationStatus::InProgress, "InProgress"))
        .repeatedly()
        .build();
    let got = poll(&client!(&rule), &settings(), ID, INSTANCE, Instant::now() + Duration::from_secs(20)).await;
    assert!(matches!(got, Ok(Polled::Deadline)), "{got:?}");
    assert!(rule.num_calls() >= 8, "polled all along: {}", rule.num_calls());
}

fn test_invocation(deadline: Duration) -> Invocation {
    Invocation {
        command: "bash --noprofile --norc -c 'boot'".into(),
        stdin: b"runner".to_vec(),
        deadline,
        stdout_cap: 1024,
        stderr_tail: 8192,
        stderr_budget: 4096,
        start_marker: b"rune-runner-start r1\n".to_vec(),
        cleanup: "bash --noprofile --norc -c 'kill'".into(),
        comment: "rune r1 corr-1".into(),
        session: None,
    }
}

fn target() -> SsmTarget {
    SsmTarget {
        instance_id: INSTANCE.into(),
        region: None,
        document: "AWS-RunShellScript".into(),
        document_version: None,
        output: None,
    }
}

fn sent() -> SendCommandOutput {
    SendCommandOutput::builder().command(Command::builder().command_id(ID).build()).build()
}

#[tokio::test(start_paused = true)]
async fn a_run_sends_one_command_with_its_comment_and_decodes_the_frame() {
    let send = mock!(Client::send_command)
        .match_requests(|r| {
            r.instance_ids() == [INSTANCE.to_owned()]
                && r.document_name() == Some("AWS-RunShellScript")
                && r.comment() == Some("rune r1 corr-1")
                && r.parameters().and_then(|p| p.get("executionTimeout")).map(Vec::as_slice) == Some(&["75".to_owned()])
        })
        .then_output(sent);
    // The frame as the wrapper prints it, nonce aside: the test cannot know the nonce, so the output is raw
    // (no frame) — the outcome is then what SSM returned, start marker included.
    let get = mock!(Client::get_command_invocation)
        .then_output(|| finished(0, "rune-runner-start r1\n{\"status\":\"ok\"}", "log line\n"));
    let client = client!(&send, &get);
    let raw = run(&client, None, &settings(), &target(), &test_invocation(Duration::from_secs(75))).await.unwrap();
    assert_eq!(raw.exit_code, Some(0));
    assert!(raw.runner_started);
    assert_eq!(raw.stdout, b"{\"status\":\"ok\"}");
    assert_eq!(raw.stderr_tail, b"log line\n");
    assert_eq!(send.num_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn at_the_deadline_the_command_is_cancelled_and_cleaned_up() {
    let send = mock!(Client::send_command).sequence().output(sent).times(2).build();
    let get = mock!(Client::get_command_invocation)
        .sequence()
        .output(|| invocation(CommandInvocationStatus::InProgress, "InProgress"))
        .repeatedly()
        .build();
    let cancel = mock!(Client::cancel_command)
        .match_requests(|r| r.command_id() == Some(ID) && r.instance_ids() == [INSTANCE.to_owned()])
        .then_output(|| CancelCommandOutput::builder().build());
    let client = client!(&send, &get, &cancel);
    let raw = run(&client, None, &settings(), &target(), &test_invocation(Duration::from_secs(5))).await.unwrap();
    assert!(raw.deadline_hit);
    assert_eq!(raw.exit_code, None);
    assert_eq!(cancel.num_calls(), 1);
    assert_eq!(send.num_calls(), 2, "the run, then its cleanup");
}

#[tokio::test(start_paused = true)]
async fn send_errors_map_to_statuses() {
    let unmanaged = mock!(Client::send_command)
        .then_error(|| SendCommandError::InvalidInstanceId(InvalidInstanceId::builder().build()));
    let denied = mock!(Client::send_command).then_error(|| {
        SendCommandError::generic(ErrorMetadata::builder().code("AccessDeniedException").message("no").build())
    });
    let invocation = test_invocation(Duration::from_secs(5));
    let got = run(&client!(&unmanaged), None, &settings(), &target(), &invocation).await;
    assert!(matches!(got, Err(TransportError::Unreachable(_))), "{got:?}");
    let got = run(&client!(&denied), None, &settings(), &target(), &invocation).await;
    assert!(matches!(got, Err(TransportError::AuthFailed(_))), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn a_command_still_pending_after_the_delivery_timeout_is_unreachable_and_cancelled() {
    let send = mock!(Client::send_command).sequence().output(sent).times(2).build();
    let get = mock!(Client::get_command_invocation)
        .sequence()
        .output(|| invocation(CommandInvocationStatus::Pending, "Pending"))
        .repeatedly()
        .build();
    let cancel = mock!(Client::cancel_command).then_output(|| CancelCommandOutput::builder().build());
    let client = client!(&send, &get, &cancel);
    let got = run(&client, None, &settings(), &target(), &test_invocation(Duration::from_secs(600))).await;
    match got {
        Err(TransportError::Unreachable(m)) => assert!(m.contains("did not reach the instance"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(cancel.num_calls(), 1, "a run RUNE stops following is cancelled");
    assert_eq!(send.num_calls(), 2, "and cleaned up");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_send_is_retried_by_rune() {
    let throttled = || {
        SendCommandError::generic(ErrorMetadata::builder().code("ThrottlingException").message("Rate exceeded").build())
    };
    let send = mock!(Client::send_command).sequence().error(throttled).times(2).output(sent).build();
    let get = mock!(Client::get_command_invocation).then_output(|| finished(0, "", ""));
    let client = client!(&send, &get);
    assert!(run(&client, None, &settings(), &target(), &test_invocation(Duration::from_secs(5))).await.is_ok());
    assert_eq!(send.num_calls(), 3);
}

#[test]
fn status_details_are_matched_as_ssm_spells_them() {
    use CommandInvocationStatus as S;
    assert!(matches!(ended_as(Some(&S::TimedOut), "Delivery Timed Out"), Err(TransportError::Unreachable(_))));
    assert!(matches!(ended_as(Some(&S::Failed), "Access Denied"), Err(TransportError::AuthFailed(_))));
    assert!(matches!(ended_as(Some(&S::Failed), "Invalid Platform"), Err(TransportError::Spawn(_))));
    assert!(matches!(ended_as(Some(&S::TimedOut), "Execution Timed Out"), Ok(true)));
}

#[test]
fn the_agents_exit_note_is_dropped_from_stderr() {
    assert_eq!(without_agent_note("rune: no bash\nfailed to run commands: exit status 125"), "rune: no bash\n");
    assert_eq!(without_agent_note("plain\n"), "plain\n");
    assert_eq!(without_agent_note("failed to run commands: exit status 1\n"), "");
}

#[tokio::test(start_paused = true)]
async fn a_send_whose_answer_is_lost_is_found_by_its_comment_not_sent_again() {
    use aws_sdk_ssm::operation::list_commands::ListCommandsOutput;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    let send = mock!(Client::send_command)
        .then_http_response(|| Response::new(StatusCode::try_from(503).unwrap(), SdkBody::from("{}")));
    let list = mock!(Client::list_commands).then_output(|| {
        ListCommandsOutput::builder()
            .commands(Command::builder().command_id(ID).comment("rune r1 corr-1").build())
            .build()
    });
    let get = mock!(Client::get_command_invocation).then_output(|| finished(0, "", ""));
    let client = client!(&send, &list, &get);
    let got = run(&client, None, &settings(), &target(), &test_invocation(Duration::from_secs(5))).await;
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(send.num_calls(), 1, "never sent twice");
    assert_eq!(get.num_calls(), 1, "the found command was followed");
}
