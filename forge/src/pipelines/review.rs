//! The forge's own review of a branch. In a repository not linked to
//! GitHub (a linked one is reviewed on its pull requests by the GitHub
//! bot, [`crate::github::review`]), each run of a branch other than the
//! default that passed or failed is reviewed as a pull request into the
//! default branch would be: its change from the merge base, its analysis
//! placed on that diff, the model's review when one is configured, the
//! same verdict rules ([`crate::review::compose`]). The review is recorded
//! as a `review.posted` event whose payload's `review` is the
//! [`api_types::runs::BranchReview`] that `GET /v1/runs/{id}` and the
//! run's page show.

use api_types::runs::BranchReview;
use serde_json::json;

use super::Pipelines;
use crate::git::inspect;
use crate::review::Diff;
use crate::review::compose::{self, short};

impl Pipelines {
    /// Reviews the finished run `id` when its branch is one to review;
    /// a failure is logged, never the run's. Called after the run gave
    /// its branch's turn back: a slow model holds no run up.
    pub(super) async fn review_branch(&self, id: i64) {
        if let Err(error) = self.try_review_branch(id).await {
            tracing::warn!(
                run = id,
                error = format!("{error:#}"),
                "reviewing the branch failed"
            );
        }
    }

    async fn try_review_branch(&self, id: i64) -> anyhow::Result<()> {
        let Some(run) = self.store.run(id).await? else {
            return Ok(());
        };
        let Some(repo) = self.store.repo_by_id(&run.repo_id).await? else {
            return Ok(());
        };
        if repo.default_branch == run.branch
            || self.store.github_link(&run.repo_id).await?.is_some()
        {
            return Ok(());
        }
        let Some(analysis) = self.store.run_analysis(run.id).await? else {
            return Ok(());
        };
        let dir = self.repos.path(&run.repo_id);
        let (git_dir, base_branch) = (dir.clone(), repo.default_branch.clone());
        let base_commit = tokio::task::spawn_blocking(move || {
            inspect::resolve(&git_dir, &format!("refs/heads/{base_branch}"))
        })
        .await??
        .ok_or_else(|| {
            anyhow::anyhow!("the default branch {} has no commit", repo.default_branch)
        })?;
        let diff = Diff::between(&dir, &base_commit, &run.commit_id).await?;
        let steps = self.store.steps(run.id).await?;
        let input = compose::Input {
            run: &run,
            steps: &steps,
            analysis: &analysis,
            diff: &diff,
            origin: format!(
                "The branch's own steps; the change is read against `{}` at `{}`.",
                repo.default_branch,
                short(&base_commit)
            ),
            url: self.page_url(run.id),
            mode: self.review.mode,
        };
        let review = compose::compose(&self.http, self.review.model.as_ref(), &input).await;
        let recorded = BranchReview {
            verdict: review.verdict,
            base_branch: repo.default_branch.clone(),
            base_commit,
            body: review.body.clone(),
            comments: review.comments.clone(),
            model: review.model.clone(),
            model_summary: review.model_summary.clone(),
            model_error: review.model_error.clone(),
            posted_at: String::new(),
        };
        tracing::info!(run = run.id, repo = %run.repo_name, branch = %run.branch, verdict = %review.verdict, "branch reviewed");
        self.record(
            &run,
            "review.posted",
            json!({
                "repo": run.repo_name, "branch": run.branch, "sha": run.commit_id, "run": run.id,
                "verdict": review.verdict, "passed": review.passed,
                "comments": review.comments.len(), "model": review.model_json(),
                "review": recorded,
            }),
        )
        .await;
        Ok(())
    }
}
