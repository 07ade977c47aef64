//! Where a browser's request comes from.
//!
//! A request a browser sends on its own (with the session cookie, or
//! opening a WebSocket) may come from another page: another site, a
//! sibling subdomain (same-site, so `SameSite=Strict` cookies still ride
//! along) or a sandboxed preview (origin `null`). [`same_origin`] accepts
//! only the forge's own pages; [`refuse_cross_origin`] applies it, with the
//! browser's `Sec-Fetch-Site`, to every request that changes something.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Whether `headers` carry no `Origin` or the forge's own: the origin of
/// `public_url`, or the scheme-less `Host` the request was sent to.
pub fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if origin.eq_ignore_ascii_case(public_origin(public_url)) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
}

/// `scheme://host[:port]` of a URL.
pub fn public_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// Whether a request with these headers may change something: its
/// `Origin`, if any, is the forge's, and the browser does not say it came
/// from another page (`Sec-Fetch-Site` other than `same-origin` or `none`,
/// the latter being a typed URL or a bookmark).
pub fn may_change(headers: &HeaderMap, public_url: &str) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or("cross-site"));
    same_origin(headers, public_url) && matches!(fetch_site, None | Some("same-origin" | "none"))
}

/// Middleware: refuses (`403`) a request that would change something
/// (any method but GET, HEAD and OPTIONS) sent from another origin.
pub async fn refuse_cross_origin(
    State(public_url): State<String>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if safe || may_change(request.headers(), &public_url) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        "This request came from another site's page (its Origin is not the forge's), so it was refused.\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn only_the_forges_own_origin_is_the_same() {
        let public = "https://forge.example.com/";
        for (origin, host, allowed) in [
            (None, "forge.example.com", true),
            (Some("https://forge.example.com"), "internal:7070", true),
            (Some("https://FORGE.example.com/"), "internal:7070", true),
            (Some("http://127.0.0.1:7070"), "127.0.0.1:7070", true),
            (Some("https://evil.example"), "forge.example.com", false),
            (
                Some("https://forge.example.com.evil.example"),
                "forge.example.com",
                false,
            ),
            (Some("null"), "forge.example.com", false),
            (Some("http://127.0.0.1:7071"), "127.0.0.1:7070", false),
        ] {
            let mut pairs = vec![("host", host)];
            pairs.extend(origin.map(|o| ("origin", o)));
            assert_eq!(
                same_origin(&headers(&pairs), public),
                allowed,
                "Origin {origin:?}, Host {host}"
            );
        }
        assert_eq!(
            public_origin("http://127.0.0.1:7070"),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            public_origin("https://a.example/forge/"),
            "https://a.example"
        );
    }

    #[test]
    fn sibling_subdomains_and_other_sites_may_not_change_anything() {
        let public = "https://forge.example.com";
        let own = ("origin", "https://forge.example.com");
        for (pairs, allowed) in [
            (vec![own], true),
            (vec![own, ("sec-fetch-site", "same-origin")], true),
            (vec![("sec-fetch-site", "none")], true),
            (vec![], true),
            // A page on preview.example.com: same site, not same origin.
            (vec![("sec-fetch-site", "same-site")], false),
            (vec![own, ("sec-fetch-site", "same-site")], false),
            (vec![("sec-fetch-site", "cross-site")], false),
            (vec![("origin", "null")], false),
            (vec![("origin", "https://preview.example.com")], false),
        ] {
            let mut pairs = pairs;
            pairs.push(("host", "forge.example.com"));
            assert_eq!(may_change(&headers(&pairs), public), allowed, "{pairs:?}");
        }
    }
}
