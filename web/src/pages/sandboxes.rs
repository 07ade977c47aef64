//! Sandboxes: every VM the user may see, drawn as a fork tree (a fork under
//! its parent) with backend, state, memory, uptime and actions; and the
//! browser terminal into a running VM.
//!
//! The terminal page loads xterm.js from the forge's own static files; its
//! script asks `POST /-/sandboxes/{id}/ticket` (CSRF header) for a one-time
//! ticket, which this handler gets from the API with the user's token, and
//! opens `/v1/vms/{id}/terminal?ticket=...`. The session's token never
//! reaches the page. The ticket has no type in `api-types` yet: it is
//! relayed as the JSON the API answered.

use std::collections::HashMap;

use api_types::VmState;
use api_types::vms::{CarriedVm, ForkRequest, Forks, System, TerminalTicket, VmDetail, VmView};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Json, Redirect, Response};
use maud::{Markup, html};

use super::{Fields, branch_page, visible_vms};
use crate::Ui;
use crate::api::encode;
use crate::badge::badge;
use crate::layout::{self, PageError, ago, csrf_field, respond};
use crate::session::User;

/// `GET /-/sandboxes`.
pub async fn list(State(ui): State<Ui>, user: User) -> Result<Response, PageError> {
    let system: System = ui.api.get(&user.token, "/v1/system").await?;
    let vms = visible_vms(&ui.api, &user).await?;
    let ids: Vec<&str> = vms.iter().map(|vm| vm.id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&VmView>> = HashMap::new();
    let mut roots = Vec::new();
    for vm in &vms {
        match vm.parent.as_deref() {
            Some(parent) if ids.contains(&parent) => children.entry(parent).or_default().push(vm),
            _ => roots.push(vm),
        }
    }
    let sandboxes = &system.sandboxes;
    let body = html! {
        h1 { "Sandboxes" }
        p {
            "Backend: " strong { (sandboxes.backend.as_deref().unwrap_or("none")) }
            " (" (sandboxes.reason) ")"
        }
        @if vms.is_empty() { p { "No sandboxes." } }
        @else {
            ul.forktree aria-label="Sandboxes by fork" {
                @for vm in &roots { (node(&user, vm, &children)) }
            }
        }
    };
    Ok(respond(layout::page(
        layout::Section::Sandboxes,
        "Sandboxes",
        Some(&user),
        body,
    )))
}

/// How long a VM has been up, when it runs; else only how old it is (a
/// crashed or paused VM is not "up").
fn age(state: VmState, created_at: &str) -> String {
    match state {
        VmState::Running => format!("up {}", ago(created_at)),
        _ => format!("made {} ago", ago(created_at)),
    }
}

/// One VM and, nested below, its forks.
fn node(user: &User, vm: &VmView, children: &HashMap<&str, Vec<&VmView>>) -> Markup {
    let id = vm.id.as_str();
    let state = vm.state;
    // Back to this card, not the top of the page.
    let back = format!("/-/sandboxes#vm-{id}");
    let action = |verb: &str, label: &str, confirm: Option<String>| {
        html! {
            form.inline method="post" action={ "/-/sandboxes/" (id) "/" (verb) } data-confirm=[confirm] {
                (csrf_field(user))
                input type="hidden" name="back" value=(back);
                button type="submit" { (label) }
            }
        }
    };
    html! {
        li.vm id={ "vm-" (id) } data-vm=(id) {
            div.card {
                code { (id) } " " (badge(&state)) " "
                span.facts {
                    (vm.backend) " · " (vm.mem_mib) " MiB · "
                    (vm.vcpus) " vCPU · " (age(state, &vm.created_at))
                }
                @if let Some(repo) = &vm.repo {
                    @let branch = vm.branch.as_deref().unwrap_or_default();
                    " · " a href=(branch_page(repo, branch)) { (repo) " " (branch) }
                }
                div.actions {
                    @if state == VmState::Running {
                        a.button href={ "/-/sandboxes/" (id) "/terminal" } { "Terminal" }
                        (action("pause", "Pause", None))
                    }
                    @if state.is_paused() { (action("resume", "Resume", None)) }
                    @if state.is_reachable() { (action("fork", "Fork", None)) }
                    (action("delete", "Delete", Some(format!("Delete {id} and its disk?"))))
                }
            }
            @if let Some(forks) = children.get(id) {
                ul { @for fork in forks { (node(user, fork, children)) } }
            }
        }
    }
}

/// `POST /-/sandboxes/{id}/{pause|resume|fork|delete}`, then back.
pub async fn act(
    State(ui): State<Ui>,
    user: User,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    let vm = format!("/v1/vms/{}", encode(&id));
    let path = format!("{vm}/{action}");
    let mut forked = None;
    match action.as_str() {
        "pause" => {
            ui.api
                .call::<VmView>(&user.token, Method::POST, &path)
                .await?;
        }
        "resume" => {
            ui.api
                .call::<CarriedVm>(&user.token, Method::POST, &path)
                .await?;
        }
        "fork" => {
            let request = ForkRequest {
                count: Some(1),
                ..ForkRequest::default()
            };
            let made = ui
                .api
                .send::<_, Forks>(&user.token, Method::POST, &path, &request)
                .await?;
            forked = made.forks.into_iter().next().map(|fork| fork.vm.id);
        }
        "delete" => ui.api.call::<()>(&user.token, Method::DELETE, &vm).await?,
        _ => return Err(PageError::new(StatusCode::NOT_FOUND, "no such action")),
    }
    // Only go back to a page of this UI.
    let back = form
        .get("back")
        .filter(|b| b.starts_with("/-/") && !b.starts_with("//"))
        .map_or("/-/sandboxes", String::as_str);
    // A fork is announced on the page it was made from.
    let back = match forked {
        Some(id) if back.contains("/branch?") => format!("{back}&forked={}", encode(&id)),
        _ => back.to_owned(),
    };
    Ok(Redirect::to(&back).into_response())
}

/// `GET /-/sandboxes/{id}/terminal`.
pub async fn terminal(
    State(ui): State<Ui>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let detail: VmDetail = ui
        .api
        .get(&user.token, &format!("/v1/vms/{}", encode(&id)))
        .await?;
    let vm = &detail.vm;
    let body = html! {
        link rel="stylesheet" href="/-/static/vendor/xterm.css";
        script src="/-/static/vendor/xterm.js" {}
        script src="/-/static/vendor/xterm-addon-fit.js" {}
        h1 { "Terminal " code { (id) } }
        p { (badge(&vm.state)) " "
            @if let Some(repo) = &vm.repo { (repo) " " (vm.branch.as_deref().unwrap_or_default()) } }
        p #terminal-status role="status" aria-live="polite" { "Connecting…" }
        div #terminal data-vm=(id) data-ticket={ "/-/sandboxes/" (encode(&id)) "/ticket" }
            aria-label="Terminal" {}
        p.muted { "While the terminal has focus it takes every key, Tab included; click outside it to leave." }
    };
    Ok(respond(layout::page(
        layout::Section::Sandboxes,
        "Terminal",
        Some(&user),
        body,
    )))
}

/// `POST /-/sandboxes/{id}/ticket`: a one-time terminal ticket (JSON).
pub async fn ticket(
    State(ui): State<Ui>,
    user: User,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    user.check_csrf_header(&headers)?;
    let ticket: TerminalTicket = ui
        .api
        .call(
            &user.token,
            Method::POST,
            &format!("/v1/vms/{}/terminal/tickets", encode(&id)),
        )
        .await?;
    Ok(Json(ticket).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_vm_is_up() {
        let then = "2020-01-01T00:00:00Z";
        assert!(age(VmState::Running, then).starts_with("up "));
        for state in [VmState::Crashed, VmState::Paused, VmState::PausedToDisk] {
            let said = age(state, then);
            assert!(
                said.starts_with("made ") && said.ends_with(" ago"),
                "{said}"
            );
        }
    }
}
