//! A repository's webhooks: subscriptions with their filters, a create
//! form and an edit form (the API validates the globs; its message is shown
//! beside the form), each webhook's delivery log (status, response code,
//! attempts) with a redeliver button.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Fields, items, repo_api, repo_page, text};
use crate::Ui;
use crate::api::encode;
use crate::layout::{self, PageError, ago, badge, csrf_field, respond};
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

fn joined(value: &Value) -> String {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
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
    fn of(hook: &Value) -> Self {
        Self {
            url: text(hook, "url").to_owned(),
            events: joined(&hook["events"]),
            branches: joined(&hook["branches"]),
            paths: joined(&hook["paths"]),
            active: hook["active"].as_bool().unwrap_or(true),
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
            button type="submit" { (submit) }
        }
    }
}

fn body_of(form: &Fields) -> Value {
    json!({
        "url": form.get("url").map(|u| u.trim()).unwrap_or_default(),
        "events": split(form, "events"),
        "branches": split(form, "branches"),
        "paths": split(form, "paths"),
        "active": form.contains_key("active"),
    })
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
    let hooks = items(
        ui.api
            .get(&user.token, &format!("{}/webhooks", repo_api(owner, name)))
            .await?,
    )?;
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
                    td { a href={ (page) "/" (encode(text(hook, "id"))) } { (text(hook, "url")) } }
                    td { (joined(&hook["events"])) }
                    td { (joined(&hook["branches"])) }
                    td { (joined(&hook["paths"])) }
                    td { @if hook["active"].as_bool() == Some(true) { (badge("active")) } @else { (badge("inactive")) }
                         @if let Some(reason) = hook["disabled_reason"].as_str() { " " (reason) } }
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
    match ui.api.post(&user.token, &api, &body_of(&form)).await {
        Ok(hook) => Ok(Redirect::to(&format!(
            "{}/webhooks/{}",
            repo_page(&owner, &name),
            encode(text(&hook, "id"))
        ))
        .into_response()),
        Err(failure) if failure.status == StatusCode::BAD_REQUEST => {
            let draft = Draft::typed(&form);
            render_list(&ui, &user, &owner, &name, &draft, Some(&failure.message)).await
        }
        Err(failure) => Err(failure.into()),
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
    let hook = ui.api.get(&user.token, &api).await?;
    let deliveries = ui
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
        h1 { "Webhook " (text(&hook, "url")) }
        section aria-labelledby="edit" {
            h2 #edit { "Edit" }
            (hook_form(user, &page, &draft, error, "Save webhook"))
        }
        section aria-labelledby="deliveries" {
            h2 #deliveries { "Deliveries" }
            @let list = deliveries["deliveries"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { p { "No deliveries yet." } }
            @else {
                div.scroll { table #delivery-log {
                    thead { tr {
                        th scope="col" { "Event" } th scope="col" { "Status" } th scope="col" { "Response" }
                        th scope="col" { "Attempts" } th scope="col" { "When" } th scope="col" { "Action" }
                    } }
                    tbody { @for delivery in &list {
                        @let last = delivery["attempt_log"].as_array().and_then(|a| a.last()).cloned().unwrap_or(Value::Null);
                        tr.delivery {
                            td { (text(delivery, "event_type")) }
                            td { (badge(text(delivery, "status"))) }
                            td { @match last["response_status"].as_i64() {
                                Some(code) => (code),
                                None => (last["error"].as_str().unwrap_or("—")),
                            } }
                            td { (delivery["attempts"].as_i64().unwrap_or_default()) }
                            td { (ago(text(delivery, "created_at"))) " ago" }
                            td { form.inline method="post"
                                action={ (page) "/deliveries/" (encode(text(delivery, "id"))) "/redeliver" } {
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

/// `POST /-/repos/{owner}/{name}/webhooks/{id}`: saves the edit form.
pub async fn update(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name, id)): Path<(String, String, String)>,
    Form(form): Form<Fields>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    let api = format!("{}/webhooks/{}", repo_api(&owner, &name), encode(&id));
    match ui
        .api
        .call(&user.token, Method::PATCH, &api, Some(&body_of(&form)))
        .await
    {
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
        .call(
            &user.token,
            Method::POST,
            &format!("{hook}/deliveries/{}/redeliver", encode(&delivery)),
            None,
        )
        .await?;
    Ok(Redirect::to(&format!(
        "{}/webhooks/{}",
        repo_page(&owner, &name),
        encode(&id)
    ))
    .into_response())
}
