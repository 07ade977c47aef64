//! `GET /v1/repos/{owner}/{name}/contents`: browsing a branch's files at
//! its head, as the web UI's branch page does.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use api_types::repos::{Contents, EntryKind, TreeEntry};
use e2e::{TestForge, commit_files, git_ok, work_repo};

/// The entries of a directory answer; panics on a file.
fn dir_entries(contents: Contents) -> Vec<TreeEntry> {
    match contents {
        Contents::Dir { entries, .. } => entries,
        file => panic!("not a directory: {file:?}"),
    }
}

/// `(text, binary, truncated, size)` of a file answer; panics on a directory.
fn file(contents: Contents) -> (Option<String>, bool, bool, u64) {
    match contents {
        Contents::File {
            text,
            binary,
            truncated,
            size,
            ..
        } => (text, binary, truncated, size),
        dir => panic!("not a file: {dir:?}"),
    }
}

#[test]
fn directories_files_and_missing_paths() {
    let forge = TestForge::start();
    forge.create_repo("acme/files");
    let temp = tempfile::tempdir().unwrap();
    let work = work_repo(
        temp.path(),
        "files",
        &[
            ("README.md", "# files\n"),
            ("src/lib.rs", "pub fn a() {}\n"),
        ],
    );
    std::fs::write(work.join("logo.bin"), [0u8, 159, 146, 150]).unwrap();
    git_ok(&work, &["checkout", "--quiet", "-b", "feature/x"]);
    commit_files(&work, &[("src/new.rs", "// new\n")], "add new.rs");
    let url = forge.git_url("acme/files", &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &url, "feature/x"]);
    git_ok(&work, &["push", "--quiet", &url, "HEAD~1:refs/heads/main"]);

    let root: Contents = forge.get("/v1/repos/acme/files/contents");
    let Contents::Dir {
        branch, entries, ..
    } = &root
    else {
        panic!("not a directory: {root:?}")
    };
    assert_eq!(branch, "main");
    let names: Vec<(&str, EntryKind)> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        names,
        [("src", EntryKind::Dir), ("README.md", EntryKind::File)]
    );

    let src: Contents = forge.get("/v1/repos/acme/files/contents?branch=feature%2Fx&path=src");
    let names: Vec<String> = dir_entries(src).into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["lib.rs", "new.rs"]);

    let lib: Contents = forge.get("/v1/repos/acme/files/contents?path=src/lib.rs");
    assert!(matches!(lib, Contents::File { .. }), "{lib:?}");
    let (text, binary, _, _) = file(lib);
    assert_eq!(text.as_deref(), Some("pub fn a() {}\n"));
    assert!(!binary);

    // logo.bin was added with new.rs, on feature/x only.
    let logo: Contents =
        forge.get("/v1/repos/acme/files/contents?branch=feature%2Fx&path=logo.bin");
    let (text, binary, _, _) = file(logo.clone());
    assert!(binary, "{logo:?}");
    assert!(text.is_none());

    for (path, why) in [
        (
            "/v1/repos/acme/files/contents?path=src/new.rs",
            "only on feature/x",
        ),
        ("/v1/repos/acme/files/contents?path=nope", "no such path"),
        (
            "/v1/repos/acme/files/contents?branch=nope",
            "no such branch",
        ),
        (
            "/v1/repos/acme/files/contents?path=../../etc/passwd",
            "outside",
        ),
    ] {
        let (status, body) = forge.call(Some(&forge.admin_token), "GET", path, None);
        assert_eq!(status, 404, "{why}: {body}");
    }
    let (status, _) = forge.call(None, "GET", "/v1/repos/acme/files/contents", None);
    assert_eq!(status, 401);
}

/// The forge's peak resident memory so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_file_that_inflates_to_128_mib_costs_the_forge_one_mib() {
    let forge = TestForge::start();
    forge.create_repo("acme/bomb");
    let temp = tempfile::tempdir().unwrap();
    let work = work_repo(temp.path(), "bomb", &[("README.md", "# bomb\n")]);
    // 128 MiB of one letter: a pack of about 128 KiB.
    let size = 128u64 << 20;
    std::fs::write(work.join("big.txt"), vec![b'a'; size as usize]).unwrap();
    git_ok(&work, &["add", "big.txt"]);
    git_ok(&work, &["commit", "--quiet", "-m", "a big file"]);
    let url = forge.git_url("acme/bomb", &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &url, "HEAD:main"]);

    let pid = forge.pid().unwrap();
    let before = peak_rss_kib(pid);
    let big: Contents = forge.get("/v1/repos/acme/bomb/contents?path=big.txt");
    let grown_mib = (peak_rss_kib(pid) - before) / 1024;
    let (text, _, truncated, big_size) = file(big);
    assert!(truncated);
    assert_eq!(big_size, size);
    assert_eq!(text.unwrap().len(), 1 << 20);
    assert!(
        grown_mib < 32,
        "reading the file's first MiB grew the forge's peak memory by {grown_mib} MiB"
    );

    let small: Contents = forge.get("/v1/repos/acme/bomb/contents?path=README.md");
    let (text, _, truncated, size) = file(small);
    assert_eq!(
        (text.as_deref(), truncated, size),
        (Some("# bomb\n"), false, 7)
    );
}
