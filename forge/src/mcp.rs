//! The forge as an MCP server: its sandbox and git operations as tools an
//! agent's model can call (create, exec, fork, pause, resume a VM; read,
//! write and list its files; create and list repositories; list runs,
//! read their logs, cancel them and run them again).
//!
//! Every tool is one call of the REST API, made with the caller's own
//! token, so the API's checks (scopes, repository limits, quotas) decide
//! what an MCP caller may do, exactly as for any other client:
//!
//! - `forge mcp` serves the tools over stdio and calls a forge over HTTP
//!   with `FORGE_TOKEN`, which must be given (never the data directory's
//!   admin token behind the user's back).
//! - `POST /v1/mcp` serves them over streamable HTTP, stateless (no
//!   session is kept between requests), with the bearer token of each
//!   request; the API is called in process. A request without a valid
//!   token is a `401` before any MCP message is read, one from a browser
//!   page (any `Origin`) is refused, and at most [`MAX_IN_FLIGHT`] are
//!   served at once (`429`).
//!
//! What a tool reads of an answer is bounded ([`MAX_ANSWER_BYTES`], a
//! file's first [`MAX_TEXT_BYTES`]) and what it answers is cut to
//! [`MAX_TEXT_BYTES`] per text, saying so: one call cannot flood the
//! forge's memory or the model's context.

use std::sync::Arc;

use api_types::repos::CreateRepo;
use api_types::vms::{CreateVm, ExecRequest, ForkRequest, PauseRequest, Persistence};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::schemars::JsonSchema;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::ApiError;
use crate::auth::Caller;
use crate::server::AppState;

/// How much of a command's output or a file a tool answers with; the rest
/// is cut (and says so), so one answer cannot flood the model's context.
const MAX_TEXT_BYTES: usize = 256 * 1024;
/// The largest MCP request body `/v1/mcp` reads (a file written through
/// `write_file` among them).
const MAX_REQUEST_BYTES: usize = 8 << 20;
/// The most of an API answer a tool reads (a listing's JSON); the rest is
/// never read. A file is read only as far as [`MAX_TEXT_BYTES`].
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The most of an exec's answer a tool reads: the forge's output limit
/// (4 MiB by default) as JSON, escapes included.
const MAX_EXEC_ANSWER_BYTES: usize = 16 << 20;
/// MCP requests `/v1/mcp` serves at once; one more is a `429`.
const MAX_IN_FLIGHT: usize = 32;

/// The token of the request being served over HTTP (put there by
/// [`authenticate`]).
#[derive(Clone)]
struct CallerToken(String);

/// Where the tools send their API calls.
#[derive(Clone)]
enum Via {
    /// A forge over HTTP, with one token (stdio).
    Remote {
        http: reqwest::Client,
        base: String,
        token: String,
    },
    /// This forge's API router, with each request's own token.
    Local(Router),
}

/// An API call's answer.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    /// The body went on past what was read.
    cut: bool,
}

/// At most `limit` bytes of `body`; whether there was more.
pub(crate) async fn read_capped<E: std::fmt::Display>(
    body: impl futures_util::Stream<Item = Result<bytes::Bytes, E>>,
    limit: usize,
) -> Result<(Vec<u8>, bool), String> {
    use futures_util::StreamExt as _;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("reading the answer failed: {e}"))?;
        let room = limit - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

/// The tools.
#[derive(Clone)]
pub struct ForgeTools {
    via: Via,
}

impl ForgeTools {
    /// Tools calling the forge at `base` with `token`.
    pub fn remote(base: &str, token: String) -> Self {
        Self {
            via: Via::Remote {
                http: reqwest::Client::new(),
                base: base.trim_end_matches('/').to_owned(),
                token,
            },
        }
    }

    fn local(api: Router) -> Self {
        Self {
            via: Via::Local(api),
        }
    }

    /// Serves the tools on stdin and stdout until the client leaves.
    pub async fn serve_stdio(self) -> anyhow::Result<()> {
        use rmcp::ServiceExt as _;
        let running = self.serve(rmcp::transport::stdio()).await?;
        running.waiting().await?;
        Ok(())
    }

