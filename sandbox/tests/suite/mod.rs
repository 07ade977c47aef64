//! The sandbox suite, written once against `dyn Backend` and run for each
//! backend by `cases!` (see `tests/container.rs`, `tests/microvm.rs`).
//! Each case creates its own sandboxes on the harness's backend; the image
//! must have a POSIX shell with coreutils, `setsid` and `node`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use sandbox::{Command, Error, ExecEvent, Kept, PauseMode, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Harness, stays};

/// One `#[tokio::test]` per case, each on a harness from `$harness(name)`
/// (an `async fn(&str) -> Option<Harness>`; `None` means skipped), ignored
/// with a reason where the backend needs what the ordinary run lacks.
macro_rules! cases {
    ($harness:path: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                suite::run_case!($harness, $case);
            }
        )*
    };
    ($harness:path, ignore = $why:literal: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = $why]
            async fn $case() {
                suite::run_case!($harness, $case);
            }
        )*
    };
}
pub(crate) use cases;

/// The body of one case's test.
macro_rules! run_case {
    ($harness:path, $case:ident) => {
        if let Some(h) = $harness(stringify!($case)).await {
            suite::$case(&h).await;
        }
    };
}
pub(crate) use run_case;

/// Every case, for `cases!`.
macro_rules! all_cases {
    ($harness:path $(, ignore = $why:literal)?) => {
        suite::cases!($harness $(, ignore = $why)?:
            create_list_exec_destroy,
            exec_reports_status_output_stdin_env_cwd,
            exec_timeout_and_output_cap,
            exec_streams_chunks_then_exit,
            parallel_execs_keep_their_own_output,
            files_round_trip_and_stay_confined,
            port_forward_reaches_a_server_inside,
            pause_in_memory_keeps_a_process_running,
            pause_to_disk_keeps_what_it_says,
            fork_isolates_disks,
            stats_report_usage,
            missing_sandbox_is_not_found,
        );
    };
}
pub(crate) use all_cases;

