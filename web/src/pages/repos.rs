//! Repositories: the list with a create form (`/`), and a repository's
//! page with its clone URL, its branches (each with its sandbox's state,
//! its last run and its head commit), recent runs, and a delete button.
//!
//! "Last run" looks at the repository's newest 50 runs (the runs API does
//! not filter by branch): a branch whose last run is older shows none.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Fields, branch_page, branch_vm, items, repo_api, repo_page, text, visible_vms};
use crate::Ui;
use crate::layout::{self, PageError, ago, badge, csrf_field, respond, short};
use crate::session::User;

/// `GET /`.
pub async fn list(State(ui): State<Ui>, user: User) -> Result<Response, PageError> {
    render_list(&ui, &user, None, "").await
}

async fn render_list(
    ui: &Ui,
    user: &User,
    error: Option<&str>,
    typed: &str,
) -> Result<Response, PageError> {
    let repos = items(ui.api.get(&user.token, "/v1/repos").await?)?;
    let body = html! {
        h1 { "Repositories" }
        @if repos.is_empty() { p { "No repositories yet." } }
        @else {
            div.scroll { table {
                caption.sr { "Repositories" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Default branch" } th scope="col" { "Clone URL" } } }
                tbody { @for repo in &repos {
                    @let (owner, name) = text(repo, "name").split_once('/').unwrap_or_default();
                    tr {
                        td { a href=(repo_page(owner, name)) { (text(repo, "name")) } }
                        td { (text(repo, "default_branch")) }
                        td { code { (text(repo, "clone_url")) } }
                    }
                } }
            } }
        }
        section aria-labelledby="new-repo" {
            h2 #new-repo { "New repository" }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form method="post" action="/-/repos" {
                (csrf_field(user))
                label for="repo-name" { "Name (owner/name)" }
                input #repo-name name="name" required pattern="[^/]+/[^/]+" value=(typed) placeholder="acme/app";
                label for="repo-branch" { "Default branch" }
                input #repo-branch name="default_branch" value="main";
                button type="submit" { "Create repository" }
            }
        }
    };
    let mut response = respond(layout::page("Repositories", Some(user), body));
    if error.is_some() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

/// `POST /-/repos`.
pub async fn create(
    State(ui): State<Ui>,
    user: User,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    let name = form.get("name").map(|n| n.trim()).unwrap_or_default();
    let mut body = json!({ "name": name });
    if let Some(branch) = form.get("default_branch").filter(|b| !b.trim().is_empty()) {
        body["default_branch"] = json!(branch.trim());
    }
    match ui.api.post(&user.token, "/v1/repos", &body).await {
        Ok(repo) => {
            let (owner, name) = text(&repo, "name").split_once('/').unwrap_or_default();
            Ok(Redirect::to(&repo_page(owner, name)).into_response())
        }
        Err(failure) if failure.status.is_client_error() => {
            render_list(&ui, &user, Some(&failure.message), name).await
        }
        Err(failure) => Err(failure.into()),
    }
}

/// `POST /-/repos/{owner}/{name}/delete`.
pub async fn delete(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name)): Path<(String, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    ui.api
        .call(
            &user.token,
            axum::http::Method::DELETE,
            &repo_api(&owner, &name),
            None,
        )
        .await?;
    Ok(Redirect::to("/").into_response())
}

/// The newest run of each branch, from runs listed newest first.
fn last_runs(runs: &[Value]) -> HashMap<&str, &Value> {
    let mut last = HashMap::new();
    for run in runs {
        last.entry(text(run, "branch")).or_insert(run);
    }
    last
}

/// A run's state as a link to its page.
pub fn run_link(run: &Value) -> Markup {
    let id = run["id"].as_i64().unwrap_or_default();
    html! { a href={ "/-/runs/" (id) } { "#" (id) } " " (badge(text(run, "state"))) }
}

/// `GET /-/repos/{owner}/{name}`.
pub async fn show(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let api = repo_api(&owner, &name);
    let repo = ui.api.get(&user.token, &api).await?;
    let branches = items(ui.api.get(&user.token, &format!("{api}/branches")).await?)?;
    let runs = items(
        ui.api
            .get(&user.token, &format!("{api}/runs?limit=50"))
            .await?,
    )?;
    let vms = visible_vms(&ui.api, &user).await;
    let full = text(&repo, "name");
    let last = last_runs(&runs);
    let body = html! {
        h1 { (full) }
        div.clone {
            label for="clone-url" { "Clone URL" }
            input #clone-url readonly value=(text(&repo, "clone_url"));
            button type="button" data-copy="#clone-url" { "Copy" }
        }
        p { a href={ (repo_page(&owner, &name)) "/webhooks" } { "Webhooks" } }
        h2 { "Branches" }
        @if branches.is_empty() { p { "No branches yet: push one with " code { "git push" } "." } }
        @else {
            div.scroll { table #branches {
                thead { tr {
                    th scope="col" { "Branch" } th scope="col" { "Sandbox" }
                    th scope="col" { "Last run" } th scope="col" { "Head commit" }
                } }
                tbody { @for branch in &branches {
                    @let branch_name = text(branch, "name");
                    @let commit = &branch["commit"];
                    tr {
                        td { a href=(branch_page(full, branch_name)) { (branch_name) } }
                        td { @match branch_vm(&vms, full, branch_name) {
                            Some(vm) => (badge(text(vm, "state"))),
                            None => (badge("none")),
                        } }
                        td { @match last.get(branch_name) {
                            Some(run) => (run_link(run)),
                            None => "none",
                        } }
                        td {
                            code { (short(text(commit, "id"))) } " "
                            (text(commit, "message").lines().next().unwrap_or_default())
                        }
                    }
                } }
            } }
        }
        h2 { "Recent runs" }
        (runs_table(&runs, 20))
        section.danger aria-labelledby="danger" {
            h2 #danger { "Delete" }
            form method="post" action={ (repo_page(&owner, &name)) "/delete" } data-confirm={ "Delete " (full) " and all its branches?" } {
                (csrf_field(&user))
                button.danger type="submit" { "Delete repository" }
            }
        }
    };
    Ok(respond(layout::page(full, Some(&user), body)))
}

/// The newest `limit` runs as a table.
pub fn runs_table(runs: &[Value], limit: usize) -> Markup {
    html! {
        @if runs.is_empty() { p { "No runs yet." } }
        @else {
            div.scroll { table.runs {
                thead { tr {
                    th scope="col" { "Run" } th scope="col" { "Branch" }
                    th scope="col" { "Commit" } th scope="col" { "Started" }
                } }
                tbody { @for run in runs.iter().take(limit) {
                    tr {
                        td { (run_link(run)) }
                        td { (text(run, "branch")) }
                        td { code { (short(text(run, "commit_id"))) } }
                        td { (ago(text(run, "created_at"))) " ago" }
                    }
                } }
            } }
        }
    }
}