    /// One API call; at most `limit` bytes of its answer are read.
    async fn call(
        &self,
        context: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &'static str)>,
        limit: usize,
    ) -> Result<Answer, String> {
        match &self.via {
            Via::Remote { http, base, token } => {
                let mut request = http
                    .request(method, format!("{base}{path}"))
                    .bearer_auth(token);
                if let Some((bytes, content_type)) = body {
                    request = request
                        .header(header::CONTENT_TYPE, content_type)
                        .body(bytes);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| format!("cannot reach the forge at {base}: {e}"))?;
                let status = response.status();
                let (body, cut) = read_capped(response.bytes_stream(), limit).await?;
                Ok(Answer { status, body, cut })
            }
            Via::Local(api) => {
                let token = context
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|parts| parts.extensions.get::<CallerToken>())
                    .ok_or("the request carries no token")?;
                let mut request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::AUTHORIZATION, format!("Bearer {}", token.0));
                let body = match body {
                    Some((bytes, content_type)) => {
                        request = request.header(header::CONTENT_TYPE, content_type);
                        Body::from(bytes)
                    }
                    None => Body::empty(),
                };
                let request = request.body(body).map_err(|e| e.to_string())?;
                let response = api
                    .clone()
                    .oneshot(request)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let stream = response.into_body().into_data_stream();
                let (body, cut) = read_capped(stream, limit).await?;
                Ok(Answer { status, body, cut })
            }
        }
    }

    /// One API call as a tool's result: its JSON (or text), or the API's
    /// error as a tool error the model can read.
    async fn tool_call(
        &self,
        context: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        json: Option<&impl serde::Serialize>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(
            match self
                .call(context, method, path, json_body(json)?, MAX_ANSWER_BYTES)
                .await
            {
                Ok(answer) => result_of(answer),
                Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
            },
        )
    }
}

/// A request body as JSON.
fn json_body(
    value: Option<&impl serde::Serialize>,
) -> Result<Option<(Vec<u8>, &'static str)>, ErrorData> {
    value
        .map(|value| {
            serde_json::to_vec(value)
                .map(|bytes| (bytes, "application/json"))
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))
        })
        .transpose()
}

/// No request body.
const NONE: Option<&()> = None;

/// The tool result of an API answer.
fn result_of(answer: Answer) -> CallToolResult {
    if !answer.status.is_success() {
        let message = serde_json::from_slice::<api_types::ErrorBody>(&answer.body)
            .map(|body| {
                format!(
                    "{} ({}): {}",
                    answer.status, body.error.code, body.error.message
                )
            })
            .unwrap_or_else(|_| {
                format!(
                    "{}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                )
            });
        return CallToolResult::error(vec![ContentBlock::text(message)]);
    }
    if answer.body.is_empty() {
        return CallToolResult::success(vec![ContentBlock::text("done")]);
    }
    if answer.cut {
        return CallToolResult::error(vec![ContentBlock::text(format!(
            "the answer is over {} MiB; ask for less",
            MAX_ANSWER_BYTES >> 20
        ))]);
    }
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(value) => {
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            let mut result = CallToolResult::success(vec![ContentBlock::text(bounded(&text))]);
            if value.is_object() && answer.body.len() <= MAX_TEXT_BYTES {
                result.structured_content = Some(value);
            }
            result
        }
        Err(_) => CallToolResult::success(vec![ContentBlock::text(bounded(
            &String::from_utf8_lossy(&answer.body),
        ))]),
    }
}

/// `text` cut to [`MAX_TEXT_BYTES`] on a character boundary, saying so.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[… {} more bytes cut]", &text[..end], text.len() - end)
}

/// A path segment for the API's URL: ids and names never carry `/`, `.`
/// or `..` that would reach another endpoint.
fn segment(what: &str, value: &str) -> Result<String, ErrorData> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ErrorData::invalid_params(
            format!("{what} {value:?} is not valid"),
            None,
        ))
    }
}

/// `owner/name` as the API's path.
fn repo_path(name: &str) -> Result<String, ErrorData> {
    let (owner, repo) = name
        .split_once('/')
        .ok_or_else(|| ErrorData::invalid_params("a repository is `owner/name`", None))?;
    Ok(format!(
        "/v1/repos/{}/{}",
        segment("owner", owner)?,
        segment("name", repo)?
    ))
}

