//! Branch pipelines end to end: pushes run the branch's steps in its
//! sandbox, with real `git` and Bun in the guest image.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use api_types::runs::{RunDetail, RunView, StepView};
use api_types::vms::VmDetail;
use api_types::{ReviewVerdict, RunState, StepState};
use e2e::fake_model::{FakeModel, Reply};
use e2e::{TestForge, commit_files, git_ok, work_repo};
use serde_json::json;

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
    // The branch sandboxes carry the pipelines' label, and the CLI filters.
    let labelled = cli(&[
        "vm",
        "list",
        "--label",
        "forge/role=pipeline",
        "--state",
        "running",
    ]);
    assert!(labelled.contains(&main_vm), "{labelled}");
    assert!(!cli(&["vm", "list", "--label", "forge/role=pool"]).contains(&main_vm));
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

/// The run of `commit` as `GET /v1/runs/{id}` shows it once the forge's
/// review of its branch is there.
fn reviewed_run(forge: &TestForge, repo: &str, commit: &str) -> RunDetail {
    let run = forge.finished_run(repo, commit);
    e2e::eventually(
        std::time::Duration::from_secs(60),
        "the branch's review",
        || {
            let shown: RunDetail = forge.get(&format!("/v1/runs/{}", run.id));
            if shown.branch_review.is_some() {
                Ok(shown)
            } else {
                Err(shown.run.state)
            }
        },
    )
}

#[test]
fn a_branch_is_reviewed_against_the_default_branch_without_github() {
    if !e2e::require_sandboxes() {
        return;
    }
    let model = FakeModel::start(
        vec![Reply::Answer(json!({
            "summary": "The test now expects **3**.",
            "request_changes": false,
            "comments": [
                { "path": "math.test.ts", "line": 2, "body": "1 + 1 is 2." },
                { "path": "elsewhere.ts", "line": 1, "body": "Not in the change." },
            ],
        }))],
        None,
    );
    let spec = format!("{},fake-reviewer", model.url);
    let forge = TestForge::builder()
        .with_sandboxes(20)
        .env("FORGE_REVIEW_MODEL", &spec)
        .start();
    forge.create_repo("acme/solo");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/solo", &forge.admin_token);
    let work = work_repo(
        tmp.path(),
        "work",
        &[
            ("package.json", PACKAGE),
            ("math.test.ts", &failing_test(2)),
        ],
    );
    let main = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    assert_eq!(
        forge.finished_run("acme/solo", &main).state,
        RunState::Passed
    );

    git_ok(&work, &["checkout", "--quiet", "-b", "change"]);
    let change = commit_files(&work, &[("math.test.ts", &failing_test(3))], "expect 3");
    git_ok(&work, &["push", "--quiet", &url, "change"]);
    let run = reviewed_run(&forge, "acme/solo", &change);
    assert_eq!(run.run.state, RunState::Failed);
    let review = run.branch_review.unwrap();
    assert_eq!(review.verdict, ReviewVerdict::RequestChanges, "{review:?}");
    assert_eq!(
        (review.base_branch.as_str(), review.base_commit.as_str()),
        ("main", main.as_str())
    );
    assert_eq!(review.model.as_deref(), Some("fake-reviewer"));
    assert_eq!(
        review.model_summary.as_deref(),
        Some("The test now expects **3**.")
    );
    assert_eq!(review.comments.len(), 1, "{review:?}");
    let comment = &review.comments[0];
    assert_eq!((comment.path.as_str(), comment.line), ("math.test.ts", 2));
    assert!(
        comment
            .body
            .contains("**bun test**: `adds small numbers` failed")
            && comment.body.contains("**AI review**: 1 + 1 is 2."),
        "{comment:?}"
    );
    assert!(
        review
            .body
            .contains("The branch's own steps; the change is read against `main`")
            && review
                .body
                .contains("1 of the model's comments did not point at a line"),
        "{}",
        review.body
    );
    let posted: Vec<_> = forge
        .events("acme/solo", 0)
        .into_iter()
        .filter(|e| e.kind == "review.posted")
        .collect();
    assert_eq!(posted.len(), 1, "{posted:?}");
    // The default branch's run is not reviewed.
    let main_run: RunDetail = forge.get(&format!(
        "/v1/runs/{}",
        forge.finished_run("acme/solo", &main).id
    ));
    assert!(main_run.branch_review.is_none() && main_run.analysis.is_none());
}

#[test]
fn push_options_skip_the_run_or_give_its_steps_variables() {
    if !e2e::require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(8).start();
    forge.create_repo("acme/opts");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/opts", &forge.admin_token);
    let steps =
        "[[pipeline.steps]]\nname = \"show\"\nrun = \"echo mode=$MODE level=$LEVEL ci=$CI\"\n";
    let work = work_repo(tmp.path(), "work", &[(".forge.toml", steps)]);
    let skipped = git_ok(&work, &["rev-parse", "HEAD"]);
    let output = e2e::git_run(&work, &["push", "-o", "ci.skip", &url, "main"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("No pipeline runs for this push"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: serde_json::Value = forge.get("/v1/repos/acme/opts/events");
    let push = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "push")
        .unwrap()
        .clone();
    assert_eq!(push["payload"]["push_options"]["ci_skip"], true, "{push}");

    let variables = commit_files(&work, &[("a.txt", "a")], "with variables");
    git_ok(
        &work,
        &[
            "push",
            "--quiet",
            "-o",
            "ci.variable=MODE=fast lane",
            "-o",
            "ci.variable=LEVEL=3",
            &url,
            "main",
        ],
    );
    let run = forge.finished_run("acme/opts", &variables);
    assert_eq!(run.state, RunState::Passed, "{run:?}");
    assert!(
        log(&forge, &run).contains("mode=fast lane level=3 ci=true"),
        "{}",
        log(&forge, &run)
    );
    assert_eq!(
        run.variables.get("MODE").map(String::as_str),
        Some("fast lane")
    );
    let runs: Vec<RunView> = forge.get("/v1/repos/acme/opts/runs");
    assert!(
        runs.iter().all(|r| r.commit_id != skipped),
        "a skipped push has no run: {runs:?}"
    );
    let again: RunView = forge.send_empty("POST", &format!("/v1/runs/{}/rerun", run.id));
    assert_eq!(
        again.variables, run.variables,
        "a re-run keeps the variables"
    );

    // A variable the forge sets itself is refused, and nothing is pushed.
    let refused = commit_files(&work, &[("b.txt", "b")], "overrides CI");
    let output = e2e::git_run(&work, &["push", "-o", "ci.variable=CI=false", &url, "main"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the forge sets this variable itself"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let branches: serde_json::Value = forge.get("/v1/repos/acme/opts/branches");
    assert_ne!(branches[0]["commit"]["id"], refused.as_str());
}
