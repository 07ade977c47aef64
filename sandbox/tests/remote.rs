//! The sandbox suite through a node: a [`RemoteBackend`] on the control
//! plane's side, [`sandbox::remote::serve`] on a loopback port in front of
//! the container backend, in clear and (module `over_tls`) in TLS pinned to
//! the node's certificate. Every case the container backend passes must
//! pass the same way one hop away, with the same errors. Then what a
//! caller without the node's key, with a malformed request, pinning
//! another certificate (a node impersonated), or saying nothing, gets.
//! And a sandbox paused to disk moved from one node to another (export,
//! import, resume), whole, and refused whole when its stream was damaged
//! or cut on the way.

mod common;
#[path = "common/container.rs"]
mod container_harness;
mod suite;

use std::sync::Arc;

use common::Harness;
use sandbox::remote::{self, NodeIdentity, RemoteBackend};
use sandbox::{Backend, Error, PauseMode, Sandbox, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The container harness with its backend served by a node on a loopback
/// port (in TLS as `identity` when given), and the harness's backend
/// replaced by the node's caller.
async fn node_with(
    test: &str,
    identity: Option<NodeIdentity>,
) -> Option<(Harness, std::net::SocketAddr, String)> {
    let mut h = container_harness::harness("remote", test).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let key = format!("node-key-{}-{test}", std::process::id());
    let (backend, image) = (h.backend.clone(), h.spec.image.clone());
    let caller = match identity {
        None => {
            tokio::spawn(remote::serve(backend, image, key.clone(), listener));
            RemoteBackend::connect("test-node", addr, key.clone()).await
        }
        Some(identity) => {
            let pin = identity.fingerprint().to_owned();
            let served = key.clone();
            tokio::spawn(async move {
                remote::serve_tls(backend, image, served, listener, &identity).await
            });
            RemoteBackend::connect_tls("test-node", addr, key.clone(), &pin).await
        }
    };
    h.backend = Arc::new(caller.expect("the node describes itself"));
    Some((h, addr, key))
}

async fn node(test: &str) -> Option<(Harness, std::net::SocketAddr, String)> {
    node_with(test, None).await
}

async fn harness(test: &str) -> Option<Harness> {
    Some(node(test).await?.0)
}

suite::all_cases!(harness);

/// The same suite, every connection in TLS.
mod over_tls {
    use super::*;
    use crate::suite;

    async fn harness(test: &str) -> Option<Harness> {
        let identity = NodeIdentity::generate().expect("a TLS identity");
        Some(node_with(&format!("tls-{test}"), Some(identity)).await?.0)
    }

    suite::all_cases!(harness);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_reached_only_with_the_certificate_it_reported() {
    let identity = NodeIdentity::generate().expect("a TLS identity");
    let pin = identity.fingerprint().to_owned();
    let (h, addr, key) = node_with("tls-pin", Some(identity)).await.expect("harness");
    // Someone else's certificate: an impersonator on the node's address
    // would present one of its own, not the node's.
    let other = NodeIdentity::generate().expect("another identity");
    let refused = RemoteBackend::connect_tls("test-node", addr, key.clone(), other.fingerprint())
        .await
        .expect_err("a certificate other than the pinned one is refused");
    assert!(
        matches!(&refused, Error::Node { message, .. } if message.contains("not the one it reported")),
        "{refused}"
    );
    // A caller in clear gets no answer from a TLS node.
    assert!(
        RemoteBackend::connect("test-node", addr, key.clone())
            .await
            .is_err()
    );
    assert!(
        RemoteBackend::connect_tls("test-node", addr, key.clone(), "beef")
            .await
            .is_err()
    );
    // The pinned one works, and the node holds nothing from the others.
    let pinned = RemoteBackend::connect_tls("test-node", addr, key, &pin)
        .await
        .expect("the reported certificate is accepted");
    assert!(pinned.list().await.expect("list").is_empty());
    drop(h);
}

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
async fn a_connection_that_says_nothing_is_dropped_within_the_request_time() {
    // In TLS: the handshake and the request share the deadline, so a
    // peer that never says hello frees its slot as soon as one that never
    // sends a request does.
    let identity = NodeIdentity::generate().expect("a TLS identity");
    let (h, addr, _) = node_with("silent", Some(identity)).await.expect("harness");
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        remote::REQUEST_TIMEOUT + std::time::Duration::from_secs(5),
        silent.read_to_end(&mut rest),
    )
    .await;
    assert!(ended.is_ok(), "the node kept a silent connection open");
    assert!(
        started.elapsed() >= remote::REQUEST_TIMEOUT - std::time::Duration::from_secs(1),
        "dropped before its time: {:?}",
        started.elapsed()
    );
    assert!(h.backend.list().await.is_ok(), "the node still serves");
}

/// One address holding connections open without a request gets at most
/// its share: the next is closed at once, and a caller from another
/// address (the control plane) is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_the_node_with_silent_connections() {
    let (h, addr, _) = node("silent-flood").await.expect("harness");
    let from_elsewhere = || async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind another loopback address");
        socket.connect(addr).await.expect("connect")
    };
    let mut silent = Vec::new();
    for _ in 0..remote::MAX_PENDING_PER_SOURCE {
        silent.push(from_elsewhere().await);
    }
    // The next from the same address: closed without a word, well before
    // the request time would have dropped it.
    let mut over = from_elsewhere().await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        over.read_to_end(&mut rest),
    )
    .await;
    assert!(
        matches!(ended, Ok(Ok(0))),
        "a connection past the share was kept: {ended:?}"
    );
    // The silent ones are still open, and the node serves others.
    assert!(h.backend.list().await.is_ok(), "the node still serves");
    let mut byte = [0u8; 1];
    let still = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        silent[0].read(&mut byte),
    )
    .await;
    assert!(
        still.is_err(),
        "a pending connection closed early: {still:?}"
    );
    // Once they go, the address may connect again.
    drop(silent);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut again = from_elsewhere().await;
    let still =
        tokio::time::timeout(std::time::Duration::from_millis(500), again.read(&mut byte)).await;
    assert!(still.is_err(), "the address stayed shut out: {still:?}");
}

