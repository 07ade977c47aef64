//! A run's page: its steps with status and duration, each step's log
//! streamed live while the run goes (server-sent events relayed from
//! `/v1/runs/{id}/logs?follow=true`, ANSI colours rendered by `app.js`),
//! the result, and the review posted on the branch's pull request.

use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::Response;
use maud::html;

use super::{branch_page, text};
use crate::Ui;
use crate::layout::{self, PageError, badge, duration, respond, short};
use crate::session::User;

/// `GET /-/runs/{id}`.
pub async fn show(
    State(ui): State<Ui>,
    user: User,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let run = ui.api.get(&user.token, &format!("/v1/runs/{id}")).await?;
    let repo = text(&run, "repo_name");
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    let body = html! {
        nav.crumbs aria-label="Breadcrumbs" {
            a href=(branch_page(repo, text(&run, "branch"))) { (repo) " · " (text(&run, "branch")) }
        }
        h1 { "Run #" (id) }
        p {
            "Commit " code { (short(text(&run, "commit_id"))) } ". Result: "
            span #run-state aria-live="polite" { (badge(text(&run, "state"))) }
        }
        @if let Some(error) = run["error"].as_str() { p.error #run-error { (error) } }
        section #run data-events={ "/-/runs/" (id) "/events" } aria-labelledby="steps" {
            h2 #steps { "Steps" }
            @if steps.is_empty() { p.muted #no-steps { "No steps yet." } }
            ol.steps {
                @for step in &steps {
                    @let position = step["position"].as_i64().unwrap_or_default();
                    li.step data-step=(position) {
                        details open {
                            summary {
                                span.name { (text(step, "name")) } " "
                                span.status { (badge(text(step, "status"))) } " "
                                span.duration { @if let Some(ms) = step["duration_ms"].as_i64() { (duration(ms)) } }
                                @if let Some(code) = step["exit_code"].as_i64() { " exit " (code) }
                            }
                            pre.log aria-label={ "Log of " (text(step, "name")) } {}
                        }
                    }
                }
            }
            p { a href={ "/-/runs/" (id) "/events" } { "Raw event stream" } }
        }
        section aria-labelledby="review" {
            h2 #review { "Review" }
            @match run["review"].as_object() {
                Some(_) => p #review-verdict {
                    (badge(text(&run["review"], "verdict")))
                    " on " (text(&run["review"], "github_repo")) " pull request #" (run["review"]["number"])
                    " at " code { (short(text(&run["review"], "head_sha"))) }
                    @if run["review"]["posted_at"].is_null() { " (being posted)" }
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
