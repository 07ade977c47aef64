//! The VM API end to end, on the container backend with the host's guest
//! image: create, exec, fork, pause, resume, files, limits, crashes.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use api_types::VmState;
use api_types::vms::{
    CarriedVm, CreateVm, ExecOutput, ExecRequest, ForkRequest, Forks, Kept, PauseRequest,
    Persistence, ProcessState, ProcessView, StartProcess, System, VmDetail, VmView,
};
use e2e::TestForge;
use serde_json::json;

/// A forge with sandboxes, or `None` (with a plain message) where this
/// host cannot run them.
fn forge(max_live: usize) -> Option<TestForge> {
    if !e2e::require_sandboxes() {
        return None;
    }
    Some(TestForge::builder().with_sandboxes(max_live).start())
}

fn exec(forge: &TestForge, vm: &str, command: &str) -> ExecOutput {
    forge.send(
        "POST",
        &format!("/v1/vms/{vm}/exec"),
        &ExecRequest {
            command: Some(command.into()),
            ..ExecRequest::default()
        },
    )
}

/// Creates a VM as `request` asks.
fn create(forge: &TestForge, request: CreateVm) -> VmView {
    forge.send("POST", "/v1/vms", &request)
}

/// The VM's state as `GET /v1/vms/{id}` shows it.
fn state(forge: &TestForge, vm: &str) -> VmState {
    forge.get::<VmDetail>(&format!("/v1/vms/{vm}")).vm.state
}

fn stdout(forge: &TestForge, vm: &str, command: &str) -> String {
    let out = exec(forge, vm, command);
    assert_eq!(out.exit.exit_code, 0, "{command}: {out:?}");
    out.stdout
}

fn write(forge: &TestForge, vm: &str, path: &str, content: &str) {
    let response = reqwest::blocking::Client::new()
        .put(format!("{}/v1/vms/{vm}/files/{path}", forge.url))
        .bearer_auth(&forge.admin_token)
        .body(content.to_owned())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
}

fn read(forge: &TestForge, vm: &str, path: &str) -> (u16, String) {
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/v1/vms/{vm}/files/{path}", forge.url))
        .bearer_auth(&forge.admin_token)
        .send()
        .unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

#[test]
fn create_exec_fork_and_isolation() {
    let Some(forge) = forge(20) else { return };
    let system: System = forge.get("/v1/system");
    assert_eq!(
        system.sandboxes.backend.as_deref(),
        Some("container"),
        "{system:?}"
    );
    let vm = create(&forge, CreateVm::default());
    let id = vm.id.clone();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(vm.backend, "container");
    let out = exec(&forge, &id, "echo hi; echo oops >&2; exit 3");
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.exit.exit_code),
        ("hi\n", "oops\n", 3)
    );
    let argv: ExecOutput = forge.send(
        "POST",
        &format!("/v1/vms/{id}/exec"),
        &ExecRequest {
            argv: Some(vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING from $(pwd); cat".into(),
            ]),
            env: BTreeMap::from([("GREETING".into(), "hello".into())]),
            cwd: Some("/tmp".into()),
            stdin: Some("piped".into()),
            ..ExecRequest::default()
        },
    );
    assert_eq!(argv.stdout, "hello from /tmp\npiped");

    write(&forge, &id, "workspace/shared.txt", "from the parent");
    let forks: Forks = forge.send(
        "POST",
        &format!("/v1/vms/{id}/fork"),
        &ForkRequest {
            count: Some(3),
            ..ForkRequest::default()
        },
    );
    let forks: Vec<String> = forks
        .forks
        .into_iter()
        .map(|f| {
            assert_eq!(f.vm.parent.as_deref(), Some(id.as_str()));
            assert!(f.kept.contains(&Kept::Disk), "{f:?}");
            f.vm.id
        })
        .collect();
    assert_eq!(forks.len(), 3);
    for (i, fork) in forks.iter().enumerate() {
        assert_eq!(
            read(&forge, fork, "workspace/shared.txt"),
            (200, "from the parent".to_owned())
        );
        write(&forge, fork, "workspace/own.txt", &format!("fork {i}"));
    }
    for (i, fork) in forks.iter().enumerate() {
        assert_eq!(
            read(&forge, fork, "workspace/own.txt").1,
            format!("fork {i}"),
            "each fork sees only its own write"
        );
    }
    assert_eq!(
        read(&forge, &id, "workspace/own.txt").0,
        404,
        "the parent sees no fork's write"
    );
    let listed: Vec<VmView> = forge.get("/v1/vms");
    assert_eq!(listed.len(), 4);

    // Bad input.
    let (status, body) = forge.call(Some(&forge.admin_token), "GET", "/v1/vms/sb-nope", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    for count in [0, 1000] {
        let (status, body) = forge.call(
            Some(&forge.admin_token),
            "POST",
            &format!("/v1/vms/{id}/fork"),
            Some(json!({ "count": count })),
        );
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("between 1 and 50"),
            "{body}"
        );
    }
    let (status, body) = read(&forge, &id, "..%2F..%2F..%2Fetc%2Fpasswd");
    assert_eq!(status, 400, "{body}");
    let big = exec(&forge, &id, "head -c 6000000 /dev/zero | tr '\\0' x");
    assert!(big.exit.truncated);
    assert!(big.stdout.len() <= 4 << 20);

    // Someone else's token sees none of these VMs.
    let other = forge.create_token("other", &["repo:write"], None);
    let (status, _) = forge.call(Some(&other), "GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(status, 404);
    let (status, _) = forge.call(
        Some(&other),
        "POST",
        &format!("/v1/vms/{id}/exec"),
        Some(json!({ "command": "true" })),
    );
    assert_eq!(status, 404);

    forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "GET",
        &format!("/v1/vms/{id}"),
        None,
    );
    assert_eq!(status, 404);
}

