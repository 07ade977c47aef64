//! Fixtures shared by the tests of `sandbox-container` and of `sandbox`
//! (which includes this file by path): a root that borrows the host's
//! `/usr`, and workspace binaries built once into a target directory of
//! their own.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A root whose `/usr` is the host's (bind-mounted read-only), so host
/// binaries (node, git, the glibc-linked agent) run inside.
pub fn host_usr_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = PathBuf::from("/tmp/sandbox-container-test-usr-root");
        if root.join(".complete").exists() {
            return root;
        }
        let tmp = PathBuf::from(format!("{}.tmp{}", root.display(), std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for dir in [
            "usr",
            "etc",
            "tmp",
            "proc",
            "sys",
            "dev",
            "run",
            "root",
            "workspace",
        ] {
            fs::create_dir_all(tmp.join(dir)).expect("create root dir");
        }
        for link in ["bin", "sbin", "lib", "lib64"] {
            symlink(format!("usr/{link}"), tmp.join(link)).expect("usr link");
        }
        fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        fs::write(tmp.join("etc/group"), "root:x:0:\n").expect("group");
        fs::write(tmp.join(".complete"), "").expect("marker");
        if fs::rename(&tmp, &root).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        root
    })
    .clone()
}

/// Binary `bin` of workspace package `package`, built on first use; or,
/// where `FORGE_TEST_BINARIES` names a directory, the one built there
/// beforehand (the nested test host runs what its host built).
///
/// A target dir of its own: building these alone unifies features
/// differently from the test build, and sharing the test's target dir
/// would rebuild both back and forth (and its lock is held while tests run).
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    if std::env::var_os("FORGE_TEST_BINARIES").is_some() {
        let path = test_binaries_dir().join("debug").join(bin);
        assert!(
            path.is_file(),
            "FORGE_TEST_BINARIES: no prebuilt {}",
            path.display()
        );
        return path;
    }
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    // Held while building: one cargo at a time, each binary once.
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path)) = built.iter().find(|(name, _)| name == bin) {
        return path.clone();
    }
    let target = test_binaries_dir();
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", package, "--bin", bin, "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {package} --bin {bin} failed");
    let path = target.join("debug").join(bin);
    assert!(path.exists(), "no binary at {}", path.display());
    built.push((bin.to_owned(), path.clone()));
    path
}

/// Target directory of [`workspace_binary`].
pub fn test_binaries_dir() -> PathBuf {
    match std::env::var_os("FORGE_TEST_BINARIES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agent-for-tests"),
    }
}

/// The `sandbox-agent` binary of this workspace.
pub fn agent_binary() -> PathBuf {
    workspace_binary("sandbox-agent", "sandbox-agent")
}

/// The container launcher, `sandbox-init`.
pub fn launcher_binary() -> PathBuf {
    workspace_binary("sandbox-container", "sandbox-init")
}
