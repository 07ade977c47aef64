//! A run's page: what ran (commit message, author, branch), when and for
//! how long, its steps with status, exit code and duration, each step's log
//! streamed live while the run goes (server-sent events relayed from
//! `/v1/runs/{id}/logs?follow=true`, ANSI colours and line numbers with
//! anchors rendered by `app.js`), cancel and re-run buttons, and the review
//! posted on the branch's pull request. A failed or running step is open;
//! the others are folded.

use api_types::runs::{BranchReview, Finding, RunAnalysis, RunDetail, RunView, StepView};
use api_types::{RunState, StepState};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped, html};

use super::{Fields, branch_page};
use crate::Ui;
use crate::api::encode;
use crate::badge::badge;
use crate::layout::{self, PageError, csrf_field, duration, respond, short, when};
use crate::markdown::{self, LinkBase};
use crate::session::User;

/// `GET /-/runs/{id}`.
pub async fn show(
    State(ui): State<Ui>,
    user: User,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let detail: RunDetail = ui.api.get(&user.token, &format!("/v1/runs/{id}")).await?;
    let run = &detail.run;
    let repo = run.repo_name.as_str();
    let finished = run.state.is_finished();
    let action = |verb: &str, label: &str| {
        html! {
            form.inline method="post" action={ "/-/runs/" (id) "/" (verb) } {
                (csrf_field(&user))
                button type="submit" { (label) }
            }
        }
    };
    let body = html! {
        nav.crumbs aria-label="Breadcrumbs" {
            a href=(branch_page(repo, &run.branch)) { (repo) " · " (run.branch) }
        }
        h1 { "Run #" (id) " " span #run-state aria-live="polite" { (badge(&run.state)) } }
        @if let Some(commit) = &detail.commit {
            p.commit #run-commit {
                strong { (commit.message.lines().next().unwrap_or_default()) }
                br;
                span.facts { (commit.author.name) " · commit " code { (short(&commit.id)) } }
            }
        } @else {
            p.commit { "Commit " code { (short(&run.commit_id)) } " (no longer in the repository)" }
        }
        @if let (Some(branch), Some(commit)) = (&run.plan_ref, &run.plan_commit) {
            p.facts { "Steps from " (branch) " at " code { (short(commit)) } }
        }
        @if !run.variables.is_empty() {
            p.facts #run-variables {
                "Variables (from the push's options): "
                @for (i, (name, value)) in run.variables.iter().enumerate() {
                    @if i > 0 { ", " }
                    code { (name) "=" (value) }
                }
            }
        }
        dl.facts #run-times {
            dt { "Queued" } dd { (when(&run.created_at)) }
            @if let Some(started) = &run.started_at { dt { "Started" } dd { (when(started)) } }
            dt { "Duration" }
            dd #run-duration data-started=[(!finished).then_some(run.started_at.as_deref()).flatten()] {
                (run_duration(run))
            }
        }
        div.actions {
            @if !finished { span #cancel { (action("cancel", "Cancel")) } }
            (action("rerun", "Re-run"))
        }
        @if let Some(error) = &run.error { p.error #run-error { (error) } }
        section #run data-events={ "/-/runs/" (id) "/events" } aria-labelledby="steps" {
            h2 #steps { "Steps" }
            @if run.steps.is_empty() { p.muted #no-steps { "No steps yet." } }
            ol.steps { @for step in &run.steps { (step_item(step)) } }
            p { a href={ "/-/runs/" (id) "/events" } { "Raw event stream" } }
        }
        @if let Some(analysis) = &detail.analysis { (findings(repo, &run.branch, analysis)) }
        section aria-labelledby="review" {
            h2 #review { "Review" }
            @match &detail.review {
                Some(review) => p #review-verdict {
                    (badge(&review.verdict))
                    " on " (review.github_repo) " pull request #" (review.number)
                    " at " code { (short(&review.head_sha)) }
                    @if review.posted_at.is_none() { " (being posted)" }
                },
                None => @match &detail.branch_review {
                    Some(own) => (branch_review(repo, &run.branch, own)),
                    None => p.muted { "No review: this run's branch has no pull request, or is the default branch." },
                },
            }
        }
    };
    Ok(respond(layout::page(
        layout::Section::Repositories,
        &format!("Run #{id}"),
        Some(&user),
        body,
    )))
}

