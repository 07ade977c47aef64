//! Sandboxes: every VM the user may see, drawn as a fork tree (a fork under
//! its parent) with backend, state, memory, uptime and actions; and the
//! browser terminal into a running VM.
//!
//! The terminal page loads xterm.js from the forge's own static files; its
//! script asks `POST /-/sandboxes/{id}/ticket` (CSRF header) for a one-time
//! ticket, which this handler gets from the API with the user's token, and
//! opens `/v1/vms/{id}/terminal?ticket=...`. The session's token never
//! reaches the page.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Json, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Fields, branch_page, text, visible_vms};
use crate::Ui;
use crate::api::encode;
use crate::layout::{self, PageError, ago, badge, csrf_field, respond};
use crate::session::User;

/// `GET /-/sandboxes`.
pub async fn list(State(ui): State<Ui>, user: User) -> Result<Response, PageError> {
    let system = ui.api.get(&user.token, "/v1/system").await?;
    let vms = visible_vms(&ui.api, &user).await;
    let ids: Vec<&str> = vms.iter().map(|vm| text(vm, "id")).collect();
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut roots = Vec::new();
    for vm in &vms {
        match vm["parent"].as_str() {
            Some(parent) if ids.contains(&parent) => children.entry(parent).or_default().push(vm),
            _ => roots.push(vm),
        }
    }
    let sandboxes = &system["sandboxes"];
    let body = html! {
        h1 { "Sandboxes" }
        p {
            "Backend: " strong { (sandboxes["backend"].as_str().unwrap_or("none")) }
            " (" (text(sandboxes, "reason")) ")"
        }
        @if vms.is_empty() { p { "No sandboxes." } }
        @else {
            ul.forktree aria-label="Sandboxes by fork" {
                @for vm in &roots { (node(&user, vm, &children)) }
            }
        }
    };
    Ok(respond(layout::page("Sandboxes", Some(&user), body)))
}

/// One VM and, nested below, its forks.
fn node(user: &User, vm: &Value, children: &HashMap<&str, Vec<&Value>>) -> Markup {
    let id = text(vm, "id");
    let state = text(vm, "state");
    let action = |verb: &str, label: &str| {
        html! {
            form.inline method="post" action={ "/-/sandboxes/" (id) "/" (verb) } {
                (csrf_field(user))
                input type="hidden" name="back" value="/-/sandboxes";
                button type="submit" { (label) }
            }
        }
    };
    html! {
        li.vm data-vm=(id) {
            div.card {
                code { (id) } " " (badge(state))
                span.facts {
                    (text(vm, "backend")) " · " (vm["mem_mib"].as_i64().unwrap_or_default()) " MiB · "
                    (vm["vcpus"].as_i64().unwrap_or_default()) " vCPU · up " (ago(text(vm, "created_at")))
                }
                @if let Some(repo) = vm["repo"].as_str() {
                    @let branch = text(vm, "branch");
                    " · " a href=(branch_page(repo, branch)) { (repo) " " (branch) }
                }
                div.actions {
                    @if state == "running" {
                        a.button href={ "/-/sandboxes/" (id) "/terminal" } { "Terminal" }
                        (action("pause", "Pause"))
                    }
                    @if state.starts_with("paused") { (action("resume", "Resume")) }
                    @if state != "crashed" { (action("fork", "Fork")) }
                    (action("delete", "Delete"))
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
    match action.as_str() {
        "pause" | "resume" => {
            ui.api
                .call(&user.token, Method::POST, &format!("{vm}/{action}"), None)
                .await?
        }
        "fork" => {
            ui.api
                .post(&user.token, &format!("{vm}/fork"), &json!({ "count": 1 }))
                .await?
        }
        "delete" => ui.api.call(&user.token, Method::DELETE, &vm, None).await?,
        _ => return Err(PageError::new(StatusCode::NOT_FOUND, "no such action")),
    };
    // Only go back to a page of this UI.
    let back = form
        .get("back")
        .filter(|b| b.starts_with("/-/") && !b.starts_with("//"))
        .map_or("/-/sandboxes", String::as_str);
    Ok(Redirect::to(back).into_response())
}

/// `GET /-/sandboxes/{id}/terminal`.
pub async fn terminal(
    State(ui): State<Ui>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let vm = ui
        .api
        .get(&user.token, &format!("/v1/vms/{}", encode(&id)))
        .await?;
    let body = html! {
        link rel="stylesheet" href="/-/static/vendor/xterm.css";
        script src="/-/static/vendor/xterm.js" {}
        h1 { "Terminal " code { (id) } }
        p { (badge(text(&vm, "state"))) " "
            @if let Some(repo) = vm["repo"].as_str() { (repo) " " (text(&vm, "branch")) } }
        p #terminal-status role="status" aria-live="polite" { "Connecting…" }
        div #terminal data-vm=(id) data-ticket={ "/-/sandboxes/" (encode(&id)) "/ticket" }
            aria-label="Terminal" {}
        p.muted { "While the terminal has focus it takes every key, Tab included; click outside it to leave." }
    };
    Ok(respond(layout::page("Terminal", Some(&user), body)))
}

/// `POST /-/sandboxes/{id}/ticket`: a one-time terminal ticket (JSON).
pub async fn ticket(
    State(ui): State<Ui>,
    user: User,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    user.check_csrf_header(&headers)?;
    let ticket = ui
        .api
        .call(
            &user.token,
            Method::POST,
            &format!("/v1/vms/{}/terminal/tickets", encode(&id)),
            None,
        )
        .await?;
    Ok(Json(ticket).into_response())
}
