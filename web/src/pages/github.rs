//! The GitHub page: the App and its installations (`GET /v1/github`) and
//! each linked repository's sync state per ref (`GET /v1/github/repos`),
//! diverged refs highlighted. It says "not configured" when the forge has
//! no GitHub App set up.

use api_types::RefSyncState;
use api_types::github::{GithubLinkView, GithubOverview};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use crate::Ui;
use crate::badge::badge;
use crate::layout::{self, PageError, respond};
use crate::session::User;

/// `GET /-/github`.
pub async fn show(State(ui): State<Ui>, user: User) -> Result<Response, PageError> {
    let overview = ui
        .api
        .get::<GithubOverview>(&user.token, "/v1/github")
        .await;
    let body = match overview {
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
        Ok(overview) => {
            let repos = match ui
                .api
                .get::<Vec<GithubLinkView>>(&user.token, "/v1/github/repos")
                .await
            {
                Ok(repos) => Some(repos),
                Err(failure) if failure.unreadable => return Err(failure.into()),
                Err(_) => None,
            };
            html! {
                h1 { "GitHub" }
                section aria-labelledby="installation" {
                    h2 #installation { "Installation" }
                    (settings(&overview))
                    @if overview.installations.is_empty() {
                        p.muted { "The app is not installed on any GitHub account yet." }
                    } @else {
                        ul #installations {
                            @for item in &overview.installations {
                                li { (item.account) " (installation " (item.id) ", since " (item.created_at) ")" }
                            }
                        }
                    }
                }
                section aria-labelledby="sync" {
                    h2 #sync { "Sync state" }
                    @match &repos {
                        None => p.muted { "The forge reports no per-repository sync state." },
                        Some(repos) => (sync_table(repos)),
                    }
                }
            }
        }
    };
    Ok(respond(layout::page(
        layout::Section::Github,
        "GitHub",
        Some(&user),
        body,
    )))
}

/// The App's public settings as a definition list.
fn settings(overview: &GithubOverview) -> Markup {
    let rows = [
        ("api url", overview.api_url.clone()),
        ("app id", overview.app_id.to_string()),
        ("git url", overview.git_url.clone()),
        ("reconcile secs", overview.reconcile_secs.to_string()),
    ];
    html! { dl { @for (name, value) in rows {
        dt { (name) }
        dd { (value) }
    } } }
}

fn sync_table(repos: &[GithubLinkView]) -> Markup {
    html! {
        @if repos.is_empty() { p.muted { "No repository is linked to GitHub." } }
        @for repo in repos {
            h3 { (repo.repo.as_deref().unwrap_or_default()) " ⇄ " (repo.repository) }
            div.scroll { table {
                thead { tr {
                    th scope="col" { "Ref" } th scope="col" { "State" }
                    th scope="col" { "Last sync" } th scope="col" { "Last error" }
                } }
                tbody { @for r in &repo.refs {
                    @let diverged = r.state == RefSyncState::Diverged;
                    tr class={ @if diverged { "diverged" } } {
                        td { code { (r.ref_name) } }
                        td { (badge(&r.state)) @if diverged { " (diverged: both sides moved, nothing was overwritten)" } }
                        td { (r.last_sync_at) }
                        td { (r.last_error.as_deref().unwrap_or_default()) }
                    }
                } }
            } }
        }
    }
}
