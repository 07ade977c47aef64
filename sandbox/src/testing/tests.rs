use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::{ErrorKind, ExecEvent, Image};

fn spec() -> Spec {
    Spec::new(Image::root("/nowhere"))
}

async fn running(backend: &MemorySandboxes) -> String {
    backend.create(spec()).await.expect("create").id
}

fn assert_wrong_state(result: Result<impl std::fmt::Debug>, state: State) {
    match result {
        Err(Error::WrongState { state: got, .. }) => assert_eq!(got, state),
        other => panic!("expected WrongState({state:?}), got {other:?}"),
    }
}

#[tokio::test]
async fn lifecycle_follows_the_real_backends_state_rules() {
    let backend = MemorySandboxes::new();
    let id = running(&backend).await;
    assert_eq!(backend.get(&id).await.expect("get").state, State::Running);

    let paused = backend.pause(&id, PauseMode::Memory).await.expect("pause");
    assert_eq!(paused.state, State::Paused);
    // Pausing in memory again is a no-op, as in both real backends.
    assert_eq!(
        backend
            .pause(&id, PauseMode::Memory)
            .await
            .expect("again")
            .state,
        State::Paused
    );
    assert_wrong_state(backend.fork(&id, 1).await, State::Paused);
    assert_wrong_state(backend.agent(&id).await, State::Paused);

    let on_disk = backend.pause(&id, PauseMode::Disk).await.expect("to disk");
    assert_eq!(on_disk.state, State::PausedToDisk);
    assert_wrong_state(
        backend.pause(&id, PauseMode::Memory).await,
        State::PausedToDisk,
    );
    let resumed = backend.resume(&id).await.expect("resume");
    assert_eq!(resumed.sandbox.state, State::Running);
    assert_eq!(resumed.kept, vec![Kept::Disk]);
    assert!(resumed.note.is_some());

    let forks = backend.fork(&id, 3).await.expect("fork");
    assert_eq!(forks.len(), 3);
    for fork in &forks {
        assert_eq!(fork.sandbox.forked_from.as_deref(), Some(id.as_str()));
        assert_eq!(fork.sandbox.state, State::Running);
    }
    assert!(matches!(backend.fork(&id, 0).await, Err(Error::Invalid(_))));
    assert_eq!(backend.list().await.expect("list").len(), 4);

    backend.crash(&id).expect("crash");
    assert_wrong_state(backend.resume(&id).await, State::Crashed);
    assert_wrong_state(backend.pause(&id, PauseMode::Disk).await, State::Crashed);
    backend.destroy(&id).await.expect("destroy");
    for result in [
        backend.get(&id).await.map(|_| ()),
        backend.destroy(&id).await,
        backend.pause(&id, PauseMode::Memory).await.map(|_| ()),
        backend.resume(&id).await.map(|_| ()),
        backend.fork(&id, 1).await.map(|_| ()),
    ] {
        assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
    }
    let created: Vec<_> = backend
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::Create)
        .collect();
    assert_eq!(created.len(), 1);
}

#[tokio::test]
async fn exec_answers_with_the_scripted_reply_and_unknown_commands_exit_127() {
    let backend = MemorySandboxes::new();
    let id = running(&backend).await;
    backend.respond_to("echo hi", Reply::ok("hi\n"));
    backend.respond(|invocation| {
        (invocation.argv[0] == "cat").then(|| Reply::ok(invocation.stdin.clone()).stderr("done"))
    });
    let out = backend
        .exec(&id, Command::shell("echo hi"))
        .await
        .expect("echo");
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exited.status, ExitStatus::Code(0));
    let cat = backend
        .exec(&id, Command::new(["cat"]).stdin("piped"))
        .await
        .expect("cat");
    assert_eq!(
        (cat.stdout.as_slice(), cat.stderr.as_slice()),
        (&b"piped"[..], &b"done"[..])
    );
    let missing = backend
        .exec(&id, Command::shell("make"))
        .await
        .expect("make");
    assert_eq!(missing.exited.status, ExitStatus::Code(127));
    let cut = backend
        .exec(&id, Command::shell("echo hi").output_limit_bytes(1))
        .await
        .expect("cut");
    assert_eq!(
        (cut.stdout.as_slice(), cut.exited.truncated),
        (&b"h"[..], true)
    );

    let mut stream = backend
        .exec_stream(&id, Command::shell("echo hi"))
        .await
        .expect("stream");
    assert_eq!(
        stream.next().await.expect("stdout"),
        Some(ExecEvent::Stdout(b"hi\n".to_vec()))
    );
    assert!(matches!(
        stream.next().await.expect("exit"),
        Some(ExecEvent::Exited(_))
    ));
    assert_eq!(backend.execs().len(), 5);
}