/// A control plane asking a node many things at once stays within the
/// node's share for its address: every call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_at_once_from_one_caller_are_all_answered() {
    let (h, _, _) = node("many-calls").await.expect("harness");
    let calls = (0..200).map(|_| {
        let backend = h.backend.clone();
        tokio::spawn(async move { backend.list().await })
    });
    let mut failed = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        if let Err(error) = call.await.expect("the call ran") {
            failed.push(error.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} calls failed: {failed:?}",
        failed.len()
    );
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

/// Every byte of `stream`.
async fn all_of(mut stream: sandbox::Carrier<'static>) -> Vec<u8> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.expect("the stream");
    bytes
}

/// A stream source that never sends another byte.
struct Stalled;

impl tokio::io::AsyncRead for Stalled {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

/// A stream source that fails when read.
struct Broken;

impl tokio::io::AsyncRead for Broken {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("the source broke")))
    }
}

/// A sandbox paused to disk on one node is exported, imported on another
/// node (another data directory, another node process), and resumed there
/// with its disk, memory and processes, and keeps them through a pause to
/// disk there; the first keeps its copy until it is destroyed. A stream damaged, cut or lengthened on the way, or whose
/// source breaks, is refused, and leaves nothing on the node that took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_paused_to_disk_moves_to_another_node_whole_or_not_at_all() {
    let Some((from, _, _)) = node("move-from").await else {
        return;
    };
    let (to, _, _) = node("move-to").await.expect("a second node");
    let id = from.backend.create(from.spec()).await.expect("create").id;
    from.backend
        .write_file(&id, "/root/kept.txt", b"moved along")
        .await
        .expect("write");
    suite::sh(&from, &id, suite::COUNTER).await;
    let before = suite::counter_past(&from, &id, 0).await;
    from.backend
        .pause(&id, PauseMode::Disk)
        .await
        .expect("pause to disk");
    let bytes = all_of(from.backend.export(&id).await.expect("export")).await;
    assert!(bytes.starts_with(b"FRGMOVE1"), "{} bytes", bytes.len());

    // Damaged: the last byte of the checksum; cut: its last ten bytes.
    let mut damaged = bytes.clone();
    *damaged.last_mut().expect("bytes") ^= 0x55;
    let refused = to
        .backend
        .import(&id, to.spec(), Box::pin(std::io::Cursor::new(damaged)))
        .await
        .expect_err("a damaged stream is refused");
    assert!(refused.to_string().contains("SHA-256"), "{refused}");
    assert_eq!(to.leftovers(&id), Vec::<std::path::PathBuf>::new());
    let cut = bytes[..bytes.len() - 10].to_vec();
    let refused = to
        .backend
        .import(&id, to.spec(), Box::pin(std::io::Cursor::new(cut)))
        .await
        .expect_err("a cut stream is refused");
    assert!(refused.to_string().contains("ended"), "{refused}");
    assert_eq!(to.leftovers(&id), Vec::<std::path::PathBuf>::new());
    // Longer: a whole stream with more after it (padding that a relay
    // checking what it forwards has not let through yet).
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    let refused = to
        .backend
        .import(&id, to.spec(), Box::pin(std::io::Cursor::new(longer)))
        .await
        .expect_err("a stream going on after its end is refused");
    assert!(refused.to_string().contains("goes on after"), "{refused}");
    assert_eq!(to.leftovers(&id), Vec::<std::path::PathBuf>::new());
    // Broken at its source half way (an old node, or an object store,
    // failing): refused with the source's reason, without waiting for the
    // node's whole answer time, leaving nothing.
    let half = bytes[..bytes.len() / 2].to_vec();
    let broken = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(half), Broken);
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        to.backend.import(&id, to.spec(), Box::pin(broken)),
    )
    .await
    .expect("a broken source is answered at once")
    .expect_err("a broken stream is refused");
    assert!(
        refused.to_string().contains("the source broke"),
        "{refused}"
    );
    assert_eq!(to.leftovers(&id), Vec::<std::path::PathBuf>::new());

    // A copy whose processes cannot be restored there (a checkpoint
    // image lost) does not start afresh without them: the resume fails,
    // so the move keeps the old copy.
    if to.keeps_processes {
        let stream = from.backend.export(&id).await.expect("export");
        to.backend
            .import(&id, to.spec(), stream)
            .await
            .expect("import");
        let images = to
            .data_dir
            .join("layers")
            .join(format!(".images-{id}"))
            .join("checkpoint");
        std::fs::remove_file(images.join("pstree.img")).expect("a checkpoint image");
        let refused = to
            .backend
            .resume(&id)
            .await
            .expect_err("no restore, no start");
        assert!(refused.to_string().contains("restoring"), "{refused}");
        to.backend
            .destroy(&id)
            .await
            .expect("destroy the broken copy");
    }

    // Whole: streamed from one node straight to the other.
    let stream = from.backend.export(&id).await.expect("export");
    let landed = to
        .backend
        .import(&id, to.spec(), stream)
        .await
        .expect("import");
    assert_eq!(
        (landed.id.as_str(), landed.state),
        (id.as_str(), State::PausedToDisk)
    );
    // Once there, a second import of it is refused.
    let again = from.backend.export(&id).await.expect("export");
    let refused = to
        .backend
        .import(&id, to.spec(), again)
        .await
        .expect_err("the node has it already");
    assert!(refused.to_string().contains("already has"), "{refused}");
    let resumed = to
        .backend
        .resume(&id)
        .await
        .expect("resume on the other node");
    suite::assert_kept(&to, &resumed);
    assert_eq!(
        to.backend
            .read_file(&id, "/root/kept.txt")
            .await
            .expect("read"),
        b"moved along"
    );
    if to.keeps_processes {
        suite::counter_past(&to, &id, before).await;
    }
    // Checkpointed again where its groups have another parent, it keeps
    // everything once more.
    let before = suite::counter_past(&to, &id, 0).await;
    to.backend
        .pause(&id, PauseMode::Disk)
        .await
        .expect("pause to disk on the other node");
    let resumed = to.backend.resume(&id).await.expect("resume there again");
    suite::assert_kept(&to, &resumed);
    if to.keeps_processes {
        suite::counter_past(&to, &id, before).await;
    }
    assert_eq!(
        from.backend.get(&id).await.expect("the old copy").state,
        State::PausedToDisk
    );
    from.backend.destroy(&id).await.expect("the old copy goes");
    assert_eq!(from.leftovers(&id), Vec::<std::path::PathBuf>::new());

    to.backend.destroy(&id).await.expect("destroy");
    // A running sandbox does not export.
    let running = from.backend.create(from.spec()).await.expect("create").id;
    let refused = from
        .backend
        .export(&running)
        .await
        .err()
        .expect("a running sandbox does not move");
    assert!(refused.to_string().contains("paused to disk"), "{refused}");
    from.backend.destroy(&running).await.expect("destroy");
}

