//! The body of every failed API call: `{"error": {"code", "message"}}`.
//! `code` is stable and meant for programs (`not_found`, `conflict`, …);
//! `message` is for people and may change.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_body_nests_code_and_message() {
        let body = ErrorBody::new("not_found", "VM x does not exist");
        assert_eq!(
            serde_json::to_value(&body).expect("serialises"),
            serde_json::json!({ "error": { "code": "not_found", "message": "VM x does not exist" } })
        );
    }
}
