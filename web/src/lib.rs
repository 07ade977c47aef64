//! The forge's web UI: server-rendered pages and the static files they use.
//!
//! # How it reaches the forge
//!
//! `web` does not depend on `forge` (that would be a cycle: `forge` mounts
//! `web`). Instead the forge hands [`router`] its own API router, a tower
//! service, and every page calls `/v1/...` in-process with the signed-in
//! user's token ([`api::Api`]). So a page can show and do exactly what the
//! user's token allows through the API, with the same authorisation, the
//! same validation and the same error messages; there is no second path to
//! the data. The in-process call costs a request parse, not a socket.
//!
//! # Sessions
//!
//! A user signs in with a token ([`session`]). The token stays on the
//! server; the browser holds a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie, and every form carries the session's CSRF token.
//! A request that changes something must also come from the forge's own
//! pages: its `Origin` and `Sec-Fetch-Site` are checked ([`origin`]), which
//! stops a sibling subdomain (same site, so the cookie rides along) too.
//! Sessions live in memory: restarting the forge signs everyone out.
//!
//! # Pages
//!
//! Every page lives under `/-/` (an owner cannot be named `-`), except the
//! repository list at `/`, so pages never collide with git's
//! `/{owner}/{name}.git/...` URLs. See [`pages`] for the list.
//!
//! # Live parts
//!
//! Plain JavaScript without a build step (`static/app.js`): the copy
//! button, run logs streamed with server-sent events (ANSI colours turned
//! into styled spans), and the terminal, which is xterm.js (vendored under
//! `static/vendor/`, MIT) talking to `/v1/vms/{id}/terminal` with a one-time
//! ticket. Everything is embedded in the binary: the UI works offline.

#![forbid(unsafe_code)]

pub mod api;
mod assets;
mod badge;
mod highlight;
mod layout;
mod markdown;
pub mod origin;
pub mod pages;
pub mod session;

use axum::Router;
use axum::routing::{get, post};

pub use api::Api;

/// What every handler shares.
#[derive(Clone)]
pub struct Ui {
    pub api: Api,
    pub sessions: session::Sessions,
}

/// The web UI's routes, calling `api` (the forge's API router) in-process.
/// Requests that change something must come from the forge's own pages
/// (`public_url`'s origin, [`origin::refuse_cross_origin`]).
pub fn router(api: Router, public_url: String) -> Router {
    use pages::{branch, github, repos, runs, sandboxes, webhooks};
    let ui = Ui {
        api: Api::new(api),
        sessions: session::Sessions::default(),
    };
    Router::new()
        .route("/", get(repos::list))
        .route("/-/signin", get(session::form).post(session::sign_in))
        .route("/-/signout", post(session::sign_out))
        .route("/-/static/{*file}", get(assets::serve))
        .route("/-/repos", post(repos::create))
        .route("/-/repos/{owner}/{name}", get(repos::show))
        .route("/-/repos/{owner}/{name}/delete", post(repos::delete))
        .route("/-/repos/{owner}/{name}/branch", get(branch::show))
        .route(
            "/-/repos/{owner}/{name}/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/-/repos/{owner}/{name}/webhooks/{id}",
            get(webhooks::show).post(webhooks::update),
        )
        .route(
            "/-/repos/{owner}/{name}/webhooks/{id}/{action}",
            post(webhooks::act),
        )
        .route(
            "/-/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery}",
            get(webhooks::delivery),
        )
        .route(
            "/-/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/-/runs/{id}", get(runs::show))
        .route("/-/runs/{id}/events", get(runs::events))
        .route("/-/runs/{id}/{action}", post(runs::act))
        .route("/-/sandboxes", get(sandboxes::list))
        .route("/-/sandboxes/{id}/terminal", get(sandboxes::terminal))
        .route("/-/sandboxes/{id}/ticket", post(sandboxes::ticket))
        .route("/-/sandboxes/{id}/{action}", post(sandboxes::act))
        .route("/-/github", get(github::show))
        .route("/-/{*rest}", get(layout::no_such_page))
        .with_state(ui)
        .layer(axum::middleware::from_fn_with_state(
            public_url,
            origin::refuse_cross_origin,
        ))
}