/// The value of the counter that [`pause_resume_idle_timeout_and_crash`]
/// runs in `vm` (0 before its first count).
fn count(forge: &TestForge, vm: &str) -> u64 {
    stdout(forge, vm, "cat /tmp/count 2>/dev/null || echo 0")
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the counter in `vm` passes `above`; a value below it on the
/// way means the count started over.
fn counts_past(forge: &TestForge, vm: &str, above: u64) -> u64 {
    e2e::eventually(
        Duration::from_secs(30),
        &format!("the counter in {vm} passing {above}"),
        || {
            let now = count(forge, vm);
            assert!(now >= above, "the counter in {vm} went back to {now}");
            if now > above { Ok(now) } else { Err(now) }
        },
    )
}

#[test]
fn pause_resume_idle_timeout_and_crash() {
    let Some(forge) = forge(20) else { return };
    let vm = create(
        &forge,
        CreateVm {
            idle_timeout_secs: Some(2),
            ..CreateVm::default()
        },
    );
    let id = vm.id;
    write(&forge, &id, "workspace/keep.txt", "kept");
    stdout(
        &forge,
        &id,
        "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done' >/dev/null 2>&1 &",
    );
    let started = counts_past(&forge, &id, 0);

    let paused: VmView = forge.send_empty("POST", &format!("/v1/vms/{id}/pause"));
    assert_eq!(paused.state, VmState::Paused);
    let resumed: CarriedVm = forge.send_empty("POST", &format!("/v1/vms/{id}/resume"));
    assert_eq!(resumed.vm.state, VmState::Running);
    let before = count(&forge, &id);
    assert!(
        before >= started,
        "the count went on from {started} through the pause: {before}"
    );
    counts_past(&forge, &id, before);

    let (to_disk, headers) = forge.admin_with_headers(
        "POST",
        &format!("/v1/vms/{id}/pause"),
        Some(serde_json::to_value(PauseRequest { to_disk: true }).expect("request")),
    );
    let to_disk: VmView = serde_json::from_value(to_disk).expect("a VM");
    assert_eq!(to_disk.state, VmState::PausedToDisk);
    // Where the time went, CRIU's own figures among it.
    let timing = headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for phase in ["dump;dur=", "criu-frozen;dur=", "stop;dur="] {
        assert!(timing.contains(phase), "{phase} missing: {timing:?}");
    }
    // An exec resumes it transparently; files survive.
    assert_eq!(stdout(&forge, &id, "cat /workspace/keep.txt"), "kept");
    assert_eq!(state(&forge, &id), VmState::Running);

    // Idle for its timeout: paused to disk by itself; the next exec resumes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = state(&forge, &id);
        if state == VmState::PausedToDisk {
            break;
        }
        assert!(Instant::now() < deadline, "never paused when idle: {state}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(stdout(&forge, &id, "cat /workspace/keep.txt"), "kept");

    // Killing the sandbox's processes: the API says crashed, clearly.
    let ephemeral = create(
        &forge,
        CreateVm {
            persistence: Some(Persistence::of(false)),
            ..CreateVm::default()
        },
    );
    let victim = ephemeral.id;
    let pid = forge
        .sandbox_pid(&victim)
        .expect("the backend records PID 1");
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&forge, &victim) != VmState::Crashed {
        assert!(Instant::now() < deadline, "never marked crashed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/vms/{victim}/exec"),
        Some(json!({ "command": "true" })),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("crashed"),
        "{body}"
    );
    forge.admin("DELETE", &format!("/v1/vms/{victim}"), None);
}

#[test]
fn the_cap_is_a_clear_429_and_concurrent_operations_do_not_deadlock() {
    if !e2e::require_sandboxes() {
        return;
    }
    // A short queue: the request over the cap waits a second, then fails.
    let forge = TestForge::builder()
        .with_sandboxes(2)
        .env("FORGE_SANDBOX_QUEUE_SECS", "1")
        .start();
    let a = create(&forge, CreateVm::default()).id;
    let _b = create(&forge, CreateVm::default());
    let (status, body) = forge.call(Some(&forge.admin_token), "POST", "/v1/vms", Some(json!({})));
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cap is 2; waited 1s in the queue (position 1 of 1)"),
        "{body}"
    );
    let _: VmView = forge.send(
        "POST",
        &format!("/v1/vms/{a}/pause"),
        &PauseRequest { to_disk: true },
    );
    let c = create(&forge, CreateVm::default()).id;

    // Pause, resume and exec on one VM from several threads at once.
    let url = forge.url.clone();
    let token = forge.admin_token.clone();
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let (url, token, c) = (url.clone(), token.clone(), c.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let (path, body) = match i % 3 {
                    0 => ("pause", json!({})),
                    1 => ("resume", json!({})),
                    _ => ("exec", json!({ "command": "echo ok" })),
                };
                client
                    .post(format!("{url}/v1/vms/{c}/{path}"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for handle in handles {
        let status = handle.join().unwrap();
        assert!(matches!(status, 200 | 409), "{status}");
    }
    if state(&forge, &c) == VmState::Paused {
        let _: CarriedVm = forge.send_empty("POST", &format!("/v1/vms/{c}/resume"));
    }
    assert_eq!(stdout(&forge, &c, "echo alive"), "alive\n");
}

#[test]
fn a_vm_for_a_repository_holds_its_checkout_and_exec_can_stream() {
    let Some(forge) = forge(20) else { return };
    forge.create_repo("acme/app");
    let tmp = tempfile::tempdir().unwrap();
    let work = e2e::work_repo(tmp.path(), "work", &[("src/index.ts", "console.log(1)\n")]);
    e2e::git_ok(&work, &["checkout", "--quiet", "-b", "dev"]);
    let dev = e2e::commit_files(&work, &[("DEV.md", "dev\n")], "on dev");
    let url = forge.git_url("acme/app", &forge.admin_token);
    e2e::git_ok(&work, &["push", "--quiet", &url, "main", "dev"]);

    let vm = create(
        &forge,
        CreateVm {
            repo: Some("acme/app".into()),
            branch: Some("dev".into()),
            ..CreateVm::default()
        },
    );
    assert_eq!(
        (vm.repo.as_deref(), vm.branch.as_deref()),
        (Some("acme/app"), Some("dev"))
    );
    let id = vm.id.as_str();
    assert_eq!(
        stdout(&forge, id, "cd /workspace && git rev-parse HEAD").trim(),
        dev
    );
    assert_eq!(stdout(&forge, id, "cat /workspace/DEV.md"), "dev\n");
    let origin = stdout(&forge, id, "git -C /workspace config remote.origin.url");
    assert_eq!(origin.trim(), "http://127.0.0.1:3129/acme/app.git");
    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        "/v1/vms",
        Some(json!({ "repo": "acme/app", "branch": "nope" })),
    );
    assert_eq!(status, 404, "{body}");

    // Accept: text/event-stream streams the output, then the exit.
    let text = reqwest::blocking::Client::new()
        .post(format!("{}/v1/vms/{id}/exec", forge.url))
        .bearer_auth(&forge.admin_token)
        .header("accept", "text/event-stream")
        .json(&json!({ "command": "echo one; sleep 0.2; echo two >&2; exit 4" }))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let one = text.find("event: stdout").expect("stdout event");
    let two = text.find("event: stderr").expect("stderr event");
    let exit = text.find("event: exit").expect("exit event");
    assert!(one < two && two < exit, "{text}");
    assert!(text.contains("\"exit_code\":4"), "{text}");

    // An admin token limited to acme/app sees and drives acme/app's
    // sandboxes, and nothing of another repository's.
    forge.create_repo("acme/other");
    e2e::git_ok(
        &work,
        &[
            "push",
            "--quiet",
            &forge.git_url("acme/other", &forge.admin_token),
            "main",
        ],
    );
    let other = create(
        &forge,
        CreateVm {
            repo: Some("acme/other".into()),
            ..CreateVm::default()
        },
    );
    let other = other.id.as_str();
    let limited = forge.create_token("app-admin", &["admin"], Some("acme/app"));
    let (status, listed) = forge.call(Some(&limited), "GET", "/v1/vms", None);
    assert_eq!(status, 200, "{listed}");
    let vms = listed.as_array().unwrap();
    assert!(
        vms.iter().any(|vm| vm["id"] == id) && vms.iter().all(|vm| vm["repo"] == "acme/app"),
        "a token limited to acme/app lists {listed}"
    );
    for (method, path, body) in [
        ("GET", format!("/v1/vms/{other}"), None),
        (
            "POST",
            format!("/v1/vms/{other}/exec"),
            Some(json!({ "command": "id" })),
        ),
        (
            "POST",
            format!("/v1/vms/{other}/fork"),
            Some(json!({ "count": 1 })),
        ),
        ("DELETE", format!("/v1/vms/{other}"), None),
    ] {
        let (status, answer) = forge.call(Some(&limited), method, &path, body);
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (status, answer) = forge.call(
        Some(&limited),
        "POST",
        &format!("/v1/vms/{id}/exec"),
        Some(json!({ "command": "true" })),
    );
    assert_eq!(
        (status, answer["exit_code"].as_i64()),
        (200, Some(0)),
        "{answer}"
    );
    assert_eq!(state(&forge, other), VmState::Running);
}

#[test]
fn the_preview_proxies_http_to_a_server_inside() {
    let Some(forge) = forge(20) else { return };
    let id = create(&forge, CreateVm::default()).id;
    let server = "require('http').createServer((q, s) => s.end('hello ' + q.url + ' ' + (q.headers.authorization || 'no-auth'))).listen(3000)";
    let script = format!("nohup node -e \"{server}\" >/tmp/server.log 2>&1 &");
    stdout(&forge, &id, &script);
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| {
        client
            .get(format!("{}/v1/vms/{id}/ports/3000{path}", forge.url))
            .bearer_auth(&forge.admin_token)
            .send()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let response = get("/app/page?x=1");
        if response.status().as_u16() == 200 {
            break response.text().unwrap();
        }
        assert_eq!(
            response.status().as_u16(),
            502,
            "nothing listening yet is a bad gateway"
        );
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        body, "hello /app/page?x=1 no-auth",
        "path and query pass, the token does not"
    );
    let response = get("/v1/other");
    assert_eq!(response.text().unwrap(), "hello /v1/other no-auth");
    let (status, body) = forge.call(None, "GET", &format!("/v1/vms/{id}/ports/3000/"), None);
    assert_eq!(status, 401, "{body}");
}

/// A Prometheus text exposition: every line a comment or `name{labels} value`
/// with a number for value. Returns the samples.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
            let name_ok = series
                .split('{')
                .next()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(
                name_ok && (!series.contains('{') || series.ends_with('}')),
                "{line}"
            );
            (series.to_owned(), value)
        })
        .collect()
}

