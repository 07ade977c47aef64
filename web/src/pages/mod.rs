//! The pages, one module per resource. Each handler reads what it shows
//! through the API ([`crate::api::Api`]) with the user's token and renders
//! it with maud; each form posts back here, is checked for its CSRF token,
//! and calls the API.
//!
//! | page | path |
//! | --- | --- |
//! | repositories (list, create) | `/` |
//! | repository (clone URL, branches with sandbox, last run, head; delete) | `/-/repos/{owner}/{name}` |
//! | branch (files, runs, sandbox buttons, preview) | `/-/repos/{owner}/{name}/branch?name=&path=` |
//! | run (steps, live logs) | `/-/runs/{id}` |
//! | sandboxes (fork tree, actions) | `/-/sandboxes` |
//! | terminal | `/-/sandboxes/{id}/terminal` |
//! | webhooks (list, create, edit, deliveries, redeliver) | `/-/repos/{owner}/{name}/webhooks` |
//! | GitHub (installation, sync state) | `/-/github` |

pub mod branch;
pub mod github;
pub mod repos;
pub mod runs;
pub mod sandboxes;
pub mod webhooks;

use std::collections::HashMap;

use serde_json::Value;

use crate::api::{Api, encode};
use crate::layout::PageError;
use crate::session::User;

/// A submitted form's fields.
pub type Fields = HashMap<String, String>;

/// The text of a JSON string field, or "".
pub fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

/// Every VM the user may see (empty when sandboxes are unavailable).
pub async fn visible_vms(api: &Api, user: &User) -> Vec<Value> {
    match api.get(&user.token, "/v1/vms").await {
        Ok(Value::Array(vms)) => vms,
        _ => Vec::new(),
    }
}

/// The branch's sandbox: the newest VM of that repository and branch.
pub fn branch_vm<'a>(vms: &'a [Value], repo: &str, branch: &str) -> Option<&'a Value> {
    vms.iter()
        .filter(|vm| text(vm, "repo") == repo && text(vm, "branch") == branch)
        .max_by(|a, b| text(a, "created_at").cmp(text(b, "created_at")))
}

/// The API path of a repository.
pub fn repo_api(owner: &str, name: &str) -> String {
    format!("/v1/repos/{}/{}", encode(owner), encode(name))
}

/// The page path of a repository.
pub fn repo_page(owner: &str, name: &str) -> String {
    format!("/-/repos/{}/{}", encode(owner), encode(name))
}

/// The page of a branch.
pub fn branch_page(full_name: &str, branch: &str) -> String {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, ""));
    format!("{}/branch?name={}", repo_page(owner, name), encode(branch))
}

/// A list of the API's items, or an error page.
pub fn items(value: Value) -> Result<Vec<Value>, PageError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(PageError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            format!("The API answered with something that is not a list: {other}"),
        )),
    }
}
