//! Pipeline runs seen through the API: the steps planned from a pushed
//! commit, a run cancelled by a newer push or by a user while its step is
//! held in flight, and a run run again; two forge processes on one
//! database (each run run once, a cancel through the one that does not
//! run it, the runs of a stopped one taken over). Commits are made with
//! the host's `git` and fetched into the forge's bare repository; the push
//! event is recorded as a push records it (`git/push.rs`).

use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use sandbox::testing::{Ending, Gate, Reply};
use serde_json::{Value, json};

use crate::store::NewEvent;
use crate::testing::TestApp;
use test_support::poll::eventually_async as eventually;

const PATIENCE: Duration = Duration::from_secs(20);

fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A repository `acme/app` and a work tree to commit in.
struct Repo {
    id: String,
    work: tempfile::TempDir,
    head: String,
}

impl Repo {
    async fn new(app: &TestApp) -> Repo {
        app.repo("acme/app").await;
        let id = app
            .state
            .store
            .repo_by_name("acme", "app")
            .await
            .expect("store")
            .expect("the repository")
            .id;
        let work = tempfile::tempdir().expect("a work tree");
        git(work.path(), &["init", "-q", "-b", "main"]);
        Repo {
            id,
            work,
            head: "0".repeat(40),
        }
    }

    /// Commits `files` on `main`, brings the commit into the forge's
    /// repository and records the push; returns the commit.
    async fn push(&mut self, app: &TestApp, files: &[(&str, &str)]) -> String {
        for (path, content) in files {
            std::fs::write(self.work.path().join(path), content).expect("a file");
        }
        git(self.work.path(), &["add", "-A"]);
        git(
            self.work.path(),
            &["commit", "-q", "--allow-empty", "-m", "change"],
        );
        let commit = git(self.work.path(), &["rev-parse", "HEAD"]);
        let bare = app.state.repos.path(&self.id);
        let source = self.work.path().to_string_lossy().into_owned();
        git(&bare, &["fetch", "-q", &source, "+main:refs/heads/main"]);
        let event = NewEvent {
            kind: "push".into(),
            ref_name: Some("refs/heads/main".into()),
            payload: json!({
                "repo": "acme/app", "ref": "refs/heads/main", "branch": "main",
                "before": self.head, "after": commit, "created": false, "deleted": false,
            }),
        };
        app.state
            .events
            .record(&app.state.store, &self.id, "acme/app", None, &[event])
            .await
            .expect("the push event");
        self.head = commit.clone();
        commit
    }
}

/// Queues the runs of the push events the pipelines have not read (as a
/// process that then stopped, or a re-run, does), moving their cursor.
async fn queue_unread_pushes(store: crate::store::Store) -> Vec<crate::store::RunRow> {
    let cursor = store.pipeline_cursor().await.expect("the cursor");
    let pushes = store.all_events_after(cursor, 100).await.expect("events");
    let wanted: Vec<_> = pushes
        .iter()
        .filter_map(crate::pipelines::requested_run)
        .collect();
    let last = pushes.last().expect("a push").id;
    store.queue_runs(&wanted, last).await.expect("queued")
}

/// An app whose pipelines do not run on their own (a test drives them),
/// where lint and test pass, and its repository.
async fn passing_without_pipelines() -> (TestApp, Repo) {
    let app = TestApp::builder()
        .with_backend(backend_with_git())
        .start()
        .await;
    app.backend.respond_to("bun run lint", Reply::ok("clean\n"));
    app.backend.respond_to("bun test", Reply::ok("ok\n"));
    let repo = Repo::new(&app).await;
    (app, repo)
}

/// How many times a lint step ran.
fn lints_run(app: &TestApp) -> usize {
    app.backend
        .execs()
        .iter()
        .filter(|exec| exec.invocation.script() == "bun run lint")
        .count()
}

/// The runs of `acme/app`, newest first.
async fn runs(app: &TestApp) -> Vec<Value> {
    let runs = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/repos/acme/app/runs",
            Some(app.admin()),
            None,
        )
        .await;
    runs.as_array().cloned().unwrap_or_default()
}

