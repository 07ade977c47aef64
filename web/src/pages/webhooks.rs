//! A repository's webhooks: subscriptions with their filters, a create
//! form and an edit form (events as checkboxes; the API validates every
//! field at once and each problem is shown beside its field), each
//! webhook's delivery log (status, response code, attempts, next retry)
//! with a redeliver button, a delivery's page (payload, and each attempt's
//! request headers and response), and rotate, ping and delete buttons.
//!
//! The signing secret (given in the form, or generated) is shown once:
//! after create and after rotate the handler keeps it in the session and
//! redirects to the webhook's page, which shows it with a copy button and
//! forgets it. It never appears in a URL.

use api_types::webhooks::{
    CreateWebhook, DeliveryPage, DeliveryView, EVENT_TYPES, Queued, UpdateWebhook, WebhookView,
};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::{Fields, repo_api, repo_page};
use crate::Ui;
use crate::api::{Failure, encode};
use crate::badge::{badge, plain};
use crate::layout::{self, PageError, ago, csrf_field, duration, respond, when};
use crate::session::User;

/// A submitted webhook form: its fields in order, a field that repeats
/// (the event checkboxes) once per value.
pub type Pairs = Vec<(String, String)>;

fn value<'a>(form: &'a Pairs, key: &str) -> Option<&'a str> {
    form.iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The form's fields as a map, for the CSRF check.
fn fields(form: &Pairs) -> Fields {
    form.iter().cloned().collect()
}

/// Items of a list field, split on commas and new lines.
fn split(form: &Pairs, key: &str) -> Vec<String> {
    value(form, key)
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
    events: Vec<String>,
    branches: String,
    paths: String,
    active: bool,
}

impl Draft {
    fn of(hook: &WebhookView) -> Self {
        Self {
            url: hook.url.clone(),
            events: hook.events.clone(),
            branches: joined(&hook.branches),
            paths: joined(&hook.paths),
            active: hook.active,
        }
    }

    fn typed(form: &Pairs) -> Self {
        let get = |key: &str| value(form, key).unwrap_or_default().to_owned();
        Self {
            url: get("url"),
            events: checked_events(form),
            branches: get("branches"),
            paths: get("paths"),
            active: value(form, "active").is_some(),
        }
    }

    fn empty() -> Self {
        Self {
            url: String::new(),
            events: vec!["push".into()],
            branches: String::new(),
            paths: String::new(),
            active: true,
        }
    }
}

/// The event checkboxes ticked: `*` alone when "every event" is.
fn checked_events(form: &Pairs) -> Vec<String> {
    let events: Vec<String> = form
        .iter()
        .filter(|(name, _)| name == "events")
        .map(|(_, value)| value.clone())
        .collect();
    if events.iter().any(|event| event == "*") {
        vec!["*".into()]
    } else {
        events
    }
}

/// A field's problem, under it, tied to it for screen readers.
fn problem(failure: Option<&Failure>, field: &str) -> Markup {
    html! {
        @if let Some(message) = failure.and_then(|f| f.field(field)) {
            p.field-error id={ "hook-" (field) "-error" } { (message) }
        }
    }
}

/// `aria-invalid` and `aria-describedby` of a field the API refused.
fn invalid(failure: Option<&Failure>, field: &str) -> (Option<&'static str>, Option<String>) {
    match failure.and_then(|f| f.field(field)) {
        Some(_) => (Some("true"), Some(format!("hook-{field}-error"))),
        None => (None, None),
    }
}

