//! `/v1/templates`: images built from a spec, which VMs start from
//! (`POST /v1/vms {"template"}`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::snapshots::SnapshotView;
use crate::states::TemplateState;
use crate::vms::DevServerSpec;

/// The only base a template builds on today.
pub const DEFAULT_BASE: &str = "debian-bookworm";

/// `POST /v1/templates`: what to build. Every list runs in this order:
/// `apt`, `pip`, `npm`, then `run`; all of it in a sandbox, whose downloads
/// go through the egress proxy and its allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Letters, digits, `.`, `_`, `-` (at most 63).
    pub name: String,
    /// `debian-bookworm` (the forge's own image, with git, Node.js, npm and
    /// Bun) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Debian packages (`apt-get install --no-install-recommends`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apt: Vec<String>,
    /// npm packages installed globally (`npm install -g`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub npm: Vec<String>,
    /// Python packages (`pip install`; Debian's `python3-pip` is added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip: Vec<String>,
    /// Shell commands (`/bin/sh -c`), run in `workdir`, each must succeed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<String>,
    /// Environment of the build's commands and of every VM from it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// An absolute path: created, the build's `run` and `start` commands
    /// run there, and so do a VM's commands that name no `cwd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// A server every VM from the template runs: started and watched as a
    /// dev server, or, with `warm`, already running when the VM starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DevServerSpec>,
    /// Boot once, run `start` until its port answers, and keep that
    /// (memory and processes) as the image: VMs answer on the port at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// Sandboxes from this template to keep created and paused, handed
    /// out by creates at once (at most 50; `--warm-pool <name>=N` may ask
    /// for more). Not part of what builds: changing it rebuilds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<usize>,
    /// Sizes of the build and of every VM from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
}

/// A template as every template endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateView {
    pub name: String,
    pub spec: TemplateSpec,
    /// The hash of what the spec builds (not its name): one build per hash.
    pub spec_hash: String,
    pub state: TemplateState,
    /// On `POST`: an earlier build of the same spec is used, nothing builds.
    #[serde(default)]
    pub reused: bool,
    /// Why the build failed.
    pub error: Option<String>,
    pub build_ms: Option<u64>,
    /// The image, once built.
    pub snapshot: Option<SnapshotView>,
    pub created_at: String,
    pub updated_at: String,
}

/// One step of a build, as `GET /v1/templates/{name}/build?follow=true`
/// sends it (`event: step`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildStep {
    /// From 1.
    pub index: u32,
    pub total: u32,
    pub name: String,
}

/// Output of a build, as `GET /v1/templates/{name}/build?follow=true`
/// sends it (`event: log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildLog {
    pub text: String,
}

/// `GET /v1/templates/{name}/build`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildQuery {
    /// Stream the build as server-sent events until it ends: the log so
    /// far, then `step`, `log` and finally `done` (the template).
    #[serde(default)]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_needs_only_a_name_and_refuses_unknown_fields() {
        let spec: TemplateSpec = serde_json::from_str(r#"{"name":"py"}"#).unwrap();
        assert_eq!(spec.name, "py");
        assert!(spec.apt.is_empty() && !spec.warm);
        assert_eq!(serde_json::to_string(&spec).unwrap(), r#"{"name":"py"}"#);
        assert!(serde_json::from_str::<TemplateSpec>(r#"{"name":"py","apk":[]}"#).is_err());
    }
}