pub(crate) async fn sh(h: &Harness, id: &str, script: &str) -> String {
    let out = h
        .backend
        .exec(id, Command::shell(script).timeout(Duration::from_secs(30)))
        .await
        .expect("exec");
    assert!(
        out.exited.status.success(),
        "`{script}` failed: {:?}\nstdout: {}\nstderr: {}",
        out.exited,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn create(h: &Harness) -> String {
    let info = h.backend.create(h.spec()).await.expect("create");
    assert_eq!(info.state, State::Running);
    assert_eq!(info.backend, h.backend.kind());
    info.id
}

/// A shell loop counting into `/root/counter`, detached from the exec.
pub(crate) const COUNTER: &str = "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/counter.new; mv /root/counter.new /root/counter; sleep 0.05; done' </dev/null >/dev/null 2>&1 &";

async fn counter(h: &Harness, id: &str) -> u64 {
    let text = sh(h, id, "cat /root/counter 2>/dev/null || echo 0").await;
    text.trim().parse().expect("counter value")
}

/// Waits (up to 30 s: emulated hardware is slow) until the counter has
/// passed `floor`, and returns its value. A counter that stopped fails the
/// case, and so does one that restarted from 1 (it reads below `floor`).
pub(crate) async fn counter_past(h: &Harness, id: &str, floor: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let value = counter(h, id).await;
        assert!(
            value >= floor,
            "the counter in {id} went back from {floor} to {value}"
        );
        if value > floor {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the counter in {id} stayed at {value}, not past {floor}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the end of the log a failure note names (`(log: PATH)`), which
/// goes with the test's data directory.
fn print_named_log(note: Option<&str>) {
    let Some(path) = note
        .and_then(|n| n.rsplit_once("(log: "))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(path, _)| path)
    else {
        return;
    };
    let tail = sandbox::microvm::vm::tail(std::path::Path::new(path), 16 << 10);
    println!("--- the end of {path}:\n{tail}");
}

/// `kept` is everything where the backend keeps processes, else the disk
/// alone with a note saying why.
pub(crate) fn assert_kept(h: &Harness, carried: &sandbox::Carried) {
    if h.keeps_processes {
        if carried.kept != [Kept::Disk, Kept::Memory, Kept::Processes] {
            print_named_log(carried.note.as_deref());
        }
        assert_eq!(
            carried.kept,
            [Kept::Disk, Kept::Memory, Kept::Processes],
            "{:?}",
            carried.note
        );
    } else {
        assert_eq!(carried.kept, [Kept::Disk]);
        let note = carried.note.as_deref().expect("a partial carry says why");
        println!("only the disk is kept here ({note})");
    }
}

pub async fn create_list_exec_destroy(h: &Harness) {
    let id = create(h).await;
    let listed = h.backend.list().await.expect("list");
    assert!(listed.iter().any(|s| s.id == id), "{listed:?}");
    assert_eq!(h.backend.get(&id).await.expect("get").state, State::Running);
    assert_eq!(sh(h, &id, "echo hello").await, "hello\n");
    assert!(
        !h.leftovers(&id).is_empty(),
        "the footprint names real paths"
    );

    h.backend.destroy(&id).await.expect("destroy");
    assert!(matches!(h.backend.get(&id).await, Err(Error::NotFound(_))));
    let listed = h.backend.list().await.expect("list");
    assert!(!listed.iter().any(|s| s.id == id), "{listed:?}");
    assert_eq!(h.leftovers(&id), Vec::<std::path::PathBuf>::new());
}

pub async fn exec_reports_status_output_stdin_env_cwd(h: &Harness) {
    let id = create(h).await;
    let out = h
        .backend
        .exec(&id, Command::shell("echo out; echo err >&2; exit 3"))
        .await
        .expect("exec");
    assert_eq!(out.exited.status.code(), 3);
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert!(!out.exited.truncated && !out.exited.timed_out);

    let out = h
        .backend
        .exec(&id, Command::new(["cat"]).stdin(b"from stdin".to_vec()))
        .await
        .expect("exec with stdin");
    assert_eq!(out.stdout, b"from stdin");

    let out = h
        .backend
        .exec(
            &id,
            Command::shell("echo $GREETING-$SPEC_VAR; pwd")
                .env("GREETING", "hi")
                .cwd("/tmp"),
        )
        .await
        .expect("exec with env and cwd");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi-from-spec\n/tmp\n");

    let missing = h.backend.exec(&id, Command::new(["/no/such/binary"])).await;
    assert!(
        missing.is_err() || missing.as_ref().is_ok_and(|o| !o.exited.status.success()),
        "{missing:?}"
    );
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn exec_timeout_and_output_cap(h: &Harness) {
    let id = create(h).await;
    let started = Instant::now();
    let out = h
        .backend
        .exec(
            &id,
            Command::new(["sleep", "30"]).timeout(Duration::from_millis(500)),
        )
        .await
        .expect("exec");
    assert!(out.exited.timed_out, "{:?}", out.exited);
    assert!(!out.exited.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    let out = h
        .backend
        .exec(
            &id,
            Command::shell("head -c 1000000 /dev/zero | tr '\\0' x; echo done >&2")
                .output_limit_bytes(1000),
        )
        .await
        .expect("exec");
    assert!(out.exited.truncated, "{:?}", out.exited);
    assert!(out.exited.status.success());
    assert!(
        out.stdout.len() + out.stderr.len() <= 1000,
        "{}",
        out.stdout.len()
    );
    assert!(out.stdout.iter().all(|b| *b == b'x'));
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn exec_streams_chunks_then_exit(h: &Harness) {
    let id = create(h).await;
    let mut stream = h
        .backend
        .exec_stream(
            &id,
            Command::shell("echo first; sleep 0.3; echo second >&2; exit 7"),
        )
        .await
        .expect("exec stream");
    assert!(stream.pid() > 0);
    let mut events = Vec::new();
    while let Some(event) = stream.next().await.expect("event") {
        events.push(event);
    }
    match events.as_slice() {
        [
            ExecEvent::Stdout(a),
            ExecEvent::Stderr(b),
            ExecEvent::Exited(exit),
        ] => {
            assert_eq!(
                (a.as_slice(), b.as_slice()),
                (&b"first\n"[..], &b"second\n"[..])
            );
            assert_eq!(exit.status.code(), 7);
        }
        other => panic!("unexpected events: {other:?}"),
    }
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn parallel_execs_keep_their_own_output(h: &Harness) {
    let id = create(h).await;
    let runs = (0..8).map(|i| {
        let id = id.clone();
        let backend = h.backend.clone();
        tokio::spawn(async move {
            let script = format!("sleep 0.{i}; echo out{i}; echo err{i} >&2; exit {i}");
            let out = backend
                .exec(&id, Command::shell(script))
                .await
                .expect("exec");
            (i, out)
        })
    });
    for run in runs.collect::<Vec<_>>() {
        let (i, out) = run.await.expect("task");
        assert_eq!(out.exited.status.code(), i);
        assert_eq!(out.stdout, format!("out{i}\n").as_bytes());
        assert_eq!(out.stderr, format!("err{i}\n").as_bytes());
    }
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn files_round_trip_and_stay_confined(h: &Harness) {
    let id = create(h).await;
    let b = &h.backend;
    b.write_file(&id, "notes/a.txt", b"alpha")
        .await
        .expect("write");
    assert_eq!(
        b.read_file(&id, "notes/a.txt").await.expect("read"),
        b"alpha"
    );
    // Relative paths live under /workspace; commands see the same file.
    assert_eq!(sh(h, &id, "cat /workspace/notes/a.txt").await, "alpha");
    b.write_file(&id, "/root/abs.bin", &[0, 1, 2, 255])
        .await
        .expect("write absolute");
    assert_eq!(
        b.read_file(&id, "/root/abs.bin").await.expect("read"),
        [0, 1, 2, 255]
    );
    let entries = b.list_files(&id, "notes").await.expect("list");
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.txt"]);
    assert_eq!(entries[0].stat.size, 5);

    b.delete_file(&id, "notes")
        .await
        .expect("delete a directory");
    let gone = b.read_file(&id, "notes/a.txt").await.expect_err("deleted");
    assert_eq!(
        gone.remote_kind(),
        Some(sandbox::ErrorKind::NotFound),
        "{gone}"
    );

    for bad in [
        "../../etc/passwd",
        "/workspace/../../etc/passwd",
        "a/../../b",
    ] {
        let read = b.read_file(&id, bad).await;
        assert!(
            matches!(read, Err(Error::PathEscapes { .. })),
            "{bad}: {read:?}"
        );
        let write = b.write_file(&id, bad, b"x").await;
        assert!(
            matches!(write, Err(Error::PathEscapes { .. })),
            "{bad}: {write:?}"
        );
        assert!(matches!(
            b.list_files(&id, bad).await,
            Err(Error::PathEscapes { .. })
        ));
        assert!(matches!(
            b.delete_file(&id, bad).await,
            Err(Error::PathEscapes { .. })
        ));
    }
    let root = b.delete_file(&id, "/").await;
    assert!(matches!(root, Err(Error::Invalid(_))), "{root:?}");
    // An absolute path is the sandbox's own, never the host's.
    b.write_file(&id, "/etc/sandbox-suite-marker", b"inside")
        .await
        .expect("write /etc");
    assert!(!std::path::Path::new("/etc/sandbox-suite-marker").exists());
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn port_forward_reaches_a_server_inside(h: &Harness) {
    let id = create(h).await;
    let server = "require('net').createServer(s => s.on('data', d => s.end('echo:' + d)))\
                  .listen(8080, '127.0.0.1', () => console.log('listening'))";
    let mut running = h
        .backend
        .exec_stream(&id, Command::new(["node", "-e", server]))
        .await
        .expect("start the server");
    match running.next().await.expect("server output") {
        Some(ExecEvent::Stdout(line)) => assert_eq!(line, b"listening\n"),
        other => panic!("server did not start: {other:?}"),
    }
    let mut port = h.backend.open_port(&id, 8080).await.expect("open port");
    port.write_all(b"ping").await.expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), port.read_to_end(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    assert_eq!(reply, b"echo:ping");

    let refused = h.backend.open_port(&id, 8081).await;
    assert!(refused.is_err(), "nothing listens on 8081");
    drop(running);
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn pause_in_memory_keeps_a_process_running(h: &Harness) {
    let id = create(h).await;
    sh(h, &id, COUNTER).await;
    let before = counter_past(h, &id, 0).await;

    let paused = h
        .backend
        .pause(&id, PauseMode::Memory)
        .await
        .expect("pause");
    assert_eq!(paused.state, State::Paused);
    assert_eq!(
        h.backend.stats(&id).await.expect("stats").state,
        State::Paused
    );
    let refused = h.backend.exec(&id, Command::new(["true"])).await;
    assert!(
        matches!(
            refused,
            Err(Error::WrongState {
                state: State::Paused,
                ..
            })
        ),
        "{refused:?}"
    );
    // The pause lasts a while, as a user's would, and holds all along.
    stays(
        Duration::from_millis(300),
        "the state of a paused sandbox",
        async || h.backend.stats(&id).await.expect("stats").state,
    )
    .await;

    let resumed = h.backend.resume(&id).await.expect("resume");
    assert_eq!(resumed.sandbox.state, State::Running);
    assert_eq!(resumed.kept, [Kept::Disk, Kept::Memory, Kept::Processes]);
    let at_resume = counter(h, &id).await;
    assert!(
        at_resume >= before,
        "the counter restarted: {before} {at_resume}"
    );
    counter_past(h, &id, at_resume).await;
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn pause_to_disk_keeps_what_it_says(h: &Harness) {
    let id = create(h).await;
    h.backend
        .write_file(&id, "/root/kept.txt", b"on disk")
        .await
        .expect("write");
    sh(h, &id, COUNTER).await;
    let before = counter_past(h, &id, 0).await;

    let paused = h
        .backend
        .pause(&id, PauseMode::Disk)
        .await
        .expect("pause to disk");
    assert_eq!(paused.state, State::PausedToDisk);
    let resumed = h.backend.resume(&id).await.expect("resume");
    println!("pause to disk kept {:?} ({:?})", resumed.kept, resumed.note);
    assert_kept(h, &resumed);
    assert_eq!(
        h.backend
            .read_file(&id, "/root/kept.txt")
            .await
            .expect("read"),
        b"on disk"
    );
    if h.keeps_processes {
        counter_past(h, &id, before).await;
    }
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn fork_isolates_disks(h: &Harness) {
    let parent = create(h).await;
    h.backend
        .write_file(&parent, "/root/who", b"parent")
        .await
        .expect("write");
    sh(h, &parent, COUNTER).await;
    let before = counter_past(h, &parent, 0).await;
    let forks = h.backend.fork(&parent, 2).await.expect("fork");
    assert_eq!(forks.len(), 2);
    for (i, fork) in forks.iter().enumerate() {
        println!(
            "fork {} kept {:?} ({:?})",
            fork.sandbox.id, fork.kept, fork.note
        );
        assert_kept(h, fork);
        assert_eq!(fork.sandbox.forked_from.as_deref(), Some(parent.as_str()));
        assert_ne!(fork.sandbox.id, parent);
        let child = &fork.sandbox.id;
        assert_eq!(
            h.backend.read_file(child, "/root/who").await.expect("read"),
            b"parent"
        );
        if h.keeps_processes {
            // A fresh process would count from 1 again and never pass it.
            counter_past(h, child, before).await;
        }
        h.backend
            .write_file(child, "/root/who", format!("child{i}").as_bytes())
            .await
            .expect("child writes");
    }
    h.backend
        .write_file(&parent, "/root/who", b"parent2")
        .await
        .expect("write");
    for (i, fork) in forks.iter().enumerate() {
        let seen = h
            .backend
            .read_file(&fork.sandbox.id, "/root/who")
            .await
            .expect("read");
        assert_eq!(seen, format!("child{i}").as_bytes());
    }
    assert_eq!(
        h.backend
            .read_file(&parent, "/root/who")
            .await
            .expect("read"),
        b"parent2"
    );
    let listed = h.backend.list().await.expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");

    // The parent can go first: its children keep their disks.
    h.backend.destroy(&parent).await.expect("destroy parent");
    let child = &forks[0].sandbox.id;
    assert_eq!(
        h.backend.read_file(child, "/root/who").await.expect("read"),
        b"child0"
    );
    for fork in &forks {
        h.backend
            .destroy(&fork.sandbox.id)
            .await
            .expect("destroy fork");
        assert_eq!(
            h.leftovers(&fork.sandbox.id),
            Vec::<std::path::PathBuf>::new()
        );
    }
    assert_eq!(h.leftovers(&parent), Vec::<std::path::PathBuf>::new());
}

pub async fn stats_report_usage(h: &Harness) {
    let id = create(h).await;
    sh(h, &id, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; head -c 4000000 /dev/urandom > /root/blob; sync").await;
    let stats = h.backend.stats(&id).await.expect("stats");
    assert_eq!(stats.state, State::Running);
    assert!(stats.memory_bytes > 0, "{stats:?}");
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    if let Some(disk) = stats.disk_bytes {
        // Counted once it reached the disk (`sync` above).
        assert!(disk >= 4_000_000, "the 4 MB blob is counted: {stats:?}");
    }
    h.backend.destroy(&id).await.expect("destroy");
}

pub async fn missing_sandbox_is_not_found(h: &Harness) {
    let b = &h.backend;
    assert!(matches!(b.get("nosuch").await, Err(Error::NotFound(_))));
    assert!(matches!(
        b.exec("nosuch", Command::new(["true"])).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(b.destroy("nosuch").await, Err(Error::NotFound(_))));
    assert!(matches!(b.resume("nosuch").await, Err(Error::NotFound(_))));
}
