//! A run's page: its steps with status and duration, each step's log
//! streamed live while the run goes (server-sent events relayed from
//! `/v1/runs/{id}/logs?follow=true`, ANSI colours rendered by `app.js`),
//! the result, and the review posted on the branch's pull request.

use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::Response;
use maud::html;

use api_types::runs::RunDetail;

use super::branch_page;
use crate::Ui;
use crate::badge::badge;
use crate::layout::{self, PageError, duration, respond, short};
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
    let body = html! {
        nav.crumbs aria-label="Breadcrumbs" {
            a href=(branch_page(repo, &run.branch)) { (repo) " · " (run.branch) }
        }
        h1 { "Run #" (id) }
        p {
            "Commit " code { (short(&run.commit_id)) } ". Result: "
            span #run-state aria-live="polite" { (badge(&run.state)) }
        }
        @if let Some(error) = &run.error { p.error #run-error { (error) } }
        section #run data-events={ "/-/runs/" (id) "/events" } aria-labelledby="steps" {
            h2 #steps { "Steps" }
            @if run.steps.is_empty() { p.muted #no-steps { "No steps yet." } }
            ol.steps {
                @for step in &run.steps {
                    li.step data-step=(step.position) {
                        details open {
                            summary {
                                span.name { (step.name) } " "
                                span.status { (badge(&step.status)) } " "
                                span.duration { @if let Some(ms) = step.duration_ms { (duration(ms)) } }
                                @if let Some(code) = step.exit_code { " exit " (code) }
                            }
                            pre.log aria-label={ "Log of " (step.name) } {}
                        }
                    }
                }
            }
            p { a href={ "/-/runs/" (id) "/events" } { "Raw event stream" } }
        }
        section aria-labelledby="review" {
            h2 #review { "Review" }
            @match &detail.review {
                Some(review) => p #review-verdict {
                    (badge(&review.verdict))
                    " on " (review.github_repo) " pull request #" (review.number)
                    " at " code { (short(&review.head_sha)) }
                    @if review.posted_at.is_none() { " (being posted)" }
                },
                None => p.muted { "No review: this branch has no pull request." },
            }
        }
    };
    Ok(respond(layout::page(
        &format!("Run #{id}"),
        Some(&user),
        body,
    )))
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
