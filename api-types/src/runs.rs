//! Pipeline runs: `GET /v1/repos/{owner}/{name}/runs`, `GET /v1/runs/{id}`
//! and the events of `GET /v1/runs/{id}/logs?follow=true` (`step`, `log`,
//! `end`).

use serde::{Deserialize, Serialize};

use crate::states::{ReviewVerdict, RunState, StepState};

/// A run and its steps, as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunView {
    pub id: i64,
    pub repo_id: String,
    /// `owner/name` when the run was queued.
    pub repo_name: String,
    pub branch: String,
    pub commit_id: String,
    /// The push (or pipeline request) event that asked for it.
    pub event_id: i64,
    pub state: RunState,
    pub vm_id: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The branch whose steps ran, when not the commit's own (a review).
    pub plan_ref: Option<String>,
    /// The commit of `plan_ref` the steps were read from.
    pub plan_commit: Option<String>,
    /// Set in every step's environment (`git push -o ci.variable=K=V`).
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
    pub steps: Vec<StepView>,
}

/// `GET /v1/runs/{id}`: the run and the pull-request review it decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    /// The commit that ran; `None` if the repository no longer has it.
    pub commit: Option<crate::repos::CommitView>,
    pub review: Option<RunReview>,
    /// What the analysis after the steps found (runs of branches other
    /// than the default); `None` when none ran.
    pub analysis: Option<RunAnalysis>,
    /// The forge's own review of the branch against the default branch
    /// (repositories not linked to GitHub); `None` when there is none.
    pub branch_review: Option<BranchReview>,
}

/// The forge's own review of a branch's run against the default branch,
/// as the `review.posted` event that recorded it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchReview {
    pub verdict: ReviewVerdict,
    /// The default branch and its commit the change was read against.
    pub base_branch: String,
    pub base_commit: String,
    /// The review in Markdown (as a pull request would get it).
    pub body: String,
    /// Comments on lines of the change (tools' findings, the model's).
    pub comments: Vec<ReviewComment>,
    /// The model that was asked, when one is configured.
    pub model: Option<String>,
    /// What the model said.
    pub model_summary: Option<String>,
    /// Why the model's review is missing, when it failed.
    pub model_error: Option<String>,
    /// When it was recorded; filled from the event.
    #[serde(default)]
    pub posted_at: String,
}

/// A comment on a line of a change (the new side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewComment {
    pub path: String,
    pub line: u32,
    /// Markdown.
    pub body: String,
}

/// What the analysis after a run's steps found: the project's own
/// TypeScript compiler, ESLint and Biome when it uses them, and the
/// failing tests and compiler errors in the steps' logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunAnalysis {
    /// The tools that ran (`tsc`, `ESLint`, `Biome`).
    pub tools: Vec<String>,
    pub findings: Vec<Finding>,
    /// What went wrong on the way (a tool that timed out or crashed).
    pub notes: Vec<String>,
}

/// One problem a tool reported at a place in the checkout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub tool: FindingTool,
    /// Relative to the repository's root, `/`-separated.
    pub path: String,
    /// 1-based; `None` when the tool named only the file.
    pub line: Option<u32>,
    pub severity: FindingSeverity,
    /// The tool's rule or code (`TS2322`, `no-debugger`), when it gave one.
    pub rule: Option<String>,
    pub message: String,
}

impl Finding {
    /// `path:line` (or the path alone).
    pub fn place(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{line}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Which tool reported a finding.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FindingTool {
    Tsc,
    Eslint,
    Biome,
    BunTest,
}

impl FindingTool {
    /// The tool's name as people write it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tsc => "tsc",
            Self::Eslint => "ESLint",
            Self::Biome => "Biome",
            Self::BunTest => "bun test",
        }
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FindingSeverity {
    Error,
    Warning,
    Info,
}

/// A step of a run (its log is read from `/logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepView {
    pub position: i64,
    pub name: String,
    pub command: String,
    pub status: StepState,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
}

/// The review the GitHub bot posted (or claimed) for a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunReview {
    /// `owner/name` on GitHub.
    pub github_repo: String,
    pub number: i64,
    pub head_sha: String,
    pub verdict: ReviewVerdict,
    /// `None` while the review is claimed but not yet posted.
    pub posted_at: Option<String>,
}

/// The `step` event: a step started or changed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepEvent {
    pub position: i64,
    pub name: String,
    pub status: StepState,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
}

/// The `log` event: text a step wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEvent {
    pub position: i64,
    pub text: String,
}

/// The `end` event: the run finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunEnd {
    pub state: RunState,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run() -> RunView {
        RunView {
            id: 7,
            repo_id: "r1".into(),
            repo_name: "acme/web".into(),
            branch: "main".into(),
            commit_id: "abc".into(),
            event_id: 3,
            state: RunState::Failed,
            vm_id: Some("vm1".into()),
            error: None,
            created_at: "t0".into(),
            started_at: Some("t1".into()),
            finished_at: Some("t2".into()),
            plan_ref: None,
            plan_commit: None,
            variables: Default::default(),
            steps: vec![StepView {
                position: 0,
                name: "test".into(),
                command: "cargo test".into(),
                status: StepState::Failed,
                exit_code: Some(101),
                duration_ms: Some(1200),
            }],
        }
    }

    #[test]
    fn a_listed_run_has_its_steps_and_no_review_key() {
        let value = serde_json::to_value(run()).expect("serialises");
        assert_eq!(
            value,
            json!({
                "id": 7, "repo_id": "r1", "repo_name": "acme/web", "branch": "main",
                "commit_id": "abc", "event_id": 3, "state": "failed", "vm_id": "vm1",
                "error": null, "created_at": "t0", "started_at": "t1", "finished_at": "t2",
                "plan_ref": null, "plan_commit": null, "variables": {},
                "steps": [{ "position": 0, "name": "test", "command": "cargo test",
                            "status": "failed", "exit_code": 101, "duration_ms": 1200 }],
            })
        );
    }

    #[test]
    fn a_shown_run_has_its_review_or_null() {
        let detail = RunDetail {
            run: run(),
            commit: None,
            review: Some(RunReview {
                github_repo: "acme/web".into(),
                number: 4,
                head_sha: "abc".into(),
                verdict: ReviewVerdict::RequestChanges,
                posted_at: None,
            }),
            analysis: None,
            branch_review: None,
        };
        let value = serde_json::to_value(&detail).expect("serialises");
        assert_eq!(value["review"]["verdict"], "REQUEST_CHANGES");
        assert_eq!(value["state"], "failed");
        let back: RunDetail = serde_json::from_value(value).expect("deserialises");
        assert_eq!(back, detail);
        let none = RunDetail {
            run: run(),
            commit: None,
            review: None,
            analysis: None,
            branch_review: None,
        };
        assert_eq!(
            serde_json::to_value(none).expect("serialises")["review"],
            json!(null)
        );
    }
}
