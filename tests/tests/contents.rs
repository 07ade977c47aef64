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