#[tokio::test]
async fn a_gate_holds_an_exec_in_flight_and_dropping_the_stream_cancels_it() {
    let backend = MemorySandboxes::new();
    let (a, b) = (running(&backend).await, running(&backend).await);
    let gate = backend.hold_on(Operation::Exec, &a);
    let stream = backend
        .exec_stream(&a, Command::shell("sleep 100"))
        .await
        .expect("started");
    gate.arrived(1).await;
    // Another sandbox's exec is not held.
    backend
        .exec(&b, Command::shell("true"))
        .await
        .expect("b runs");
    assert_eq!(backend.execs()[0].ending, None);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.execs()[0].ending != Some(Ending::Cancelled) {
        assert!(Instant::now() < deadline, "{:?}", backend.execs());
        tokio::task::yield_now().await;
    }
    // Open, the gate lets the next exec of `a` through.
    gate.open();
    backend
        .exec(&a, Command::shell("true"))
        .await
        .expect("a runs");
}

#[tokio::test]
async fn a_held_lifecycle_operation_waits_until_the_gate_opens() {
    let backend = Arc::new(MemorySandboxes::new());
    let id = running(&backend).await;
    let gate = backend.hold(Operation::Pause);
    let pausing = {
        let (backend, id) = (backend.clone(), id.clone());
        tokio::spawn(async move { backend.pause(&id, PauseMode::Memory).await })
    };
    gate.arrived(1).await;
    assert_eq!(backend.get(&id).await.expect("get").state, State::Running);
    gate.open();
    let paused = pausing.await.expect("join").expect("paused");
    assert_eq!(paused.state, State::Paused);
}

#[tokio::test]
async fn injected_failures_fail_the_next_call_only() {
    let backend = MemorySandboxes::new();
    backend.fail_next(Operation::Create, Error::Invalid("no room".into()));
    assert!(matches!(
        backend.create(spec()).await,
        Err(Error::Invalid(_))
    ));
    let id = running(&backend).await;
    backend.fail_next(
        Operation::Exec,
        Error::Unresponsive {
            id: id.clone(),
            what: "an exec".into(),
            secs: 60,
        },
    );
    assert!(matches!(
        backend.exec(&id, Command::shell("true")).await,
        Err(Error::Unresponsive { .. })
    ));
    backend
        .exec(&id, Command::shell("true"))
        .await
        .expect("second exec");
    backend.fail_next(Operation::Fork, Error::Invalid("disk full".into()));
    assert!(backend.fork(&id, 2).await.is_err());
    assert_eq!(backend.len(), 1, "a failed fork leaves no copy");
}

#[tokio::test]
async fn files_are_confined_kept_across_pauses_and_copied_by_forks() {
    let backend = MemorySandboxes::new();
    let id = running(&backend).await;
    backend
        .write_file(&id, "src/main.rs", b"fn main() {}")
        .await
        .expect("write");
    assert_eq!(
        backend
            .read_file(&id, "/workspace/src/main.rs")
            .await
            .expect("read"),
        b"fn main() {}"
    );
    assert!(matches!(
        backend.read_file(&id, "../etc/passwd").await,
        Err(Error::PathEscapes { .. })
    ));
    let missing = backend.read_file(&id, "/nope").await.expect_err("missing");
    assert_eq!(missing.remote_kind(), Some(ErrorKind::NotFound));
    let names: Vec<_> = backend
        .list_files(&id, "/workspace")
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["src"]);

    backend.pause(&id, PauseMode::Disk).await.expect("pause");
    assert!(backend.read_file(&id, "src/main.rs").await.is_err());
    backend.resume(&id).await.expect("resume");
    let fork = backend.fork(&id, 1).await.expect("fork")[0]
        .sandbox
        .id
        .clone();
    backend
        .delete_file(&id, "src")
        .await
        .expect("delete in the parent");
    assert_eq!(
        backend
            .files(&fork)
            .expect("fork files")
            .read("/workspace/src/main.rs"),
        Some(b"fn main() {}".to_vec())
    );
    assert_eq!(
        backend
            .files(&id)
            .expect("files")
            .read("/workspace/src/main.rs"),
        None
    );
}

#[tokio::test]
async fn pausing_to_disk_closes_the_agent_connection() {
    let backend = MemorySandboxes::new();
    let id = running(&backend).await;
    let agent = backend.agent(&id).await.expect("agent");
    backend.pause(&id, PauseMode::Disk).await.expect("pause");
    assert!(agent.exec(Command::shell("true")).await.is_err());
    backend.resume(&id).await.expect("resume");
    let fresh = backend.agent(&id).await.expect("agent again");
    fresh.exec(Command::shell("true")).await.expect("exec");
}
