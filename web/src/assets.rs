//! Static files, embedded in the binary so the forge serves its UI offline:
//! the style sheet, the page script, and xterm.js (vendored from the npm
//! package `@xterm/xterm` 6.0.0, MIT licence in `vendor/xterm-LICENSE`)
//! with its fit addon (`@xterm/addon-fit` 0.11.0, MIT licence in
//! `vendor/xterm-addon-fit-LICENSE`).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (path, content type, bytes)
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../static/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/app.js"),
    ),
    (
        "vendor/xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/vendor/xterm.js"),
    ),
    (
        "vendor/xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("../static/vendor/xterm.css"),
    ),
    (
        "vendor/xterm-addon-fit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/vendor/xterm-addon-fit.js"),
    ),
    (
        "vendor/xterm-addon-fit-LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../static/vendor/xterm-addon-fit-LICENSE"),
    ),
    (
        "vendor/xterm-LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../static/vendor/xterm-LICENSE"),
    ),
];

/// `GET /-/static/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(path, _, _)| *path == file) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