fn step_names(run: &Value) -> Vec<String> {
    run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn finished_run(app: &TestApp, commit: &str) -> Value {
    eventually(PATIENCE, "the run finished", async || {
        let run = runs(app)
            .await
            .into_iter()
            .find(|run| run["commit_id"] == commit)
            .unwrap_or_default();
        match run["state"].as_str() {
            Some("passed" | "failed" | "cancelled" | "error") => Ok(run),
            _ => Err(run),
        }
    })
    .await
}

/// A backend where git (the checkout) succeeds.
fn backend_with_git() -> sandbox::testing::MemorySandboxes {
    let backend = sandbox::testing::MemorySandboxes::new();
    backend.respond(|invocation| {
        matches!(invocation.argv[0].as_str(), "git" | "rm").then(|| Reply::ok(""))
    });
    backend
}

/// An app on [`backend_with_git`] whose pipelines run.
fn app_with_git() -> crate::testing::TestAppBuilder {
    TestApp::builder()
        .with_backend(backend_with_git())
        .with_pipelines()
}

const STEPS: &str = r#"
[[pipeline.steps]]
name = "lint"
run = "bun run lint"

[[pipeline.steps]]
name = "test"
run = "bun test"
"#;

/// A run of [`STEPS`] on `main` whose lint step (answering `lint`) has
/// started and is held at the returned gate; `bun test` passes. The app,
/// the gate, the repository and the commit.
async fn run_held_at_lint(lint: Reply) -> (TestApp, Gate, Repo, String) {
    let app = app_with_git().start().await;
    app.backend.respond_to("bun run lint", lint);
    app.backend.respond_to("bun test", Reply::ok("ok\n"));
    let gate = app
        .backend
        .hold_exec(|invocation| invocation.script() == "bun run lint");
    let mut repo = Repo::new(&app).await;
    let commit = repo.push(&app, &[(".forge.toml", STEPS)]).await;
    if tokio::time::timeout(PATIENCE, gate.arrived(1))
        .await
        .is_err()
    {
        panic!(
            "the run's lint did not start within {PATIENCE:?}; runs: {:?}; backend calls: {:?}; execs: {:?}",
            runs(&app).await,
            app.backend.calls(),
            app.backend.execs()
        );
    }
    (app, gate, repo, commit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_has_the_steps_its_commit_plans_and_a_broken_plan_fails_it() {
    let app = app_with_git().start().await;
    app.backend.respond_to("bun run lint", Reply::ok("clean\n"));
    app.backend
        .respond_to("bun test", Reply::exit(1).stderr("1 failed\n"));
    let mut repo = Repo::new(&app).await;
    let commit = repo.push(&app, &[(".forge.toml", STEPS)]).await;
    let run = finished_run(&app, &commit).await;
    let logs = app
        .call(
            Method::GET,
            &format!("/v1/runs/{}/logs", run["id"]),
            Some(app.admin()),
            None,
        )
        .await
        .1;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(step_names(&run), ["checkout", "lint", "test"]);
    let statuses: Vec<_> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["status"].clone(), s["exit_code"].clone()))
        .collect();
    assert_eq!(
        statuses[1..],
        [(json!("passed"), json!(0)), (json!("failed"), json!(1))],
        "{run}\n{logs}"
    );
    let scripts: Vec<_> = app
        .backend
        .execs()
        .into_iter()
        .filter(|e| e.invocation.script().starts_with("bun"))
        .map(|e| {
            (
                e.invocation.script(),
                e.invocation.cwd.clone(),
                e.invocation.env("CI").map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        scripts,
        [
            (
                "bun run lint".to_owned(),
                Some("/workspace".to_owned()),
                Some("true".to_owned())
            ),
            (
                "bun test".to_owned(),
                Some("/workspace".to_owned()),
                Some("true".to_owned())
            ),
        ]
    );
    assert!(
        logs.as_str().unwrap_or_default().contains("1 failed"),
        "{logs}"
    );

    let broken = repo
        .push(
            &app,
            &[(".forge.toml", "[[pipeline.steps]]\nname = \"lint\"\n")],
        )
        .await;
    let run = finished_run(&app, &broken).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(step_names(&run), ["config"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_push_cancels_the_running_step_and_the_run_says_so() {
    let (app, lint, mut repo, first) = run_held_at_lint(Reply::ok("clean\n")).await;
    let running = runs(&app).await;
    assert_eq!(running[0]["state"], "running", "{running:?}");
    assert_eq!(running[0]["steps"][1]["status"], "running", "{running:?}");

    let second = repo.push(&app, &[("README", "newer\n")]).await;
    let cancelled = finished_run(&app, &first).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(
        cancelled["error"]
            .as_str()
            .unwrap_or_default()
            .contains("newer push"),
        "{cancelled}"
    );
    assert_eq!(cancelled["steps"][1]["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["steps"][2]["status"], "cancelled", "{cancelled}");
    assert!(
        !app.backend
            .execs()
            .iter()
            .any(|e| e.invocation.script() == "bun test"),
        "the steps after the cancelled one never ran"
    );
    eventually(PATIENCE, "the sandbox saw the step cancelled", async || {
        let lint = app
            .backend
            .execs()
            .into_iter()
            .find(|e| e.invocation.script() == "bun run lint");
        match lint.as_ref().and_then(|e| e.ending.as_ref()) {
            Some(Ending::Cancelled) => Ok(()),
            _ => Err(lint.map(|e| e.ending)),
        }
    })
    .await;

    // The newer run goes on in the same branch sandbox once let through.
    tokio::time::timeout(PATIENCE, lint.arrived(2))
        .await
        .expect("the second run's lint started");
    lint.open();
    let passed = finished_run(&app, &second).await;
    assert_eq!(passed["state"], "passed", "{passed}");
    assert_eq!(
        passed["vm_id"], cancelled["vm_id"],
        "one sandbox per branch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_cancels_a_running_run_and_runs_it_again() {
    let (app, lint, repo, commit) = run_held_at_lint(Reply::ok("clean\n")).await;
    let id = runs(&app).await[0]["id"].as_i64().expect("a run id");

    // Reading is not enough to cancel.
    let reader = app.token(&["repo:read"], None).await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            Some(&reader.secret),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Nor may the code in another sandbox of the repository stop, or run
    // again, the pipelines of a branch it may not push to.
    let other = app.vm(app.admin()).await;
    let intruder = app.sandbox_token(&other, &repo.id).await;
    for action in ["cancel", "rerun"] {
        let (status, body) = app
            .call(
                Method::POST,
                &format!("/v1/runs/{id}/{action}"),
                Some(&intruder),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("acts only on runs of")),
            "{body}"
        );
    }
    assert_eq!(runs(&app).await[0]["state"], "running");
    assert_eq!(runs(&app).await.len(), 1, "nothing was run again");

    // The running step is killed; the answer is the ended run.
    let cancelled = cancel_as_admin(&app, id).await;
    assert_eq!(cancelled["steps"][1]["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["steps"][2]["status"], "cancelled", "{cancelled}");
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("run {id} has already finished (cancelled)")
    );

    // Run it again: a new run of the same commit, with the same steps.
    let again = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            &format!("/v1/runs/{id}/rerun"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_ne!(again["id"], id);
    assert_eq!(again["commit_id"], commit);
    tokio::time::timeout(PATIENCE, lint.arrived(2))
        .await
        .expect("the re-run's lint started");
    lint.open();
    let passed = eventually(PATIENCE, "the re-run passed", async || {
        let run = app
            .expect(
                StatusCode::OK,
                Method::GET,
                &format!("/v1/runs/{}", again["id"]),
                Some(app.admin()),
                None,
            )
            .await;
        if run["state"] == "passed" {
            Ok(run)
        } else {
            Err(run)
        }
    })
    .await;
    assert_eq!(step_names(&passed), ["checkout", "lint", "test"]);
    assert_eq!(
        passed["commit"]["id"], commit,
        "the detail names the commit"
    );
    assert_eq!(passed["commit"]["message"], "change");
    assert_eq!(passed["commit"]["author"]["name"], "Test");
    assert!(
        passed["steps"][0]["duration_ms"].is_i64(),
        "the checkout has a duration: {passed}"
    );
    // Steps run with colour forced, as tools colour for a terminal.
    let lint_env: Vec<_> = app
        .backend
        .execs()
        .into_iter()
        .filter(|e| e.invocation.script() == "bun run lint")
        .map(|e| {
            (
                e.invocation.env("FORCE_COLOR").map(str::to_owned),
                e.invocation.env("TERM").map(str::to_owned),
            )
        })
        .collect();
    assert!(
        lint_env
            .iter()
            .all(|env| *env == (Some("1".to_owned()), Some("xterm-256color".to_owned()))),
        "{lint_env:?}"
    );

    // The branch is gone: nothing to run again.
    let bare = app.state.repos.path(&repo.id);
    git(&bare, &["update-ref", "-d", "refs/heads/main"]);
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/runs/{id}/rerun"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["message"], "branch main no longer exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_steps_output_reaches_its_log_while_the_step_still_runs() {
    let (app, lint, _repo, commit) = run_held_at_lint(Reply::ok("done\n").early("started\n")).await;
    let id = runs(&app).await[0]["id"].as_i64().expect("a run id");
    // The step prints, then says nothing while it works: its line is in
    // the log all the same.
    eventually(PATIENCE, "the early line in the log", async || {
        let (_, logs) = app
            .call(
                Method::GET,
                &format!("/v1/runs/{id}/logs"),
                Some(app.admin()),
                None,
            )
            .await;
        let logs = logs.as_str().unwrap_or_default().to_owned();
        if logs.contains("started") {
            Ok(())
        } else {
            Err(logs)
        }
    })
    .await;
    assert_eq!(runs(&app).await[0]["state"], "running");
    lint.open();
    let run = finished_run(&app, &commit).await;
    assert_eq!(run["state"], "passed", "{run}");
}

/// Another forge process on `app`'s database, repositories and sandbox
/// backend, with pipelines of its own, started; stopped when the token is
/// cancelled.
async fn second_process(
    app: &TestApp,
) -> (
    std::sync::Arc<crate::pipelines::Pipelines>,
    tokio_util::sync::CancellationToken,
) {
    let store = app.state.store.reopen().await;
    let events = crate::events::EventBus::default();
    let sandboxes = crate::vms::Sandboxes::new(
        crate::vms::Availability::Ready {
            backend: std::sync::Arc::new(app.backend.clone()),
            image: sandbox::Image::root("/second-process-image"),
            reason: "in-memory sandboxes for tests".into(),
        },
        store.clone(),
        crate::vms::Limits::default(),
        crate::vms::NetworkConfig::default(),
        events.clone(),
    );
    let pipelines = crate::pipelines::Pipelines::new(
        store,
        app.state.repos.clone(),
        sandboxes,
        events,
        crate::testing::PUBLIC_URL.into(),
        crate::pipelines::ReviewSettings::default(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    pipelines.start(stop.clone());
    (pipelines, stop)
}

/// Cancels run `id` as the admin; the answer, the run cancelled.
async fn cancel_as_admin(app: &TestApp, id: i64) -> Value {
    let cancelled = app
        .expect(
            StatusCode::OK,
            Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["error"], "cancelled by admin", "{cancelled}");
    cancelled
}

/// The `run.completed` event of run `id`, once recorded.
async fn completed(app: &TestApp, id: i64) -> Value {
    eventually(PATIENCE, "the run's run.completed event", async || {
        let events = app
            .state
            .store
            .all_events_after(0, 10_000)
            .await
            .expect("events");
        events
            .iter()
            .filter(|event| event.kind == "run.completed")
            .map(|event| serde_json::from_str::<Value>(&event.payload).expect("JSON"))
            .find(|payload| payload["run"] == id)
            .ok_or(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_on_another_forge_process_is_cancelled_through_this_one() {
    // This process runs no pipelines; the other runs the push's run.
    let app = TestApp::builder()
        .with_backend(backend_with_git())
        .start()
        .await;
    let (_other, stop) = second_process(&app).await;
    app.backend.respond_to("bun run lint", Reply::ok("clean\n"));
    app.backend.respond_to("bun test", Reply::ok("ok\n"));
    let lint = app
        .backend
        .hold_exec(|invocation| invocation.script() == "bun run lint");
    let mut repo = Repo::new(&app).await;
    repo.push(&app, &[(".forge.toml", STEPS)]).await;
    tokio::time::timeout(PATIENCE, lint.arrived(1))
        .await
        .expect("the other process's run reached lint");
    let id = runs(&app).await[0]["id"].as_i64().expect("a run id");

    // Cancelled here: the other process stops its step at its next lease
    // renewal, and the run stays cancelled.
    cancel_as_admin(&app, id).await;
    let ended = completed(&app, id).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(ended["error"], "cancelled by admin", "{ended}");
    let run = runs(&app).await[0].clone();
    assert_eq!(run["state"], "cancelled", "{run}");
    assert!(
        !app.backend
            .execs()
            .iter()
            .any(|exec| exec.invocation.script().contains("bun test")),
        "nothing ran after the cancelled step"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_forge_processes_run_each_run_once() {
    let app = app_with_git().start().await;
    let (_other, stop) = second_process(&app).await;
    app.backend.respond_to("bun run lint", Reply::ok("clean\n"));
    app.backend.respond_to("bun test", Reply::ok("ok\n"));
    let mut repo = Repo::new(&app).await;
    for round in 0..3 {
        let commit = repo
            .push(
                &app,
                &[(".forge.toml", STEPS), ("round", &round.to_string())],
            )
            .await;
        let run = finished_run(&app, &commit).await;
        assert_eq!(run["state"], "passed", "{run}");
    }
    let lints = lints_run(&app);
    assert_eq!(lints, 3, "each run's lint ran once, by one of the two");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runs_of_a_stopped_forge_process_are_taken_over() {
    let (app, mut repo) = passing_without_pipelines().await;
    repo.push(&app, &[(".forge.toml", STEPS)]).await;
    let newer = repo.push(&app, &[(".forge.toml", STEPS), ("b", "1")]).await;
    // A process that stopped had queued both pushes' runs, was running
    // the first and had not started the second; its leases lapsed.
    let store = &app.state.store;
    let queued = queue_unread_pushes(store.clone()).await;
    let (running, waiting) = (queued[0].id, queued[1].id);
    for id in [running, waiting] {
        assert!(store.claim_run(id, "stopped", 0, 1).await.expect("leased"));
    }
    store
        .start_run(running, "vm-of-the-stopped")
        .await
        .expect("running");

    // This process takes over: the run cut short ends `error`, the one
    // never started runs here.
    let stop = tokio_util::sync::CancellationToken::new();
    app.state.pipelines.start(stop.clone());
    let run = finished_run(&app, &newer).await;
    assert_eq!(run["state"], "passed", "{run}");
    let cut = store.run(running).await.expect("read").expect("the run");
    assert_eq!(cut.state, api_types::RunState::Error);
    assert_eq!(
        cut.error.as_deref(),
        Some("the forge stopped during this run")
    );
    stop.cancel();
}

/// A run queued by one path (a re-run, the consumer) that the take-over
/// finds before that path launched it runs once and passes: the second
/// launch does nothing (it used to take the first's slot, superseding the
/// run by itself about half the time; four rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_launched_twice_in_one_process_runs_once() {
    let (app, mut repo) = passing_without_pipelines().await;
    let store = &app.state.store;
    let pipelines = &app.state.pipelines;
    for round in 0..4 {
        let commit = repo
            .push(
                &app,
                &[(".forge.toml", STEPS), ("round", &round.to_string())],
            )
            .await;
        let queued = queue_unread_pushes(store.clone()).await;
        pipelines.take_over().await.expect("taken over");
        pipelines.launch(queued[0].clone());
        let run = finished_run(&app, &commit).await;
        assert_eq!(run["state"], "passed", "round {round}: {run}");
    }
    let lints = lints_run(&app);
    assert_eq!(lints, 4, "each run's lint ran once");
}
