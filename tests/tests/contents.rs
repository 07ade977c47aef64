//! `GET /v1/repos/{owner}/{name}/contents`: browsing a branch's files at
//! its head, as the web UI's branch page does.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use e2e::{TestForge, commit_files, git_ok, work_repo};

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

    let root = forge.admin("GET", "/v1/repos/acme/files/contents", None);
    assert_eq!(root["type"], "dir");
    assert_eq!(root["branch"], "main");
    let names: Vec<(&str, &str)> = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("src", "dir"), ("README.md", "file")]);

    let src = forge.admin(
        "GET",
        "/v1/repos/acme/files/contents?branch=feature%2Fx&path=src",
        None,
    );
    let names: Vec<&str> = src["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lib.rs", "new.rs"]);

    let file = forge.admin("GET", "/v1/repos/acme/files/contents?path=src/lib.rs", None);
    assert_eq!(file["type"], "file");
    assert_eq!(file["text"], "pub fn a() {}\n");
    assert_eq!(file["binary"], false);

    // logo.bin was added with new.rs, on feature/x only.
    let binary = forge.admin(
        "GET",
        "/v1/repos/acme/files/contents?branch=feature%2Fx&path=logo.bin",
        None,
    );
    assert_eq!(binary["binary"], true, "{binary}");
    assert!(binary["text"].is_null());

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
    let file = forge.admin("GET", "/v1/repos/acme/bomb/contents?path=big.txt", None);
    let grown_mib = (peak_rss_kib(pid) - before) / 1024;
    assert_eq!(file["truncated"], true);
    assert_eq!(file["size"], size);
    assert_eq!(file["text"].as_str().unwrap().len(), 1 << 20);
    assert!(
        grown_mib < 32,
        "reading the file's first MiB grew the forge's peak memory by {grown_mib} MiB"
    );

    let small = forge.admin("GET", "/v1/repos/acme/bomb/contents?path=README.md", None);
    assert_eq!(
        (&small["text"], &small["truncated"], &small["size"]),
        (&"# bomb\n".into(), &false.into(), &7.into())
    );
}