#[test]
fn metrics_are_scraped_with_an_admin_token_or_on_the_metrics_address() {
    if !e2e::require_sandboxes() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let forge = TestForge::builder()
        .with_sandboxes(4)
        .env("FORGE_METRICS_LISTEN", &format!("127.0.0.1:{port}"))
        .start();
    let vm = create(&forge, CreateVm::default());
    assert_eq!(stdout(&forge, &vm.id, "echo hi"), "hi\n");
    let _: VmView = forge.send(
        "POST",
        &format!("/v1/vms/{}/pause", vm.id),
        &PauseRequest { to_disk: true },
    );

    let (status, _) = forge.call(None, "GET", "/metrics", None);
    assert_eq!(status, 401, "the main address needs a token");
    let client = reqwest::blocking::Client::new();
    let with_token = client
        .get(format!("{}/metrics", forge.url))
        .bearer_auth(&forge.admin_token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let open = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .unwrap();
    assert_eq!(open.status(), 200);
    let open = open.text().unwrap();
    for text in [&with_token, &open] {
        let samples = samples(text);
        let value = |series: &str| {
            samples
                .iter()
                .find(|(name, _)| name == series)
                .map(|(_, value)| *value)
                .unwrap_or_else(|| panic!("no {series} in {text}"))
        };
        assert_eq!(
            value("forge_sandboxes{backend=\"container\",state=\"paused_to_disk\"}"),
            1.0
        );
        assert_eq!(
            value("forge_sandbox_operation_seconds_count{operation=\"create\",outcome=\"ok\"}"),
            1.0
        );
        assert_eq!(
            value(
                "forge_sandbox_operation_seconds_count{operation=\"pause_to_disk\",outcome=\"ok\"}"
            ),
            1.0
        );
        assert!(value("forge_exec_seconds_count{mode=\"collected\"}") >= 1.0);
        assert_eq!(value("forge_sandbox_queue_depth"), 0.0);
        assert!(value("forge_sandbox_memory_mib{kind=\"available\"}") > 0.0);
    }
    let elsewhere = client
        .get(format!("http://127.0.0.1:{port}/v1/vms"))
        .send()
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        404,
        "the metrics address serves nothing else"
    );
}