/// A node takes at most `MAX_IMPORTS` imports at once: streams that stall
/// (a caller that sends a little and then nothing) hold their turns, and
/// the next import waits until one of them goes, then lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stages_a_bounded_number_of_imports_at_once() {
    let Some((from, _, _)) = node("imports-from").await else {
        return;
    };
    let (to, _, _) = node("imports-to").await.expect("a second node");
    let id = from.backend.create(from.spec()).await.expect("create").id;
    from.backend
        .pause(&id, PauseMode::Disk)
        .await
        .expect("pause to disk");
    let bytes = all_of(from.backend.export(&id).await.expect("export")).await;

    let stalled: Vec<_> = (0..sandbox::remote::MAX_IMPORTS)
        .map(|n| {
            let backend = to.backend.clone();
            let spec = to.spec();
            let head = bytes[..64].to_vec();
            tokio::spawn(async move {
                let stalling = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(head), Stalled);
                let _ = backend
                    .import(&format!("stalled{n}"), spec, Box::pin(stalling))
                    .await;
            })
        })
        .collect();
    // Their turns taken, the whole stream waits.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let landing = {
        let backend = to.backend.clone();
        let (spec, id, whole) = (to.spec(), id.clone(), bytes.clone());
        tokio::spawn(async move {
            backend
                .import(&id, spec, Box::pin(std::io::Cursor::new(whole)))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!landing.is_finished(), "the third import waits its turn");
    assert_eq!(
        to.leftovers(&id),
        Vec::<std::path::PathBuf>::new(),
        "waiting, not staging"
    );
    stalled[0].abort();
    let landed = tokio::time::timeout(std::time::Duration::from_secs(60), landing)
        .await
        .expect("it lands once a turn is free")
        .expect("the task")
        .expect("the import");
    assert_eq!(landed.state, State::PausedToDisk);
    for task in &stalled {
        task.abort();
    }
    to.backend.destroy(&id).await.expect("destroy");
    from.backend.destroy(&id).await.expect("destroy");
}