fn hook_form(
    user: &User,
    action: &str,
    draft: &Draft,
    failure: Option<&Failure>,
    submit: &str,
) -> Markup {
    // The create form takes a secret; an existing webhook's is rotated.
    let creating = !action.contains("/webhooks/");
    let every = draft.events.iter().any(|e| e == "*");
    let (url_invalid, url_described) = invalid(failure, "url");
    let (branches_invalid, branches_described) = invalid(failure, "branches");
    let (paths_invalid, paths_described) = invalid(failure, "paths");
    let (secret_invalid, secret_described) = invalid(failure, "secret");
    html! {
        @if let Some(failure) = failure {
            @if failure.fields.is_empty() {
                p.error #webhook-error role="alert" { (failure.message) }
            } @else {
                p.error #webhook-error role="alert" {
                    "The webhook was not saved: fix the " (failure.fields.len())
                    @if failure.fields.len() == 1 { " field" } @else { " fields" }
                    " marked below."
                }
            }
        }
        form.webhook method="post" action=(action) novalidate {
            (csrf_field(user))
            label for="hook-url" { "Payload URL" }
            input #hook-url type="url" name="url" required value=(draft.url)
                aria-invalid=[url_invalid] aria-describedby=[url_described];
            (problem(failure, "url"))
            fieldset.events aria-describedby=[invalid(failure, "events").1] {
                legend { "Events" }
                label.check { input type="checkbox" name="events" value="*" checked[every]; " Every event (" code { "*" } ")" }
                div.event-list {
                    @for event in EVENT_TYPES {
                        label.check {
                            input type="checkbox" name="events" value=(event)
                                checked[every || draft.events.iter().any(|e| e == event)];
                            " " code { (event) }
                        }
                    }
                }
                (problem(failure, "events"))
            }
            label for="hook-branches" { "Branch globs (comma separated; empty: every branch)" }
            input #hook-branches name="branches" value=(draft.branches)
                aria-invalid=[branches_invalid]
                aria-describedby={ "glob-help" @if let Some(id) = &branches_described { " " (id) } };
            (problem(failure, "branches"))
            label for="hook-paths" { "Path globs (comma separated; empty: every path)" }
            input #hook-paths name="paths" value=(draft.paths)
                aria-invalid=[paths_invalid]
                aria-describedby={ "glob-help" @if let Some(id) = &paths_described { " " (id) } };
            (problem(failure, "paths"))
            p.muted #glob-help { "Globs: " code { "*" } " within a segment, " code { "**" } " across, "
                code { "!" } " in front to exclude." }
            label.check { input type="checkbox" name="active" checked[draft.active]; " Active" }
            @if creating {
                label for="hook-secret-new" { "Secret (empty: one is generated and shown once)" }
                input #hook-secret-new type="password" name="secret" autocomplete="off"
                    aria-invalid=[secret_invalid] aria-describedby=[secret_described];
                (problem(failure, "secret"))
            }
            button type="submit" { (submit) }
        }
    }
}

/// The webhook the form describes, to create.
fn created(form: &Pairs) -> CreateWebhook {
    CreateWebhook {
        url: value(form, "url")
            .map(str::trim)
            .unwrap_or_default()
            .to_owned(),
        events: checked_events(form),
        branches: split(form, "branches"),
        paths: split(form, "paths"),
        active: Some(value(form, "active").is_some()),
        secret: value(form, "secret")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    }
}

