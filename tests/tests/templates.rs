//! Snapshots and templates end to end, on the container backend with the
//! host's guest image: one snapshot starting fifty VMs at once with its
//! files and its running process, templates built in a sandbox through the
//! egress proxy, cached by their spec, warmed, failing, shared and deleted.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use api_types::TemplateState;
use api_types::snapshots::SnapshotView;
use api_types::templates::TemplateView;
use api_types::vms::{CreateVm, ExecOutput, ExecRequest, Kept, StartProcess, VmView};
use e2e::TestForge;
use serde_json::json;

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

/// How many VMs start from one snapshot at once.
const COPIES: usize = 50;

/// Prints the marker file, `counting` when the loop the snapshot kept
/// still counts, and the hostname. The loop truncates, then writes: a read
/// between the two finds the file empty and reads again.
const COUNTING: &str = "value() { for t in 1 2 3 4 5 6 7 8 9 10; do v=$(cat /tmp/counter); [ -n \"$v\" ] && { echo \"$v\"; return; }; sleep 0.02; done; }; \
    cat /root/marker; a=$(value); sleep 0.5; b=$(value); test \"$b\" -gt \"$a\" && echo counting; hostname";

#[test]
fn fifty_vms_start_at_once_from_one_snapshot_with_its_files_and_its_running_process() {
    if !e2e::require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(COPIES + 5).start();
    let source: VmView = forge.send(
        "POST",
        "/v1/vms",
        &CreateVm {
            mem_mib: Some(256),
            ..CreateVm::default()
        },
    );
    let vm = source.id;
    assert_eq!(
        exec(&forge, &vm, "echo kept > /root/marker").exit.exit_code,
        0
    );
    let _: serde_json::Value = forge.send(
        "POST",
        &format!("/v1/vms/{vm}/processes"),
        &StartProcess {
            // Builtins but `sleep`: a tree that forks little is quick for
            // CRIU to seize, even on a loaded host.
            command: Some(
                "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done".into(),
            ),
            ..StartProcess::default()
        },
    );
    std::thread::sleep(Duration::from_millis(300));

    let snapshot: SnapshotView = forge.send(
        "POST",
        &format!("/v1/vms/{vm}/snapshots"),
        &json!({ "name": "base" }),
    );
    assert_eq!(snapshot.name.as_deref(), Some("base"));
    assert_eq!(
        snapshot.kept,
        [Kept::Disk, Kept::Memory, Kept::Processes],
        "a host with CRIU keeps the processes: {snapshot:?}"
    );
    assert!(snapshot.disk_bytes.is_some_and(|b| b > 0), "{snapshot:?}");
    assert!(snapshot.saved_bytes.is_some_and(|b| b > 0), "{snapshot:?}");
    // The VM it was taken from runs on.
    assert_eq!(exec(&forge, &vm, "cat /root/marker").stdout, "kept\n");

    // Refusals, each with its reason.
    let admin = Some(forge.admin_token.as_str());
    let (status, body) = forge.call(
        admin,
        "POST",
        &format!("/v1/vms/{vm}/snapshots"),
        Some(json!({ "name": "base" })),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = forge.call(
        admin,
        "POST",
        &format!("/v1/vms/{vm}/snapshots"),
        Some(json!({ "name": "snap-x" })),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = forge.call(
        admin,
        "POST",
        "/v1/vms",
        Some(json!({ "snapshot": "base", "vcpus": 2 })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("sizes"),
        "{body}"
    );
    let (status, body) = forge.call(
        admin,
        "POST",
        "/v1/vms",
        Some(json!({ "snapshot": "base", "template": "t" })),
    );
    assert_eq!(status, 400, "{body}");
    // Another token neither sees nor uses it.
    let other = forge.create_token("other", &["repo:write"], None);
    let (status, _) = forge.call(Some(&other), "GET", "/v1/snapshots/base", None);
    assert_eq!(status, 404);
    let (status, _) = forge.call(
        Some(&other),
        "POST",
        "/v1/vms",
        Some(json!({ "snapshot": "base" })),
    );
    assert_eq!(status, 404);
    let (_, listed) = forge.call(Some(&other), "GET", "/v1/snapshots", None);
    assert_eq!(listed, json!([]));

    // Fifty at once.
    let barrier = Arc::new(Barrier::new(COPIES));
    let started = Instant::now();
    let creators: Vec<_> = (0..COPIES)
        .map(|_| {
            let barrier = barrier.clone();
            let url = forge.url.clone();
            let token = forge.admin_token.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let response = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(300))
                    .build()
                    .unwrap()
                    .post(format!("{url}/v1/vms"))
                    .bearer_auth(token)
                    .json(&json!({ "snapshot": "base", "labels": { "from": "base" } }))
                    .send()
                    .unwrap();
                let status = response.status().as_u16();
                let text = response.text().unwrap();
                assert_eq!(status, 201, "{text}");
                serde_json::from_str::<VmView>(&text).unwrap()
            })
        })
        .collect();
    let vms: Vec<VmView> = creators.into_iter().map(|t| t.join().unwrap()).collect();
    println!(
        "{COPIES} VMs from one snapshot, started at once: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for vm in &vms {
        assert_eq!(vm.snapshot.as_deref(), Some(snapshot.id.as_str()));
        assert_eq!(vm.mem_mib, 256);
    }
    // Each has the files and the loop that was running, still counting.
    let checks: Vec<_> = vms
        .chunks(10)
        .map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(|vm| vm.id.clone()).collect();
            let url = forge.url.clone();
            let token = forge.admin_token.clone();
            std::thread::spawn(move || {
                for id in ids {
                    let output: ExecOutput = reqwest::blocking::Client::new()
                        .post(format!("{url}/v1/vms/{id}/exec"))
                        .bearer_auth(&token)
                        .json(&json!({ "command": COUNTING }))
                        .send()
                        .unwrap()
                        .json()
                        .unwrap();
                    assert_eq!(
                        output.stdout,
                        format!("kept\ncounting\n{id}\n"),
                        "{id}: {output:?}"
                    );
                }
            })
        })
        .collect();
    for check in checks {
        check.join().unwrap();
    }

    // Listed with its sizes; deleted; the VMs from it run on.
    let listed: Vec<SnapshotView> = forge.get("/v1/snapshots");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, snapshot.id);
    let shown: SnapshotView = forge.get(&format!("/v1/snapshots/{}", snapshot.id));
    assert_eq!(shown.name.as_deref(), Some("base"));
    let cli = forge.cli_ok(&["snapshot", "list"]);
    assert!(
        cli.contains("base") && cli.contains("disk,memory,processes"),
        "{cli}"
    );
    let (status, _) = forge.call(admin, "DELETE", "/v1/snapshots/base", None);
    assert_eq!(status, 204);
    let (status, _) = forge.call(admin, "GET", "/v1/snapshots/base", None);
    assert_eq!(status, 404);
    let (status, body) = forge.call(
        admin,
        "POST",
        "/v1/vms",
        Some(json!({ "snapshot": "base" })),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        exec(&forge, &vms[0].id, "cat /root/marker").stdout,
        "kept\n"
    );
}

