//! Dev servers end to end: `dev_server` on `POST /v1/vms` is started in the
//! sandbox, served at its preview URL (path and host-name forms, HTTP and
//! WebSocket), and comes back after it is killed.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use api_types::DevServerState;
use api_types::vms::{
    CreateVm, DevServerSpec, ExecOutput, ExecRequest, ShareLink, ShareLinkRequest, VmDetail, VmView,
};
use e2e::TestForge;
use serde_json::json;

/// A tiny Bun dev server: says its pid over HTTP, echoes over WebSocket.
const SERVER: &str = r#"bun -e 'Bun.serve({ port: 3000, fetch(req, server) { if (server.upgrade(req)) return; return new Response("hello from dev " + process.pid); }, websocket: { message(ws, m) { ws.send("echo:" + m); } } })'"#;

fn get(forge: &TestForge, url: &str, host: Option<&str>) -> (u16, String) {
    let mut request = reqwest::blocking::Client::new()
        .get(url)
        .bearer_auth(&forge.admin_token);
    if let Some(host) = host {
        request = request.header("Host", host);
    }
    match request.send() {
        Ok(response) => (response.status().as_u16(), response.text().unwrap()),
        Err(error) => (0, error.to_string()),
    }
}

/// A forge with sandboxes and the preview domain `preview.test`, and a VM
/// running `command` as its dev server on port 3000.
fn forge_with_dev_server(command: &str) -> (TestForge, VmView) {
    let forge = TestForge::builder()
        .with_sandboxes(10)
        .env("FORGE_PREVIEW_DOMAIN", "preview.test")
        .start();
    let vm = forge.send(
        "POST",
        "/v1/vms",
        &CreateVm {
            dev_server: Some(DevServerSpec {
                command: command.into(),
                port: 3000,
            }),
            ..CreateVm::default()
        },
    );
    (forge, vm)
}