#[test]
fn background_processes_run_detached_list_follow_and_take_signals() {
    let Some(forge) = forge(4) else {
        return;
    };
    let vm = create(&forge, CreateVm::default()).id;
    let processes = format!("/v1/vms/{vm}/processes");
    let server: ProcessView = forge.send(
        "POST",
        &processes,
        &StartProcess {
            command: Some(
                "trap 'echo stopping; exit 0' TERM; echo \"serving $GREETING\"; while :; do sleep 0.1; done"
                    .into(),
            ),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            ..StartProcess::default()
        },
    );
    assert_eq!(server.state, ProcessState::Running);
    let short: ProcessView = forge.send(
        "POST",
        &processes,
        &StartProcess {
            argv: Some(vec!["sh".into(), "-c".into(), "echo once; exit 3".into()]),
            ..StartProcess::default()
        },
    );
    // The request that started them is long gone; they run on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed: Vec<ProcessView> = forge.get(&processes);
        let of = |pid: u32| listed.iter().find(|p| p.pid == pid).cloned().unwrap();
        if of(short.pid).state == ProcessState::Exited && of(server.pid).output_bytes > 0 {
            assert_eq!(of(short.pid).exit_code, Some(3));
            assert_eq!(of(server.pid).state, ProcessState::Running);
            break;
        }
        assert!(Instant::now() < deadline, "{listed:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = |pid: u32| {
        reqwest::blocking::Client::new()
            .get(format!("{}{processes}/{pid}/logs", forge.url))
            .bearer_auth(&forge.admin_token)
            .send()
            .unwrap()
    };
    assert_eq!(logs(short.pid).text().unwrap(), "once\n");
    assert_eq!(logs(server.pid).text().unwrap(), "serving hi\n");

    // Following: the output as it comes, then the exit once signalled.
    let follower = {
        let url = format!("{}{processes}/{}/logs", forge.url, server.pid);
        let token = forge.admin_token.clone();
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
                .get(url)
                .bearer_auth(token)
                .header("accept", "text/event-stream")
                .send()
                .unwrap()
                .text()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("{processes}/{}/signal", server.pid),
        Some(json!({ "signal": "TERM" })),
    );
    assert_eq!(status, 202);
    let events = follower.join().unwrap();
    assert!(events.contains("event: output"), "{events}");
    assert!(events.contains("serving hi"), "{events}");
    assert!(events.contains("stopping"), "{events}");
    assert!(events.contains("event: exit"), "{events}");
    assert!(events.contains("\"exit_code\":0"), "{events}");

    // Refusals: an unknown signal, an exited or unknown process.
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("{processes}/{}/signal", server.pid),
        Some(json!({ "signal": "BOOM" })),
    );
    assert_eq!(status, 400);
    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("{processes}/{}/signal", server.pid),
        Some(json!({ "signal": "KILL" })),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(logs(999_999).status(), 404);
}
