//! File operations through the real agent, confined to its file root.
// Helpers outside #[test] functions unwrap too: this is test code.
#![allow(clippy::unwrap_used)]

mod common;

use agent_proto::{ClientError, ErrorKind, FileKind};
use common::{TestAgent, pattern};

fn kind(e: ClientError) -> ErrorKind {
    match e {
        ClientError::Remote(r) => r.kind,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn write_read_stat_list_mkdir_remove() {
    let agent = TestAgent::start();
    let c = agent.connect().await;
    c.mkdir("/a/b/c", 0o755).await.unwrap();
    c.mkdir("/a/b/c", 0o755).await.unwrap();
    assert!(agent.root.join("a/b/c").is_dir());

    let data = pattern(5 * 1024 * 1024 + 3);
    c.write_file("/a/b/big.bin", &data, 0o640).await.unwrap();
    let back = c.read_file("a/b/big.bin").await.unwrap();
    assert!(back == data, "read back differs");
    assert!(std::fs::read(agent.root.join("a/b/big.bin")).unwrap() == data);

    let st = c.stat("/a/b/big.bin").await.unwrap();
    assert_eq!(st.kind, FileKind::File);
    assert_eq!(st.size, data.len() as u64);
    assert_eq!(st.mode, 0o640);

    c.write_file("/a/b/big.bin", b"replaced", 0o600)
        .await
        .unwrap();
    assert_eq!(c.read_file("/a/b/big.bin").await.unwrap(), b"replaced");

    let names: Vec<_> = c
        .list_dir("/a/b")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.stat.kind))
        .collect();
    // No temporary file is left beside the target.
    assert_eq!(
        names,
        vec![
            ("big.bin".into(), FileKind::File),
            ("c".into(), FileKind::Dir)
        ]
    );

    assert_eq!(
        kind(c.remove("/a", false).await.unwrap_err()),
        ErrorKind::DirectoryNotEmpty
    );
    c.remove("/a/b/big.bin", false).await.unwrap();
    c.remove("/a", true).await.unwrap();
    assert!(!agent.root.join("a").exists());
    assert_eq!(kind(c.stat("/a").await.unwrap_err()), ErrorKind::NotFound);
    assert_eq!(
        kind(c.read_file("/nope").await.unwrap_err()),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(
            c.write_file("/missing/dir/f", b"x", 0o644)
                .await
                .unwrap_err()
        ),
        ErrorKind::NotFound
    );
    c.write_file_from("/missing/dir/f", 0o644, true, &b"x"[..])
        .await
        .unwrap();
    assert_eq!(
        kind(c.read_file("/missing").await.unwrap_err()),
        ErrorKind::IsADirectory
    );
}

#[tokio::test]
async fn hostile_paths_stay_inside_the_root() {
    let agent = TestAgent::start();
    let root = &agent.root;
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "inside\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", root.join("up")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
    let c = agent.connect().await;

    // `..` is clamped at the root.
    assert_eq!(c.read_file("../../etc/passwd").await.unwrap(), b"inside\n");
    assert_eq!(
        c.read_file("/x/../../../etc/passwd").await.unwrap(),
        b"inside\n"
    );
    // Symlinks resolve as if the root were `/`.
    assert_eq!(c.read_file("/abs-link").await.unwrap(), b"inside\n");
    assert_eq!(c.read_file("/up/etc/passwd").await.unwrap(), b"inside\n");
    // The host's /proc is not reachable through the root.
    assert!(c.read_file("/magic").await.is_err());

    // Writes through a symlinked directory land inside the root.
    c.write_file("/up/etc/evil", b"x", 0o644).await.unwrap();
    assert!(root.join("etc/evil").exists());
    assert!(!std::path::Path::new("/etc/evil").exists());
    c.mkdir("/up/tmp/made", 0o755).await.unwrap();
    assert!(root.join("tmp/made").is_dir());

    // The last component is not followed by stat, remove and write.
    let st = c.stat("/abs-link").await.unwrap();
    assert_eq!(st.kind, FileKind::Symlink);
    assert_eq!(st.link_target.as_deref(), Some("/etc/passwd"));
    c.write_file("/abs-link", b"replaced link", 0o644)
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("etc/passwd")).unwrap(), b"inside\n");
    assert_eq!(
        std::fs::read(root.join("abs-link")).unwrap(),
        b"replaced link"
    );
    c.remove("/up", false).await.unwrap();
    assert!(root.join("etc/passwd").exists());

    // Nonsense is refused, not interpreted.
    assert_eq!(
        kind(c.read_file("/etc/pa\0sswd").await.unwrap_err()),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(c.remove("/", true).await.unwrap_err()),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(c.remove("../..", true).await.unwrap_err()),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(c.write_file("", b"x", 0o644).await.unwrap_err()),
        ErrorKind::InvalidInput
    );
    assert!(std::path::Path::new("/etc/passwd").exists());
}
