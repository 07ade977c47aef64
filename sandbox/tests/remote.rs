//! The sandbox suite through a node: a [`RemoteBackend`] on the control
//! plane's side, [`sandbox::remote::serve`] on a loopback port in front of
//! the container backend. Every case the container backend passes must
//! pass the same way one hop away, with the same errors. Then what a
//! caller without the node's key, or with a malformed request, gets.

mod common;
#[path = "common/container.rs"]
mod container_harness;
mod suite;

use std::sync::Arc;

use common::Harness;
use sandbox::remote::{self, RemoteBackend};
use sandbox::{Error, PauseMode, Sandbox, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The container harness with its backend served by a node on a loopback
/// port, and the harness's backend replaced by the node's caller.
async fn node(test: &str) -> Option<(Harness, std::net::SocketAddr, String)> {
    let mut h = container_harness::harness("remote", test).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let key = format!("node-key-{}-{test}", std::process::id());
    tokio::spawn(remote::serve(
        h.backend.clone(),
        h.spec.image.clone(),
        key.clone(),
        listener,
    ));
    let caller = RemoteBackend::connect("test-node", addr, key.clone())
        .await
        .expect("the node describes itself");
    h.backend = Arc::new(caller);
    Some((h, addr, key))
}

async fn harness(test: &str) -> Option<Harness> {
    Some(node(test).await?.0)
}

suite::all_cases!(harness);

/// One raw exchange with the node: `request` as written, the answer line.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    stream.shutdown().await.expect("close the writing side");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_the_key_gets_nothing_done() {
    let (h, addr, key) = node("wrong-key").await.expect("harness");
    let impostor = RemoteBackend::connect("test-node", addr, format!("{key}x")).await;
    let error = impostor.expect_err("a wrong key is refused");
    assert!(
        matches!(&error, Error::Node { message, .. } if message.contains("key is wrong")),
        "{error}"
    );
    // Same length, one byte off.
    let mut near = key.clone().into_bytes();
    near[0] ^= 1;
    let near = String::from_utf8(near).expect("ascii");
    let request = format!(
        "{{\"v\":1,\"key\":\"{near}\",\"op\":{{\"op\":\"create\",\"vcpus\":1,\"mem_mib\":256,\
         \"disk_mib\":512,\"env\":[]}}}}\n"
    );
    let answer = exchange(addr, request.as_bytes()).await;
    assert!(answer.contains("\"refused\""), "{answer}");
    assert!(answer.contains("key is wrong"), "{answer}");
    let agent =
        format!("{{\"v\":1,\"key\":\"{near}\",\"op\":{{\"op\":\"agent\",\"id\":\"x\"}}}}\n");
    let answer = exchange(addr, agent.as_bytes()).await;
    assert!(answer.contains("key is wrong"), "{answer}");
    assert!(
        h.backend.list().await.expect("list").is_empty(),
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_and_the_node_serves_on() {
    let (h, addr, key) = node("malformed").await.expect("harness");
    let answer = exchange(addr, b"not json\n").await;
    assert!(answer.contains("malformed request"), "{answer}");
    let other_version = format!("{{\"v\":2,\"key\":\"{key}\",\"op\":{{\"op\":\"list\"}}}}\n");
    let answer = exchange(addr, other_version.as_bytes()).await;
    assert!(answer.contains("protocol version 2"), "{answer}");
    // A line past the limit, without a newline: refused once the limit is
    // read, not buffered to the end.
    let huge = vec![b'a'; usize::try_from(remote::MAX_REQUEST_BYTES).expect("fits") + 4096];
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(&huge).await;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    assert!(answer.contains("longer than"), "{answer}");
    // A caller that closes mid-line.
    let answer = exchange(addr, b"{\"v\":1").await;
    assert!(answer.contains("closed mid-line"), "{answer}");
    assert!(h.backend.list().await.is_ok(), "the node still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_their_kind_across_the_hop() {
    let (h, _, _) = node("errors").await.expect("harness");
    let missing = h.backend.get("no-such-sandbox").await.expect_err("missing");
    assert!(
        matches!(missing, Error::NotFound(ref id) if id == "no-such-sandbox"),
        "{missing}"
    );
    let mut spec = h.spec();
    spec.workspace = Some(h.data_dir.join("host-dir"));
    let refused = h.backend.create(spec).await.expect_err("a host directory");
    assert!(matches!(refused, Error::Unsupported { .. }), "{refused}");

    let sandbox = Sandbox::create(h.backend.clone(), h.spec())
        .await
        .expect("create");
    sandbox.pause(PauseMode::Memory).await.expect("pause");
    let paused = h
        .backend
        .exec(sandbox.id(), sandbox::Command::shell("true"))
        .await
        .expect_err("exec in a paused sandbox");
    assert!(
        matches!(
            paused,
            Error::WrongState {
                state: State::Paused,
                needed: "running",
                ..
            }
        ),
        "{paused}"
    );
    let none = h
        .backend
        .fork(sandbox.id(), 0)
        .await
        .expect_err("zero copies");
    assert!(
        matches!(none, Error::Invalid(_) | Error::WrongState { .. }),
        "{none}"
    );
    sandbox.destroy().await.expect("destroy");
}
