//! In-process calls to the forge's JSON API with the signed-in user's
//! token. The forge's router is a tower service; a call builds an ordinary
//! HTTP request, so authentication, authorisation and validation are the
//! API's own.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use tower::ServiceExt;

/// Largest API answer a page reads.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The forge's API, called in-process.
#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// An API call that did not succeed: the status and the API's message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

impl Api {
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    /// Sends a request and returns the API's response as it is (for
    /// streams).
    pub async fn raw(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        accept: &str,
    ) -> Response {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, accept);
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(value.to_string())
            }
            None => Body::empty(),
        };
        let request = match request.body(body) {
            Ok(request) => request,
            Err(error) => return failure_response(&error.to_string()),
        };
        match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// Calls the API and returns its JSON answer (`Null` for no content),
    /// or the status and message of its error.
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let response = self
            .raw(token, method, path, body, "application/json")
            .await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|error| Failure {
                status: StatusCode::BAD_GATEWAY,
                message: format!("Reading the API's answer failed: {error}"),
            })?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("The API answered {status}"));
            Err(Failure { status, message })
        }
    }

    pub async fn get(&self, token: &str, path: &str) -> Result<Value, Failure> {
        self.call(token, Method::GET, path, None).await
    }

    pub async fn post(&self, token: &str, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(token, Method::POST, path, Some(body)).await
    }
}

fn failure_response(message: &str) -> Response {
    let mut response = Response::new(Body::from(message.to_owned()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// Percent-encodes a query-string or path component.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode("feature/x y&z"), "feature%2Fx%20y%26z");
        assert_eq!(encode("main"), "main");
    }
}
