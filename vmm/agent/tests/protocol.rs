//! Connection-level behaviour: handshake, bad frames, health, lifecycle,
// Helpers outside #[test] functions unwrap too: this is test code.
#![allow(clippy::unwrap_used)]
//! power-off.

mod common;

use agent_proto::frame::{encode_into, read_frame};
use agent_proto::{
    Body, CONTROL_STREAM, ErrorKind, ExecRequest, ExitStatus, Forked, Frame, MAX_FRAME_BYTES,
    PROTOCOL_VERSION, StepOutcome,
};
use common::TestAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

async fn raw_hello(agent: &TestAgent, protocol: u32) -> (UnixStream, Option<Frame>) {
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    let mut buf = Vec::new();
    let hello = Frame::new(
        CONTROL_STREAM,
        Body::Hello {
            protocol,
            client: "raw".into(),
            token: None,
        },
    );
    encode_into(&hello, &mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    let reply = read_frame(&mut s, &mut buf).await.unwrap();
    (s, reply)
}

/// Reads frames until the agent closes; returns the connection error.
async fn closing_error(s: &mut UnixStream) -> agent_proto::RemoteError {
    let mut buf = Vec::new();
    let mut error = None;
    while let Some(f) = read_frame(s, &mut buf).await.unwrap() {
        if let (CONTROL_STREAM, Body::Error(e)) = (f.stream, f.body) {
            error = Some(e);
        }
    }
    error.expect("an error frame before close")
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let agent = TestAgent::start();
    let good = agent.connect().await;
    // A long exec on the good connection must survive the bad ones.
    let mut slow = good
        .exec(ExecRequest::shell("sleep 0.5; echo survived"))
        .await
        .unwrap();

    let (mut s, reply) = raw_hello(&agent, PROTOCOL_VERSION).await;
    assert!(matches!(reply.unwrap().body, Body::Welcome(_)));
    s.write_all(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    let e = closing_error(&mut s).await;
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.message.contains("length"), "{}", e.message);

    let (mut s, _) = raw_hello(&agent, PROTOCOL_VERSION).await;
    s.write_all(&[0, 0, 0, 4, 0xff, 0xfe, 0xfd, 0xfc])
        .await
        .unwrap();
    let e = closing_error(&mut s).await;
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.message.contains("decode"), "{}", e.message);

    let (mut s, reply) = raw_hello(&agent, PROTOCOL_VERSION + 1).await;
    match reply.unwrap().body {
        Body::Error(e) => assert!(e.message.contains("protocol"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // Garbage instead of a handshake.
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = closing_error(&mut s).await;

    let out = good
        .run(ExecRequest::argv(["echo", "still here"]))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"still here\n");
    let mut stdout = Vec::new();
    loop {
        match slow.next().await.unwrap().unwrap() {
            agent_proto::ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
            agent_proto::ExecEvent::Stderr(_) => {}
            agent_proto::ExecEvent::Exited(e) => {
                assert_eq!(e.status, ExitStatus::Code(0));
                break;
            }
        }
    }
    assert_eq!(stdout, b"survived\n");
    // A fresh connection works too.
    assert!(agent.connect().await.health().await.is_ok());
}

#[tokio::test]
async fn health_and_lifecycle_as_a_plain_process() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let w = c.welcome();
    assert_eq!(w.protocol, PROTOCOL_VERSION);
    assert_eq!(w.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!w.pid1);
    let h = c.health().await.unwrap();
    assert_eq!(h.hostname, w.hostname);
    // A plain process must not touch the host's RNG, clock or hostname.
    let report = c
        .forked(Forked {
            entropy: vec![7; 64],
            unix_time_ns: 0,
            hostname: "should-not-apply".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(report.clock, StepOutcome::Skipped(_)),
        "{report:?}"
    );
    assert!(
        matches!(report.hostname, StepOutcome::Skipped(_)),
        "{report:?}"
    );
    assert_ne!(c.health().await.unwrap().hostname, "should-not-apply");
}

#[tokio::test]
async fn poweroff_ends_a_plain_agent() {
    let mut agent = TestAgent::start();
    let c = agent.connect().await;
    c.poweroff().await.unwrap();
    let mut status = None;
    for _ in 0..100 {
        status = agent.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(status.expect("agent exited").success());
    // The client notices: operations fail at once instead of hanging.
    for _ in 0..100 {
        if c.is_closed() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(c.is_closed());
    assert!(matches!(
        c.health().await.unwrap_err(),
        agent_proto::ClientError::Closed
    ));
}

#[tokio::test]
async fn forked_reseeds_and_renames_in_its_own_uts_namespace() {
    // Needs root (CI runs as root): the agent manages "its system" inside a
    // fresh UTS namespace, so the host's hostname is untouched.
    let agent = TestAgent::start_with(&["unshare", "--uts"], &["--manage-system"]);
    let c = agent.connect().await;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let report = c
        .forked(Forked {
            entropy: (0..64).collect(),
            unix_time_ns: now_ns,
            hostname: "fork-7".into(),
        })
        .await
        .unwrap();
    assert_eq!(report.reseed, StepOutcome::Done, "{report:?}");
    assert_eq!(report.hostname, StepOutcome::Done, "{report:?}");
    // The clock is already right: it is left alone.
    assert!(
        matches!(report.clock, StepOutcome::Skipped(_)),
        "{report:?}"
    );
    let out = c.run(ExecRequest::argv(["hostname"])).await.unwrap();
    assert_eq!(out.stdout, b"fork-7\n");
    assert_ne!(host_hostname(), "fork-7");
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// The host side of a VMM's vsock device speaks `CONNECT <port>\n` /
/// `OK <port>\n` before the guest's bytes. The VMM cannot boot the guest
/// here, so this stands in for it: a strict bridge that accepts only the
/// agent's port and then relays to the agent's Unix socket.
async fn vsock_bridge(
    agent_socket: std::path::PathBuf,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let path = dir.join("vsock.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let agent_socket = agent_socket.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut line = String::new();
                s.read_line(&mut line).await.unwrap();
                if line != format!("CONNECT {}\n", agent_proto::DEFAULT_VSOCK_PORT) {
                    return; // refused: close without OK
                }
                s.get_mut().write_all(b"OK 1073741824\n").await.unwrap();
                let mut agent = UnixStream::connect(&agent_socket).await.unwrap();
                let _ = tokio::io::copy_bidirectional(s.get_mut(), &mut agent).await;
            });
        }
    });
    path
}

#[tokio::test]
async fn client_connects_through_a_vsock_proxy() {
    let agent = TestAgent::start();
    let bridge = vsock_bridge(agent.socket.clone(), agent.path()).await;
    let c = agent_proto::Client::connect_vsock_proxy(&bridge, agent_proto::DEFAULT_VSOCK_PORT)
        .await
        .unwrap();
    let out = c
        .run(ExecRequest::argv(["echo", "via vsock"]))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"via vsock\n");
    let err = agent_proto::Client::connect_vsock_proxy(&bridge, 9)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Handshake"), "{err}");
}

#[tokio::test]
async fn an_agent_with_a_token_serves_only_clients_that_present_it() {
    let agent = TestAgent::start_with(&["env", "SANDBOX_AGENT_TOKEN=s3cret-token"], &[]);
    let (_, reply) = raw_hello(&agent, PROTOCOL_VERSION).await;
    match reply.unwrap().body {
        Body::Error(e) => assert!(e.message.contains("token"), "{}", e.message),
        other => panic!("a Hello without the token was answered: {other:?}"),
    }
    let wrong = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    let refused = agent_proto::Client::handshake_with_token(wrong, Some("s3cret-tokex")).await;
    assert!(refused.is_err(), "a wrong token is refused");
    let right = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    let client = agent_proto::Client::handshake_with_token(right, Some("s3cret-token"))
        .await
        .unwrap();
    let out = client
        .run(ExecRequest::shell("echo \"[$SANDBOX_AGENT_TOKEN]\""))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"[]\n", "commands never see the agent's secret");
}
