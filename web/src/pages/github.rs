//! The GitHub page: the App and its installations (`GET /v1/github`) and
//! each linked repository's sync state per ref (`GET /v1/github/repos`),
//! diverged refs highlighted. It says "not configured" when the forge has
//! no GitHub App set up.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;

use super::text;
use crate::Ui;
use crate::layout::{self, PageError, badge, respond};
use crate::session::User;

/// `GET /-/github`.
pub async fn show(State(ui): State<Ui>, user: User) -> Result<Response, PageError> {
    let installation = ui.api.get(&user.token, "/v1/github").await;
    let body = match installation {
        Err(failure)
            if failure.status == StatusCode::NOT_FOUND
                || failure.status == StatusCode::SERVICE_UNAVAILABLE =>
        {
            html! {
                h1 { "GitHub" }
                p #github-status { "GitHub is not configured on this forge." }
                p.muted { (failure.message) }
            }
        }
        Err(failure) => return Err(failure.into()),
        Ok(installation) => {
            let repos = ui
                .api
                .get(&user.token, "/v1/github/repos")
                .await
                .unwrap_or(Value::Null);
            html! {
                h1 { "GitHub" }
                section aria-labelledby="installation" {
                    h2 #installation { "Installation" }
                    (fields(&installation))
                    @match installation["installations"].as_array() {
                        Some(list) if !list.is_empty() => ul #installations {
                            @for item in list {
                                li { (text(item, "account")) " (installation " (item["id"]) ", since " (text(item, "created_at")) ")" }
                            }
                        },
                        _ => p.muted { "The app is not installed on any GitHub account yet." },
                    }
                }
                section aria-labelledby="sync" {
                    h2 #sync { "Sync state" }
                    @match repos.as_array() {
                        None => p.muted { "The forge reports no per-repository sync state." },
                        Some(repos) => (sync_table(repos)),
                    }
                }
            }
        }
    };
    Ok(respond(layout::page("GitHub", Some(&user), body)))
}

/// An object's scalar fields as a definition list.
fn fields(value: &Value) -> Markup {
    html! { dl { @for (key, item) in value.as_object().into_iter().flatten() {
        @if !item.is_object() && !item.is_array() {
            dt { (key.replace('_', " ")) }
            dd { (item.as_str().map_or_else(|| item.to_string(), str::to_owned)) }
        }
    } } }
}

fn sync_table(repos: &[Value]) -> Markup {
    html! {
        @if repos.is_empty() { p.muted { "No repository is linked to GitHub." } }
        @for repo in repos {
            h3 { (text(repo, "repo")) " ⇄ " (text(repo, "repository")) }
            div.scroll { table {
                thead { tr {
                    th scope="col" { "Ref" } th scope="col" { "State" }
                    th scope="col" { "Last sync" } th scope="col" { "Last error" }
                } }
                tbody { @for r in repo["refs"].as_array().into_iter().flatten() {
                    @let diverged = text(r, "state") == "diverged";
                    tr class={ @if diverged { "diverged" } } {
                        td { code { (text(r, "ref_name")) } }
                        td { (badge(text(r, "state"))) @if diverged { " (diverged: both sides moved, nothing was overwritten)" } }
                        td { (text(r, "last_sync_at")) }
                        td { (text(r, "last_error")) }
                    }
                } }
            } }
        }
    }
}