/// The hosts a Python template installs from.
const PACKAGE_HOSTS: [&str; 3] = ["deb.debian.org", "pypi.org", "files.pythonhosted.org"];

fn template(forge: &TestForge, name: &str) -> TemplateView {
    forge.get(&format!("/v1/templates/{name}"))
}

/// Waits for a template's build to end.
fn built(forge: &TestForge, name: &str) -> TemplateView {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let view = template(forge, name);
        if view.state != TemplateState::Building {
            return view;
        }
        assert!(Instant::now() < deadline, "{name} still builds: {view:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn templates_build_once_through_the_proxy_run_pytest_warm_a_server_and_fail_clearly() {
    if !e2e::require_sandboxes() {
        return;
    }
    let mut builder = TestForge::builder().with_sandboxes(8);
    for (key, value) in e2e::egress_env(&PACKAGE_HOSTS) {
        builder = builder.env(key, &value);
    }
    let forge = builder.start();
    let admin = Some(forge.admin_token.as_str());

    // Built with the CLI, which follows the build to its end.
    let spec = r#"name = "py"
apt = ["python3-pytest"]
pip = ["requests"]
workdir = "/srv/app"
run = ["printf 'import requests\ndef test_requests():\n    assert requests.get\n' > test_app.py"]
[env]
APP_ENV = "test"
"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("py.toml");
    std::fs::write(&file, spec).unwrap();
    let started = Instant::now();
    let out = forge.cli_ok(&["template", "build", "--file", file.to_str().unwrap()]);
    println!(
        "python template built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("==> [3/") && out.contains("pip install requests"),
        "{out}"
    );
    assert!(out.contains("ready"), "{out}");
    let py = template(&forge, "py");
    assert_eq!(py.state, TemplateState::Ready, "{py:?}");
    let image = py.snapshot.clone().expect("a built template has its image");
    assert_eq!(image.template.as_deref(), Some("py"));
    let log = reqwest::blocking::Client::new()
        .get(format!("{}/v1/templates/py/build", forge.url))
        .bearer_auth(&forge.admin_token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(log.contains("Setting up python3-pytest"), "{log}");
    assert!(
        log.contains("Successfully installed") && log.contains("requests"),
        "{log}"
    );

    // The same spec under another name builds nothing.
    let (status, again) = forge.call(admin, "POST", "/v1/templates", Some(json!({
        "name": "py-again",
        "apt": ["python3-pytest"],
        "pip": ["requests"],
        "workdir": "/srv/app",
        "run": ["printf 'import requests\ndef test_requests():\n    assert requests.get\n' > test_app.py"],
        "env": { "APP_ENV": "test" },
    })));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["reused"], true);
    assert_eq!(again["spec_hash"], json!(py.spec_hash));
    assert_eq!(again["snapshot"]["id"], json!(image.id));

    // Its VM runs pytest in the workdir, with the template's environment.
    let vm: VmView = forge.send("POST", "/v1/vms", &json!({ "template": "py" }));
    assert_eq!(vm.template.as_deref(), Some("py"));
    let out = exec(
        &forge,
        &vm.id,
        "python3 -m pytest -q && echo \"$APP_ENV in $(pwd)\"",
    );
    assert_eq!(out.exit.exit_code, 0, "{out:?}");
    assert!(
        out.stdout.contains("1 passed") && out.stdout.contains("test in /srv/app"),
        "{out:?}"
    );

    // A warm template: its server runs in every VM from the first moment.
    let (status, warm) = forge.call(admin, "POST", "/v1/templates", Some(json!({
        "name": "web",
        "warm": true,
        "start": {
            "command": "node -e \"const t = Date.now(); require('http').createServer((q, s) => s.end('up since ' + t)).listen(8000)\"",
            "port": 8000,
        },
    })));
    assert_eq!(status, 202, "{warm}");
    let web = built(&forge, "web");
    assert_eq!(web.state, TemplateState::Ready, "{web:?}");
    assert_eq!(
        web.snapshot.as_ref().unwrap().kept,
        [Kept::Disk, Kept::Memory, Kept::Processes]
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let vm: VmView = forge.send("POST", "/v1/vms", &json!({ "template": "web" }));
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/v1/vms/{}/ports/8000/", forge.url, vm.id))
        .bearer_auth(&forge.admin_token)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().unwrap();
    let since: u128 = body.strip_prefix("up since ").unwrap().parse().unwrap();
    assert!(
        since < before,
        "the server was started by the build, not by this VM: {body}"
    );

    // A failing build: the proxy refuses a host off the allow-list, the
    // step fails, the log says why, and no VM starts from it.
    let (status, _) = forge.call(
        admin,
        "POST",
        "/v1/templates",
        Some(json!({
            "name": "broken",
            "run": ["npm view left-pad version --registry=https://registry.yarnpkg.com/"],
        })),
    );
    assert_eq!(status, 202);
    let broken = built(&forge, "broken");
    assert_eq!(broken.state, TemplateState::Failed);
    assert!(
        broken.error.as_deref().unwrap().contains("exited with"),
        "{broken:?}"
    );
    let log = reqwest::blocking::Client::new()
        .get(format!("{}/v1/templates/broken/build", forge.url))
        .bearer_auth(&forge.admin_token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(log.contains("403"), "{log}");
    let (status, body) = forge.call(
        admin,
        "POST",
        "/v1/vms",
        Some(json!({ "template": "broken" })),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{body}"
    );
    let (status, body) = forge.call(
        admin,
        "POST",
        "/v1/templates",
        Some(json!({ "name": "bad", "apt": ["-o=APT::x"] })),
    );
    assert_eq!(status, 400, "{body}");

    // A repository's pipeline runs in a sandbox from the template its
    // `.forge.toml` names.
    forge.create_repo("acme/py");
    let url = forge.git_url("acme/py", &forge.admin_token);
    let config = "[pipeline]\ntemplate = \"py-again\"\n[[pipeline.steps]]\nname = \"test\"\nrun = \"python3 -c 'import requests, pytest' && echo template=$APP_ENV\"\n";
    let work = e2e::work_repo(dir.path(), "work", &[(".forge.toml", config)]);
    let head = e2e::git_ok(&work, &["rev-parse", "HEAD"]);
    e2e::git_ok(&work, &["push", "--quiet", &url, "main"]);
    let run = forge.finished_run("acme/py", &head);
    let steps_log = reqwest::blocking::Client::new()
        .get(format!("{}/v1/runs/{}/logs", forge.url, run.id))
        .bearer_auth(&forge.admin_token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        run.state,
        api_types::RunState::Passed,
        "{run:?}: {steps_log}"
    );
    assert!(steps_log.contains("template=test"), "{steps_log}");
    let sandbox: VmView = forge.get(&format!("/v1/vms/{}", run.vm_id.clone().unwrap()));
    assert_eq!(sandbox.template.as_deref(), Some("py-again"));

    // A template's image goes with the last template of its spec.
    let (status, _) = forge.call(
        admin,
        "DELETE",
        &format!("/v1/snapshots/{}", image.id),
        None,
    );
    assert_eq!(
        status, 409,
        "a template's image is deleted with its template"
    );
    let (status, _) = forge.call(admin, "DELETE", "/v1/templates/py", None);
    assert_eq!(status, 204);
    let vm: VmView = forge.send("POST", "/v1/vms", &json!({ "template": "py-again" }));
    assert_eq!(
        exec(&forge, &vm.id, "python3 -c 'import requests'")
            .exit
            .exit_code,
        0
    );
    let (status, _) = forge.call(admin, "DELETE", "/v1/templates/py-again", None);
    assert_eq!(status, 204);
    let (status, _) = forge.call(admin, "GET", &format!("/v1/snapshots/{}", image.id), None);
    assert_eq!(
        status, 404,
        "the image went with the last template of its spec"
    );
    // VMs from it run on.
    assert_eq!(
        exec(&forge, &vm.id, "python3 -c 'import requests'")
            .exit
            .exit_code,
        0
    );
}
