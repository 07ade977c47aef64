//! The one error type of every HTTP handler: a status, a stable code and a
//! message for humans, rendered as `{ "error": { "code", "message" } }`.
//! Internal failures are logged with their causes and answered with a
//! generic message, so nothing about the host leaks.

use api_types::{ErrorBody, ErrorCode, FieldError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::{Denied, Scope};
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    fields: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// A `400` for a request with invalid fields: every problem, each under
    /// its field, and all of them in the message.
    pub fn invalid_fields(fields: Vec<FieldError>) -> Self {
        let message = fields
            .iter()
            .map(|problem| format!("{}: {}", problem.field, problem.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            fields,
            ..Self::bad_request(message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// A failure that is the server's fault: logged in full, answered vaguely.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(error = format!("{error:#}"), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the server failed to handle the request; see its log",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        let message = match denied {
            Denied::Scope(Scope::Admin) => "this needs a token with the admin scope".to_owned(),
            Denied::Scope(scope) => format!("this needs a token with the {} scope", scope.as_str()),
            Denied::OtherRepo => "this token is limited to another repository".to_owned(),
        };
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Duplicate => Self::conflict("it already exists"),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = ErrorBody::new(self.code, self.message);
        body.error.fields = self.fields;
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Lets `git` know it may ask for credentials.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"forge\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

/// Turns axum's JSON extraction failures into the common shape.
pub fn json_rejection(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::PayloadTooLarge
    } else {
        ErrorCode::BadRequest
    };
    ApiError::new(rejection.status(), code, rejection.body_text())
}