/// The form's values as an edit: every field is sent, so an emptied
/// filter is cleared.
fn edited(form: &Pairs) -> UpdateWebhook {
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
    error: Option<&Failure>,
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
    let mut response = respond(layout::page(
        layout::Section::Repositories,
        "Webhooks",
        Some(user),
        body,
    ));
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
    Form(form): Form<Pairs>,
) -> Result<Response, PageError> {
    user.check_csrf(&fields(&form))?;
    let api = format!("{}/webhooks", repo_api(&owner, &name));
    let answer: Result<WebhookView, _> = ui
        .api
        .send(&user.token, Method::POST, &api, &created(&form))
        .await;
    match answer {
        Ok(hook) => Ok(reveal_and_show(&ui, &user, &owner, &name, hook)),
        Err(failure) if failure.status == StatusCode::BAD_REQUEST => {
            let draft = Draft::typed(&form);
            render_list(&ui, &user, &owner, &name, &draft, Some(&failure)).await
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
    typed: Option<Draft>,
    error: Option<&Failure>,
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
    let draft = typed.unwrap_or_else(|| Draft::of(&hook));
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
                        th scope="col" { "Attempts" } th scope="col" { "When" } th scope="col" { "Next retry" }
                        th scope="col" { "Action" }
                    } }
                    tbody { @for delivery in list {
                        @let last = delivery.attempt_log.last();
                        tr.delivery {
                            td { a href={ (page) "/deliveries/" (encode(&delivery.id)) } { (delivery.event_type) } }
                            td { (badge(&delivery.status)) }
                            td { @match last.and_then(|a| a.response_status) {
                                Some(code) => (code),
                                None => (last.and_then(|a| a.error.as_deref()).unwrap_or("—")),
                            } }
                            td { (delivery.attempts) }
                            td { (ago(&delivery.created_at)) " ago" }
                            td.next-retry { (next_retry(delivery)) }
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
    let mut response = respond(layout::page(
        layout::Section::Repositories,
        "Webhook",
        Some(user),
        body,
    ));
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
    Form(form): Form<Pairs>,
) -> Result<Response, PageError> {
    user.check_csrf(&fields(&form))?;
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
            render_hook(&ui, &user, &owner, &name, &id, Some(draft), Some(&failure)).await
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

/// When a pending delivery is tried next.
fn next_retry(delivery: &DeliveryView) -> Markup {
    match &delivery.next_attempt_at {
        Some(at) if delivery.status == api_types::DeliveryState::Pending => {
            html! { time datetime=(at) { (in_time(at)) } }
        }
        _ => html! { "—" },
    }
}

/// `in 25 s`, or `now` for a time already past.
fn in_time(rfc3339: &str) -> String {
    let Ok(then) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return rfc3339.to_owned();
    };
    let secs = (then - time::OffsetDateTime::now_utc()).whole_seconds();
    match secs {
        ..1 => "now".to_owned(),
        1..60 => format!("in {secs} s"),
        60..3600 => format!("in {} min", secs / 60),
        _ => format!("in {} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// `[[name, value]]` headers as a table.
fn headers(list: &serde_json::Value, label: &str) -> Markup {
    let rows: Vec<(String, String)> = list
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|pair| {
                    let pair = pair.as_array()?;
                    Some((
                        pair.first()?.as_str()?.to_owned(),
                        pair.get(1)?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        @if rows.is_empty() { p.muted { "None." } }
        @else {
            div.scroll { table.headers aria-label=(label) {
                tbody { @for (name, value) in &rows { tr { th scope="row" { code { (name) } } td { code { (value) } } } } }
            } }
        }
    }
}

/// `GET /-/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery}`: the
/// payload, and each attempt's request headers and response.
pub async fn delivery(
    State(ui): State<Ui>,
    user: User,
    Path((owner, name, id, delivery_id)): Path<(String, String, String, String)>,
) -> Result<Response, PageError> {
    let hook_api = format!("{}/webhooks/{}", repo_api(&owner, &name), encode(&id));
    let delivery: DeliveryView = ui
        .api
        .get(
            &user.token,
            &format!("{hook_api}/deliveries/{}", encode(&delivery_id)),
        )
        .await?;
    let hook: WebhookView = ui.api.get(&user.token, &hook_api).await?;
    let page = format!("{}/webhooks/{}", repo_page(&owner, &name), encode(&id));
    let payload = delivery
        .payload
        .as_ref()
        .and_then(|payload| serde_json::to_string_pretty(payload).ok())
        .unwrap_or_default();
    let body = html! {
        nav.crumbs aria-label="Breadcrumbs" {
            a href=(repo_page(&owner, &name)) { (owner) "/" (name) } " / "
            a href={ (repo_page(&owner, &name)) "/webhooks" } { "Webhooks" } " / "
            a href=(page) { (hook.url) }
        }
        h1 { "Delivery " code { (delivery.id) } }
        dl.facts {
            dt { "Event" } dd { code { (delivery.event_type) } }
            dt { "Status" } dd #delivery-status { (badge(&delivery.status)) }
            dt { "Created" } dd { (when(&delivery.created_at)) }
            dt { "Attempts" } dd { (delivery.attempts) }
            dt { "Next retry" } dd #delivery-next { (next_retry(&delivery)) }
        }
        form.inline method="post" action={ (page) "/deliveries/" (encode(&delivery.id)) "/redeliver" } {
            (csrf_field(&user))
            button type="submit" { "Redeliver" }
        }
        section aria-labelledby="payload" {
            h2 #payload { "Payload" }
            pre.payload { code { (payload) } }
        }
        section aria-labelledby="attempts" {
            h2 #attempts { "Attempts" }
            @if delivery.attempt_log.is_empty() { p { "Not tried yet." } }
            @for attempt in delivery.attempt_log.iter().rev() {
                article.attempt id={ "attempt-" (attempt.attempt) } {
                    h3 {
                        "Attempt " (attempt.attempt) " · "
                        @match attempt.response_status {
                            Some(code) => { "HTTP " (code) },
                            None => "no response",
                        }
                        " · " (duration(attempt.duration_ms))
                    }
                    p.facts { (when(&attempt.started_at))
                        @if let Some(next) = &attempt.next_attempt_at { " · retry planned at " (when(next)) } }
                    @if let Some(error) = &attempt.error { p.error { (error) } }
                    h4 { "Request headers" }
                    (headers(&attempt.request_headers, "Request headers"))
                    h4 { "Response headers" }
                    (headers(&attempt.response_headers, "Response headers"))
                    h4 { "Response body" @if attempt.response_body_truncated { " (first 4 KiB)" } }
                    pre.response { (attempt.response_body) }
                }
            }
        }
    };
    Ok(respond(layout::page(
        layout::Section::Repositories,
        "Delivery",
        Some(&user),
        body,
    )))
}
