//! Exec through the real agent over a Unix socket.
// Helpers outside #[test] functions unwrap too: this is test code.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use agent_proto::{ExecEvent, ExecRequest, ExitStatus, PtySize};
use common::{TestAgent, eventually, pattern, processes_with, written_by};

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let out = c.run(ExecRequest::argv(["true"])).await.unwrap();
    assert_eq!(out.exited.status, ExitStatus::Code(0));
    let out = c.run(ExecRequest::shell("exit 3")).await.unwrap();
    assert_eq!(out.exited.status, ExitStatus::Code(3));
    let out = c.run(ExecRequest::shell("kill -TERM $$")).await.unwrap();
    assert_eq!(out.exited.status, ExitStatus::Signal(libc::SIGTERM));
    assert!(!out.exited.timed_out);
    let err = c
        .exec(ExecRequest::argv(["/nonexistent/binary"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn env_cwd_and_uid_apply() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let mut req = ExecRequest::shell("echo \"$GREETING\"; pwd; id -u");
    req.env.push(("GREETING".into(), "hello there".into()));
    req.cwd = Some("/tmp".into());
    req.uid = Some(65534);
    req.gid = Some(65534);
    let out = c.run(req).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello there\n/tmp\n65534\n"
    );
}

#[tokio::test]
async fn what_an_exec_runs_is_the_oom_killers_first_choice_whatever_its_user() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    for (uid, pty) in [(None, false), (Some(65534), false), (Some(65534), true)] {
        let mut req = ExecRequest::shell("cat /proc/self/oom_score_adj");
        req.uid = uid;
        req.gid = uid;
        req.pty = pty.then_some(PtySize { rows: 24, cols: 80 });
        let out = c.run(req).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "500",
            "as uid {uid:?}, pty {pty}"
        );
    }
}

#[tokio::test]
async fn stdin_round_trips_binary_data_byte_exact() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let data = pattern(3 * 1024 * 1024 + 17);
    let mut req = ExecRequest::argv(["cat"]);
    req.stdin = true;
    let exec = c.exec(req).await.unwrap();
    let input = exec.input();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move { input.write_all_and_close(&data).await })
    };
    let out = exec.output().await.unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(out.exited.status, ExitStatus::Code(0));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdout differs from stdin");
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_order() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let out = c
        .run(ExecRequest::shell(
            "i=0; while [ $i -lt 500 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
        ))
        .await
        .unwrap();
    let expect = |p: &str| (0..500).map(|i| format!("{p}{i}\n")).collect::<String>();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expect("out"));
    assert_eq!(String::from_utf8(out.stderr).unwrap(), expect("err"));
}

#[tokio::test]
async fn fifty_mib_of_output_flows_in_bounded_memory() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let total: u64 = 50 * 1024 * 1024;
    let mut exec = c
        .exec(ExecRequest::shell(format!(
            "head -c {total} /dev/zero; echo done >&2"
        )))
        .await
        .unwrap();
    let rss_before = agent.rss_kib();
    // Nothing is read: the agent must stall the process, not buffer.
    let written = stalled(&["head", "-c", &total.to_string(), "/dev/zero"]).await;
    assert!(written < total, "the process wrote all {written} bytes");
    let rss_stalled = agent.rss_kib();
    assert!(
        rss_stalled < rss_before + 24 * 1024,
        "agent grew from {rss_before} KiB to {rss_stalled} KiB while the client did not read"
    );
    let (mut got, mut err) = (0u64, Vec::new());
    let exited = loop {
        match exec.next().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => {
                assert!(b.iter().all(|&x| x == 0));
                got += b.len() as u64;
            }
            ExecEvent::Stderr(b) => err.extend_from_slice(&b),
            ExecEvent::Exited(e) => break e,
        }
    };
    assert_eq!(got, total);
    assert_eq!(err, b"done\n");
    assert_eq!(exited.status, ExitStatus::Code(0));
    assert!(!exited.truncated);
    let peak = common::status_field(agent.pid(), "VmHWM:");
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");
}

/// How long what the tests wait for may take.
const WAIT: Duration = Duration::from_secs(30);

/// Waits until the process running `argv` stops writing, and returns how
/// much it wrote: a writer that is not blocked writes megabytes in the
/// 200 ms it must stay still.
async fn stalled(argv: &[&str]) -> u64 {
    let mut last: Option<(u64, Instant)> = None;
    eventually(WAIT, "the writer stalling", async || {
        let now = written_by(argv).ok_or("no such process (did it write everything?)")?;
        match last {
            Some((before, since)) if before == now => {
                if since.elapsed() >= Duration::from_millis(200) {
                    return Ok(now);
                }
            }
            _ => last = Some((now, Instant::now())),
        }
        Err("still writing")
    })
    .await
}

#[tokio::test]
async fn output_cap_truncates_and_says_so() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let mut req = ExecRequest::shell("head -c 1000000 /dev/zero; echo tail >&2");
    req.output_limit_bytes = Some(1000);
    let out = c.run(req).await.unwrap();
    assert_eq!(out.stdout.len() + out.stderr.len(), 1000);
    assert!(out.exited.truncated);
    assert_eq!(out.exited.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let marker = format!("{}.{}", 800_000 + std::process::id() % 100_000, 4321);
    let mut req = ExecRequest::shell(format!(
        "sleep {marker} & sh -c 'sleep {marker}' & echo started; wait"
    ));
    req.timeout_ms = Some(700);
    let out = c.run(req).await.unwrap();
    assert_eq!(out.stdout, b"started\n");
    assert!(out.exited.timed_out);
    assert_eq!(out.exited.status, ExitStatus::Signal(libc::SIGKILL));
    // Killed grandchildren are reaped by the agent (child subreaper).
    let mut left = processes_with(&marker);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = processes_with(&marker);
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[tokio::test]
async fn cancel_and_dropping_the_exec_kill_the_process() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let marker = format!("{}.{}", 700_000 + std::process::id() % 100_000, 77);
    let exec = c
        .exec(ExecRequest::shell(format!("sleep {marker}; echo never")))
        .await
        .unwrap();
    exec.input().cancel().await.unwrap();
    let out = exec.output().await.unwrap();
    assert_eq!(out.exited.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(out.stdout.is_empty());

    let exec = c
        .exec(ExecRequest::shell(format!("sleep {marker}")))
        .await
        .unwrap();
    let pid = exec.pid();
    drop(exec);
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        processes_with(&marker).is_empty(),
        "dropped exec still runs"
    );
}

