//! In-process calls to the forge's JSON API with the signed-in user's
//! token. The forge's router is a tower service; a call builds an ordinary
//! HTTP request, so authentication, authorisation and validation are the
//! API's own.

use api_types::{ErrorBody, FieldError};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    /// The API succeeded but its body is not the contract's type: a page
    /// that tolerates a failed call must still not hide this one.
    pub unreadable: bool,
    /// The API's problems with each field of the request, when it named
    /// them.
    pub fields: Vec<FieldError>,
}

impl Failure {
    fn new(status: StatusCode, message: String) -> Self {
        Self {
            status,
            message,
            unreadable: false,
            fields: Vec::new(),
        }
    }

    /// What the API said of `field`, if anything.
    pub fn field(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|problem| problem.field == field)
            .map(|problem| problem.message.as_str())
    }
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

    /// Sends a request (`body` is JSON) and returns the API's response as
    /// it is (for streams).
    pub async fn raw(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Response {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, accept);
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json)
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

    /// `GET path`, read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, token: &str, path: &str) -> Result<T, Failure> {
        self.call(token, Method::GET, path).await
    }

    /// A request without a body, its answer read as `T` (`()` for no
    /// content).
    pub async fn call<T: DeserializeOwned>(
        &self,
        token: &str,
        method: Method,
        path: &str,
    ) -> Result<T, Failure> {
        let response = self
            .raw(token, method.clone(), path, None, "application/json")
            .await;
        answer(response, &method, path).await
    }

    /// A request with a JSON body, its answer read as `T`.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        let json = serde_json::to_vec(body).map_err(|error| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Writing the request to {method} {path} failed: {error}"),
            )
        })?;
        let response = self
            .raw(token, method.clone(), path, Some(json), "application/json")
            .await;
        answer(response, &method, path).await
    }
}

/// The answer of a call as `T`, or the status and message of its error.
/// An empty body reads as JSON `null`, which `()` and `Option` accept.
async fn answer<T: DeserializeOwned>(
    response: Response,
    method: &Method,
    path: &str,
) -> Result<T, Failure> {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|error| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                format!("Reading the API's answer failed: {error}"),
            )
        })?;
    let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(body) => Failure {
                fields: body.error.fields,
                ..Failure::new(status, body.error.message)
            },
            Err(_) => Failure::new(status, format!("The API answered {status}")),
        });
    }
    serde_json::from_slice(bytes).map_err(|error| Failure {
        unreadable: true,
        ..Failure::new(
            StatusCode::BAD_GATEWAY,
            format!("The API answered {method} {path} with a body this page cannot read: {error}"),
        )
    })
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

    fn response(status: StatusCode, body: &str) -> Response {
        let mut response = Response::new(Body::from(body.to_owned()));
        *response.status_mut() = status;
        response
    }

    #[tokio::test]
    async fn a_body_of_another_shape_is_an_unreadable_failure() {
        let answer = answer::<Vec<api_types::vms::VmView>>(
            response(StatusCode::OK, r#"[{"id": "vm1", "state": "stopped"}]"#),
            &Method::GET,
            "/v1/vms",
        )
        .await;
        let failure = answer.expect_err("not a list of VMs");
        assert!(failure.unreadable);
        assert_eq!(failure.status, StatusCode::BAD_GATEWAY);
        assert!(
            failure
                .message
                .starts_with("The API answered GET /v1/vms with a body this page cannot read"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn no_content_reads_as_unit_and_errors_keep_the_apis_message() {
        answer::<()>(
            response(StatusCode::NO_CONTENT, ""),
            &Method::DELETE,
            "/v1/vms/x",
        )
        .await
        .expect("no content is ()");
        let failure = answer::<()>(
            response(
                StatusCode::NOT_FOUND,
                r#"{"error": {"code": "not_found", "message": "VM x does not exist"}}"#,
            ),
            &Method::DELETE,
            "/v1/vms/x",
        )
        .await
        .expect_err("an error status");
        assert_eq!(failure.status, StatusCode::NOT_FOUND);
        assert_eq!(failure.message, "VM x does not exist");
        assert!(!failure.unreadable);
        let failure = answer::<()>(
            response(StatusCode::BAD_GATEWAY, "upstream"),
            &Method::GET,
            "/",
        )
        .await
        .expect_err("an error status");
        assert_eq!(failure.message, "The API answered 502 Bad Gateway");
    }
}
