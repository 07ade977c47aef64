//! `Client::close` ends the connection for every holder of the client and
//! waits for the agent's side, as a checkpoint needs: no socket of the
//! connection may be left in the sandbox when CRIU looks.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agent_proto::frame::{read_frame, write_frame};
use agent_proto::{Body, Client, ExecRequest, Frame, Health, PROTOCOL_VERSION};
use tokio::sync::oneshot;

#[tokio::test]
async fn close_ends_the_connection_while_other_holders_keep_the_client() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (saw_end, end) = oneshot::channel();
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(theirs);
        let mut buf = Vec::new();
        let hello = read_frame(&mut r, &mut buf).await.unwrap().unwrap();
        assert!(matches!(hello.body, Body::Hello { .. }));
        let welcome = Health {
            protocol: PROTOCOL_VERSION,
            agent_version: "test".into(),
            image_version: None,
            pid1: true,
            hostname: "box".into(),
            uptime_ms: 0,
        };
        write_frame(&mut w, &Frame::new(0, Body::Welcome(welcome)))
            .await
            .unwrap();
        // Read until the host's side ends, then close ours, as the agent
        // does.
        while let Ok(Some(_)) = read_frame(&mut r, &mut buf).await {}
        let _ = saw_end.send(());
    });
    let client = Client::handshake(ours).await.unwrap();
    // Another holder, as a network link or a kept cache entry would be.
    let other = client.clone();
    assert!(
        client.close(Duration::from_secs(5)).await,
        "the agent's side closed in time"
    );
    tokio::time::timeout(Duration::from_secs(1), end)
        .await
        .expect("the agent saw the end of the connection")
        .unwrap();
    assert!(other.is_closed());
    assert!(other.exec(ExecRequest::shell("true")).await.is_err());
}
