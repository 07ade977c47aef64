//! Signing in with a token, sessions and CSRF protection.
//!
//! - **Sign-in**: the user pastes a token; it is checked with the API
//!   (`GET /v1/system`) and kept on the server in a session.
//! - **Cookie**: `forge_session=<random id>`, `HttpOnly` (scripts cannot
//!   read it), `SameSite=Strict` (no cross-site request carries it),
//!   `Path=/`, and `Secure` when the browser came over HTTPS (its `Origin`
//!   or a proxy's `X-Forwarded-Proto` says so). Sessions expire after
//!   [`SESSION_TTL`].
//! - **CSRF**: each session has a random CSRF token; every form carries it
//!   as `_csrf` and scripts send it as `X-CSRF-Token`; a POST without the
//!   right one is refused. The sign-in form itself is protected by a
//!   double-submit cookie (`forge_signin`), so another site cannot sign a
//!   browser in to its own account.
//! - **Deep links**: a page asked for without a session sends the browser
//!   to `/-/signin?next=<the page>`, and signing in lands there. Only a
//!   path of this site is followed (`/…`, never `//…` or anything a
//!   browser could read as another host): no open redirect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use rand::Rng;

use crate::Ui;
use crate::layout::{self, PageError};

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const SESSION_COOKIE: &str = "forge_session";
const SIGNIN_COOKIE: &str = "forge_signin";

/// A signed-in user's session.
#[derive(Clone)]
struct Session {
    token: String,
    csrf: String,
    started: Instant,
    /// A secret to show once on the next page that asks for it by name
    /// (a webhook's, after create or rotate): one at a time.
    reveal: Option<(String, String)>,
}

/// Every live session, by id.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

/// The signed-in user of a request.
#[derive(Clone)]
pub struct User {
    /// The API token the user signed in with.
    pub token: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// The session's id.
    session: String,
}

impl User {
    /// Refuses a form without this session's CSRF token.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), PageError> {
        match form.get("_csrf") {
            Some(given) if constant_time_eq(given, &self.csrf) => Ok(()),
            _ => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong: reload the page and try again.",
            )),
        }
    }

    /// Refuses a script request without the `X-CSRF-Token` header.
    pub fn check_csrf_header(&self, headers: &HeaderMap) -> Result<(), PageError> {
        match headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
            Some(given) if constant_time_eq(given, &self.csrf) => Ok(()),
            _ => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "The CSRF token is missing or wrong.",
            )),
        }
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` among `headers`' `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

/// Whether the browser reached the forge over HTTPS (directly or through a
/// proxy that says so): then cookies are `Secure` too.
fn over_https(headers: &HeaderMap) -> bool {
    let says_https = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("https"))
    };
    says_https("origin") || says_https("x-forwarded-proto")
}

impl Sessions {
    fn start(&self, token: String) -> (String, Session) {
        let id = random_id();
        let session = Session {
            token,
            csrf: random_id(),
            started: Instant::now(),
            reveal: None,
        };
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.started.elapsed() < SESSION_TTL);
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    /// Keeps `secret` for `user`'s next page that asks for `what` (once).
    pub fn reveal_once(&self, user: &User, what: &str, secret: String) {
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = sessions.get_mut(&user.session) {
            session.reveal = Some((what.to_owned(), secret));
        }
    }

    /// The secret kept for `what`, removed as it is taken.
    pub fn take_revealed(&self, user: &User, what: &str) -> Option<String> {
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get_mut(&user.session)?;
        match session.reveal.take() {
            Some((kept, secret)) if kept == what => Some(secret),
            other => {
                session.reveal = other;
                None
            }
        }
    }

    fn find(&self, id: &str) -> Option<Session> {
        let sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(id)
            .filter(|s| s.started.elapsed() < SESSION_TTL)
            .cloned()
    }

    fn end(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

impl FromRequestParts<Ui> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Response> {
        cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|id| ui.sessions.find(&id).map(|s| (id, s)))
            .map(|(id, s)| User {
                token: s.token,
                csrf: s.csrf,
                session: id,
            })
            .ok_or_else(|| Redirect::to(&signin_url(parts)).into_response())
    }
}

/// Where a request without a session is sent: the sign-in form, told to
/// come back to the page asked for (a GET's) afterwards.
fn signin_url(parts: &Parts) -> String {
    let asked = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match parts.method == axum::http::Method::GET && safe_next(asked) && asked != "/" {
        true => format!("/-/signin?next={}", crate::api::encode(asked)),
        false => "/-/signin".to_owned(),
    }
}

/// Whether `next` is a page of this site to land on after signing in: a
/// path from the root, which no browser reads as another host (`//evil`,
/// `/\evil`), without control characters, not the sign-in or sign-out
/// itself.
fn safe_next(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 2048
        && !next.chars().any(|c| c == '\\' || c.is_control())
        && !next.starts_with("/-/signin")
        && !next.starts_with("/-/signout")
}

