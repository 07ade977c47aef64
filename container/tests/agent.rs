//! The sandbox agent as PID 1 of container sandboxes: readiness, exec and
//! files through agent-proto, lifecycle notices on fork and resume, and the
//! toolchain of the real guest image when it is built.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use agent_proto::{ExecRequest, StepOutcome};
use common::{TestBackend, eventually, host_usr_root};
use sandbox_container::{Kept, PauseMode};
use test_support::requirements;

async fn run(client: &agent_proto::Client, argv: &[&str]) -> (i32, String) {
    let out = client
        .run(ExecRequest::argv(argv.iter().copied()))
        .await
        .expect("exec through the agent");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.exited.status.code(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_is_pid1_and_serves_exec_and_files() {
    let t = TestBackend::start("agent");
    let sandbox = t
        .backend()
        .create(t.agent_request(host_usr_root(), true))
        .expect("create with agent");
    let client = t.backend().agent(&sandbox.id).await.expect("agent client");
    assert!(client.welcome().pid1, "the agent runs as PID 1");
    assert_eq!(client.welcome().hostname, sandbox.id);

    let (code, text) = run(&client, &["cat", "/proc/1/comm"]).await;
    assert_eq!((code, text.trim()), (0, "sandbox-agent"));
    let (code, text) = run(&client, &["node", "--version"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with('v'), "node --version: {text}");
    let (code, text) = run(&client, &["git", "--version"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("git version"), "{text}");

    client
        .write_file("/workspace/hello.txt", b"from the agent", 0o644)
        .await
        .expect("write through the agent");
    // The host-side exec path sees the same file system.
    let seen = t.backend().exec(
        &sandbox.id,
        &sandbox_container::ExecRequest::new(["/bin/cat", "/workspace/hello.txt"]),
    );
    assert_eq!(seen.expect("setns exec").stdout, b"from the agent");
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_and_resume_notify_the_agent() {
    let t = TestBackend::start("agentfork");
    let parent = t
        .backend()
        .create(t.agent_request(host_usr_root(), true))
        .expect("create");
    let client = t.backend().agent(&parent.id).await.expect("client");
    client
        .write_file("/workspace/state", b"parent", 0o644)
        .await
        .expect("write");

    let forks = t.backend().fork(&parent.id, 2).expect("fork");
    for fork in &forks {
        assert_eq!(fork.kept, vec![Kept::Disk]);
        let report = fork.agent.as_ref().expect("the agent got a forked notice");
        // Without CAP_SYS_ADMIN the agent cannot set the hostname or reseed
        // the kernel RNG; the launcher already named the fork, and a fork
        // starts fresh processes, so nothing stale is shared.
        assert!(
            matches!(report.hostname, StepOutcome::Failed(_) | StepOutcome::Done),
            "{report:?}"
        );
        let child = t
            .backend()
            .agent(&fork.sandbox.id)
            .await
            .expect("child client");
        assert_eq!(
            child.read_file("/workspace/state").await.expect("read"),
            b"parent"
        );
        let (_, host) = run(&child, &["hostname"]).await;
        assert_eq!(host.trim(), fork.sandbox.id);
    }

    t.backend()
        .pause(&parent.id, PauseMode::Memory)
        .expect("pause");
    let resumed = t.backend().resume(&parent.id).expect("resume");
    assert!(resumed.agent.is_some(), "the agent got a resumed notice");
    let client = t
        .backend()
        .agent(&parent.id)
        .await
        .expect("client after resume");
    assert_eq!(
        client.read_file("/workspace/state").await.expect("read"),
        b"parent"
    );

    t.backend()
        .pause(&parent.id, PauseMode::Disk)
        .expect("pause to disk");
    let resumed = t.backend().resume(&parent.id).expect("resume from disk");
    assert_eq!(resumed.kept, vec![Kept::Disk]);
    let client = t
        .backend()
        .agent(&parent.id)
        .await
        .expect("client after disk resume");
    assert_eq!(
        client.read_file("/workspace/state").await.expect("read"),
        b"parent"
    );
}

/// Data directory whose `images/` the image tests look in (and the ignored
/// `build_guest_image` fills): `FORGE_DATA_DIR`, else `/var/lib/forge`.
fn image_data_dir() -> PathBuf {
    std::env::var_os("FORGE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/forge"))
}

/// The newest built guest image's root directory: `SANDBOX_IMAGE_ROOT` when
/// set, else from the guest-image cache of [`image_data_dir`].
fn guest_image_root() -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("SANDBOX_IMAGE_ROOT") {
        return Some(PathBuf::from(root)).filter(|p| p.join("usr/bin").is_dir());
    }
    guest_image::list(&image_data_dir())
        .ok()?
        .into_iter()
        .next()
        .map(|image| image.rootfs)
        .filter(|p| p.join("usr/bin").is_dir())
}

/// Build the guest image into [`image_data_dir`] (slow: debootstrap, Node,
/// Bun). `cargo test -p sandbox-container --test agent -- --ignored`.
#[test]
#[ignore]
fn build_guest_image() {
    let options = guest_image::BuildOptions::new(image_data_dir(), common::agent_binary());
    let image = guest_image::build(&options, |p| println!("{p}")).expect("image builds");
    println!("built {} at {}", image.id, image.rootfs.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn real_image_has_node_bun_and_git() {
    let Some(image) = guest_image_root() else {
        let why = format!(
            "no built guest image in {}/images (or set SANDBOX_IMAGE_ROOT)",
            image_data_dir().display()
        );
        requirements::missing(requirements::Requirement::GuestImage, &why);
        return;
    };
    let t = TestBackend::start("image");
    // The host's agent, as the forge binds it: the image's own may speak an
    // older protocol.
    let request = t.agent_request(image, false);
    let sandbox = t.backend().create(request).expect("create on the image");
    let client = t.backend().agent(&sandbox.id).await.expect("client");
    for (argv, expect) in [
        (["node", "--version"], "v"),
        (["bun", "--version"], ""),
        (["git", "--version"], "git version"),
    ] {
        let (code, text) = run(&client, &argv).await;
        assert_eq!(code, 0, "{argv:?}: {text}");
        assert!(
            text.starts_with(expect) && !text.trim().is_empty(),
            "{argv:?}: {text}"
        );
        println!("{}: {}", argv.join(" "), text.trim());
    }
    let (_, comm) = run(&client, &["cat", "/proc/1/comm"]).await;
    assert_eq!(comm.trim(), "sandbox-agent", "the host's agent is PID 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_with_checkpoint_keeps_a_process_started_through_the_agent() {
    let t = TestBackend::start("agentcriu");
    if !t.require_criu() {
        return;
    }
    let parent = t
        .backend()
        .create(t.agent_request(host_usr_root(), true))
        .expect("create");
    {
        let client = t.backend().agent(&parent.id).await.expect("client");
        let mut counter = ExecRequest::shell(
            "(i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done) </dev/null >/dev/null 2>&1 &",
        );
        counter.timeout_ms = Some(5000);
        assert!(
            client
                .run(counter)
                .await
                .expect("start")
                .exited
                .status
                .success()
        );
        // A connection from the host cannot be checkpointed: close it first.
    }
    // Far enough that a copy counting from 1 again would read below it.
    let before = eventually(WAIT, "the counter reaching 10", || {
        match layer_counter(&t, &parent.id) {
            Some(now) if now >= 10 => Ok(now),
            seen => Err(seen),
        }
    });
    let forks = t.backend().fork(&parent.id, 2).expect("fork");
    for fork in &forks {
        assert_eq!(
            fork.kept,
            vec![Kept::Disk, Kept::Memory, Kept::Processes],
            "{fork:?}"
        );
        eventually(WAIT, "the fork's counter counting on", || {
            let now = layer_counter(&t, &fork.sandbox.id).expect("the fork's counter");
            assert!(
                now >= before,
                "the fork's counter went back from {before} to {now}"
            );
            if now > before { Ok(now) } else { Err(now) }
        });
        let child = t.backend().agent(&fork.sandbox.id).await.expect("client");
        let (_, text) = run(&child, &["cat", "/tmp/counter"]).await;
        let value: u64 = text.trim().parse().expect("number");
        assert!(
            value > before,
            "the agent-started counter continued from {before}: {value}"
        );
        let (_, host) = run(&child, &["hostname"]).await;
        assert_eq!(host.trim(), fork.sandbox.id);
    }
}

/// How long a counter gets to reach a value: CRIU restores can be slow.
const WAIT: Duration = Duration::from_secs(30);

/// The counter that sandbox `id` writes to `/tmp/counter`, read on the
/// host from its top layer (a connection to its agent would stand in the
/// way of a checkpoint).
fn layer_counter(t: &TestBackend, id: &str) -> Option<u64> {
    let path = t.data_dir.join("layers").join(id).join("upper/tmp/counter");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_in_the_files_api_stay_inside_the_sandbox() {
    let t = TestBackend::start("agentlinks");
    let marker = format!("/tmp/host-secret-{}", std::process::id());
    std::fs::write(&marker, "host secret").expect("marker");
    let sandbox = t
        .backend()
        .create(t.agent_request(host_usr_root(), true))
        .expect("create");
    let client = t.backend().agent(&sandbox.id).await.expect("client");
    let (code, _) = run(
        &client,
        &[
            "sh",
            "-c",
            &format!(
                "ln -s {marker} /workspace/abs; ln -s ../../../../../..{marker} /workspace/rel; ln -s /proc/1/root{marker} /workspace/proc"
            ),
        ],
    )
    .await;
    assert_eq!(code, 0);
    for link in ["abs", "rel", "proc"] {
        let read = client.read_file(&format!("/workspace/{link}")).await;
        assert!(
            !matches!(&read, Ok(bytes) if bytes == b"host secret"),
            "{link} reached the host file"
        );
    }
    let traversal = client.read_file(&format!("/../../../..{marker}")).await;
    assert!(!matches!(&traversal, Ok(bytes) if bytes == b"host secret"));
    std::fs::remove_file(&marker).expect("remove marker");
}
