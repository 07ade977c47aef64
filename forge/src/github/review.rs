//! The pull-request review bot.
//!
//! A pull request opened, reopened or synchronized on GitHub (or a forge
//! push to the head branch of an open linked pull request) runs the
//! branch's pipeline: the synced commit's `push` event starts it, and when
//! no run was asked for that commit a `pipeline.requested` event does.
//! When `run.completed` arrives for the head commit, one review is posted:
//! `APPROVE` when every step passed, `REQUEST_CHANGES` otherwise, with a
//! table of steps and the tail of the failing step's log; a check run is
//! created and completed on the head commit as well.
//!
//! Idempotence per (pull request, head commit): a row is claimed in
//! `github_reviews` before anything is posted and completed after. A row
//! claimed but never completed (a crash in between) is settled by asking
//! GitHub for the pull request's reviews: one carrying this bot's marker
//! for the commit means it was posted. Posts are serialised, so a webhook
//! and a run completing at once cannot both post. A cancelled run (a newer
//! push superseded it) posts nothing, and a run of a commit that is no
//! longer the head matches no pull request.

use std::sync::Arc;

use serde_json::{Value, json};

use super::auth::{AppAuth, Method};
use crate::events::EventBus;
use crate::store::{GithubLink, GithubPull, NewEvent, RunRow, StepRow, Store};

/// Marks this bot's reviews; followed by the head commit.
const MARKER: &str = "<!-- forge-review:";
/// Lines of a failing step's log quoted in the review.
const TAIL_LINES: usize = 40;

pub struct Reviewer {
    store: Store,
    events: EventBus,
    auth: Arc<AppAuth>,
    public_url: String,
    posting: tokio::sync::Mutex<()>,
}

impl Reviewer {
    pub fn new(store: Store, events: EventBus, auth: Arc<AppAuth>, public_url: String) -> Self {
        Self {
            store,
            events,
            auth,
            public_url,
            posting: tokio::sync::Mutex::new(()),
        }
    }

