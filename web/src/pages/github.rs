//! The GitHub page: the App installation and each repository's sync state,
//! diverged branches highlighted. It shows what the API's `/v1/github`
//! endpoints offer and says "not configured" when the forge has none (no
//! GitHub App set up, or a forge without the GitHub module).

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
        div.scroll { table {
            thead { tr { th scope="col" { "Repository" } th scope="col" { "State" } th scope="col" { "Branches" } } }
            tbody { @for repo in repos { tr {
                td { (text(repo, "repo")) (text(repo, "name")) }
                td { (badge(text(repo, "state"))) }
                td { @for branch in repo["branches"].as_array().into_iter().flatten() {
                    @let diverged = branch["diverged"].as_bool() == Some(true) || text(branch, "state") == "diverged";
                    span class={ "branch" @if diverged { " diverged" } } {
                        (text(branch, "name")) @if diverged { " (diverged)" }
                    } " "
                } }
            } } }
        } }
    }
}
