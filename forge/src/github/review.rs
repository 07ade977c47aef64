//! The pull-request review bot.
//!
//! A pull request is judged by its **base branch's** steps, never by its
//! own: a pull request that rewrites `.forge.toml` to `run = "true"` must
//! not earn a green review. The head commit's tree is what runs (as CI
//! does); the steps (`.forge.toml`, or the `package.json` scripts, see
//! [`crate::pipelines::plan`]) are read at the base branch's current commit
//! in the forge.
//!
//! Steps, each time a pull request's head is known (`opened`, `reopened`,
//! `synchronize`, the reconcile pass) or a run of its head completes
//! (`run.completed`), under one lock:
//! 1. nothing to do when the review of (pull request, head commit) was
//!    posted;
//! 2. resolve the base branch (the pull request's `base.ref`, else the
//!    repository's default branch) to its commit B, and plan the base's
//!    steps on the head's tree ([`pipelines::plan::plan_from`]);
//! 3. a finished run of the head that ran those steps is the verdict: one
//!    that read its steps at B, or any other (the branch's own run of the
//!    push) whose plan is the same: same steps, same install. The review
//!    is posted from it;
//! 4. else, when such a run was asked for and not cancelled, wait for its
//!    `run.completed`;
//! 5. else ask for one: a `pipeline.requested` event whose `plan` names B;
//!    the pipeline runs the head with B's steps (see [`crate::pipelines`]).
//!
//! Posting: a check run `forge` is created and completed on the head
//! commit, then one review, whose body names where the steps came from
//! ("Steps from `main`'s `.forge.toml` at `abc1234…`"), a table of steps,
//! the tail of the failing step's log and the run's findings
//! ([`crate::review`]): those on lines of the pull request's diff are
//! inline comments (GitHub refusing them, the review is posted again with
//! them listed in the body), the others are listed. Failing steps always
//! mean `REQUEST_CHANGES`; with passing steps the event depends on
//! [`ReviewMode`] (`forge serve --review-mode`): by default `COMMENT`, the
//! verdict in the body; with `approve`, `APPROVE`.
//!
//! What this does not stop: the base's steps still run the pull request's
//! code (its tests, the `package.json` scripts a `bun run test` step names,
//! its install hooks), in the branch's sandbox that its own runs used too.
//! A pull request cannot drop or replace a step, but a hostile one can
//! make the code a step runs pass; an approval by this bot is a signal for
//! a reviewer, never a replacement for one.
//!
//! Idempotence per (pull request, head commit): a row is claimed in
//! `github_reviews` before anything is posted and completed after. A row
//! claimed but never completed (a crash in between) is settled by asking
//! GitHub for the pull request's reviews: one carrying this bot's marker
//! for the commit means it was posted. Decisions and posts are serialised,
//! so a webhook and a run completing at once cannot both post or both ask
//! for a run. A cancelled run (a newer push superseded it) posts nothing,
//! and a run of a commit that is no longer the head matches no pull
//! request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use api_types::RunState;
use serde_json::{Value, json};

use super::auth::{AppAuth, Method};
use crate::events::EventBus;
use crate::git::{Repositories, inspect};
use crate::pipelines::{self, plan::Plan};
use crate::review::Diff;
pub use crate::review::ReviewMode;
use crate::review::compose::{self, MARKER, headline, short};
use crate::review::model::ModelConfig;
use crate::store::{GithubLink, GithubPull, NewEvent, RunRow, Store};

/// The base branch's steps, planned on the head's tree: what a pull
/// request is judged by.
#[derive(Debug, Clone)]
pub struct BaseSteps {
    pub branch: String,
    /// The base branch's commit the steps were read at.
    pub commit: String,
    pub plan: Result<Plan, String>,
}

impl BaseSteps {
    /// Whether a run of the head ran these steps: its steps were read at
    /// the base's commit, or (`steps_commit` another commit, or `None` for
    /// the head's own) they planned to the very same work.
    fn ran_by(&self, steps_commit: Option<&str>, plan: &Result<Plan, String>) -> bool {
        steps_commit == Some(self.commit.as_str())
            || matches!((&self.plan, plan), (Ok(wanted), Ok(ran)) if wanted == ran)
    }

