//! The client against an agent that breaks the protocol's bounds on
//! purpose: what the client buffers must stay bounded, and the operation
//! must fail with a clear reason instead of the host growing.
#![allow(clippy::unwrap_used)]

use agent_proto::frame::{read_frame, write_frame};
use agent_proto::{
    Body, CHUNK_BYTES, Client, ClientError, ExecRequest, Frame, Health, INITIAL_WINDOW_BYTES,
    PROTOCOL_VERSION,
};
use serde_bytes::ByteBuf;
use tokio::io::DuplexStream;

/// A fake agent on one end of a pipe: answers the `Hello`, waits for the
/// first operation, then runs `misbehave` with the stream id it opened.
async fn fake_agent<F, Fut>(io: DuplexStream, misbehave: F)
where
    F: FnOnce(DuplexStream, u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut r, mut w) = tokio::io::split(io);
    let mut buf = Vec::new();
    let hello = read_frame(&mut r, &mut buf).await.unwrap().unwrap();
    assert!(matches!(hello.body, Body::Hello { .. }));
    let welcome = Health {
        protocol: PROTOCOL_VERSION,
        agent_version: "hostile".into(),
        image_version: None,
        pid1: true,
        hostname: "evil".into(),
        uptime_ms: 0,
    };
    write_frame(&mut w, &Frame::new(0, Body::Welcome(welcome)))
        .await
        .unwrap();
    let op = read_frame(&mut r, &mut buf).await.unwrap().unwrap();
    misbehave(r.unsplit(w), op.stream).await;
}

async fn client_against<F, Fut>(misbehave: F) -> Client
where
    F: FnOnce(DuplexStream, u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(8 << 20);
    tokio::spawn(fake_agent(theirs, misbehave));
    Client::handshake(ours).await.unwrap()
}

