//! Repositories: the list with a create form (`/`), and a repository's
//! page with its clone URL, quick-setup commands while it is empty, the
//! default branch's files and README, its branches (each with its sandbox's state,
//! its last run and its head commit), recent runs, and a delete button.
//!
//! "Last run" looks at the repository's newest 50 runs (the runs API does
//! not filter by branch): a branch whose last run is older shows none.

use std::collections::HashMap;

use api_types::repos::{BranchView, CreateRepo, RepoView};
use api_types::runs::RunView;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::files::{self, Place};
use super::{Fields, branch_page, branch_vm, repo_api, repo_page, visible_vms};
use crate::Ui;
use crate::badge::{badge, plain};
use crate::layout::{self, PageError, ago, csrf_field, respond, short};
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
    let repos: Vec<RepoView> = ui.api.get(&user.token, "/v1/repos").await?;
    let body = html! {
        h1 { "Repositories" }
        @if repos.is_empty() { p { "No repositories yet." } }
        @else {
            div.scroll { table {
                caption.sr { "Repositories" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Default branch" } th scope="col" { "Clone URL" } } }
                tbody { @for repo in &repos {
                    @let (owner, name) = repo.name.split_once('/').unwrap_or_default();
                    tr {
                        td { a href=(repo_page(owner, name)) { (repo.name) } }
                        td { (repo.default_branch) }
                        td { code { (repo.clone_url) } }
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
                input #repo-name name="name" required pattern=r"[^\/]+\/[^\/]+" value=(typed) placeholder="acme/app";
                label for="repo-branch" { "Default branch" }
                input #repo-branch name="default_branch" value="main";
                button type="submit" { "Create repository" }
            }
        }
    };
    let mut response = respond(layout::page(
        layout::Section::Repositories,
        "Repositories",
        Some(user),
        body,
    ));
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
    let request = CreateRepo {
        name: name.to_owned(),
        default_branch: form
            .get("default_branch")
            .map(|b| b.trim())
            .filter(|b| !b.is_empty())
            .map(str::to_owned),
        import_url: None,
    };
    let answer: Result<RepoView, _> = ui
        .api
        .send(&user.token, Method::POST, "/v1/repos", &request)
        .await;
    match answer {
        Ok(repo) => {
            let (owner, name) = repo.name.split_once('/').unwrap_or_default();
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
        .call::<()>(&user.token, Method::DELETE, &repo_api(&owner, &name))
        .await?;
    Ok(Redirect::to("/").into_response())
}

/// The newest run of each branch, from runs listed newest first.
fn last_runs(runs: &[RunView]) -> HashMap<&str, &RunView> {
    let mut last = HashMap::new();
    for run in runs {
        last.entry(run.branch.as_str()).or_insert(run);
    }
    last
}

/// A run's state as a link to its page.
pub fn run_link(run: &RunView) -> Markup {
    html! { a href={ "/-/runs/" (run.id) } { "#" (run.id) } " " (badge(&run.state)) }
}

/// `GET /-/repos/{owner}/{name}`.
pub async fn show(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let api = repo_api(&owner, &name);
    let repo: RepoView = ui.api.get(&user.token, &api).await?;
    let branches: Vec<BranchView> = ui.api.get(&user.token, &format!("{api}/branches")).await?;
    let runs: Vec<RunView> = ui
        .api
        .get(&user.token, &format!("{api}/runs?limit=50"))
        .await?;
    let vms = visible_vms(&ui.api, &user).await?;
    let full = repo.name.as_str();
    let last = last_runs(&runs);
    let default = repo.default_branch.as_str();
    let default_page = branch_page(full, default);
    let files = match branches.iter().any(|b| b.name == default) {
        true => {
            let place = Place {
                api: &api,
                branch: default,
                page: &default_page,
            };
            match files::contents(&ui.api, &user, &place, "").await {
                Ok(contents) => Some(files::view(&ui.api, &user, &place, "", contents).await),
                Err(failure) => Some(html! { p.error { (failure.message) } }),
            }
        }
        false => None,
    };
    let body = html! {
        h1 { (full) }
        div.clone {
            label for="clone-url" { "Clone URL" }
            input #clone-url readonly value=(repo.clone_url);
            button type="button" data-copy="#clone-url" { "Copy" }
        }
        p { a href={ (repo_page(&owner, &name)) "/webhooks" } { "Webhooks" } }
        @if branches.is_empty() { (quick_setup(&repo)) }
        @if let Some(files) = files {
            section aria-labelledby="files" {
                h2 #files { "Files on " a href=(default_page) { (default) } }
                (files)
            }
        }
        h2 { "Branches" }
        @if branches.is_empty() { p { "No branches yet." } }
        @else {
            div.scroll { table #branches {
                thead { tr {
                    th scope="col" { "Branch" } th scope="col" { "Sandbox" }
                    th scope="col" { "Last run" } th scope="col" { "Head commit" }
                } }
                tbody { @for branch in &branches {
                    @let branch_name = branch.name.as_str();
                    @let commit = &branch.commit;
                    tr {
                        td { a href=(branch_page(full, branch_name)) { (branch_name) } }
                        td { @match branch_vm(&vms, branch) {
                            Some(vm) => span.sandbox title=(vm.id) { (badge(&vm.state)) },
                            None => (plain("none")),
                        } }
                        td { @match last.get(branch_name) {
                            Some(run) => (run_link(run)),
                            None => "none",
                        } }
                        td {
                            code { (short(&commit.id)) } " "
                            (commit.message.lines().next().unwrap_or_default())
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
    Ok(respond(layout::page(
        layout::Section::Repositories,
        full,
        Some(&user),
        body,
    )))
}

/// How to put code in an empty repository: the commands, ready to copy.
fn quick_setup(repo: &RepoView) -> Markup {
    let branch = &repo.default_branch;
    let url = &repo.clone_url;
    let new = format!(
        "git init -b {branch}\ngit add .\ngit commit -m \"First commit\"\ngit remote add origin {url}\ngit push -u origin {branch}"
    );
    let existing = format!("git remote add origin {url}\ngit push -u origin {branch}");
    html! {
        section.setup aria-labelledby="setup" {
            h2 #setup { "Quick setup" }
            p { "This repository is empty. When git asks for a password, give a token of this forge (any user name)." }
            h3 { "From a new directory" }
            div.clone {
                textarea #setup-new readonly rows="5" aria-label="Commands for a new repository" { (new) }
                button type="button" data-copy="#setup-new" { "Copy" }
            }
            h3 { "From a repository you have" }
            div.clone {
                textarea #setup-existing readonly rows="2" aria-label="Commands for an existing repository" { (existing) }
                button type="button" data-copy="#setup-existing" { "Copy" }
            }
            p.muted { "A " code { ".forge.toml" } " at the top of the repository names the steps each push runs." }
        }
    }
}

/// The newest `limit` runs as a table.
pub fn runs_table(runs: &[RunView], limit: usize) -> Markup {
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
                        td { (run.branch) }
                        td { code { (short(&run.commit_id)) } }
                        td { (ago(&run.created_at)) " ago" }
                    }
                } }
            } }
        }
    }
}
