//! The OpenAPI 3.1 document of the API, built from the same handlers the
//! router serves: each handler carries its `#[utoipa::path]` and is
//! registered with `routes!`, so a route cannot exist without its entry or
//! the other way round. The request and response bodies are the types of
//! `api-types`, which derive their schemas.
//!
//! The document is served at `GET /v1/openapi.json` and committed as
//! `sdk/openapi.json`, where the SDKs' types come from; a test fails when
//! the two differ (`FORGE_WRITE_OPENAPI=1 cargo test -p forge openapi`
//! rewrites the file).
//!
//! What the attributes do not say is added here: the token scheme, the
//! error responses every authenticated endpoint can give, and those of the
//! sandbox endpoints.

use std::sync::OnceLock;

use api_types::ErrorCode;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr};
use utoipa::{IntoParams, Modify};

/// The parts of the document no handler owns.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "forge",
        description = "A self-hosted git forge where every branch has a sandbox. \
            Authenticate with `Authorization: Bearer <token>`; every failure answers \
            `{\"error\": {\"code\", \"message\"}}` (see `ErrorBody`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    security(("token" = [])),
    tags(
        (name = "vms", description = "Sandboxes: create, exec, fork, pause, resume, files, ports, terminal"),
        (name = "repos", description = "Repositories, branches, contents and the event feed"),
        (name = "snapshots", description = "Named snapshots of VMs, which new VMs start from"),
        (name = "templates", description = "Images built from a spec, which new VMs start from"),
        (name = "runs", description = "Pipeline runs and their logs"),
        (name = "webhooks", description = "Outgoing webhooks and their deliveries"),
        (name = "github", description = "The GitHub App: linked repositories and incoming events"),
        (name = "tokens", description = "API tokens"),
        (name = "nodes", description = "Sandbox nodes: hosts that run sandboxes for the control plane"),
        (name = "git", description = "Git's smart HTTP protocol, for `git clone`, `fetch` and `push`"),
        (name = "system", description = "The server itself"),
    ),
    components(schemas(
        ErrorCode,
        api_types::vms::ExecText,
        api_types::vms::ExecExit,
        api_types::vms::ExecFailure,
        api_types::runs::StepEvent,
        api_types::runs::LogEvent,
        api_types::runs::RunEnd,
        api_types::templates::BuildStep,
        api_types::templates::BuildLog,
    )),
    modifiers(&Conventions),
)]
struct Skeleton;

/// Raw bytes (a file's content): a string of any bytes in the document.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, content_media_type = "application/octet-stream")]
pub struct Bytes(#[allow(dead_code, reason = "a schema, never built")] Vec<u8>);

/// `{owner}/{name}` of a repository.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct RepoPath {
    /// The repository's owner.
    pub owner: String,
    /// The repository's name.
    pub name: String,
}

/// A repository in git's URLs: `{owner}/{name}.git`.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct GitRepoPath {
    /// The repository's owner.
    pub owner: String,
    /// The repository's name, with or without `.git`.
    pub name: String,
}

/// A sandbox's id.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct VmPath {
    /// The VM's id.
    pub id: String,
}

/// A snapshot, by name or id.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct SnapshotPath {
    /// The snapshot's name or id.
    pub key: String,
}

/// A template, by name.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct TemplatePath {
    /// The template's name.
    pub name: String,
}

/// A path inside a VM.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct FilePath {
    /// The VM's id.
    pub id: String,
    /// The path from the VM's root, `/` not repeated; `..` is refused.
    pub path: String,
}

/// A VM's TCP port.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct PortPath {
    /// The VM's id.
    pub id: String,
    pub port: u16,
}

/// A webhook of a repository.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct WebhookPath {
    pub owner: String,
    pub name: String,
    /// The webhook's id.
    pub id: String,
}

/// One delivery of a webhook.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct DeliveryPath {
    pub owner: String,
    pub name: String,
    /// The webhook's id.
    pub id: String,
    /// The delivery's id.
    pub delivery_id: String,
}

/// A forge-wide webhook.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by name; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct ForgeWebhookPath {
    /// The webhook's id.
    pub id: String,
}

/// One delivery of a forge-wide webhook.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by name; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct ForgeDeliveryPath {
    /// The webhook's id.
    pub id: String,
    /// The delivery's id.
    pub delivery_id: String,
}

/// The name of the error response every authenticated endpoint refers to.
const ERROR: &str = "Error";

/// Adds what every operation shares: the token scheme, the common error
/// responses, the sandbox errors on `/v1/vms`, and `{path}` for axum's
/// catch-all `{*path}` in path templates.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components
            .responses
            .insert(ERROR.to_owned(), error_response());
        let paths = std::mem::take(&mut openapi.paths.paths);
        for (template, mut item) in paths {
            let sandbox = template.starts_with("/v1/vms");
            for operation in operations(&mut item) {
                let public = operation
                    .security
                    .as_ref()
                    .is_some_and(|requirements| requirements.iter().all(is_empty_requirement));
                if public {
                    continue;
                }
                let mut codes = vec!["400", "401", "403", "404", "500"];
                if sandbox {
                    codes.extend(["413", "429", "502", "503", "504"]);
                }
                for code in codes {
                    operation
                        .responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(ERROR)));
                }
            }
            openapi
                .paths
                .paths
                .insert(template.replace("{*", "{"), item);
        }
    }
}

fn is_empty_requirement(requirement: &utoipa::openapi::security::SecurityRequirement) -> bool {
    serde_json::to_value(requirement)
        .is_ok_and(|value| value.as_object().is_some_and(|o| o.is_empty()))
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn error_response() -> RefOr<Response> {
    let codes: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|code| format!("`{code}`"))
        .collect();
    RefOr::T(
        ResponseBuilder::new()
            .description(format!(
                "The request failed; `error.code` is one of {}",
                codes.join(", ")
            ))
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build(),
    )
}

/// The whole document: the handlers' entries over the skeleton.
pub fn document(handlers: OpenApi) -> OpenApi {
    let mut document = <Skeleton as utoipa::OpenApi>::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document.merge(handlers);
    Conventions.modify(&mut document);
    document
}

/// The document as `sdk/openapi.json` holds it.
pub fn render(document: &OpenApi) -> String {
    let mut text = document
        .to_pretty_json()
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"));
    text.push('\n');
    text
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "system",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> impl IntoResponse {
    static RENDERED: OnceLock<String> = OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        RENDERED.get_or_init(|| render(&super::openapi())).as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/openapi.json")
    }

    #[test]
    fn the_committed_openapi_document_is_current() {
        let generated = render(&super::super::openapi());
        let path = committed_path();
        if std::env::var_os("FORGE_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("writes sdk/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "sdk/openapi.json differs from what the code generates; run \
             `FORGE_WRITE_OPENAPI=1 cargo test -p forge openapi` and commit the file"
        );
    }
}
