//! Hostile and broken input gets a clear 4xx, writes nothing, and leaves
//! the server healthy.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::io::Write;

use e2e::{TestForge, git_ok, git_run, work_repo};
use serde_json::json;

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

fn post(
    forge: &TestForge,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let mut request = client
        .post(format!("{}{path}", forge.url))
        .bearer_auth(&forge.admin_token)
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().expect("the forge answers");
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

fn assert_healthy(forge: &TestForge) {
    let body = reqwest::blocking::get(format!("{}/healthz", forge.url))
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(body, "ok\n");
}

#[test]
fn hostile_repository_names_are_refused_with_a_clear_message() {
    let forge = TestForge::start();
    let long = format!("acme/{}", "x".repeat(101));
    for name in [
        "../x",
        "a/b/c",
        ".git",
        "acme/.git",
        "acme/..",
        "acme/a..b",
        "acme/",
        "acme/a b",
        long.as_str(),
    ] {
        let (status, body) = forge.call(
            Some(&forge.admin_token),
            "POST",
            "/v1/repos",
            Some(json!({ "name": name })),
        );
        assert_eq!(status, 400, "{name:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{name:?}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        "/v1/repos",
        Some(json!({ "nom": "x/y" })),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "GET",
        "/v1/repos/acme/..%2F..%2Fetc",
        None,
    );
    assert!(status == 400 || status == 404, "{status}");
    let repos = std::fs::read_dir(forge.data_dir.join("repos"))
        .unwrap()
        .count();
    assert_eq!(repos, 0, "nothing was created on disk");

    forge.create_repo("acme/dup");
    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        "/v1/repos",
        Some(json!({ "name": "acme/dup" })),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let (status, body) = forge.call(Some(&forge.admin_token), "GET", "/v1/repos/acme/nope", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "DELETE",
        "/v1/repos/acme/dup",
        None,
    );
    assert_eq!(status, 204);
    let (status, _) = forge.call(Some(&forge.admin_token), "GET", "/v1/repos/acme/dup", None);
    assert_eq!(status, 404);
    assert_healthy(&forge);
}

/// A repository with one commit on main; returns the work dir and the head.
fn seeded(forge: &TestForge, tmp: &std::path::Path) -> (std::path::PathBuf, String) {
    forge.create_repo("acme/target");
    let work = work_repo(tmp, "work", &[("a.txt", "a\n")]);
    git_ok(
        &work,
        &[
            "push",
            "--quiet",
            &forge.git_url("acme/target", &forge.admin_token),
            "main",
        ],
    );
    let head = git_ok(&work, &["rev-parse", "HEAD"]);
    (work, head)
}

#[test]
fn malformed_pkt_lines_and_truncated_packs_write_nothing() {
    let forge = TestForge::start();
    let tmp = tempfile::tempdir().unwrap();
    let (work, head) = seeded(&forge, tmp.path());
    let server = forge.repo_dir("acme/target");
    let objects_before = git_ok(&server, &["count-objects", "-v"]);
    let events_before = forge.events("acme/target", 0).len();
    let path = "/acme/target.git/git-receive-pack";
    let kind = "application/x-git-receive-pack-request";

    for body in [
        b"zzzz garbage".to_vec(),
        pkt("not a command\n").into_bytes(),
        b"00".to_vec(),
    ] {
        let (status, text) = post(&forge, path, kind, None, body);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("push request"), "{text}");
    }

    // git's probe before a large push: a lone flush, answered with nothing.
    let (status, text) = post(&forge, path, kind, None, b"0000".to_vec());
    assert_eq!((status, text.as_str()), (200, ""));

    // A real pack for a new commit, cut in half.
    commit_files_and_pack(&work, &head, tmp.path(), |command, pack| {
        let mut body = pkt(&command).into_bytes();
        body.extend_from_slice(b"0000");
        body.extend_from_slice(&pack[..pack.len() / 2]);
        let (status, text) = post(&forge, path, kind, None, body);
        assert_eq!(status, 400, "{text}");
        assert!(
            text.contains("bad_pack") && text.contains("nothing was written"),
            "{text}"
        );
    });
    assert_eq!(
        git_ok(&server, &["rev-parse", "main"]),
        head,
        "the ref did not move"
    );
    assert_eq!(
        git_ok(&server, &["count-objects", "-v"]),
        objects_before,
        "no objects were added"
    );
    let leftovers: Vec<_> = std::fs::read_dir(server.join("objects"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp_objdir"))
        .collect();
    assert!(leftovers.is_empty(), "quarantine directories were removed");
    assert_eq!(
        forge.events("acme/target", 0).len(),
        events_before,
        "no events"
    );
    git_ok(&server, &["fsck", "--strict"]);
    assert_healthy(&forge);

    // The same pack, whole and gzip-encoded, is accepted.
    commit_files_and_pack(&work, &head, tmp.path(), |command, pack| {
        let mut body = pkt(&command).into_bytes();
        body.extend_from_slice(b"0000");
        body.extend_from_slice(pack);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        let (status, text) = post(&forge, path, kind, Some("gzip"), gz.finish().unwrap());
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("ok refs/heads/main"), "{text}");
    });
    assert_ne!(
        git_ok(&server, &["rev-parse", "main"]),
        head,
        "the gzip push moved main"
    );
    assert_eq!(forge.events("acme/target", 0).len(), events_before + 1);

    // Fetching with a gzip body and protocol v2 works too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(format!("{}0001{}0000", pkt("command=ls-refs\n"), pkt("peel\n")).as_bytes())
        .unwrap();
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/acme/target.git/git-upload-pack", forge.url))
        .bearer_auth(&forge.admin_token)
        .header("content-type", "application/x-git-upload-pack-request")
        .header("content-encoding", "gzip")
        .header("git-protocol", "version=2")
        .body(gz.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.text().unwrap().contains("refs/heads/main"));
    let (status, text) = post(
        &forge,
        "/acme/target.git/git-upload-pack",
        "application/x-git-upload-pack-request",
        None,
        b"00zz".to_vec(),
    );
    assert_eq!(status, 400, "{text}");
    assert_healthy(&forge);
}

/// Makes a commit in `work` on top of `base`, packs it, and hands the
/// update command and the pack to `check`; the commit is then dropped.
fn commit_files_and_pack(
    work: &std::path::Path,
    base: &str,
    tmp: &std::path::Path,
    check: impl FnOnce(String, &[u8]),
) {
    commit_and_pack(work, base, tmp, &e2e::noise(256 << 10, 3), &[], check);
}

/// Like [`commit_files_and_pack`] with a given payload and git options.
fn commit_and_pack(
    work: &std::path::Path,
    base: &str,
    tmp: &std::path::Path,
    data: &[u8],
    git_options: &[&str],
    check: impl FnOnce(String, &[u8]),
) {
    std::fs::write(work.join("payload.bin"), data).unwrap();
    git_ok(work, &["add", "payload.bin"]);
    git_ok(work, &["commit", "--quiet", "-m", "payload"]);
    let new = git_ok(work, &["rev-parse", "HEAD"]);
    let list = tmp.join("revs");
    std::fs::write(&list, format!("{new}\n^{base}\n")).unwrap();
    let output = e2e::git(work)
        .args(git_options)
        .args(["pack-objects", "--stdout", "--revs", "--thin"])
        .stdin(std::fs::File::open(&list).unwrap())
        .output()
        .unwrap();
    assert!(output.status.success());
    let command = format!("{base} {new} refs/heads/main\0report-status\n");
    check(command, &output.stdout);
    git_ok(work, &["reset", "--quiet", "--hard", base]);
}

#[test]
fn a_body_over_the_limit_is_413_and_nothing_is_written() {
    let forge = TestForge::builder().max_body_bytes(1 << 20).start();
    let tmp = tempfile::tempdir().unwrap();
    let (work, head) = seeded(&forge, tmp.path());
    let server = forge.repo_dir("acme/target");

    // Declared too large.
    let (status, text) = post(
        &forge,
        "/acme/target.git/git-receive-pack",
        "application/x-git-receive-pack-request",
        None,
        vec![b'0'; 2 << 20],
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"));

    // Small on the wire, too large once decompressed: a valid pack stored
    // without zlib compression, gzip-encoded.
    let zeros = vec![0u8; 4 << 20];
    commit_and_pack(
        &work,
        &head,
        tmp.path(),
        &zeros,
        &["-c", "pack.compression=0"],
        |command, pack| {
            let mut body = pkt(&command).into_bytes();
            body.extend_from_slice(b"0000");
            body.extend_from_slice(pack);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&body).unwrap();
            let gz = gz.finish().unwrap();
            assert!(gz.len() < 1 << 20 && body.len() > 1 << 20);
            let (status, text) = post(
                &forge,
                "/acme/target.git/git-receive-pack",
                "application/x-git-receive-pack-request",
                Some("gzip"),
                gz,
            );
            assert_eq!(status, 413, "{text}");
        },
    );

    // A real push of 16 MiB with git: the answer is a 413 git can show,
    // not a connection reset while it is still sending.
    std::fs::write(work.join("big.bin"), e2e::noise(16 << 20, 9)).unwrap();
    git_ok(&work, &["add", "big.bin"]);
    git_ok(&work, &["commit", "--quiet", "-m", "too big"]);
    let push = git_run(
        &work,
        &[
            "push",
            &forge.git_url("acme/target", &forge.admin_token),
            "main",
        ],
    );
    assert!(!push.status.success());
    assert!(
        String::from_utf8_lossy(&push.stderr).contains("413"),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    assert_eq!(git_ok(&server, &["rev-parse", "main"]), head);
    git_ok(&server, &["fsck", "--strict"]);
    assert_eq!(
        forge.events("acme/target", 0).len(),
        2,
        "only the seeding push's events"
    );
    assert_healthy(&forge);
}
