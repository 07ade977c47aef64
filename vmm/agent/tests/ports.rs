//! Port forwarding through the real agent to servers on loopback.
// Helpers outside #[test] functions unwrap too: this is test code.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_proto::{ClientError, ErrorKind};
use common::{TestAgent, eventually, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A minimal HTTP server: answers every request with its path in the body.
async fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap()
                    .to_owned();
                let path = line.split(' ').nth(1).unwrap().to_owned();
                let body = format!("hello from {path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    port
}

/// Reads until the client half-closes, then answers with what it got
/// reversed and closes: exercises half-close in both directions.
async fn reverse_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                all.reverse();
                s.write_all(&all).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    port
}

#[tokio::test]
async fn http_through_a_spliced_host_listener() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let port = http_server().await;
    // The forge's side: a host listener whose connections are spliced to
    // the sandbox port.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let fc = c.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = front.accept().await.unwrap();
            let stream = fc.open_port(port).await.unwrap();
            tokio::spawn(async move { stream.splice(s).await.unwrap() });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..16 {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(front_addr).await.unwrap();
            s.write_all(format!("GET /page{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            resp
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let resp = t.await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(resp.ends_with(&format!("hello from /page{i}")), "{resp}");
    }
}

#[tokio::test]
async fn half_close_works_both_ways_with_binary_data() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let port = reverse_server().await;
    let data = pattern(3 * 1024 * 1024);
    let mut stream = c.open_port(port).await.unwrap();
    stream.write(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    while let Some(chunk) = stream.read().await.unwrap() {
        back.extend_from_slice(&chunk);
    }
    back.reverse();
    assert!(back == data, "data differs after the round trip");
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    match c.open_port(port).await.unwrap_err() {
        ClientError::Remote(e) => assert_eq!(e.kind, ErrorKind::ConnectionRefused),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sandbox_connections_reach_the_host_through_a_listen_stream() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    // The host-side services the sandbox is allowed to reach.
    let http = http_server().await;
    let reverse = reverse_server().await;
    let mut listener = c.listen(0).await.unwrap();
    let inside_port = listener.port();
    assert_ne!(inside_port, 0);
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let relay = tokio::spawn(async move {
        let mut n = 0u16;
        loop {
            let Ok(stream) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            // First eight connections go to the HTTP server, the rest to
            // the reversing server.
            let target = if n < 8 { http } else { reverse };
            n += 1;
            tokio::spawn(async move {
                let host = tokio::net::TcpStream::connect(("127.0.0.1", target))
                    .await
                    .unwrap();
                stream.splice(host).await.unwrap();
            });
        }
    });

    // "Sandbox processes" connecting to the agent's listener.
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", inside_port))
                .await
                .unwrap();
            s.write_all(format!("GET /out{i} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            resp
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let resp = t.await.unwrap();
        assert!(resp.ends_with(&format!("hello from /out{i}")), "{resp}");
    }
    let data = pattern(2 * 1024 * 1024 + 5);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", inside_port))
        .await
        .unwrap();
    let (mut rd, mut wr) = s.split();
    let (back, _) = tokio::join!(
        async {
            let mut back = Vec::new();
            rd.read_to_end(&mut back).await.unwrap();
            back
        },
        async {
            wr.write_all(&data).await.unwrap();
            wr.shutdown().await.unwrap();
        }
    );
    let mut back = back;
    back.reverse();
    assert!(back == data, "half-closed round trip differs");

    // A connection accepted before the listener closes outlives it.
    let earlier = accepted.load(Ordering::SeqCst);
    let mut kept = tokio::net::TcpStream::connect(("127.0.0.1", inside_port))
        .await
        .unwrap();
    kept.write_all(b"abc").await.unwrap();
    eventually(
        std::time::Duration::from_secs(10),
        "the relay accepting the connection",
        async || match accepted.load(Ordering::SeqCst) {
            now if now > earlier => Ok(now),
            now => Err(now),
        },
    )
    .await;

    // Closing the listen stream closes the port inside the sandbox.
    relay.abort();
    let _ = relay.await;
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", inside_port))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener stayed open after the stream closed");
    kept.write_all(b"def").await.unwrap();
    kept.shutdown().await.unwrap();
    let mut back = String::new();
    kept.read_to_string(&mut back).await.unwrap();
    assert_eq!(back, "fedcba");
}
