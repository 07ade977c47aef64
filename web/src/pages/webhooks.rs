//! A repository's webhooks: subscriptions with their filters, a create
//! form and an edit form (the API validates the globs; its message is shown
//! beside the form), each webhook's delivery log (status, response code,
//! attempts) with a redeliver button, and rotate, ping and delete buttons.
//!
//! The signing secret (given in the form, or generated) is shown once:
//! after create and after rotate the handler keeps it in the session and
//! redirects to the webhook's page, which shows it with a copy button and
//! forgets it. It never appears in a URL.

use api_types::webhooks::{CreateWebhook, DeliveryPage, Queued, UpdateWebhook, WebhookView};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::{Fields, repo_api, repo_page};
use crate::Ui;
use crate::api::encode;
use crate::badge::{badge, plain};
use crate::layout::{self, PageError, ago, csrf_field, respond};
use crate::session::User;

/// Items of a list field, split on commas and new lines.
fn split(form: &Fields, key: &str) -> Vec<String> {
    form.get(key)
        .map(|v| {
            v.split([',', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn joined(items: &[String]) -> String {
    items.join(", ")
}

/// What the form shows: a webhook's values or what the user typed.
struct Draft {
    url: String,
    events: String,
    branches: String,
    paths: String,
    active: bool,
}

impl Draft {
    fn of(hook: &WebhookView) -> Self {
        Self {
            url: hook.url.clone(),
            events: joined(&hook.events),
            branches: joined(&hook.branches),
            paths: joined(&hook.paths),
            active: hook.active,
        }
    }

    fn typed(form: &Fields) -> Self {
        let get = |key: &str| form.get(key).cloned().unwrap_or_default();
        Self {
            url: get("url"),
            events: get("events"),
            branches: get("branches"),
            paths: get("paths"),
            active: form.contains_key("active"),
        }
    }

    fn empty() -> Self {
        Self {
            url: String::new(),
            events: "push".into(),
            branches: String::new(),
            paths: String::new(),
            active: true,
        }
    }
}

fn hook_form(
    user: &User,
    action: &str,
    draft: &Draft,
    error: Option<&str>,
    submit: &str,
) -> Markup {
    // The create form takes a secret; an existing webhook's is rotated.
    let creating = !action.contains("/webhooks/");
    html! {
        @if let Some(error) = error { p.error #webhook-error role="alert" { (error) } }
        form.webhook method="post" action=(action) {
            (csrf_field(user))
            label for="hook-url" { "Payload URL" }
            input #hook-url type="url" name="url" required value=(draft.url);
            label for="hook-events" { "Events (comma separated, or *)" }
            input #hook-events name="events" required value=(draft.events);
            label for="hook-branches" { "Branch globs (comma separated; empty: every branch)" }
            input #hook-branches name="branches" value=(draft.branches) aria-describedby="glob-help";
            label for="hook-paths" { "Path globs (comma separated; empty: every path)" }
            input #hook-paths name="paths" value=(draft.paths) aria-describedby="glob-help";
            p.muted #glob-help { "Globs: " code { "*" } " within a segment, " code { "**" } " across, "
                code { "!" } " in front to exclude." }
            label.check { input type="checkbox" name="active" checked[draft.active]; " Active" }
            @if creating {
                label for="hook-secret-new" { "Secret (empty: one is generated and shown once)" }
                input #hook-secret-new type="password" name="secret" autocomplete="off";
            }
            button type="submit" { (submit) }
        }
    }
}

/// The webhook the form describes, to create.
fn created(form: &Fields) -> CreateWebhook {
    CreateWebhook {
        url: form
            .get("url")
            .map(|u| u.trim())
            .unwrap_or_default()
            .to_owned(),
        events: split(form, "events"),
        branches: split(form, "branches"),
        paths: split(form, "paths"),
        active: Some(form.contains_key("active")),
        secret: form
            .get("secret")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    }
}

/// The form's values as an edit: every field is sent, so an emptied
/// filter is cleared.
fn edited(form: &Fields) -> UpdateWebhook {
    let hook = created(form);
    UpdateWebhook {
        url: Some(hook.url),
        events: Some(hook.events),
        branches: Some(hook.branches),
        paths: Some(hook.paths),
        active: hook.active,
        ..UpdateWebhook::default()
    }
}

/// `GET /-/repos/{owner}/{name}/webhooks`.
pub async fn list(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Response, PageError> {
    render_list(&ui, &user, &owner, &name, &Draft::empty(), None).await
}

async fn render_list(
    ui: &Ui,
    user: &User,
    owner: &str,
    name: &str,
    draft: &Draft,
    error: Option<&str>,
) -> Result<Response, PageError> {
    let hooks: Vec<WebhookView> = ui
        .api
        .get(&user.token, &format!("{}/webhooks", repo_api(owner, name)))
        .await?;
    let page = format!("{}/webhooks", repo_page(owner, name));
    let body = html! {
        nav.crumbs aria-label="Breadcrumbs" { a href=(repo_page(owner, name)) { (owner) "/" (name) } }
        h1 { "Webhooks" }
        @if hooks.is_empty() { p { "No webhooks." } }
        @else {
            div.scroll { table #webhooks {
                thead { tr {
                    th scope="col" { "URL" } th scope="col" { "Events" } th scope="col" { "Branches" }
                    th scope="col" { "Paths" } th scope="col" { "State" }
                } }
                tbody { @for hook in &hooks { tr {
                    td { a href={ (page) "/" (encode(&hook.id)) } { (hook.url) } }
                    td { (joined(&hook.events)) }
                    td { (joined(&hook.branches)) }
                    td { (joined(&hook.paths)) }
                    td { @if hook.active { (plain("active")) } @else { (plain("inactive")) }
                         @if let Some(reason) = &hook.disabled_reason { " " (reason) } }
                } } }
            } }
        }
        section aria-labelledby="new-hook" {
            h2 #new-hook { "New webhook" }
            (hook_form(user, &page, draft, error, "Create webhook"))
        }
    };
    let mut response = respond(layout::page("Webhooks", Some(user), body));
    if error.is_some() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

/// `POST /-/repos/{owner}/{name}/webhooks`.
pub async fn create(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name)): Path<(String, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    let api = format!("{}/webhooks", repo_api(&owner, &name));
    let answer: Result<WebhookView, _> = ui
        .api
        .send(&user.token, Method::POST, &api, &created(&form))
        .await;
    match answer {
        Ok(hook) => Ok(reveal_and_show(&ui, &user, &owner, &name, hook)),
        Err(failure) if failure.status == StatusCode::BAD_REQUEST => {
            let draft = Draft::typed(&form);
            render_list(&ui, &user, &owner, &name, &draft, Some(&failure.message)).await
        }
        Err(failure) => Err(failure.into()),
    }
}

/// Keeps `hook`'s new secret for its page, which shows it once; redirects
/// there.
fn reveal_and_show(ui: &Ui, user: &User, owner: &str, name: &str, hook: WebhookView) -> Response {
    if let Some(secret) = hook.secret {
        ui.sessions
            .reveal_once(user, &format!("webhook {}", hook.id), secret);
    }
    Redirect::to(&format!(
        "{}/webhooks/{}",
        repo_page(owner, name),
        encode(&hook.id)
    ))
    .into_response()
}

/// `POST /-/repos/{owner}/{name}/webhooks/{id}/{rotate|ping|delete}`.
pub async fn act(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name, id, action)): Path<(String, String, String, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    let api = format!("{}/webhooks/{}", repo_api(&owner, &name), encode(&id));
    let page = format!("{}/webhooks/{}", repo_page(&owner, &name), encode(&id));
    match action.as_str() {
        "rotate" => {
            let rotate = UpdateWebhook {
                rotate_secret: true,
                ..UpdateWebhook::default()
            };
            let hook: WebhookView = ui
                .api
                .send(&user.token, Method::PATCH, &api, &rotate)
                .await?;
            Ok(reveal_and_show(&ui, &user, &owner, &name, hook))
        }
        "ping" => {
            ui.api
                .call::<Queued>(&user.token, Method::POST, &format!("{api}/ping"))
                .await?;
            Ok(Redirect::to(&format!("{page}#deliveries")).into_response())
        }
        "delete" => {
            ui.api.call::<()>(&user.token, Method::DELETE, &api).await?;
            Ok(Redirect::to(&format!("{}/webhooks", repo_page(&owner, &name))).into_response())
        }
        _ => Err(PageError::new(StatusCode::NOT_FOUND, "no such action")),
    }
}

/// `GET /-/repos/{owner}/{name}/webhooks/{id}`.
pub async fn show(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> Result<Response, PageError> {
    render_hook(&ui, &user, &owner, &name, &id, None, None).await
}

async fn render_hook(
    ui: &Ui,
    user: &User,
    owner: &str,
    name: &str,
    id: &str,
    typed: Option<&Draft>,
    error: Option<&str>,
) -> Result<Response, PageError> {
    let api = format!("{}/webhooks/{}", repo_api(owner, name), encode(id));
    let hook: WebhookView = ui.api.get(&user.token, &api).await?;
    let secret = ui
        .sessions
        .take_revealed(user, &format!("webhook {}", hook.id));
    let deliveries: DeliveryPage = ui
        .api
        .get(&user.token, &format!("{api}/deliveries?limit=50"))
        .await?;
    let page = format!("{}/webhooks/{}", repo_page(owner, name), encode(id));
    let draft = typed.map_or_else(
        || Draft::of(&hook),
        |d| Draft {
            url: d.url.clone(),
            events: d.events.clone(),
            branches: d.branches.clone(),
            paths: d.paths.clone(),
            active: d.active,
        },
    );
    let body = html! {
        nav.crumbs aria-label="Breadcrumbs" {
            a href=(repo_page(owner, name)) { (owner) "/" (name) } " / "
            a href={ (repo_page(owner, name)) "/webhooks" } { "Webhooks" }
        }
        h1 { "Webhook " (hook.url) }
        section aria-labelledby="secret" {
            h2 #secret { "Signing secret" }
            @if let Some(secret) = &secret {
                p role="status" { "Store this secret with the receiver now: it is shown only this once." }
                div.clone {
                    label for="hook-secret" { "Secret" }
                    input #hook-secret readonly value=(secret);
                    button type="button" data-copy="#hook-secret" { "Copy" }
                }
            } @else {
                p.muted { "The secret was shown when it was made. Rotate it to get a new one; the old one keeps signing for a while so the receiver can switch." }
            }
            @if let Some(until) = &hook.previous_secret_expires_at {
                p.muted { "The previous secret signs too until " (until) "." }
            }
            div.actions {
                (hook_action(user, &page, "rotate", "Rotate secret", None))
                (hook_action(user, &page, "ping", "Send a ping", None))
                (hook_action(user, &page, "delete", "Delete webhook", Some(format!("Delete the webhook to {}?", hook.url))))
            }
        }
        section aria-labelledby="edit" {
            h2 #edit { "Edit" }
            (hook_form(user, &page, &draft, error, "Save webhook"))
        }
        section aria-labelledby="deliveries" {
            h2 #deliveries { "Deliveries" }
            @let list = &deliveries.deliveries;
            @if list.is_empty() { p { "No deliveries yet." } }
            @else {
                div.scroll { table #delivery-log {
                    thead { tr {
                        th scope="col" { "Event" } th scope="col" { "Status" } th scope="col" { "Response" }
                        th scope="col" { "Attempts" } th scope="col" { "When" } th scope="col" { "Action" }
                    } }
                    tbody { @for delivery in list {
                        @let last = delivery.attempt_log.last();
                        tr.delivery {
                            td { (delivery.event_type) }
                            td { (badge(&delivery.status)) }
                            td { @match last.and_then(|a| a.response_status) {
                                Some(code) => (code),
                                None => (last.and_then(|a| a.error.as_deref()).unwrap_or("—")),
                            } }
                            td { (delivery.attempts) }
                            td { (ago(&delivery.created_at)) " ago" }
                            td { form.inline method="post"
                                action={ (page) "/deliveries/" (encode(&delivery.id)) "/redeliver" } {
                                (csrf_field(user))
                                button type="submit" { "Redeliver" }
                            } }
                        }
                    } }
                } }
            }
        }
    };
    let mut response = respond(layout::page("Webhook", Some(user), body));
    if error.is_some() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

/// A button posting `action` about the webhook at `page`.
fn hook_action(
    user: &User,
    page: &str,
    action: &str,
    label: &str,
    confirm: Option<String>,
) -> Markup {
    html! {
        form.inline method="post" action={ (page) "/" (action) } data-confirm=[confirm] {
            (csrf_field(user))
            button type="submit" { (label) }
        }
    }
}

/// `POST /-/repos/{owner}/{name}/webhooks/{id}`: saves the edit form.
pub async fn update(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name, id)): Path<(String, String, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    let api = format!("{}/webhooks/{}", repo_api(&owner, &name), encode(&id));
    let answer: Result<WebhookView, _> = ui
        .api
        .send(&user.token, Method::PATCH, &api, &edited(&form))
        .await;
    match answer {
        Ok(_) => Ok(Redirect::to(&format!(
            "{}/webhooks/{}",
            repo_page(&owner, &name),
            encode(&id)
        ))
        .into_response()),
        Err(failure) if failure.status == StatusCode::BAD_REQUEST => {
            let draft = Draft::typed(&form);
            render_hook(
                &ui,
                &user,
                &owner,
                &name,
                &id,
                Some(&draft),
                Some(&failure.message),
            )
            .await
        }
        Err(failure) => Err(failure.into()),
    }
}

/// `POST .../deliveries/{delivery}/redeliver`.
pub async fn redeliver(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name, id, delivery)): Path<(String, String, String, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    let hook = format!("{}/webhooks/{}", repo_api(&owner, &name), encode(&id));
    ui.api
        .call::<Queued>(
            &user.token,
            Method::POST,
            &format!("{hook}/deliveries/{}/redeliver", encode(&delivery)),
        )
        .await?;
    Ok(Redirect::to(&format!(
        "{}/webhooks/{}",
        repo_page(&owner, &name),
        encode(&id)
    ))
    .into_response())
}