#[tokio::test]
async fn output_beyond_the_window_closes_the_connection() {
    let client = client_against(|mut io, stream| async move {
        write_frame(&mut io, &Frame::new(stream, Body::Started { pid: 7 }))
            .await
            .unwrap();
        // Twice the window, without waiting for a single credit.
        let chunk = ByteBuf::from(vec![b'x'; CHUNK_BYTES]);
        for _ in 0..(2 * INITIAL_WINDOW_BYTES as usize / CHUNK_BYTES) {
            let frame = Frame::new(stream, Body::Stdout(chunk.clone()));
            if write_frame(&mut io, &frame).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    })
    .await;
    let mut exec = client.exec(ExecRequest::shell("true")).await.unwrap();
    // Let the flood arrive before reading any of it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut received = 0usize;
    let err = loop {
        match exec.next().await {
            Ok(Some(agent_proto::ExecEvent::Stdout(b))) => received += b.len(),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(&err, ClientError::Misbehaved(reason) if reason.contains("window")),
        "{err:?}"
    );
    assert!(
        received <= INITIAL_WINDOW_BYTES as usize,
        "{received} bytes delivered"
    );
    assert!(client.is_closed());
}

#[tokio::test]
async fn endless_small_frames_close_the_connection() {
    let client = client_against(|mut io, stream| async move {
        write_frame(&mut io, &Frame::new(stream, Body::Started { pid: 7 }))
            .await
            .unwrap();
        // Frames that cost no window, forever.
        loop {
            let frame = Frame::new(stream, Body::Listening { port: 1 });
            if write_frame(&mut io, &frame).await.is_err() {
                return;
            }
        }
    })
    .await;
    let _exec = client.exec(ExecRequest::shell("true")).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !client.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client kept queueing frames"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn large_replies_and_runaway_credit_close_the_connection() {
    // Bodies that cost no window but most of a megabyte each.
    let client = client_against(|mut io, stream| async move {
        write_frame(&mut io, &Frame::new(stream, Body::Started { pid: 7 }))
            .await
            .unwrap();
        loop {
            let fat = Health {
                protocol: PROTOCOL_VERSION,
                agent_version: "hostile".into(),
                image_version: None,
                pid1: true,
                hostname: "x".repeat(900 * 1024),
                uptime_ms: 0,
            };
            let frame = Frame::new(stream, Body::Welcome(fat));
            if write_frame(&mut io, &frame).await.is_err() {
                return;
            }
        }
    })
    .await;
    let _exec = client.exec(ExecRequest::shell("true")).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !client.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client kept queueing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Credit that would grow the client's send window past its size.
    let client = client_against(|mut io, stream| async move {
        write_frame(&mut io, &Frame::new(stream, Body::Started { pid: 7 }))
            .await
            .unwrap();
        for _ in 0..4 {
            let credit = Frame::new(stream, Body::Credit(u32::MAX));
            if write_frame(&mut io, &credit).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    })
    .await;
    let _exec = client.exec(ExecRequest::shell("true")).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !client.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "runaway credit was accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_dropped_stream_gives_its_queued_bytes_back() {
    // A well-behaved agent: 512 KiB of output per exec, then the exit.
    let (ours, theirs) = tokio::io::duplex(8 << 20);
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(theirs);
        let mut buf = Vec::new();
        read_frame(&mut r, &mut buf).await.unwrap().unwrap();
        let welcome = Health {
            protocol: PROTOCOL_VERSION,
            agent_version: "fair".into(),
            image_version: None,
            pid1: true,
            hostname: "fair".into(),
            uptime_ms: 0,
        };
        write_frame(&mut w, &Frame::new(0, Body::Welcome(welcome)))
            .await
            .unwrap();
        while let Ok(Some(frame)) = read_frame(&mut r, &mut buf).await {
            if !matches!(frame.body, Body::Exec(_)) {
                continue;
            }
            let id = frame.stream;
            write_frame(&mut w, &Frame::new(id, Body::Started { pid: 1 }))
                .await
                .unwrap();
            for _ in 0..8 {
                let chunk = ByteBuf::from(vec![b'o'; CHUNK_BYTES]);
                write_frame(&mut w, &Frame::new(id, Body::Stdout(chunk)))
                    .await
                    .unwrap();
            }
        }
    });
    let client = Client::handshake(ours).await.unwrap();
    // Far more than the connection bound in total, each dropped unread.
    for _ in 0..300 {
        let exec = client.exec(ExecRequest::shell("true")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        drop(exec);
    }
    assert!(
        !client.is_closed(),
        "dropped streams must not count for ever"
    );
}

#[tokio::test]
async fn accepted_connections_past_the_bound_are_refused_one_by_one() {
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel();
    let client = client_against(|io, stream| async move {
        let (mut r, mut w) = tokio::io::split(io);
        write_frame(&mut w, &Frame::new(stream, Body::Listening { port: 3128 }))
            .await
            .unwrap();
        // A sandbox flooding its listener: a thousand connections at once.
        for i in 0..1000u32 {
            let accepted = Body::Accepted { stream: 2 * i + 2 };
            write_frame(&mut w, &Frame::new(stream, accepted))
                .await
                .unwrap();
        }
        let mut cancelled = std::collections::BTreeSet::new();
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while let Ok(Ok(Some(frame))) =
            tokio::time::timeout_at(deadline, read_frame(&mut r, &mut buf)).await
        {
            if matches!(frame.body, Body::Cancel) {
                cancelled.insert(frame.stream);
            }
        }
        let _ = cancelled_tx.send(cancelled);
        std::future::pending::<()>().await;
    })
    .await;
    let mut listener = client.listen(3128).await.unwrap();
    let cancelled = cancelled_rx.await.unwrap();
    let max = agent_proto::client::MAX_PENDING_ACCEPTS as u32;
    let past: std::collections::BTreeSet<u32> = (max..1000).map(|i| 2 * i + 2).collect();
    assert_eq!(
        cancelled, past,
        "the connections past the bound, and only they"
    );
    assert!(!client.is_closed(), "the agent connection goes on");
    for _ in 0..max {
        listener.accept().await.unwrap();
    }
}
