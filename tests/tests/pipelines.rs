//! Branch pipelines end to end: pushes run the branch's steps in its
//! sandbox, with real `git` and Bun in the guest image.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use api_types::runs::{RunView, StepView};
use api_types::vms::VmDetail;
use api_types::{RunState, StepState};
use e2e::{TestForge, commit_files, git_ok, work_repo};

const PACKAGE: &str = r#"{ "name": "demo", "private": true, "scripts": { "test": "bun test" } }"#;

fn failing_test(expected: u32) -> String {
    format!(
        "import {{ expect, test }} from \"bun:test\";\ntest(\"adds small numbers\", () => {{ expect(1 + 1).toBe({expected}); }});\n"
    )
}

fn step<'a>(run: &'a RunView, name: &str) -> &'a StepView {
    run.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}: {run:?}"))
}

fn log(forge: &TestForge, run: &RunView) -> String {
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/v1/runs/{}/logs", forge.url, run.id))
        .bearer_auth(&forge.admin_token)
        .send()
        .unwrap();
    response.text().unwrap()
}

#[test]
fn pushes_run_the_tests_in_the_branch_sandbox() {
    if !e2e::require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(20).start();
    forge.create_repo("acme/bun");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/bun", &forge.admin_token);
    let failing = failing_test(3);
    let work = work_repo(
        tmp.path(),
        "work",
        &[("package.json", PACKAGE), ("math.test.ts", &failing)],
    );
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &url, "main"]);

    let run = forge.finished_run("acme/bun", &first);
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    assert_eq!(
        step(&run, "checkout").status,
        StepState::Passed,
        "{}",
        log(&forge, &run)
    );
    assert_eq!(
        step(&run, "install").status,
        StepState::Passed,
        "{}",
        log(&forge, &run)
    );
    assert_eq!(step(&run, "test").status, StepState::Failed);
    let text = log(&forge, &run);
    assert!(
        text.contains("adds small numbers"),
        "the log names the failing test:\n{text}"
    );
    let main_vm = run.vm_id.clone().unwrap();

    // The fix passes; dependencies are unchanged, so install is skipped.
    let fixed = commit_files(&work, &[("math.test.ts", &failing_test(2))], "fix the test");
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    let run = forge.finished_run("acme/bun", &fixed);
    assert_eq!(run.state, RunState::Passed, "{}", log(&forge, &run));
    assert_eq!(
        run.vm_id.as_deref(),
        Some(main_vm.as_str()),
        "the branch keeps its sandbox"
    );
    assert_eq!(step(&run, "install").status, StepState::Skipped);
    assert!(log(&forge, &run).contains("1 pass"));

    // A new branch runs in a fork of main's sandbox.
    git_ok(&work, &["checkout", "--quiet", "-b", "feature"]);
    let feature = commit_files(&work, &[("README.md", "feature\n")], "feature work");
    git_ok(&work, &["push", "--quiet", &url, "feature"]);
    let run = forge.finished_run("acme/bun", &feature);
    assert_eq!(run.state, RunState::Passed, "{}", log(&forge, &run));
    let vm: VmDetail = forge.get(&format!("/v1/vms/{}", run.vm_id.as_deref().unwrap()));
    assert_eq!(vm.vm.parent.as_deref(), Some(main_vm.as_str()), "{vm:?}");
    assert_eq!(vm.vm.branch.as_deref(), Some("feature"));
    assert_eq!(
        step(&run, "install").status,
        StepState::Skipped,
        "the fork carried main's dependencies"
    );

    // The CLI shows the same.
    let cli = |args: &[&str]| forge.cli_ok(args);
    let listed = cli(&["run", "list", "acme/bun"]);
    assert!(
        listed.contains("passed") && listed.contains("failed") && listed.contains("feature"),
        "{listed}"
    );
    let shown = cli(&["run", "show", &run.id.to_string()]);
    assert!(
        shown.contains("checkout") && shown.contains("test"),
        "{shown}"
    );
    let followed = cli(&["run", "logs", "--follow", &run.id.to_string()]);
    assert!(
        followed.contains("1 pass") && followed.contains("== run passed =="),
        "{followed}"
    );
    assert!(cli(&["vm", "list"]).contains(&main_vm));
    let inside = cli(&[
        "vm",
        "exec",
        &main_vm,
        "--",
        "git",
        "-C",
        "/workspace",
        "log",
        "--format=%s",
        "-1",
    ]);
    assert_eq!(inside.trim(), "fix the test");
    let failed = forge.cli(&["vm", "exec", &main_vm, "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        failed.status.code(),
        Some(7),
        "the CLI exits with the command's code"
    );

    // Events for webhooks and the review bot.
    let kinds: Vec<String> = forge
        .events("acme/bun", 0)
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "run.completed").count(),
        3,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"run.started".to_owned()));
}