    /// Where the steps came from, as the review's body says it.
    pub fn origin(&self) -> String {
        let at = format!("`{}`'s", self.branch);
        let commit = short(&self.commit);
        match &self.plan {
            Ok(Plan {
                steps_file: Some(file),
                ..
            }) => format!("Steps from {at} `{}` at `{commit}`.", file.name()),
            Ok(_) => format!(
                "No steps in {at} `.forge.toml` or `package.json` at `{commit}`: only the checkout and install ran."
            ),
            Err(problem) => {
                format!("Steps from {at} `.forge.toml` at `{commit}`, which is invalid: {problem}.")
            }
        }
    }
}

/// What the review of a head commit does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Post from the finished run at this index.
    Post(usize),
    /// A run of the base's steps is on its way.
    Wait,
    /// Ask for a run of the head with the base's steps.
    Request,
}

/// The decision of steps 3 to 5 of the module docs. `finished` are the
/// head's finished runs, newest first, and `requested` the runs asked for
/// and not cancelled: each as (the commit its steps were read at, `None`
/// for the head's own; its plan).
fn next(
    base: &BaseSteps,
    finished: &[(Option<&str>, Result<Plan, String>)],
    requested: &[(Option<&str>, Result<Plan, String>)],
) -> Next {
    if let Some(index) = finished
        .iter()
        .position(|(commit, plan)| base.ran_by(*commit, plan))
    {
        return Next::Post(index);
    }
    if requested
        .iter()
        .any(|(commit, plan)| base.ran_by(*commit, plan))
    {
        return Next::Wait;
    }
    Next::Request
}

pub struct Reviewer {
    store: Store,
    repos: Repositories,
    events: EventBus,
    auth: Arc<AppAuth>,
    public_url: String,
    mode: ReviewMode,
    /// The model of an AI review, when configured.
    model: Option<ModelConfig>,
    http: reqwest::Client,
    /// Decisions and posts one at a time (see the module docs).
    turn: tokio::sync::Mutex<()>,
}

