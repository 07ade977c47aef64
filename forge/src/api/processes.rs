//! `/v1/vms/{id}/processes`: background processes of a VM. They run
//! detached from the request that started them; the VM's agent keeps each
//! one's output (the last MiB, stdout and stderr as they came), which a
//! client reads whole or follows as server-sent events. Who may: whoever
//! may use the VM (`vms::owned`).

use std::convert::Infallible;

use api_types::vms::{ExecText, ProcessState, ProcessView, SignalRequest, StartProcess};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::openapi::VmPath;
use super::vms::{command_of, owned};
use super::{ApiError, Body, created};
use crate::auth::Caller;
use crate::server::AppState;

fn view(info: agent_proto::ProcessInfo) -> ProcessView {
    let started_at = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(info.started_unix_ms) * 1_000_000,
    )
    .ok()
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default();
    ProcessView {
        pid: info.pid,
        command: info.command,
        state: match info.exit {
            Some(_) => ProcessState::Exited,
            None => ProcessState::Running,
        },
        exit_code: info.exit.map(|status| status.code()),
        started_at,
        output_bytes: info.output_bytes,
        output_dropped: info.output_dropped,
    }
}

/// A VM's id and a process's pid.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[allow(
    dead_code,
    reason = "the handlers read these by position; the struct names them for the document"
)]
#[into_params(parameter_in = Path)]
pub struct ProcessPath {
    /// The VM's id.
    id: String,
    /// The process's pid, as the VM sees it.
    pid: u32,
}

/// Starts a background process in the VM (a paused VM is resumed first).
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/processes",
    tag = "vms",
    operation_id = "startProcess",
    params(VmPath),
    request_body = StartProcess,
    responses((status = 201, description = "The process, running", body = ProcessView)),
)]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<StartProcess>,
) -> Result<(StatusCode, Json<ProcessView>), ApiError> {
    let row = owned(&state, &caller, &id).await?;
    let command = command_of(
        request.command,
        request.argv,
        request.env,
        request.cwd.or(row.workdir),
    )?;
    let pid = state.sandboxes.spawn(&id, command).await?;
    let started = state
        .sandboxes
        .processes(&id)
        .await?
        .into_iter()
        .find(|process| process.pid == pid)
        .ok_or_else(|| ApiError::not_found(format!("process {pid} is already gone")))?;
    Ok(created(view(started)))
}

