//! The pages, one module per resource. Each handler reads what it shows
//! through the API ([`crate::api::Api`]) with the user's token and renders
//! it with maud; each form posts back here, is checked for its CSRF token,
//! and calls the API.
//!
//! | page | path |
//! | --- | --- |
//! | repositories (list, create) | `/` |
//! | repository (quick setup when empty; clone URL, files and README of the default branch, branches with sandbox, last run, head; delete) | `/-/repos/{owner}/{name}` |
//! | branch (files with README, highlighted file view, runs, sandbox buttons, forks, preview) | `/-/repos/{owner}/{name}/branch?name=&path=` |
//! | run (commit, times, steps, live logs, cancel, re-run) | `/-/runs/{id}` |
//! | sandboxes (fork tree, actions) | `/-/sandboxes` |
//! | terminal | `/-/sandboxes/{id}/terminal` |
//! | webhooks (list, create, edit, deliveries, redeliver) | `/-/repos/{owner}/{name}/webhooks` |
//! | GitHub (installation, sync state) | `/-/github` |

pub mod branch;
pub mod files;
pub mod github;
pub mod repos;
pub mod runs;
pub mod sandboxes;
pub mod webhooks;

use std::collections::HashMap;

use api_types::repos::BranchView;
use api_types::vms::VmView;

use crate::api::{Api, Failure, encode};
use crate::session::User;

/// A submitted form's fields.
pub type Fields = HashMap<String, String>;

/// Every VM the user may see: empty when the API refuses the list (the
/// page still shows the rest), an error when it answers something else
/// than VMs.
pub async fn visible_vms(api: &Api, user: &User) -> Result<Vec<VmView>, Failure> {
    match api.get(&user.token, "/v1/vms").await {
        Ok(vms) => Ok(vms),
        Err(failure) if failure.unreadable => Err(failure),
        Err(_) => Ok(Vec::new()),
    }
}

/// The branch's sandbox, the one its pipelines use (`BranchView.sandbox`),
/// among the VMs the user sees. Its forks carry the same repository and
/// branch but are never it.
pub fn branch_vm<'a>(vms: &'a [VmView], branch: &BranchView) -> Option<&'a VmView> {
    let id = branch.sandbox.as_deref()?;
    vms.iter().find(|vm| vm.id == id)
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
