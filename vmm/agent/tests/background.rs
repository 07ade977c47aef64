//! Background processes through the real agent over a Unix socket: they
//! outlive the connection that started them, keep their output, follow,
//! list and take signals.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use agent_proto::{ExecRequest, ExitStatus};
use common::TestAgent;

async fn all_output(c: &agent_proto::Client, pid: u32, offset: u64, follow: bool) -> String {
    let mut output = c.process_output(pid, offset, follow).await.unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = output.next_chunk().await.unwrap() {
        text.extend(chunk);
    }
    String::from_utf8(text).unwrap()
}

#[tokio::test]
async fn a_background_process_outlives_its_connection_and_keeps_its_output() {
    let agent = TestAgent::start();
    let first = agent.connect().await;
    let pid = first
        .spawn(ExecRequest::shell(
            "echo started; sleep 0.1; echo oops >&2; read line < /dev/null; sleep 0.3; echo done",
        ))
        .await
        .unwrap();
    drop(first);

    let c = agent.connect().await;
    // Following ends when the process has exited and everything was sent.
    let text = tokio::time::timeout(Duration::from_secs(10), all_output(&c, pid, 0, true))
        .await
        .expect("following ends with the process");
    assert_eq!(text, "started\noops\ndone\n");
    let listed = c.processes().await.unwrap();
    let info = listed.iter().find(|p| p.pid == pid).unwrap();
    assert_eq!(info.exit, Some(ExitStatus::Code(0)));
    assert_eq!(info.output_bytes, text.len() as u64);
    assert!(info.command.starts_with("echo started"));
    // From an offset: only what came after it.
    assert_eq!(all_output(&c, pid, 8, false).await, "oops\ndone\n");
}

#[tokio::test]
async fn signals_reach_the_process_group_and_unknown_pids_are_errors() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let pid = c
        .spawn(ExecRequest::shell(
            "trap 'echo bye; exit 7' TERM; echo up; while :; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    let mut output = c.process_output(pid, 0, true).await.unwrap();
    assert_eq!(output.next_chunk().await.unwrap().unwrap(), b"up\n");
    c.signal(pid, libc::SIGTERM).await.unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), output.next_chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend(chunk);
    }
    // The whole group got it: the shell's `sleep` too (the shell may say
    // so, before or after), and the trap ran.
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("bye\n"), "{rest}");
    let info = c
        .processes()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.pid == pid)
        .unwrap();
    assert_eq!(info.exit, Some(ExitStatus::Code(7)));
    let message = |error: agent_proto::ClientError| match error {
        agent_proto::ClientError::Remote(remote) => remote.message,
        other => panic!("not the agent's refusal: {other}"),
    };
    let error = c.signal(pid, libc::SIGTERM).await.unwrap_err();
    assert!(message(error).contains("has exited"));
    let error = c.signal(999_999, libc::SIGTERM).await.unwrap_err();
    assert!(message(error).contains("no background process"));
    assert!(
        c.process_output(999_999, 0, false)
            .await
            .unwrap()
            .next_chunk()
            .await
            .is_err()
    );
}
