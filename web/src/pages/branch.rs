//! A branch's page: the file tree (with the directory's README) and a
//! file's highlighted content at the branch's head (read from git,
//! read-only; see [`super::files`]), the branch's run history, its sandbox
//! (the one its pipelines use) with pause, resume and fork buttons and a
//! terminal link, that sandbox's forks, and the preview link when the
//! sandbox serves one. The run history is the branch's runs among the
//! repository's newest 50.

use api_types::VmState;
use api_types::repos::BranchView;
use api_types::runs::RunView;
use api_types::vms::VmView;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::files::{self, Place};
use super::repos::runs_table;
use super::{branch_vm, repo_api, repo_page, visible_vms};
use crate::Ui;
use crate::api::encode;
use crate::badge::badge;
use crate::layout::{self, PageError, PageQuery, csrf_field, respond};
use crate::session::User;

#[derive(Debug, Deserialize)]
pub struct BranchQuery {
    name: String,
    #[serde(default)]
    path: String,
    /// A fork just made from this page (`POST /-/sandboxes/{id}/fork`).
    forked: Option<String>,
}

/// `GET /-/repos/{owner}/{name}/branch?name=&path=`.
pub async fn show(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name)): Path<(String, String)>,
    PageQuery(query): PageQuery<BranchQuery>,
) -> Result<Response, PageError> {
    let api = repo_api(&owner, &name);
    let full = format!("{owner}/{name}");
    let here = format!(
        "{}/branch?name={}",
        repo_page(&owner, &name),
        encode(&query.name)
    );
    let place = Place {
        api: &api,
        branch: &query.name,
        page: &here,
    };
    let contents = files::contents(&ui.api, &user, &place, &query.path).await?;
    let files = files::view(&ui.api, &user, &place, &query.path, contents).await;
    let mut runs: Vec<RunView> = ui
        .api
        .get(&user.token, &format!("{api}/runs?limit=50"))
        .await?;
    runs.retain(|run| run.branch == query.name);
    let branches: Vec<BranchView> = ui.api.get(&user.token, &format!("{api}/branches")).await?;
    let vms = visible_vms(&ui.api, &user).await?;
    let vm = branches
        .iter()
        .find(|b| b.name == query.name)
        .and_then(|branch| branch_vm(&vms, branch));
    let forks: Vec<&VmView> = match vm {
        Some(vm) => vms
            .iter()
            .filter(|v| v.parent.as_deref() == Some(&vm.id))
            .collect(),
        None => Vec::new(),
    };
    let forked = query
        .forked
        .as_deref()
        .and_then(|id| vms.iter().find(|v| v.id == id));
    let body = html! {
        nav.crumbs aria-label="Breadcrumbs" {
            a href=(repo_page(&owner, &name)) { (full) } " / " span { (query.name) }
        }
        h1 { "Branch " (query.name) }
        @if let Some(fork) = forked {
            p.notice role="status" {
                "Forked → " code { (fork.id) } " "
                a.button href={ "/-/sandboxes/" (fork.id) "/terminal" } { "Open terminal" }
            }
        }
        section aria-labelledby="sandbox" {
            h2 #sandbox { "Sandbox" }
            @match vm {
                None => p { "This branch has no sandbox yet; its first push makes one." },
                Some(vm) => (sandbox_panel(&user, vm, &here)),
            }
        }
        @if !forks.is_empty() {
            section aria-labelledby="forks" {
                h2 #forks { "Forks (" (forks.len()) ")" }
                ul.forks { @for fork in &forks {
                    li {
                        code { (fork.id) } " " (badge(&fork.state)) " "
                        span.muted { "fork of " code { (fork.parent.as_deref().unwrap_or_default()) } }
                        @if fork.state == VmState::Running {
                            " " a href={ "/-/sandboxes/" (fork.id) "/terminal" } { "Terminal" }
                        }
                    }
                } }
            }
        }
        section aria-labelledby="files" {
            h2 #files { "Files" }
            (path_crumbs(&here, &query.path))
            (files)
        }
        section aria-labelledby="runs" {
            h2 #runs { "Runs" }
            (runs_table(&runs, 50))
        }
    };
    Ok(respond(layout::page(
        layout::Section::Repositories,
        &format!("{} · {full}", query.name),
        Some(&user),
        body,
    )))
}

/// The sandbox's state and the buttons that change it.
pub fn sandbox_panel(user: &User, vm: &VmView, back: &str) -> Markup {
    let id = vm.id.as_str();
    let state = vm.state;
    let action = |verb: &str, label: &str| {
        html! {
            form.inline method="post" action={ "/-/sandboxes/" (id) "/" (verb) } {
                (csrf_field(user))
                input type="hidden" name="back" value=(back);
                button type="submit" { (label) }
            }
        }
    };
    html! {
        p { code { (id) } " " (badge(&state)) " on " (vm.backend) }
        div.actions {
            @if state == VmState::Running {
                (action("pause", "Pause"))
                a.button href={ "/-/sandboxes/" (id) "/terminal" } { "Terminal" }
            }
            @if state.is_paused() { (action("resume", "Resume")) }
            @if state.is_reachable() { (action("fork", "Fork")) }
        }
        @if let Some(url) = &vm.preview_url {
            p { "Preview: " a href=(url) rel="noopener noreferrer" { (url) } }
            @if url.contains("/v1/vms/") {
                p.muted {
                    "This preview is served on the forge's own address, so it runs sandboxed: \
                     no cookies, and its scripts cannot reach the forge (or its own storage). \
                     Apps that need those want a preview domain of their own site: \
                     start the forge with --preview-domain."
                }
            }
        } @else {
            p.muted { "No dev server preview is running." }
        }
    }
}

/// `/` then one link per directory of `path`.
fn path_crumbs(here: &str, path: &str) -> Markup {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    html! {
        p.crumbs {
            a href=(here) { "/" }
            @for (i, part) in parts.iter().enumerate() {
                @let prefix = parts[..=i].join("/");
                " " a href={ (here) "&path=" (encode(&prefix)) } { (part) } " /"
            }
        }
    }
}
