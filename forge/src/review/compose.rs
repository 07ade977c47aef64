//! One review of a run's change, wherever it is posted (a pull request
//! on GitHub, or the forge's own review of a branch): the verdict, the
//! Markdown body and the inline comments, from the run's steps, its
//! analysis placed on the diff, and the model's review when one is
//! configured.

use api_types::{ReviewVerdict, RunState, StepState};
use serde_json::{Value, json};

use super::model::{self, ModelConfig, ModelError, ModelReview};
use super::{Analysis, Diff, LineComment, Placed};
use crate::store::{RunRow, StepRow};

/// Marks this bot's reviews; followed by the head commit.
pub const MARKER: &str = "<!-- forge-review:";
/// Lines of a failing step's log quoted in the review.
const TAIL_LINES: usize = 40;
/// Most characters of a failing step's last lines sent to the model.
const MAX_TAIL_CHARS: usize = 8000;

/// How the bot posts its verdict (`forge serve --review-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReviewMode {
    /// The bot never approves: a `COMMENT` review carrying the verdict
    /// when every step passed, `REQUEST_CHANGES` otherwise.
    #[default]
    Comment,
    /// `APPROVE` when every step passed, `REQUEST_CHANGES` otherwise.
    Approve,
}

impl ReviewMode {
    /// The review event for a run that passed, or did not.
    pub fn event(self, passed: bool) -> ReviewVerdict {
        match (self, passed) {
            (_, false) => ReviewVerdict::RequestChanges,
            (Self::Comment, true) => ReviewVerdict::Comment,
            (Self::Approve, true) => ReviewVerdict::Approve,
        }
    }
}

/// What a review is made from.
pub struct Input<'a> {
    pub run: &'a RunRow,
    pub steps: &'a [StepRow],
    pub analysis: &'a Analysis,
    /// The change: from the merge base with the base branch to the run's commit.
    pub diff: &'a Diff,
    /// Where the steps came from, one or two sentences.
    pub origin: String,
    /// The run's page.
    pub url: String,
    pub mode: ReviewMode,
}

/// A review, ready to post.
#[derive(Debug, Clone)]
pub struct Review {
    pub verdict: ReviewVerdict,
    pub passed: bool,
    pub body: String,
    /// The same body with every comment listed in it instead (for a host
    /// that refuses the inline comments).
    pub listed_body: String,
    pub comments: Vec<LineComment>,
    /// The model's name, when one was asked.
    pub model: Option<String>,
    /// What the model said, when it answered.
    pub model_summary: Option<String>,
    /// Why the model's review is missing, when it failed.
    pub model_error: Option<String>,
}

impl Review {
    /// The model's part, for an event's payload.
    pub fn model_json(&self) -> Value {
        match &self.model {
            Some(name) => json!({ "name": name, "error": self.model_error }),
            None => Value::Null,
        }
    }
}

/// Composes the review of `input`, asking the model first when there is
/// one (a failure of the model is said in the body, never an error).
/// Failing steps request changes; with passing ones, the model asking for
/// changes makes a `COMMENT` unless it may block, else `mode` decides.
pub async fn compose(
    http: &reqwest::Client,
    model: Option<&ModelConfig>,
    input: &Input<'_>,
) -> Review {
    let run = input.run;
    let passed = run.state == RunState::Passed;
    let outcome = match model {
        Some(config) => {
            let ran = steps_for_model(input.steps);
            let context = model::Context {
                steps: &ran,
                findings: &input.analysis.findings,
            };
            let outcome = model::review(http, config, input.diff, context).await;
            if let Err(error) = &outcome {
                tracing::warn!(run = run.id, error = %error, "the AI review failed: the review is the forge's own");
            }
            Some((config, outcome))
        }
        None => None,
    };
    let said = outcome.as_ref().and_then(|(_, o)| o.as_ref().ok());
    let verdict = match &outcome {
        _ if !passed => ReviewVerdict::RequestChanges,
        Some((config, Ok(said))) if said.request_changes => {
            if config.can_block {
                ReviewVerdict::RequestChanges
            } else {
                ReviewVerdict::Comment
            }
        }
        _ => input.mode.event(true),
    };
    let placed = Placed::new(&input.analysis.findings, input.diff);
    let listed = Placed {
        comments: Vec::new(),
        elsewhere: input.analysis.findings.clone(),
    };
    let sections = |findings: &Placed, inline: bool| {
        let ai = outcome
            .as_ref()
            .map(|(config, outcome)| model_section(config, outcome, passed, inline))
            .unwrap_or_default();
        format!("{}{ai}", findings.section(input.analysis))
    };
    let body_with = |sections: &str| {
        review_body(
            run,
            input.steps,
            &run.commit_id,
            &input.url,
            &input.origin,
            input.mode,
            sections,
        )
    };
    Review {
        verdict,
        passed,
        body: body_with(&sections(&placed, true)),
        listed_body: body_with(&sections(&listed, false)),
        comments: merged(&placed.comments, said.map(|s| &s.comments[..])),
        model: model.map(|config| config.model.clone()),
        model_summary: said.map(|said| said.summary.clone()),
        model_error: outcome
            .as_ref()
            .and_then(|(_, outcome)| outcome.as_ref().err())
            .map(ToString::to_string),
    }
}