/// What the analysis after the steps found, each finding linked to its
/// line on the branch.
fn findings(repo: &str, branch: &str, analysis: &RunAnalysis) -> Markup {
    let link = |finding: &Finding| {
        let line = finding.line.map(|n| format!("#L{n}")).unwrap_or_default();
        format!(
            "{}&path={}{line}",
            branch_page(repo, branch),
            encode(&finding.path)
        )
    };
    html! {
        section aria-labelledby="findings" {
            h2 #findings { "Findings" }
            p.facts {
                @if analysis.tools.is_empty() {
                    "From the steps' output (no TypeScript compiler, ESLint or Biome configured)."
                } @else {
                    "Ran " (analysis.tools.join(", ")) ", and read the steps' output."
                }
            }
            @if analysis.findings.is_empty() { p.muted #no-findings { "Nothing found." } }
            ul.findings {
                @for finding in &analysis.findings {
                    li {
                        a href=(link(finding)) { code { (finding.place()) } } " "
                        strong { (finding.tool.label()) }
                        @if let Some(rule) = &finding.rule { " " code { (rule) } }
                        ": " span.message { (finding.message) }
                    }
                }
            }
            @for note in &analysis.notes { p.muted { (note) } }
        }
    }
}

/// The forge's own review of the branch: verdict, what the model said
/// (Markdown, sanitised: it is the model's, read from hostile input) and
/// the comments on changed lines.
fn branch_review(repo: &str, branch: &str, review: &BranchReview) -> Markup {
    let page = branch_page(repo, branch);
    let base = LinkBase {
        branch_page: &page,
        dir: "",
    };
    html! {
        div #branch-review {
            p #review-verdict {
                (badge(&review.verdict)) " from the forge, the change read against "
                (review.base_branch) " at " code { (short(&review.base_commit)) }
            }
            @if let (Some(model), Some(summary)) = (&review.model, &review.model_summary) {
                h3 { "AI review (" (model) ")" }
                div.markdown #model-summary { (PreEscaped(markdown::render(summary, &base))) }
            }
            @if let (Some(model), Some(error)) = (&review.model, &review.model_error) {
                p.muted #model-error { "The AI review (" (model) ") is missing: " (error) }
            }
            @if !review.comments.is_empty() {
                h3 { "On the changed lines" }
                ul.findings #review-comments {
                    @for comment in &review.comments {
                        li {
                            a href={ (page) "&path=" (encode(&comment.path)) "#L" (comment.line) } {
                                code { (comment.path) ":" (comment.line) }
                            }
                            div.markdown { (PreEscaped(markdown::render(&comment.body, &base))) }
                        }
                    }
                }
            }
        }
    }
}

/// A step: open when it failed or runs, folded otherwise. `app.js` fills
/// its log and keeps it up to date.
fn step_item(step: &StepView) -> Markup {
    let open = matches!(step.status, StepState::Failed | StepState::Running);
    html! {
        li.step data-step=(step.position) {
            details open[open] {
                summary {
                    span.name { (step.name) } " "
                    span.status { (badge(&step.status)) } " "
                    span.duration { @if let Some(ms) = step.duration_ms { (duration(ms)) } } " "
                    span.exit { @if let Some(code) = step.exit_code { "exit " (code) } }
                }
                pre.log aria-label={ "Log of " (step.name) } {}
            }
        }
    }
}

/// How long the run took, or has been going.
fn run_duration(run: &RunView) -> String {
    let parse = |at: &str| {
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
    };
    let Some(started) = run.started_at.as_deref().and_then(parse) else {
        return match run.state {
            RunState::Queued => "waiting to start".to_owned(),
            _ => "did not start".to_owned(),
        };
    };
    let end = run
        .finished_at
        .as_deref()
        .and_then(parse)
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let ms = (end - started).whole_milliseconds().max(0) as i64;
    if run.state.is_finished() {
        duration(ms)
    } else {
        format!("{} so far", duration(ms))
    }
}

/// `POST /-/runs/{id}/{cancel|rerun}`: back to the run, or to the new one.
pub async fn act(
    State(ui): State<Ui>,
    user: User,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    if action != "cancel" && action != "rerun" {
        return Err(PageError::new(StatusCode::NOT_FOUND, "no such action"));
    }
    let path = format!("/v1/runs/{id}/{action}");
    let run: RunView = ui.api.call(&user.token, Method::POST, &path).await?;
    Ok(Redirect::to(&format!("/-/runs/{}", run.id)).into_response())
}

/// `GET /-/runs/{id}/events`: the API's log stream, relayed as it comes.
pub async fn events(State(ui): State<Ui>, user: User, Path(id): Path<i64>) -> Response {
    ui.api
        .raw(
            &user.token,
            Method::GET,
            &format!("/v1/runs/{id}/logs?follow=true"),
            None,
            "text/event-stream",
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: RunState, started: Option<&str>, finished: Option<&str>) -> RunView {
        RunView {
            id: 1,
            repo_id: "r".into(),
            repo_name: "o/n".into(),
            branch: "main".into(),
            commit_id: "c".into(),
            event_id: 1,
            state,
            vm_id: None,
            error: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: started.map(Into::into),
            finished_at: finished.map(Into::into),
            plan_ref: None,
            plan_commit: None,
            variables: Default::default(),
            steps: Vec::new(),
        }
    }

    #[test]
    fn a_run_says_how_long_it_took_or_has_been_going() {
        let started = Some("2026-01-01T00:00:00Z");
        assert_eq!(
            run_duration(&run(
                RunState::Passed,
                started,
                Some("2026-01-01T00:01:05Z")
            )),
            "1 min 5 s"
        );
        assert!(run_duration(&run(RunState::Running, started, None)).ends_with(" so far"));
        assert_eq!(
            run_duration(&run(RunState::Queued, None, None)),
            "waiting to start"
        );
        assert_eq!(
            run_duration(&run(
                RunState::Cancelled,
                None,
                Some("2026-01-01T00:00:01Z")
            )),
            "did not start"
        );
    }
}