#[tokio::test]
async fn twenty_execs_run_at_once() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let barrier = agent.path().join("barrier");
    std::fs::create_dir(&barrier).unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let dir = barrier.display().to_string();
        tasks.push(tokio::spawn(async move {
            // Each exec waits until all twenty have started: this passes only
            // if they really run concurrently.
            let mut req = ExecRequest::shell(format!(
                "touch {dir}/{i}; n=0; while [ $(ls {dir} | wc -l) -lt 20 ]; do sleep 0.02; n=$((n+1)); [ $n -gt 500 ] && exit 9; done; echo exec{i}"
            ));
            req.timeout_ms = Some(30_000);
            c.run(req).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap();
        assert_eq!(out.exited.status, ExitStatus::Code(0), "exec {i}");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("exec{i}\n"));
    }
}

#[tokio::test]
async fn pty_exec_has_a_terminal_and_resizes() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    let mut req = ExecRequest::shell(
        "test -t 0 && echo tty; stty size; read line; stty size; echo got:$line",
    );
    req.pty = Some(PtySize { rows: 24, cols: 80 });
    let mut exec = c.exec(req).await.unwrap();
    let input = exec.input();
    let mut seen = String::new();
    let mut sent = false;
    let exited = loop {
        match exec.next().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            ExecEvent::Stderr(_) => panic!("a terminal has no separate stderr"),
            ExecEvent::Exited(e) => break e,
        }
        if !sent && seen.contains("24 80") {
            sent = true;
            // One exec's frames arrive in order, and the agent resizes the
            // terminal as it takes the frame: before it passes on the line.
            input
                .resize(PtySize {
                    rows: 40,
                    cols: 120,
                })
                .await
                .unwrap();
            input.write(b"hello\n").await.unwrap();
        }
    };
    assert_eq!(exited.status, ExitStatus::Code(0), "{seen}");
    assert!(seen.contains("tty"), "{seen}");
    assert!(seen.contains("40 120"), "{seen}");
    assert!(seen.contains("got:hello"), "{seen}");
}

#[tokio::test]
async fn losing_the_connection_kills_its_processes() {
    use agent_proto::frame::{encode_into, read_frame};
    use agent_proto::{Body, Frame, PROTOCOL_VERSION};
    use tokio::io::AsyncWriteExt;

    let agent = TestAgent::start();
    let marker = format!("{}.{}", 600_000 + std::process::id() % 100_000, 55);
    {
        // A raw connection that simply goes away, as when the host side
        // crashes: no Cancel is ever sent.
        let mut s = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        let mut buf = Vec::new();
        let hello = Body::Hello {
            protocol: PROTOCOL_VERSION,
            client: "test".into(),
            token: None,
        };
        encode_into(&Frame::new(0, hello), &mut buf).unwrap();
        let exec = ExecRequest::shell(format!("sleep {marker} & sleep {marker}"));
        encode_into(&Frame::new(1, Body::Exec(exec)), &mut buf).unwrap();
        s.write_all(&buf).await.unwrap();
        let welcome = read_frame(&mut s, &mut buf).await.unwrap().unwrap();
        assert!(matches!(welcome.body, Body::Welcome(_)));
        let started = read_frame(&mut s, &mut buf).await.unwrap().unwrap();
        assert!(matches!(started.body, Body::Started { .. }), "{started:?}");
        // The shell and its two sleeps.
        eventually(WAIT, "the exec's processes", async || {
            let running = processes_with(&marker).len();
            if running >= 2 {
                Ok(running)
            } else {
                Err(running)
            }
        })
        .await;
    }
    let mut left = processes_with(&marker);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = processes_with(&marker);
    }
    assert!(
        left.is_empty(),
        "processes outlived their connection: {left:?}"
    );
}

#[tokio::test]
async fn an_unread_exec_does_not_stall_the_connection() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    // Produces far more than the flow-control window; nobody reads it.
    let mut flood = c
        .exec(ExecRequest::shell("head -c 100000000 /dev/zero"))
        .await
        .unwrap();
    stalled(&["head", "-c", "100000000", "/dev/zero"]).await;
    for i in 0..5 {
        let out = c
            .run(ExecRequest::argv(["echo", &format!("other {i}")]))
            .await
            .unwrap();
        assert_eq!(out.stdout, format!("other {i}\n").as_bytes());
    }
    c.write_file("/side.txt", b"side channel", 0o644)
        .await
        .unwrap();
    assert_eq!(c.read_file("/side.txt").await.unwrap(), b"side channel");
    // The flood is still intact once read.
    let mut got = 0usize;
    while let Some(ev) = flood.next().await.unwrap() {
        if let ExecEvent::Stdout(b) = ev {
            got += b.len();
        }
    }
    assert_eq!(got, 100_000_000);
}