/// `?next=` of the sign-in form.
#[derive(serde::Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// `GET /-/signin`.
pub async fn form(headers: HeaderMap, Query(query): Query<Next>) -> Response {
    let nonce = random_id();
    let next = query.next.filter(|n| safe_next(n));
    signin_page(
        &nonce,
        next.as_deref(),
        None,
        StatusCode::OK,
        over_https(&headers),
    )
}

fn signin_page(
    nonce: &str,
    next: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
    secure: bool,
) -> Response {
    let body = html! {
        h1 { "Sign in" }
        p { "Paste an API token of this forge (" code { "forge token create" } " makes one). "
            "It stays on the server; your browser keeps only a session cookie." }
        @if let Some(error) = error { p.error role="alert" { (error) } }
        form method="post" action="/-/signin" {
            input type="hidden" name="_csrf" value=(nonce);
            @if let Some(next) = next { input type="hidden" name="next" value=(next); }
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="off" required autofocus;
            button type="submit" { "Sign in" }
        }
    };
    let mut response = layout::respond(layout::page(layout::Section::None, "Sign in", None, body));
    *response.status_mut() = status;
    if let Ok(value) = set_cookie(SIGNIN_COOKIE, nonce, 3600, secure).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `POST /-/signin`: checks the token with the API, then starts a session.
pub async fn sign_in(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let nonce = cookie(&headers, SIGNIN_COOKIE);
    let given = form.get("_csrf");
    let next = form
        .get("next")
        .map(String::as_str)
        .filter(|n| safe_next(n));
    if nonce.is_none() || nonce.as_ref() != given {
        return signin_page(
            &random_id(),
            next,
            Some("The sign-in form expired: please try again."),
            StatusCode::FORBIDDEN,
            over_https(&headers),
        );
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    // Any answer will do: the call only tells whether the token works.
    if let Err(failure) = ui
        .api
        .get::<serde::de::IgnoredAny>(token, "/v1/system")
        .await
    {
        return signin_page(
            &random_id(),
            next,
            Some(&format!("That token does not work: {}", failure.message)),
            StatusCode::UNAUTHORIZED,
            over_https(&headers),
        );
    }
    let (id, _) = ui.sessions.start(token.to_owned());
    let mut response = Redirect::to(next.unwrap_or("/")).into_response();
    for value in [
        set_cookie(
            SESSION_COOKIE,
            &id,
            SESSION_TTL.as_secs(),
            over_https(&headers),
        ),
        set_cookie(SIGNIN_COOKIE, "", 0, false),
    ] {
        if let Ok(value) = value.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// `POST /-/signout`.
pub async fn sign_out(
    State(ui): State<Ui>,
    user: User,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    user.check_csrf(&form)?;
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        ui.sessions.end(&id);
    }
    let mut response = Redirect::to("/-/signin").into_response();
    if let Ok(value) = set_cookie(SESSION_COOKIE, "", 0, false).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_sites_pages_are_landed_on_after_signing_in() {
        for good in ["/-/runs/4", "/-/repos/acme/app/branch?name=main", "/acme"] {
            assert!(safe_next(good), "{good}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "/\t/evil.example",
            "evil",
            "",
            "/-/signin?next=/x",
            "/-/signout",
        ] {
            assert!(!safe_next(bad), "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; forge_session=abc; b=2".parse().expect("header"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn cookies_are_secure_over_https_only() {
        let mut headers = HeaderMap::new();
        assert!(!set_cookie("a", "b", 1, over_https(&headers)).contains("Secure"));
        headers.insert("origin", "https://forge.example".parse().expect("header"));
        let cookie = set_cookie("a", "b", 1, over_https(&headers));
        assert!(cookie.contains("HttpOnly; SameSite=Strict") && cookie.ends_with("; Secure"));
    }

    #[test]
    fn a_revealed_secret_is_shown_once_and_only_to_its_session() {
        let sessions = Sessions::default();
        let (id, _) = sessions.start("t".into());
        let (other, _) = sessions.start("u".into());
        let user = |session: &str| User {
            token: "t".into(),
            csrf: "c".into(),
            session: session.into(),
        };
        sessions.reveal_once(&user(&id), "hook 1", "whsec_x".into());
        assert_eq!(sessions.take_revealed(&user(&other), "hook 1"), None);
        assert_eq!(sessions.take_revealed(&user(&id), "hook 2"), None);
        assert_eq!(
            sessions.take_revealed(&user(&id), "hook 1").as_deref(),
            Some("whsec_x")
        );
        assert_eq!(sessions.take_revealed(&user(&id), "hook 1"), None);
    }

    #[test]
    fn csrf_tokens_must_match() {
        let user = User {
            token: "t".into(),
            csrf: "secret".into(),
            session: "s".into(),
        };
        let mut form = HashMap::new();
        assert!(user.check_csrf(&form).is_err());
        form.insert("_csrf".into(), "secreT".into());
        assert!(user.check_csrf(&form).is_err());
        form.insert("_csrf".into(), "secret".into());
        assert!(user.check_csrf(&form).is_ok());
    }
}
