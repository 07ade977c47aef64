//! The egress proxy end to end: a sandbox has no network of its own, and
//! its HTTP(S) goes through the proxy the agent offers inside, relayed to
//! the forge host, which enforces the allow-list and refuses inward
//! addresses and the forge itself. Needs the npm registry (which this
//! project's machines reach) for the install.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::time::Instant;

use std::collections::BTreeMap;

use api_types::vms::{CreateVm, ExecOutput, ExecRequest, VmDetail, VmView};
use e2e::TestForge;

fn exec(forge: &TestForge, vm: &str, command: &str) -> ExecOutput {
    forge.send(
        "POST",
        &format!("/v1/vms/{vm}/exec"),
        &ExecRequest {
            command: Some(command.into()),
            timeout_secs: Some(240),
            ..ExecRequest::default()
        },
    )
}

/// What `fetch(url)` through the proxy shows the sandbox user (loopback
/// too: `NO_PROXY` is cleared so that the request reaches the proxy).
fn fetch(forge: &TestForge, vm: &str, url: &str) -> String {
    let script = format!(
        "const r = await fetch({url:?}, {{ proxy: process.env.HTTP_PROXY }}); console.log(r.status, await r.text());"
    );
    let out: ExecOutput = forge.send(
        "POST",
        &format!("/v1/vms/{vm}/exec"),
        &ExecRequest {
            argv: Some(vec!["bun".into(), "-e".into(), script]),
            env: BTreeMap::from([
                ("NO_PROXY".into(), String::new()),
                ("no_proxy".into(), String::new()),
            ]),
            timeout_secs: Some(60),
            ..ExecRequest::default()
        },
    );
    format!("{}{}", out.stdout, out.stderr)
}

#[test]
fn bun_install_goes_through_the_proxy_and_the_rest_is_refused() {
    if !e2e::require_sandboxes() {
        return;
    }
    // Inward addresses are on the list so that the address check, not the
    // list, is what refuses them.
    let mut builder = TestForge::builder().with_sandboxes(10);
    for (key, value) in e2e::npm_registry_env("10.1.2.3,localhost,127.0.0.1") {
        builder = builder.env(key, &value);
    }
    let forge = builder.start();
    let vm: VmView = forge.send("POST", "/v1/vms", &CreateVm::default());
    let id = vm.id.as_str();

    let env = exec(&forge, id, "env | sort | grep -i proxy");
    let env = env.stdout.as_str();
    assert!(env.contains("HTTPS_PROXY=http://127.0.0.1:3128"), "{env}");
    assert!(env.contains("no_proxy=localhost"), "{env}");

    let package = r#"{ "name": "app", "private": true, "dependencies": { "is-number": "7.0.0" } }"#;
    let response = reqwest::blocking::Client::new()
        .put(format!(
            "{}/v1/vms/{id}/files/workspace/app/package.json",
            forge.url
        ))
        .bearer_auth(&forge.admin_token)
        .body(package)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let started = Instant::now();
    let install = exec(
        &forge,
        id,
        "cd /workspace/app && bun install --no-cache 2>&1",
    );
    let took = started.elapsed();
    assert_eq!(install.exit.exit_code, 0, "bun install failed: {install:?}");
    println!("bun install of is-number through the proxy: {took:?}");
    let installed = exec(
        &forge,
        id,
        "cat /workspace/app/node_modules/is-number/package.json",
    );
    assert!(
        installed.stdout.contains("\"version\": \"7.0.0\""),
        "{installed:?}"
    );

    // git's https traffic takes the same way: the tunnel opens (the registry
    // is allowed) and the far end answers that there is no repository.
    let git = exec(
        &forge,
        id,
        "git ls-remote https://registry.npmjs.org/no-such-repo.git 2>&1",
    );
    let said = git.stdout.as_str();
    assert_ne!(git.exit.exit_code, 0, "{git:?}");
    assert!(!said.contains("CONNECT tunnel failed"), "{said}");
    let refused_git = exec(&forge, id, "git ls-remote https://example.com/x.git 2>&1");
    assert!(refused_git.stdout.contains("403"), "{refused_git:?}");

    let not_listed = fetch(&forge, id, "http://example.com/");
    assert!(
        not_listed.starts_with("403")
            && not_listed.contains("example.com is not on this forge's egress allow-list"),
        "{not_listed}"
    );
    let private = fetch(&forge, id, "http://10.1.2.3/");
    assert!(
        private.starts_with("403") && private.contains("a private address"),
        "{private}"
    );
    let loopback = fetch(&forge, id, "http://localhost:22/");
    assert!(
        loopback.starts_with("403") && loopback.contains("a loopback address"),
        "{loopback}"
    );
    let own = forge.url.trim_start_matches("http://").to_owned();
    let forge_api = fetch(&forge, id, &format!("http://{own}/v1/system"));
    assert!(
        forge_api.starts_with("403") && forge_api.contains("is the forge itself"),
        "{forge_api}"
    );

    let shown: VmDetail = forge.get(&format!("/v1/vms/{id}"));
    let egress = &shown.egress;
    assert!(egress.refused >= 5, "{shown:?}");
    assert!(egress.bytes_in > 1000, "{shown:?}");
    assert!(forge.log().contains("egress connection"));
    forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
}