/// The steps and their results for the model, with the failing steps'
/// last lines.
fn steps_for_model(steps: &[StepRow]) -> String {
    let mut out = String::new();
    for step in steps {
        out.push_str(&format!(
            "- {} (`{}`): {}\n",
            step.name, step.command, step.status
        ));
        if step.status == StepState::Failed {
            let lines: Vec<&str> = step.log.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
            let tail = crate::review::findings::strip_ansi(&tail);
            // The last characters: a step may print one endless line.
            let skip = tail.chars().count().saturating_sub(MAX_TAIL_CHARS);
            let tail: String = tail.chars().skip(skip).collect();
            out.push_str(&format!("  its last lines:\n{tail}\n"));
        }
    }
    out
}

/// The tools' comments, with the model's added: on a line that has both,
/// one comment.
fn merged(tools: &[LineComment], model: Option<&[LineComment]>) -> Vec<LineComment> {
    let mut all = tools.to_vec();
    for said in model.unwrap_or_default() {
        let body = format!("**AI review**: {}", said.body);
        match all
            .iter_mut()
            .find(|c| c.path == said.path && c.line == said.line)
        {
            Some(comment) => comment.body = format!("{}\n\n{body}", comment.body),
            None => all.push(LineComment {
                path: said.path.clone(),
                line: said.line,
                body,
            }),
        }
    }
    all
}

/// The review's section on what the model said, or why it is missing.
/// `inline`: its comments are inline (else they are listed here).
fn model_section(
    config: &ModelConfig,
    outcome: &Result<ModelReview, ModelError>,
    passed: bool,
    inline: bool,
) -> String {
    let said = match outcome {
        Ok(said) => said,
        Err(error) => {
            return format!(
                "\n> The AI review ({}) is missing: {error}. This review is the forge's own.\n",
                config.model
            );
        }
    };
    let mut out = format!("\n#### AI review ({})\n\n{}\n", config.model, said.summary);
    if !inline {
        for comment in &said.comments {
            out.push_str(&format!(
                "- `{}:{}` {}\n",
                comment.path.replace('`', "'"),
                comment.line,
                comment
                    .body
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    if said.dropped > 0 {
        out.push_str(&format!(
            "\n> {} of the model's comments did not point at a line of this change and were dropped.\n",
            said.dropped
        ));
    }
    if said.request_changes && passed && !config.can_block {
        out.push_str(
            "\n> The model asks for changes; the steps passed, so this review is a comment.\n",
        );
    }
    out
}

pub fn headline(run: &RunRow) -> String {
    match run.state {
        RunState::Passed => "Lint and tests passed".into(),
        RunState::Failed => "The pipeline failed".into(),
        other => format!("The pipeline ended in {other}"),
    }
}

/// The first 12 digits of a commit id.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The review's Markdown: verdict, where the steps came from (`origin`), a
/// table of steps, the tail of the failing step's log in a collapsible
/// block, the `sections` (findings, the model's), and a link to the run.
pub fn review_body(
    run: &RunRow,
    steps: &[StepRow],
    sha: &str,
    url: &str,
    origin: &str,
    mode: ReviewMode,
    sections: &str,
) -> String {
    let passed = run.state == RunState::Passed;
    let icon = if passed { "✅" } else { "❌" };
    let mut body = format!(
        "{MARKER}{sha} -->\n### {icon} forge: {}\n\nRun #{} of `{}` at `{}`. {}",
        headline(run),
        run.id,
        run.branch,
        short(sha),
        origin,
    );
    if mode == ReviewMode::Comment && passed {
        body.push_str(
            "\n\n**Verdict: approve.** Posted as a comment: the forge's checks are a signal for a reviewer, not an approval.",
        );
    }
    body.push_str("\n\n| step | status | duration |\n| --- | --- | --- |\n");
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
    for step in steps.iter().filter(|s| s.status == StepState::Failed) {
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
    body.push_str(sections);
    body.push_str(&format!("\n[The run in the forge]({url})\n"));
    body
}
