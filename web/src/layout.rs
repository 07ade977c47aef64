//! The page shell (head, navigation, footer), the error page, and small
//! pieces every page uses: times, commit ids, CSRF fields (status badges
//! are [`crate::badge`]).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::api::Failure;
use crate::session::User;

/// What the navigation bar offers.
enum Nav<'a> {
    /// Nothing but the brand (the sign-in page).
    None,
    /// The sections, without sign-out (an error page, which does not know
    /// the session).
    Links,
    /// The sections and sign-out.
    User(&'a User),
}

/// The part of the UI a page belongs to, marked in the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Repositories,
    Sandboxes,
    Github,
    /// Sign-in and error pages.
    None,
}

/// A whole HTML page of `section`. `user` is `None` on the sign-in page.
pub fn page(section: Section, title: &str, user: Option<&User>, body: Markup) -> Markup {
    shell(section, title, user.map_or(Nav::None, Nav::User), body)
}

fn shell(section: Section, title: &str, nav: Nav<'_>, body: Markup) -> Markup {
    let link = |target: Section, href: &str, label: &str| {
        html! { a href=(href) aria-current=[(target == section).then_some("page")] { (label) } }
    };
    let user = match nav {
        Nav::User(user) => Some(user),
        _ => None,
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(user) = user { meta name="csrf-token" content=(user.csrf); }
                title { (title) " · forge" }
                link rel="stylesheet" href="/-/static/app.css";
                script src="/-/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href="/" { "forge" }
                        @if !matches!(nav, Nav::None) {
                            (link(Section::Repositories, "/", "Repositories"))
                            (link(Section::Sandboxes, "/-/sandboxes", "Sandboxes"))
                            (link(Section::Github, "/-/github", "GitHub"))
                        }
                        @if let Some(user) = user {
                            form.inline method="post" action="/-/signout" {
                                (csrf_field(user))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(user: &User) -> Markup {
    html! { input type="hidden" name="_csrf" value=(user.csrf); }
}

/// What a page may load and run: scripts only from the forge's own static
/// files (no inline script, so text that slipped through as HTML still
/// cannot run), no plugins, no framing, forms only back to the forge.
/// Images may come from the web (a README's badges).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' https: http: data:; connect-src 'self'; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// A page as a response that no cache keeps.
pub fn respond(markup: Markup) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        axum::response::Html(markup.into_string()),
    )
        .into_response()
}

/// The first 10 characters of a commit id.
pub fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// `1.2 s`, `340 ms`, `2 min 5 s`.
pub fn duration(ms: i64) -> String {
    match ms {
        ..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// How long ago an RFC 3339 time was, or the text as it is.
pub fn ago(rfc3339: &str) -> String {
    let Ok(then) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return rfc3339.to_owned();
    };
    let secs = (time::OffsetDateTime::now_utc() - then)
        .whole_seconds()
        .max(0);
    match secs {
        ..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d", secs / 86_400),
    }
}

/// An RFC 3339 time as a `<time>` element: the date and time in UTC, and
/// how long ago.
pub fn when(rfc3339: &str) -> Markup {
    let shown =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .ok()
            .and_then(|at| {
                at.to_offset(time::UtcOffset::UTC)
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
                    ))
                    .ok()
            })
            .unwrap_or_else(|| rfc3339.to_owned());
    html! { time datetime=(rfc3339) { (shown) } " (" (ago(rfc3339)) " ago)" }
}

/// A page that could not be shown, with the reason.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// A query string a page reads; a malformed or incomplete one is a `400`
/// error page saying what is missing, not the framework's plain text.
pub struct PageQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for PageQuery<T>
{
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| PageQuery(value))
            .map_err(|rejection| {
                let detail = rejection.body_text();
                let detail = detail
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&detail);
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("This address is missing something the page needs: {detail}."),
                )
            })
    }
}

/// Every `/-/` address no page answers.
pub async fn no_such_page(uri: axum::http::Uri) -> PageError {
    PageError::new(
        StatusCode::NOT_FOUND,
        format!("There is no page at {}.", uri.path()),
    )
}

impl From<Failure> for PageError {
    fn from(failure: Failure) -> Self {
        Self::new(failure.status, failure.message)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return axum::response::Redirect::to("/-/signin").into_response();
        }
        let title = match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "Bad request",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            status if status.is_server_error() => "Something went wrong",
            _ => "That did not work",
        };
        let body = html! {
            h1 { (title) }
            p.error role="alert" { (self.message) }
            p { a href="/" { "Back to the repositories" } }
        };
        let mut response = respond(shell(Section::None, title, Nav::Links, body));
        *response.status_mut() = self.status;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(340), "340 ms");
        assert_eq!(duration(1234), "1.2 s");
        assert_eq!(duration(125_000), "2 min 5 s");
    }
}