/// A file path inside a VM as the files endpoint takes it, each segment
/// escaped; `.` and `..` are refused.
fn file_path(path: &str) -> Result<String, ErrorData> {
    let mut out = Vec::new();
    for part in path.trim_start_matches('/').split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(ErrorData::invalid_params(
                format!("{path:?}: empty, `.` and `..` segments are not allowed"),
                None,
            ));
        }
        out.push(escape(part));
    }
    Ok(out.join("/"))
}

fn escape(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CreateVmArgs {
    /// A repository of this forge (`owner/name`) to check out in /workspace.
    repo: Option<String>,
    /// Its branch (the default branch when absent).
    branch: Option<String>,
    /// Keep the VM (paused to disk) when idle instead of deleting it.
    persistent: Option<bool>,
    /// Seconds without use before the VM is paused (persistent) or deleted.
    idle_timeout_secs: Option<u64>,
    /// Memory in MiB.
    mem_mib: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct VmArgs {
    /// The VM's id.
    vm: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ExecArgs {
    /// The VM's id.
    vm: String,
    /// A shell script, run with `sh -c`.
    command: String,
    /// The working directory (the image's default when absent).
    cwd: Option<String>,
    /// Seconds before the command is killed.
    timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ForkArgs {
    /// The VM's id.
    vm: String,
    /// How many copies (1 when absent).
    count: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct PauseArgs {
    /// The VM's id.
    vm: String,
    /// Pause to disk (no CPU, no memory) instead of in memory.
    to_disk: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct FileArgs {
    /// The VM's id.
    vm: String,
    /// The path inside the VM, e.g. `/workspace/src/main.ts`.
    path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct WriteFileArgs {
    /// The VM's id.
    vm: String,
    /// The path inside the VM; missing parent directories are made.
    path: String,
    /// The file's new content, as text.
    content: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CreateRepoArgs {
    /// `owner/name`.
    name: String,
    /// An http(s) git URL to import every branch and tag from.
    import_url: Option<String>,
    /// The default branch.
    default_branch: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct RepoArgs {
    /// `owner/name`.
    repo: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct RunArgs {
    /// The run's id.
    run: i64,
}

#[tool_router]
impl ForgeTools {
    #[tool(
        description = "Create a sandbox VM, optionally with a checkout of one of the forge's repositories in /workspace. Answers the VM (its `id` names it in the other tools)."
    )]
    async fn create_vm(
        &self,
        Parameters(args): Parameters<CreateVmArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = CreateVm {
            repo: args.repo,
            branch: args.branch,
            persistence: args.persistent.map(Persistence::of),
            idle_timeout_secs: args.idle_timeout_secs,
            mem_mib: args.mem_mib,
            ..CreateVm::default()
        };
        self.tool_call(&context, Method::POST, "/v1/vms", Some(&body))
            .await
    }

    #[tool(description = "List the sandbox VMs this token may see.")]
    async fn list_vms(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.tool_call(&context, Method::GET, "/v1/vms", NONE).await
    }

    #[tool(
        description = "Run a shell command in a VM (a paused VM is resumed first) and answer its exit code, stdout and stderr."
    )]
    async fn exec(
        &self,
        Parameters(args): Parameters<ExecArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let vm = segment("vm", &args.vm)?;
        let body = ExecRequest {
            command: Some(args.command),
            cwd: args.cwd,
            timeout_secs: args.timeout_secs,
            ..ExecRequest::default()
        };
        let path = format!("/v1/vms/{vm}/exec");
        let answer = match self
            .call(
                &context,
                Method::POST,
                &path,
                json_body(Some(&body))?,
                MAX_EXEC_ANSWER_BYTES,
            )
            .await
        {
            Ok(answer) => answer,
            Err(message) => return Ok(CallToolResult::error(vec![ContentBlock::text(message)])),
        };
        if !answer.status.is_success() {
            return Ok(result_of(answer));
        }
        if answer.cut {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "the command ran, but its answer is over {} MiB: send big output to a file and read it in parts",
                MAX_EXEC_ANSWER_BYTES >> 20
            ))]));
        }
        let mut output: api_types::vms::ExecOutput = serde_json::from_slice(&answer.body)
            .map_err(|e| ErrorData::internal_error(format!("the exec answer: {e}"), None))?;
        output.stdout = bounded(&output.stdout);
        output.stderr = bounded(&output.stderr);
        let text = format!(
            "exit code {}{}\n--- stdout\n{}\n--- stderr\n{}",
            output.exit.exit_code,
            if output.exit.timed_out {
                " (timed out)"
            } else {
                ""
            },
            output.stdout,
            output.stderr,
        );
        let mut result = if output.exit.exit_code == 0 {
            CallToolResult::success(vec![ContentBlock::text(text)])
        } else {
            CallToolResult::error(vec![ContentBlock::text(text)])
        };
        result.structured_content = serde_json::to_value(&output).ok();
        Ok(result)
    }

    #[tool(
        description = "Fork a running VM into `count` copies (memory and disk, copy-on-write). Answers the copies."
    )]
    async fn fork_vm(
        &self,
        Parameters(args): Parameters<ForkArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let vm = segment("vm", &args.vm)?;
        let body = ForkRequest {
            count: Some(args.count.unwrap_or(1)),
            ..ForkRequest::default()
        };
        self.tool_call(
            &context,
            Method::POST,
            &format!("/v1/vms/{vm}/fork"),
            Some(&body),
        )
        .await
    }

    #[tool(
        description = "Pause a VM, in memory or (to_disk) to disk where it costs no CPU or memory."
    )]
    async fn pause_vm(
        &self,
        Parameters(args): Parameters<PauseArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let vm = segment("vm", &args.vm)?;
        let body = PauseRequest {
            to_disk: args.to_disk.unwrap_or(false),
        };
        self.tool_call(
            &context,
            Method::POST,
            &format!("/v1/vms/{vm}/pause"),
            Some(&body),
        )
        .await
    }

    #[tool(description = "Resume a paused VM where it stopped.")]
    async fn resume_vm(
        &self,
        Parameters(args): Parameters<VmArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let vm = segment("vm", &args.vm)?;
        self.tool_call(
            &context,
            Method::POST,
            &format!("/v1/vms/{vm}/resume"),
            NONE,
        )
        .await
    }

    #[tool(description = "Delete a VM and its disk.")]
    async fn delete_vm(
        &self,
        Parameters(args): Parameters<VmArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let vm = segment("vm", &args.vm)?;
        self.tool_call(&context, Method::DELETE, &format!("/v1/vms/{vm}"), NONE)
            .await
    }

    #[tool(description = "Read a file of a VM as text (invalid UTF-8 replaced; long files cut).")]
    async fn read_file(
        &self,
        Parameters(args): Parameters<FileArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let path = format!(
            "/v1/vms/{}/files/{}",
            segment("vm", &args.vm)?,
            file_path(&args.path)?
        );
        match self
            .call(&context, Method::GET, &path, None, MAX_TEXT_BYTES)
            .await
        {
            Ok(answer) if answer.status.is_success() => {
                let mut text = bounded(&String::from_utf8_lossy(&answer.body));
                if answer.cut {
                    text.push_str("\n[… the file goes on: read the rest with exec, e.g. tail -c]");
                }
                Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
            }
            Ok(answer) => Ok(result_of(answer)),
            Err(message) => Ok(CallToolResult::error(vec![ContentBlock::text(message)])),
        }
    }

    #[tool(description = "Write a text file in a VM (atomically; parent directories are made).")]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let path = format!(
            "/v1/vms/{}/files/{}",
            segment("vm", &args.vm)?,
            file_path(&args.path)?
        );
        let body = Some((args.content.into_bytes(), "application/octet-stream"));
        Ok(
            match self
                .call(&context, Method::PUT, &path, body, MAX_ANSWER_BYTES)
                .await
            {
                Ok(answer) => result_of(answer),
                Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
            },
        )
    }

    #[tool(description = "List a directory of a VM: each entry's name, kind and size.")]
    async fn list_files(
        &self,
        Parameters(args): Parameters<FileArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let dir = if args.path.trim_matches('/').is_empty() {
            String::new()
        } else {
            format!("{}/", file_path(args.path.trim_end_matches('/'))?)
        };
        let path = format!("/v1/vms/{}/files/{dir}", segment("vm", &args.vm)?);
        self.tool_call(&context, Method::GET, &path, NONE).await
    }

    #[tool(
        description = "Create a git repository on the forge, empty or imported from an http(s) URL."
    )]
    async fn create_repo(
        &self,
        Parameters(args): Parameters<CreateRepoArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = CreateRepo {
            name: args.name,
            default_branch: args.default_branch,
            import_url: args.import_url,
        };
        self.tool_call(&context, Method::POST, "/v1/repos", Some(&body))
            .await
    }

    #[tool(description = "List the forge's git repositories this token may see.")]
    async fn list_repos(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.tool_call(&context, Method::GET, "/v1/repos", NONE)
            .await
    }

    #[tool(
        description = "List a repository's pipeline runs (lint and tests of each push), newest first."
    )]
    async fn list_runs(
        &self,
        Parameters(args): Parameters<RepoArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let path = format!("{}/runs", repo_path(&args.repo)?);
        self.tool_call(&context, Method::GET, &path, NONE).await
    }

    #[tool(
        description = "Read a run's logs: every step's output under a `== name (state) ==` line."
    )]
    async fn run_logs(
        &self,
        Parameters(args): Parameters<RunArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.tool_call(
            &context,
            Method::GET,
            &format!("/v1/runs/{}/logs", args.run),
            NONE,
        )
        .await
    }

    #[tool(description = "Cancel a queued or running pipeline run: its running step is killed.")]
    async fn cancel_run(
        &self,
        Parameters(args): Parameters<RunArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.tool_call(
            &context,
            Method::POST,
            &format!("/v1/runs/{}/cancel", args.run),
            NONE,
        )
        .await
    }

    #[tool(
        description = "Run a pipeline run again: a new run of the same commit with the same steps. Answers the new run."
    )]
    async fn rerun(
        &self,
        Parameters(args): Parameters<RunArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.tool_call(
            &context,
            Method::POST,
            &format!("/v1/runs/{}/rerun", args.run),
            NONE,
        )
        .await
    }
}