    /// A pull request's head is known (and synced): review it now if its
    /// run finished, else make sure a run comes.
    pub async fn on_pull(&self, link: &GithubLink, pull: &GithubPull) -> anyhow::Result<()> {
        if let Some(run) = self
            .store
            .finished_run_of(&link.repo_id, &pull.head_ref, &pull.head_sha)
            .await?
        {
            return self.post(link, pull, &run).await;
        }
        if self
            .store
            .run_requested(&link.repo_id, &pull.head_ref, &pull.head_sha)
            .await?
        {
            return Ok(());
        }
        let Some(repo) = self.store.repo_by_id(&link.repo_id).await? else {
            return Ok(());
        };
        let event = NewEvent {
            kind: "pipeline.requested".into(),
            ref_name: Some(format!("refs/heads/{}", pull.head_ref)),
            payload: json!({
                "repo": repo.full_name(), "branch": pull.head_ref, "after": pull.head_sha,
                "reason": format!("pull request #{}", pull.number),
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

    /// A run finished: review every open pull request whose head it ran.
    pub async fn on_run_completed(&self, repo_id: &str, payload: &Value) -> anyhow::Result<()> {
        if payload["status"] == "cancelled" {
            return Ok(());
        }
        let (Some(branch), Some(commit), Some(run_id)) = (
            payload["branch"].as_str(),
            payload["commit"].as_str(),
            payload["run"].as_i64(),
        ) else {
            return Ok(());
        };
        let Some(link) = self.store.github_link(repo_id).await? else {
            return Ok(());
        };
        let Some(run) = self.store.run(run_id).await? else {
            return Ok(());
        };
        for pull in self.store.open_github_pulls(repo_id, branch).await? {
            if pull.head_sha == commit {
                self.post(&link, &pull, &run).await?;
            }
        }
        Ok(())
    }

    async fn post(&self, link: &GithubLink, pull: &GithubPull, run: &RunRow) -> anyhow::Result<()> {
        let _turn = self.posting.lock().await;
        let (repo_id, number, sha) = (&link.repo_id, pull.number, &pull.head_sha);
        if self
            .store
            .github_review_posted(repo_id, number, sha)
            .await?
        {
            return Ok(());
        }
        let passed = run.state == "passed";
        let verdict = if passed { "APPROVE" } else { "REQUEST_CHANGES" };
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
        let steps = self.store.steps(run.id).await?;
        // The run's page in the web UI (steps, logs, the review).
        let url = format!("{}/-/runs/{}", self.public_url, run.id);
        let body = review_body(run, &steps, sha, &url);
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
        let review = self
            .auth
            .as_installation(
                installation,
                Method::Post,
                &format!("/repos/{gh}/pulls/{number}/reviews"),
                Some(&json!({ "commit_id": sha, "event": verdict, "body": body })),
            )
            .await?;
        let review_id = review["id"].as_i64().unwrap_or_default();
        self.store
            .finish_github_review(repo_id, number, sha, review_id, check_id)
            .await?;
        tracing::info!(repo = %gh, pull = number, commit = %sha, verdict, "review posted");
        if let Some(repo) = self.store.repo_by_id(repo_id).await? {
            let event = NewEvent {
                kind: "review.posted".into(),
                ref_name: Some(format!("refs/heads/{}", pull.head_ref)),
                payload: json!({
                    "repo": repo.full_name(), "github_repo": gh, "pull_request": number,
                    "sha": sha, "verdict": verdict, "run": run.id, "review_id": review_id,
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

fn headline(run: &RunRow) -> String {
    match run.state.as_str() {
        "passed" => "Lint and tests passed".into(),
        "failed" => "The pipeline failed".into(),
        other => format!("The pipeline ended in {other}"),
    }
}

/// The review's Markdown: verdict, a table of steps, the tail of the
/// failing step's log in a collapsible block, and a link to the run.
pub fn review_body(run: &RunRow, steps: &[StepRow], sha: &str, url: &str) -> String {
    let icon = if run.state == "passed" { "✅" } else { "❌" };
    let mut body = format!(
        "{MARKER}{sha} -->\n### {icon} forge: {}\n\nRun #{} of `{}` at `{}`.\n\n| step | status | duration |\n| --- | --- | --- |\n",
        headline(run),
        run.id,
        run.branch,
        &sha[..sha.len().min(12)],
    );
    for step in steps {
        let duration = step
            .duration_ms
            .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "–".into());
        body.push_str(&format!(
            "| {} | {} | {duration} |\n",
            step.name, step.status
        ));
    }
    if let Some(error) = &run.error {
        body.push_str(&format!("\n> {}\n", error.replace('\n', " ")));
    }
    for step in steps.iter().filter(|s| s.status == "failed") {
        let lines: Vec<&str> = step.log.lines().collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        body.push_str(&format!(
            "\n<details><summary>{} failed{}: last {} lines</summary>\n\n```text\n{}\n```\n</details>\n",
            step.name,
            step.exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default(),
            lines.len().min(TAIL_LINES),
            tail.replace("```", "'''"),
        ));
    }
    body.push_str(&format!("\n[The run in the forge]({url})\n"));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_shows_steps_and_the_failing_output() {
        let run = RunRow {
            id: 7,
            repo_id: "r".into(),
            repo_name: "acme/app".into(),
            branch: "change".into(),
            commit_id: "0123456789abcdef".into(),
            event_id: 1,
            state: "failed".into(),
            vm_id: None,
            error: None,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
        };
        let step = |name: &str, status: &str, log: String| StepRow {
            position: 0,
            name: name.into(),
            command: String::new(),
            status: status.into(),
            exit_code: (status == "failed").then_some(1),
            duration_ms: Some(1500),
            log,
        };
        let long_log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let steps = [
            step("lint", "passed", "ok\n".into()),
            step(
                "test",
                "failed",
                format!("{long_log}```\n(fail) adds small numbers\n"),
            ),
        ];
        let body = review_body(&run, &steps, &run.commit_id, "http://forge/-/runs/7");
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