impl Reviewer {
    pub fn new(
        store: Store,
        repos: Repositories,
        events: EventBus,
        auth: Arc<AppAuth>,
        public_url: String,
        mode: ReviewMode,
        model: Option<ModelConfig>,
    ) -> Self {
        Self {
            store,
            repos,
            events,
            auth,
            public_url,
            mode,
            model,
            http: reqwest::Client::new(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// A pull request's head is known (and synced), or a run of it ended:
    /// review it now if a run of its base's steps finished, else make sure
    /// one comes (see the module docs).
    pub async fn on_pull(&self, link: &GithubLink, pull: &GithubPull) -> anyhow::Result<()> {
        let _turn = self.turn.lock().await;
        let (repo_id, head) = (&link.repo_id, &pull.head_sha);
        if self
            .store
            .github_review_posted(repo_id, pull.number, head)
            .await?
        {
            return Ok(());
        }
        let Some(repo) = self.store.repo_by_id(repo_id).await? else {
            return Ok(());
        };
        let base_branch = pull
            .base_ref
            .clone()
            .unwrap_or_else(|| repo.default_branch.clone());
        let finished = self
            .store
            .finished_runs_of(repo_id, &pull.head_ref, head)
            .await?;
        let requested = self
            .store
            .run_requests(repo_id, &pull.head_ref, head)
            .await?;
        let mut sources: Vec<Option<String>> = finished
            .iter()
            .map(|run| run.plan_commit.clone())
            .chain(requested.iter().cloned())
            .collect();
        sources.sort();
        sources.dedup();
        let dir = self.repos.path(repo_id);
        let (head_commit, branch) = (head.clone(), base_branch.clone());
        let (base, plans) =
            tokio::task::spawn_blocking(move || plan_all(&dir, &branch, &head_commit, &sources))
                .await??;
        let plan_of = |source: &Option<String>| {
            plans
                .get(source)
                .cloned()
                .unwrap_or_else(|| Err("not planned".into()))
        };
        let finished_plans: Vec<_> = finished
            .iter()
            .map(|run| (run.plan_commit.as_deref(), plan_of(&run.plan_commit)))
            .collect();
        let requested_plans: Vec<_> = requested
            .iter()
            .map(|source| (source.as_deref(), plan_of(source)))
            .collect();
        match next(&base, &finished_plans, &requested_plans) {
            Next::Post(index) => self.post(link, pull, &finished[index], &base).await,
            Next::Wait => Ok(()),
            Next::Request => {
                tracing::info!(repo = %repo.full_name(), pull = pull.number, head = %head, base = %base.branch, base_commit = %base.commit, "asking for a run with the base branch's steps");
                let event = NewEvent {
                    kind: "pipeline.requested".into(),
                    ref_name: Some(format!("refs/heads/{}", pull.head_ref)),
                    payload: json!({
                        "repo": repo.full_name(), "branch": pull.head_ref, "after": head,
                        "reason": format!("review of pull request #{} with the steps of {}", pull.number, base.branch),
                        "plan": { "branch": base.branch, "commit": base.commit },
                    }),
                };
                self.events
                    .record(
                        &self.store,
                        &repo.id,
                        &repo.full_name(),
                        Some("github"),
                        &[event],
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// A run finished: review every open pull request whose head it ran.
    pub async fn on_run_completed(&self, repo_id: &str, payload: &Value) -> anyhow::Result<()> {
        if payload["status"] == RunState::Cancelled.as_str() {
            return Ok(());
        }
        let (Some(branch), Some(commit)) = (payload["branch"].as_str(), payload["commit"].as_str())
        else {
            return Ok(());
        };
        let Some(link) = self.store.github_link(repo_id).await? else {
            return Ok(());
        };
        for pull in self.store.open_github_pulls(repo_id, branch).await? {
            if pull.head_sha == commit {
                self.on_pull(&link, &pull).await?;
            }
        }
        Ok(())
    }

    /// The pull request's diff: from the merge base of the base's commit
    /// and `head`. Empty (every finding listed, none inline) when git
    /// cannot tell.
    async fn diff(&self, repo_id: &str, base: &BaseSteps, head: &str) -> Diff {
        match Diff::between(&self.repos.path(repo_id), &base.commit, head).await {
            Ok(diff) => diff,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the pull request's diff failed"
                );
                Diff::default()
            }
        }
    }

    /// Posts the review of `pull` from `run`; the caller holds `turn`.
    async fn post(
        &self,
        link: &GithubLink,
        pull: &GithubPull,
        run: &RunRow,
        base: &BaseSteps,
    ) -> anyhow::Result<()> {
        let (repo_id, number, sha) = (&link.repo_id, pull.number, &pull.head_sha);
        let steps = self.store.steps(run.id).await?;
        let analysis = self.store.run_analysis(run.id).await?.unwrap_or_default();
        let diff = self.diff(repo_id, base, sha).await;
        let input = compose::Input {
            run,
            steps: &steps,
            analysis: &analysis,
            diff: &diff,
            origin: origin(base, run),
            // The run's page in the web UI (steps, logs, the review).
            url: format!("{}/-/runs/{}", self.public_url, run.id),
            mode: self.mode,
        };
        let review = compose::compose(&self.http, self.model.as_ref(), &input).await;
        let (verdict, passed, url) = (review.verdict, review.passed, &input.url);
        let installation = link.installation_id as u64;
        let gh = &link.github_repo;
        if !self
            .store
            .claim_github_review(repo_id, number, sha, run.id, verdict)
            .await?
        {
            // Claimed before and not completed: did the post get through?
            let reviews = self
                .auth
                .as_installation(
                    installation,
                    Method::Get,
                    &format!("/repos/{gh}/pulls/{number}/reviews"),
                    None,
                )
                .await?;
            let mark = format!("{MARKER}{sha}");
            if let Some(found) = reviews.as_array().into_iter().flatten().find(|r| {
                r["commit_id"] == sha.as_str()
                    && r["body"].as_str().is_some_and(|b| b.contains(&mark))
            }) {
                let id = found["id"].as_i64().unwrap_or_default();
                self.store
                    .finish_github_review(repo_id, number, sha, id, None)
                    .await?;
                return Ok(());
            }
        }
        let body = &review.body;
        let check = self
            .auth
            .as_installation(
                installation,
                Method::Post,
                &format!("/repos/{gh}/check-runs"),
                Some(&json!({
                    "name": "forge", "head_sha": sha, "status": "in_progress",
                    "external_id": run.id.to_string(), "details_url": url,
                })),
            )
            .await?;
        let check_id = check["id"].as_i64();
        if let Some(check_id) = check_id {
            self.auth
                .as_installation(
                    installation,
                    Method::Patch,
                    &format!("/repos/{gh}/check-runs/{check_id}"),
                    Some(&json!({
                        "status": "completed",
                        "conclusion": if passed { "success" } else { "failure" },
                        "output": { "title": headline(run), "summary": body },
                    })),
                )
                .await?;
        }
        let reviews = format!("/repos/{gh}/pulls/{number}/reviews");
        let comments: Vec<Value> = review
            .comments
            .iter()
            .map(|c| json!({ "path": c.path, "line": c.line, "side": "RIGHT", "body": c.body }))
            .collect();
        let posted = match self
            .auth
            .as_installation(
                installation,
                Method::Post,
                &reviews,
                Some(&json!({ "commit_id": sha, "event": verdict, "body": body, "comments": comments })),
            )
            .await
        {
            // GitHub's diff is not the forge's (its base moved on): the
            // comments go into the body instead.
            Err(error) if error.status() == Some(422) && !comments.is_empty() => {
                tracing::warn!(repo = %gh, pull = number, error = %error, "GitHub refused the inline comments: listing them in the review");
                self.auth
                    .as_installation(
                        installation,
                        Method::Post,
                        &reviews,
                        Some(&json!({ "commit_id": sha, "event": verdict, "body": review.listed_body })),
                    )
                    .await?
            }
            other => other?,
        };
        let review_id = posted["id"].as_i64().unwrap_or_default();
        self.store
            .finish_github_review(repo_id, number, sha, review_id, check_id)
            .await?;
        tracing::info!(repo = %gh, pull = number, commit = %sha, verdict = %verdict, "review posted");
        if let Some(repo) = self.store.repo_by_id(repo_id).await? {
            let event = NewEvent {
                kind: "review.posted".into(),
                ref_name: Some(format!("refs/heads/{}", pull.head_ref)),
                payload: json!({
                    "repo": repo.full_name(), "github_repo": gh, "pull_request": number,
                    "sha": sha, "verdict": verdict, "passed": passed, "run": run.id,
                    "review_id": review_id, "plan": { "branch": base.branch, "commit": base.commit },
                    "comments": comments.len(), "model": review.model_json(),
                }),
            };
            self.events
                .record(
                    &self.store,
                    &repo.id,
                    &repo.full_name(),
                    Some("github"),
                    &[event],
                )
                .await?;
        }
        Ok(())
    }
}

/// Where `run`'s steps came from, as the review's body says it.
fn origin(base: &BaseSteps, run: &RunRow) -> String {
    let mut origin = base.origin();
    if run.plan_commit.is_none() {
        origin.push_str(" The pull request's own steps are the same: this is the branch's run.");
    }
    origin
}

/// Plans of the head by the commit their steps were read at (`None`: its own).
type PlansBySource = HashMap<Option<String>, Result<Plan, String>>;

/// Resolves the base branch and plans its steps on the head's tree, and
/// plans each run source (`None`: the head's own steps). Blocks.
fn plan_all(
    dir: &Path,
    base_branch: &str,
    head: &str,
    sources: &[Option<String>],
) -> anyhow::Result<(BaseSteps, PlansBySource)> {
    let commit = inspect::resolve(dir, &format!("refs/heads/{base_branch}"))?
        .ok_or_else(|| anyhow::anyhow!("the base branch {base_branch} is not in the forge"))?;
    let plan_with = |steps: &str| pipelines::plan_at(dir, steps, head);
    let base = BaseSteps {
        branch: base_branch.to_owned(),
        plan: plan_with(&commit),
        commit,
    };
    let plans = sources
        .iter()
        .map(|source| (source.clone(), plan_with(source.as_deref().unwrap_or(head))))
        .collect();
    Ok((base, plans))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use api_types::{ReviewVerdict, StepState};

    use super::*;
    use crate::pipelines::plan::{Step, StepsFile};
    use crate::store::StepRow;

    const BASE: &str = "ba5e000000000000000000000000000000000000";
    const OLD_BASE: &str = "01d0000000000000000000000000000000000000";

    fn run(state: RunState, plan_commit: Option<&str>) -> RunRow {
        RunRow {
            id: 7,
            repo_id: "r".into(),
            repo_name: "acme/app".into(),
            branch: "change".into(),
            commit_id: "0123456789abcdef".into(),
            event_id: 1,
            state,
            vm_id: None,
            error: None,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            plan_ref: plan_commit.map(|_| "main".into()),
            plan_commit: plan_commit.map(Into::into),
            variables: "{}".into(),
        }
    }

    fn steps(commands: &[&str]) -> Result<Plan, String> {
        Ok(Plan {
            install: None,
            steps: commands
                .iter()
                .map(|run| Step {
                    name: run.to_string(),
                    run: run.to_string(),
                    timeout: Duration::from_secs(600),
                })
                .collect(),
            steps_file: Some(StepsFile::ForgeToml),
            template: None,
        })
    }

    fn base(plan: Result<Plan, String>) -> BaseSteps {
        BaseSteps {
            branch: "main".into(),
            commit: BASE.into(),
            plan,
        }
    }

    #[test]
    fn the_default_mode_never_approves() {
        assert_eq!(ReviewMode::default(), ReviewMode::Comment);
        assert_eq!(ReviewMode::Comment.event(true), ReviewVerdict::Comment);
        assert_eq!(
            ReviewMode::Comment.event(false),
            ReviewVerdict::RequestChanges
        );
        assert_eq!(ReviewMode::Approve.event(true), ReviewVerdict::Approve);
        assert_eq!(
            ReviewMode::Approve.event(false),
            ReviewVerdict::RequestChanges
        );
    }

    #[test]
    fn a_run_of_the_heads_own_different_steps_is_not_the_verdict() {
        let base = base(steps(&["bun test"]));
        // The head's own run passed `true`: it is not used, a run is asked for.
        let own = [(None, steps(&["true"]))];
        assert_eq!(next(&base, &own, &own), Next::Request);
        // Once asked for, the review waits for it, even with the own run finished.
        let asked = [(None, steps(&["true"])), (Some(BASE), steps(&["bun test"]))];
        assert_eq!(next(&base, &own, &asked), Next::Wait);
        // Its result is the verdict, whatever runs finished after it.
        let finished = [(None, steps(&["true"])), (Some(BASE), steps(&["bun test"]))];
        assert_eq!(next(&base, &finished, &asked), Next::Post(1));
    }

    #[test]
    fn a_run_of_the_same_steps_is_reused() {
        let base = base(steps(&["bun run lint", "bun run test"]));
        let own = [(None, steps(&["bun run lint", "bun run test"]))];
        assert_eq!(next(&base, &own, &own), Next::Post(0));
        // A run of an older base commit with the same steps counts too.
        let older = [(Some(OLD_BASE), steps(&["bun run lint", "bun run test"]))];
        assert_eq!(next(&base, &older, &[]), Next::Post(0));
        // One step fewer is other steps.
        let fewer = [(None, steps(&["bun run lint"]))];
        assert_eq!(next(&base, &fewer, &fewer), Next::Request);
        // A run of an older base commit with other steps is waited on by no one.
        let stale = [(Some(OLD_BASE), steps(&["make"]))];
        assert_eq!(next(&base, &stale, &stale), Next::Request);
    }

    #[test]
    fn an_invalid_base_is_judged_only_by_a_run_of_it() {
        let broken = base(Err("invalid .forge.toml: x".into()));
        let own = [(None, Err("invalid .forge.toml: x".into()))];
        assert_eq!(next(&broken, &own, &own), Next::Request);
        let of_base = [(Some(BASE), Err("invalid .forge.toml: x".into()))];
        assert_eq!(next(&broken, &of_base, &[]), Next::Post(0));
    }

    #[test]
    fn the_body_names_where_the_steps_came_from() {
        let from_toml = base(steps(&["bun test"]));
        let failing = run(RunState::Failed, Some(BASE));
        let body = compose::review_body(
            &failing,
            &[],
            BASE,
            "http://forge/-/runs/7",
            &origin(&from_toml, &failing),
            ReviewMode::Approve,
            "",
        );
        assert!(
            body.contains("Steps from `main`'s `.forge.toml` at `ba5e00000000`."),
            "{body}"
        );
        assert!(
            !body.contains("branch's run") && !body.contains("Verdict"),
            "{body}"
        );
        let mut scripts = steps(&["bun run test"]).expect("plan");
        scripts.steps_file = Some(StepsFile::PackageJson);
        let passing = run(RunState::Passed, None);
        let own = compose::review_body(
            &passing,
            &[],
            BASE,
            "u",
            &origin(&base(Ok(scripts)), &passing),
            ReviewMode::Comment,
            "",
        );
        assert!(own.contains("`main`'s `package.json` at"), "{own}");
        assert!(own.contains("this is the branch's run"), "{own}");
        assert!(
            own.contains("**Verdict: approve.** Posted as a comment"),
            "{own}"
        );
        let failed = compose::review_body(
            &failing,
            &[],
            BASE,
            "u",
            &origin(&from_toml, &failing),
            ReviewMode::Comment,
            "",
        );
        assert!(!failed.contains("**Verdict"), "{failed}");
        let none = base(Ok(Plan {
            install: None,
            steps: Vec::new(),
            steps_file: None,
            template: None,
        }));
        assert!(none.origin().starts_with("No steps in `main`'s"));
    }

    #[test]
    fn the_body_shows_steps_and_the_failing_output() {
        let run = run(RunState::Failed, Some(BASE));
        let step = |name: &str, status: StepState, log: String| StepRow {
            position: 0,
            name: name.into(),
            command: String::new(),
            status,
            exit_code: (status == StepState::Failed).then_some(1),
            duration_ms: Some(1500),
            log,
        };
        let long_log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let steps = [
            step("lint", StepState::Passed, "ok\n".into()),
            step(
                "test",
                StepState::Failed,
                format!("{long_log}```\n(fail) adds small numbers\n"),
            ),
        ];
        let body = compose::review_body(
            &run,
            &steps,
            &run.commit_id,
            "http://forge/-/runs/7",
            &origin(&base(self::steps(&["lint", "test"])), &run),
            ReviewMode::Approve,
            "\n#### Findings\n",
        );
        assert!(body.contains("\n#### Findings\n\n[The run in the forge]"));
        assert!(body.starts_with("<!-- forge-review:0123456789abcdef -->"));
        assert!(body.contains("| lint | passed | 1.5 s |"));
        assert!(body.contains("| test | failed | 1.5 s |"));
        assert!(body.contains("<details><summary>test failed (exit 1)"));
        assert!(body.contains("(fail) adds small numbers"));
        assert!(!body.contains("line 10\n"), "only the tail is quoted");
        assert_eq!(
            body.matches("```").count(),
            2,
            "the log cannot close the block"
        );
        assert!(body.contains("[The run in the forge](http://forge/-/runs/7)"));
    }
}
