//! The built guest image, end to end: build it (or reuse the cached one for
//! this agent binary), then run the agent from it as PID 1 in fresh
//! mount/PID/UTS namespaces over an overlay of the image's root, and use
//! node, npm, bun and git through the protocol.
//!
//! Needs root and the network to the Debian mirror and the npm registry on
//! a first build. `FORGE_DATA_DIR` picks the data directory (default:
//! cargo's target tmp dir); `FORGE_SKIP_IMAGE_TESTS=1` skips, saying so
//! (and fails under CI: see `tests/requirements`).
// Helpers outside #[test] functions unwrap too: this is test code.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_proto::{Client, ExecRequest, ExitStatus};
use guest_image::{BuildOptions, Image};
use test_support::requirements;

fn data_dir() -> PathBuf {
    std::env::var_os("FORGE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("forge-data"))
}

fn build_image() -> Image {
    let opts = BuildOptions::new(data_dir(), env!("CARGO_BIN_EXE_sandbox-agent"));
    let image = guest_image::build(&opts, |p| eprintln!("{p}")).expect("guest image builds");
    eprintln!(
        "image {} ({}): rootfs {} MiB, ext4 {} MiB apparent / {} MiB allocated, build {:.1} s",
        image.id,
        if image.cached { "cached" } else { "built now" },
        image.rootfs_bytes >> 20,
        image.ext4_bytes >> 20,
        image.ext4_allocated_bytes >> 20,
        image.build_secs
    );
    image
}

async fn sh(c: &Client, line: &str) -> (ExitStatus, String) {
    let mut req = ExecRequest::shell(line);
    req.timeout_ms = Some(120_000);
    let out = c.run(req).await.unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.exited.status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn image_runs_node_bun_git_with_the_agent_as_pid1() {
    let declined = std::env::var_os("FORGE_SKIP_IMAGE_TESTS")
        .is_some()
        .then(|| "FORGE_SKIP_IMAGE_TESTS is set".to_owned());
    if !requirements::met(requirements::Requirement::ImageBuild, declined) {
        return;
    }
    let image = tokio::task::spawn_blocking(build_image).await.unwrap();
    assert!(image.rootfs.join("usr/local/bin/bun").is_file());
    let listed = guest_image::list(&data_dir()).unwrap();
    assert!(
        listed.iter().any(|i| i.id == image.id),
        "list() misses the image"
    );
    if std::env::var_os("FORGE_DATA_DIR").is_none() {
        // The test's own cache: drop images of earlier agent builds.
        let removed = guest_image::prune(&data_dir(), &[&image.id]).unwrap();
        eprintln!("pruned old test images: {removed:?}");
        assert_eq!(guest_image::list(&data_dir()).unwrap().len(), 1);
    }

    // The ext4 image is a valid filesystem carrying the same tree.
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&image.ext4)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let version = Command::new("debugfs")
        .args(["-R", "cat /etc/sandbox-image-version"])
        .arg(&image.ext4)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), image.id);

    // A namespace sandbox over an overlay of the image's root.
    let t = tempfile::tempdir().unwrap();
    for d in ["upper", "work", "merged", "sock"] {
        std::fs::create_dir(t.path().join(d)).unwrap();
    }
    let p = |d: &str| t.path().join(d).display().to_string();
    let script = format!(
        "set -e; mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m}; \
         mount --bind {} {m}/run/sandbox; \
         exec chroot {m} /sbin/init --listen unix:/run/sandbox/agent.sock",
        image.rootfs.display(),
        p("upper"),
        p("work"),
        p("sock"),
        m = p("merged"),
    );
    let mut sandbox = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(&script)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let socket = t.path().join("sock/agent.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = sandbox.try_wait().unwrap() {
            panic!("sandbox exited early: {status}");
        }
        assert!(Instant::now() < deadline, "agent socket did not appear");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = Client::connect_unix(&socket).await.unwrap();
    let w = c.welcome();
    assert!(w.pid1, "{w:?}");
    assert_eq!(w.image_version.as_deref(), Some(image.id.as_str()));
    assert_eq!(w.hostname, "sandbox");

    let (st, out) = sh(&c, "readlink /proc/1/exe; echo $PWD").await;
    assert!(st.success(), "{out}");
    assert_eq!(out, "/usr/sbin/sandbox-agent\n/workspace\n");
    let (st, out) = sh(&c, "node --version").await;
    assert!(st.success(), "{out}");
    assert_eq!(out.trim(), format!("v{}", image.node_version));
    let (st, out) = sh(&c, "bun --version").await;
    assert!(st.success(), "{out}");
    assert_eq!(out.trim(), image.bun_version);
    let (st, out) = sh(&c, "npm --version").await;
    assert!(st.success(), "{out}");
    assert_eq!(out.trim(), image.npm_version);
    let (st, out) = sh(&c, "git --version").await;
    assert!(st.success() && out.starts_with("git version 2."), "{out}");

    // PID 1 reaps orphans: background children of exited shells end up
    // with the agent and must not stay zombies.
    let (st, out) = sh(
        &c,
        "for i in 1 2 3 4 5; do (sleep 0.05 &); done; sleep 0.5; ps -eo stat=,ppid=,comm= | grep '^Z' || echo no-zombies",
    )
    .await;
    assert!(st.success(), "{out}");
    assert_eq!(out.trim(), "no-zombies");

    c.write_file(
        "/workspace/math.test.ts",
        b"import { expect, test } from \"bun:test\";\n\
          test(\"adds\", () => { expect(1 + 2).toBe(3); });\n",
        0o644,
    )
    .await
    .unwrap();
    let (st, out) = sh(&c, "bun test math.test.ts").await;
    assert!(st.success(), "{out}");
    assert!(out.contains("1 pass") && out.contains("0 fail"), "{out}");
    c.write_file(
        "/workspace/broken.test.ts",
        b"import { expect, test } from \"bun:test\";\n\
          test(\"wrong sum\", () => { expect(1 + 2).toBe(4); });\n",
        0o644,
    )
    .await
    .unwrap();
    let (st, out) = sh(&c, "bun test broken.test.ts").await;
    assert!(!st.success(), "{out}");
    assert!(out.contains("wrong sum") && out.contains("1 fail"), "{out}");

    // A dev server inside the sandbox (its own network namespace: the agent
    // brought loopback up) reached through a port stream.
    c.write_file(
        "/workspace/server.ts",
        b"Bun.serve({ port: 3000, fetch(req) { return new Response(`preview ${new URL(req.url).pathname}`); } });\n",
        0o644,
    )
    .await
    .unwrap();
    let (st, out) = sh(&c, "bun server.ts > /tmp/server.log 2>&1 &").await;
    assert!(st.success(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut port = loop {
        match c.open_port(3000).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(Instant::now() < deadline, "dev server did not listen: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    port.write(b"GET /hello HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    while let Some(chunk) = port.read().await.unwrap() {
        resp.extend_from_slice(&chunk);
    }
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("preview /hello"), "{resp}");

    c.poweroff().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if sandbox.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "sandbox did not power off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writes went to the overlay's upper layer, never into the cached image.
    assert!(t.path().join("upper/workspace/math.test.ts").is_file());
    assert!(!image.rootfs.join("workspace/math.test.ts").exists());
}