/// The VM's background processes, oldest first, running or exited.
#[utoipa::path(
    get,
    path = "/v1/vms/{id}/processes",
    tag = "vms",
    operation_id = "listProcesses",
    params(VmPath),
    responses((status = 200, description = "The background processes", body = Vec<ProcessView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<ProcessView>>, ApiError> {
    owned(&state, &caller, &id).await?;
    let processes = state.sandboxes.processes(&id).await?;
    Ok(Json(processes.into_iter().map(view).collect()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// From this byte of everything the process printed (0 when absent).
    #[serde(default)]
    offset: u64,
}

/// Longest a plain (not followed) read of a process's output may be: the
/// ring the agent keeps, plus slack.
const MAX_PLAIN_LOG_BYTES: usize = 2 << 20;

/// How long a plain read may take in all.
const PLAIN_LOG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The text of `chunk` after the bytes `carry` kept, keeping in `carry` a
/// character the chunk cut in half (it ends in the next one).
fn text_of(carry: &mut Vec<u8>, chunk: Vec<u8>) -> String {
    carry.extend(chunk);
    let complete = match std::str::from_utf8(carry) {
        Ok(_) => carry.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        Err(_) => carry.len(),
    };
    let rest = carry.split_off(complete);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

/// The process's output (stdout and stderr as they came). Plain text of
/// what is kept; with `Accept: text/event-stream`, `output` events
/// (`ExecText`) as it comes, until the process exits (then an `exit`
/// event, data: `ProcessView`).
#[utoipa::path(
    get,
    path = "/v1/vms/{id}/processes/{pid}/logs",
    tag = "vms",
    operation_id = "processLogs",
    params(ProcessPath, LogsQuery),
    responses((
        status = 200,
        description = "The output kept, as text; or, with `Accept: text/event-stream`, `output` events followed by one `exit`",
        content((String = "text/plain"), (String = "text/event-stream")),
    )),
)]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(String, u32)>,
    Query(query): Query<LogsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    owned(&state, &caller, &id).await?;
    let follow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let mut output = state
        .sandboxes
        .process_output(&id, pid, query.offset, follow)
        .await?;
    // The first answer says whether the process exists: an error is still
    // an HTTP error, not an event.
    let first = output.next_chunk().await?;
    if !follow {
        let mut text = first.unwrap_or_default();
        // The agent is the sandbox's: a reply that never ends is cut off.
        let read = async {
            while let Some(chunk) = output.next_chunk().await? {
                text.extend(chunk);
                if text.len() > MAX_PLAIN_LOG_BYTES {
                    break;
                }
            }
            Ok::<_, crate::vms::VmError>(())
        };
        tokio::time::timeout(PLAIN_LOG_DEADLINE, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    api_types::ErrorCode::AgentUnresponsive,
                    format!("VM {id}'s agent did not finish sending process {pid}'s output"),
                )
            })??;
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            String::from_utf8_lossy(&text).into_owned(),
        )
            .into_response());
    }
    let sandboxes = state.sandboxes.clone();
    let events = futures_util::stream::unfold(Some((first, output, Vec::new())), move |step| {
        let sandboxes = sandboxes.clone();
        let id = id.clone();
        async move {
            let (pending, mut output, mut carry) = step?;
            let chunk = match pending {
                Some(chunk) => Ok(Some(chunk)),
                None => output.next_chunk().await,
            };
            let event = match chunk {
                Ok(Some(chunk)) => Event::default().event("output").data(data(&ExecText {
                    text: text_of(&mut carry, chunk),
                })),
                Ok(None) => {
                    drop(output);
                    let ended = sandboxes
                        .processes(&id)
                        .await
                        .ok()
                        .and_then(|all| all.into_iter().find(|p| p.pid == pid).map(view));
                    let event = Event::default().event("exit").data(data(&ended));
                    return Some((Ok::<_, Infallible>(event), None));
                }
                Err(error) => {
                    let event =
                        Event::default()
                            .event("error")
                            .data(data(&api_types::vms::ExecFailure {
                                message: error.to_string(),
                            }));
                    return Some((Ok(event), None));
                }
            };
            Some((Ok(event), Some((None, output, carry))))
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn data(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A signal's number from its name (`TERM` or `SIGTERM`).
fn signal_number(name: &str) -> Option<i32> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "TERM" => libc_signal::TERM,
        "KILL" => libc_signal::KILL,
        "INT" => libc_signal::INT,
        "HUP" => libc_signal::HUP,
        "QUIT" => libc_signal::QUIT,
        "USR1" => libc_signal::USR1,
        "USR2" => libc_signal::USR2,
        "STOP" => libc_signal::STOP,
        "CONT" => libc_signal::CONT,
        _ => return None,
    })
}

/// Linux's signal numbers (x86-64 and arm64 agree on these).
mod libc_signal {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const QUIT: i32 = 3;
    pub const KILL: i32 = 9;
    pub const USR1: i32 = 10;
    pub const USR2: i32 = 12;
    pub const TERM: i32 = 15;
    pub const CONT: i32 = 18;
    pub const STOP: i32 = 19;
}

/// Sends a signal to the process (and its process group).
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/processes/{pid}/signal",
    tag = "vms",
    operation_id = "signalProcess",
    params(ProcessPath),
    request_body = SignalRequest,
    responses((status = 202, description = "Sent; the process's state tells what it did")),
)]
pub async fn signal(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(String, u32)>,
    Body(request): Body<SignalRequest>,
) -> Result<StatusCode, ApiError> {
    owned(&state, &caller, &id).await?;
    let number = signal_number(&request.signal).ok_or_else(|| {
        ApiError::bad_request(format!(
            "signal {:?}: one of TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT",
            request.signal
        ))
    })?;
    state.sandboxes.signal(&id, pid, number).await?;
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_character_cut_between_chunks_is_kept_whole() {
        let mut carry = Vec::new();
        let bytes = "é!".as_bytes().to_vec();
        assert_eq!(super::text_of(&mut carry, bytes[..1].to_vec()), "");
        assert_eq!(super::text_of(&mut carry, bytes[1..].to_vec()), "é!");
        assert!(carry.is_empty());
        assert_eq!(super::text_of(&mut carry, vec![0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn signals_are_named_with_or_without_sig() {
        assert_eq!(super::signal_number("TERM"), Some(15));
        assert_eq!(super::signal_number("SIGKILL"), Some(9));
        assert_eq!(super::signal_number("term"), None);
        assert_eq!(super::signal_number("SEGV"), None);
    }
}