#[tool_handler(
    name = "forge",
    instructions = "Sandboxes (VMs) you can create, run commands in, fork, pause and resume; their files; and the forge's git repositories and pipeline runs."
)]
impl rmcp::ServerHandler for ForgeTools {}

/// `/v1/mcp`: the tools over streamable HTTP, calling `api` in process
/// with each request's token.
pub fn http_service(api: Router, state: AppState) -> Router {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_REQUEST_BYTES)
        // Any host name may reach the forge; each request is authenticated
        // instead. No browser page may call it.
        .disable_allowed_hosts()
        .enforce_origin_validation();
    let tools = ForgeTools::local(api);
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let gate = Gate {
        state,
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    };
    Router::new()
        .route("/v1/mcp", axum::routing::any_service(service))
        .layer(axum::middleware::from_fn_with_state(gate, authenticate))
}

/// What [`authenticate`] checks against.
#[derive(Clone)]
struct Gate {
    state: AppState,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Refuses a request without a valid token (`401`, the API's error shape)
/// and one past [`MAX_IN_FLIGHT`] (`429`), and hands the token to the
/// tools.
async fn authenticate(
    State(gate): State<Gate>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts,
        &gate.state,
    )
    .await?;
    let Ok(_permit) = gate.in_flight.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            api_types::ErrorCode::Capacity,
            format!("{MAX_IN_FLIGHT} MCP requests are in flight; try again shortly"),
        ));
    };
    let token = crate::api::presented_secret(&parts)?.unwrap_or_default();
    parts.extensions.insert(CallerToken(token));
    Ok(next.run(Request::from_parts(parts, body)).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_their_endpoint() {
        assert_eq!(file_path("/tmp/a b/c.txt").unwrap(), "tmp/a%20b/c.txt");
        for bad in ["../etc/passwd", "/tmp/../x", "a//b", "./x", ""] {
            assert!(file_path(bad).is_err(), "{bad:?}");
        }
        assert!(segment("vm", "sb123").is_ok());
        for bad in ["..", ".", "a/b", "x?y", "%2e%2e", ""] {
            assert!(segment("vm", bad).is_err(), "{bad:?}");
        }
        assert_eq!(repo_path("acme/app").unwrap(), "/v1/repos/acme/app");
        assert!(repo_path("acme/../tokens").is_err());
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT_BYTES);
        let cut = bounded(&text);
        assert!(cut.len() < text.len() && cut.ends_with("more bytes cut]"));
        assert_eq!(bounded("short"), "short");
    }
}