/// Waits until the preview answers 200 with a body other than `not`.
fn page(forge: &TestForge, url: &str, not: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(forge, url, None);
        if status == 200 && body != not {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "preview never came: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One WebSocket text message through the host-name preview, by hand
/// (RFC 6455: client frames are masked).
fn websocket_echo(forge: &TestForge, host: &str, text: &str) -> String {
    let address = forge.url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        forge.admin_token
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&frame).unwrap();
    let mut header = [0u8; 2];
    socket.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 0x81, "a final text frame");
    let mut payload = vec![0u8; usize::from(header[1] & 0x7f)];
    socket.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

#[test]
fn the_dev_server_is_previewed_and_restarted_after_a_crash() {
    if !e2e::require_sandboxes() {
        return;
    }
    let (forge, vm) = forge_with_dev_server(SERVER);
    let id = vm.id.clone();
    let preview = vm.preview_url.clone().unwrap();
    let port = forge.url.rsplit(':').next().unwrap();
    assert_eq!(preview, format!("http://{id}-3000.preview.test:{port}/"));
    assert_eq!(vm.dev_server.as_ref().unwrap().port, 3000);

    let path_form = format!("{}/v1/vms/{id}/ports/3000/", forge.url);
    let started = Instant::now();
    let first = page(&forge, &path_form, "");
    println!("dev server answered after {:?}", started.elapsed());
    assert!(first.starts_with("hello from dev "), "{first}");
    let host = format!("{id}-3000.preview.test");
    let (status, by_host) = get(&forge, &format!("{}/any/path", forge.url), Some(&host));
    assert_eq!((status, by_host.as_str()), (200, first.as_str()));
    let (status, _) = get(
        &forge,
        &format!("{}/", forge.url),
        Some("vm-nosuch-3000.preview.test"),
    );
    assert_eq!(status, 404);
    assert_eq!(websocket_echo(&forge, &host, "ping"), "echo:ping");

    // The supervisor's next look sees it running.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown: VmDetail = forge.get(&format!("/v1/vms/{id}"));
        if shown.vm.dev_server.as_ref().map(|d| d.state) == Some(DevServerState::Running) {
            break shown;
        }
        assert!(Instant::now() < deadline, "never running: {shown:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let pid = shown.vm.dev_server.unwrap().pid.unwrap();
    // It is one of the VM's background processes, its output readable.
    let processes: Vec<api_types::vms::ProcessView> = forge.get(&format!("/v1/vms/{id}/processes"));
    assert!(
        processes
            .iter()
            .any(|p| p.pid == pid && p.state == api_types::vms::ProcessState::Running),
        "{processes:?}"
    );
    let killed: ExecOutput = forge.send(
        "POST",
        &format!("/v1/vms/{id}/exec"),
        &ExecRequest {
            command: Some(format!("kill -KILL -{pid}")),
            ..ExecRequest::default()
        },
    );
    assert_eq!(killed.exit.exit_code, 0, "{killed:?}");
    let killed_at = Instant::now();
    let again = page(&forge, &path_form, &first);
    println!("dev server back after {:?}", killed_at.elapsed());
    assert!(again.starts_with("hello from dev "), "{again}");
    let shown: VmDetail = forge.get(&format!("/v1/vms/{id}"));
    assert!(
        shown.vm.dev_server.as_ref().unwrap().restarts >= 1,
        "{shown:?}"
    );
    forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
}

/// A dev server that sets a cookie and says which cookies reached it.
const COOKIE_SERVER: &str = r#"bun -e 'Bun.serve({ port: 3000, fetch(req) { return new Response("cookies:" + req.headers.get("cookie"), { headers: { "Set-Cookie": "app=1; Path=/" } }); } })'"#;

/// A request without redirects followed; `(status, headers, body)`.
fn fetch(
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().unwrap())
}

#[test]
fn previews_cannot_reach_the_forge_and_share_links_open_one_port() {
    if let Some(reason) = e2e::sandboxes_unavailable() {
        panic!("this test needs sandboxes: {reason}");
    }
    let (forge, vm) = forge_with_dev_server(COOKIE_SERVER);
    let id = vm.id.clone();
    let token = forge.admin_token.clone();

    // The path form, on the forge's own origin: the page runs sandboxed (an
    // opaque origin: no reading the forge's pages or cookies), and no
    // cookie passes either way.
    let path_form = format!("{}/v1/vms/{id}/ports/3000/", forge.url);
    let body = page(&forge, &path_form, "");
    assert!(body.starts_with("cookies:"), "{body}");
    let (status, headers, body) = fetch(
        &path_form,
        Some(&token),
        &[("cookie", "forge_session=stolen")],
    );
    assert_eq!((status, body.as_str()), (200, "cookies:null"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("sandbox") && !csp.contains("allow-same-origin"),
        "{csp}"
    );
    assert!(headers.get("set-cookie").is_none(), "{headers:?}");

    // The host-name form, a site of its own: the app's cookies pass.
    let host = format!("{id}-3000.preview.test");
    let (status, headers, body) = fetch(
        &format!("{}/x", forge.url),
        Some(&token),
        &[("host", &host), ("cookie", "app=1; forge_share=junk")],
    );
    assert_eq!((status, body.as_str()), (200, "cookies:app=1"));
    assert_eq!(headers["set-cookie"], "app=1; Path=/");

    // A share link: no forge credential needed, one VM's one port, until
    // it expires.
    let (status, body) = forge.call(
        Some(&token),
        "POST",
        &format!("/v1/vms/{id}/ports/3000/links"),
        Some(
            serde_json::to_value(ShareLinkRequest {
                ttl_secs: Some(600),
            })
            .unwrap(),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let link: ShareLink = serde_json::from_value(body).unwrap();
    let url = link.url.as_str();
    let port = forge.url.rsplit(':').next().unwrap();
    let prefix = format!("http://{host}:{port}/?forge_share=");
    assert!(url.starts_with(&prefix), "{url}");
    let share = &url[prefix.len()..];
    let (status, headers, _) = fetch(
        &format!("{}/?forge_share={share}", forge.url),
        None,
        &[("host", &host)],
    );
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/");
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("forge_share={share};")) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let with_link = format!("forge_share={share}");
    let (status, _, body) = fetch(
        &format!("{}/page", forge.url),
        None,
        &[("host", &host), ("cookie", &with_link)],
    );
    assert_eq!(
        (status, body.as_str()),
        (200, "cookies:null"),
        "the share cookie reached the app"
    );
    // Not without it, not for another port or VM, not tampered with.
    let other_port = format!("{id}-3001.preview.test");
    let other_vm = "vm0000000000-3000.preview.test".to_owned();
    // The signature's last digit changed (to another digit, whatever it was).
    let last = if share.ends_with('0') { '1' } else { '0' };
    let tampered = format!("forge_share={}{last}", &share[..share.len() - 1]);
    for (host, cookie) in [
        (host.as_str(), ""),
        (other_port.as_str(), with_link.as_str()),
        (other_vm.as_str(), with_link.as_str()),
        (host.as_str(), tampered.as_str()),
    ] {
        let (status, _, body) = fetch(
            &format!("{}/", forge.url),
            None,
            &[("host", host), ("cookie", cookie)],
        );
        assert_eq!(status, 401, "{host} with {cookie:?}: {body}");
    }
    // Where there is no preview domain, the same token opens a path on the
    // forge, sandboxed like the path form.
    let (status, headers, body) = fetch(&format!("{}/v1/previews/{share}/", forge.url), None, &[]);
    assert_eq!((status, body.as_str()), (200, "cookies:null"));
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("sandbox")
    );
    let (status, _, _) = fetch(&format!("{}/v1/previews/{share}x/", forge.url), None, &[]);
    assert_eq!(status, 401);
    for ttl in [0, 30, 8 * 24 * 3600] {
        let (status, _) = forge.call(
            Some(&token),
            "POST",
            &format!("/v1/vms/{id}/ports/3000/links"),
            Some(json!({ "ttl_secs": ttl })),
        );
        assert_eq!(status, 400, "ttl {ttl}");
    }
    // The link is a credential: it is not logged.
    assert!(!forge.log().contains(share), "the share token was logged");
    forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
}

#[test]
fn a_preview_domain_on_the_forges_own_site_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(e2e::forge_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sandbox-backend",
            "none",
        ])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args(["--public-url", "https://forge.example.com"])
        .args(["--preview-domain", "preview.example.com"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("is on the forge's own site (example.com"),
        "{stderr}"
    );
}
