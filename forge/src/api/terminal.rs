//! `/v1/vms/{id}/terminal`: a shell on a pseudo-terminal inside a VM, over a
//! WebSocket.
//!
//! # Protocol
//!
//! 1. `GET /v1/vms/{id}/terminal?cols=80&rows=24` with the WebSocket upgrade
//!    headers. `cols` and `rows` are the initial size (default 80 x 24).
//! 2. Client to forge: a **binary** message is typed into the terminal as
//!    is. A **text** message that is a JSON object with a `resize` key,
//!    `{"resize":{"cols":120,"rows":40}}`, resizes the terminal; any other
//!    text message is typed as its UTF-8 bytes.
//! 3. Forge to client: **binary** messages carry the terminal's output (raw
//!    bytes, escape sequences included) in order.
//! 4. When the shell exits the forge sends a close frame (code 1000, reason
//!    `exited with code N`); a failure is a close frame with code 1011.
//!    Closing the socket kills the shell.
//!
//! # Authentication
//!
//! Like every VM endpoint: `Authorization: Bearer <token>` for clients that
//! can set headers. A browser cannot set headers on a WebSocket, and a
//! long-lived token must not travel in a URL (logs, history), so a caller
//! may first `POST /v1/vms/{id}/terminal/tickets` with its token and get a
//! ticket: single use, bound to that VM and that token, valid for
//! [`TICKET_TTL`]. It then opens `…/terminal?ticket=<ticket>`.
//!
//! A browser sends its cookies and cached credentials with a WebSocket to
//! any site, so a request that carries an `Origin` must come from the
//! forge's own origin (`--public-url`, or the host the request was sent
//! to): a page elsewhere gets `403` (cross-site WebSocket hijacking).
//! Clients that are not browsers send no `Origin`.
//!
//! The shell starts before the upgrade, so a missing, crashed or
//! unavailable VM is an ordinary JSON error, not a socket that closes at
//! once. A paused VM is resumed first, and stays running while the
//! terminal is open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_types::ErrorCode;
use api_types::vms::TerminalTicket;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::openapi::VmPath;
use super::{ApiError, created};
use crate::auth::Caller;
use crate::server::AppState;
use crate::vms::terminal::{Output, Terminal};

/// How long a ticket may wait before it is used.
pub const TICKET_TTL: Duration = Duration::from_secs(60);

/// One issued ticket: who it stands for, which VM it opens, when issued.
type Ticket = (Caller, String, Instant);

/// Issued tickets by secret.
#[derive(Clone, Default)]
struct Tickets(Arc<Mutex<HashMap<String, Ticket>>>);

impl Tickets {
    fn issue(&self, caller: Caller, vm: &str) -> String {
        let secret = crate::auth::new_secret();
        let mut tickets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tickets.retain(|_, (_, _, issued)| issued.elapsed() < TICKET_TTL);
        tickets.insert(secret.clone(), (caller, vm.to_owned(), Instant::now()));
        secret
    }

    /// The caller a ticket stands for; a ticket works once.
    fn redeem(&self, secret: &str, vm: &str) -> Option<Caller> {
        let mut tickets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (caller, for_vm, issued) = tickets.remove(secret)?;
        (for_vm == vm && issued.elapsed() < TICKET_TTL).then_some(caller)
    }
}

/// The terminal's routes, to merge into the API router.
pub fn routes() -> OpenApiRouter<AppState> {
    let tickets = Tickets::default();
    OpenApiRouter::new()
        .routes(routes!(open).layer(Extension(tickets.clone())))
        .routes(routes!(ticket).layer(Extension(tickets)))
}

/// A one-time ticket that opens the VM's terminal without a token in the
/// URL: single use, for this VM and the caller's token, valid for a minute.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/terminal/tickets",
    tag = "vms",
    operation_id = "createTerminalTicket",
    params(VmPath),
    responses((status = 201, description = "The ticket", body = TerminalTicket)),
)]
async fn ticket(
    State(state): State<AppState>,
    Extension(tickets): Extension<Tickets>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<TerminalTicket>), ApiError> {
    super::vms::owned(&state, &caller, &id).await?;
    let ticket = tickets.issue(caller, &id);
    Ok(created(TerminalTicket {
        ticket,
        expires_in_secs: TICKET_TTL.as_secs(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct OpenQuery {
    /// A ticket from `POST /v1/vms/{id}/terminal/tickets`, for clients that
    /// cannot send `Authorization` (browsers).
    ticket: Option<String>,
    /// The terminal's initial width; 80 when absent.
    cols: Option<u16>,
    /// The terminal's initial height; 24 when absent.
    rows: Option<u16>,
}

/// A shell on a pseudo-terminal in the VM, over a WebSocket: binary
/// messages both ways carry the terminal's bytes; a text message
/// `{"resize":{"cols":120,"rows":40}}` resizes it. The socket closes with
/// code 1000 and `exited with code N` when the shell exits. A request with
/// an `Origin` must come from the forge's own origin.
#[utoipa::path(
    get,
    path = "/v1/vms/{id}/terminal",
    tag = "vms",
    operation_id = "openTerminal",
    params(VmPath, OpenQuery),
    security(("token" = []), ()),
    responses((status = 101, description = "Switched to the WebSocket protocol")),
)]
async fn open(
    State(state): State<AppState>,
    Extension(tickets): Extension<Tickets>,
    headers: HeaderMap,
    bearer: Result<Caller, ApiError>,
    Path(id): Path<String>,
    Query(query): Query<OpenQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if !web::origin::same_origin(&headers, &state.config.public_url) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::CrossOrigin,
            "a terminal may be opened only from the forge's own pages (Origin does not match)",
        ));
    }
    let caller = match (bearer, &query.ticket) {
        (Ok(caller), _) => caller,
        (Err(_), Some(ticket)) => tickets
            .redeem(ticket, &id)
            .ok_or_else(|| ApiError::unauthorized("the ticket is unknown, used or expired"))?,
        (Err(error), None) => return Err(error),
    };
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(format!(
            "this endpoint speaks WebSocket only: {}",
            rejection.body_text()
        ))
    })?;
    super::vms::owned(&state, &caller, &id).await?;
    let terminal = state
        .sandboxes
        .terminal(&id, query.cols.unwrap_or(80), query.rows.unwrap_or(24))
        .await?;
    Ok(upgrade.on_upgrade(move |socket| pump(state, socket, terminal)))
}

/// A `{"resize":{"cols","rows"}}` message's size.
fn resize_request(text: &str) -> Option<(u16, u16)> {
    #[derive(Deserialize)]
    struct Size {
        cols: u16,
        rows: u16,
    }
    #[derive(Deserialize)]
    struct Resize {
        resize: Size,
    }
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let Resize { resize } = serde_json::from_str(text).ok()?;
    Some((resize.cols, resize.rows))
}

/// Moves bytes both ways until either side ends.
async fn pump(state: AppState, mut socket: WebSocket, mut terminal: Terminal) {
    let close = |code: u16, reason: String| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        tokio::select! {
            message = socket.recv() => {
                let typed = match message {
                    Some(Ok(Message::Binary(bytes))) => terminal.write(&bytes).await,
                    Some(Ok(Message::Text(text))) => match resize_request(text.as_str()) {
                        Some((cols, rows)) => terminal.resize(cols, rows).await,
                        None => terminal.write(text.as_bytes()).await,
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                };
                if let Err(error) = typed {
                    let _ = socket.send(close(1011, error.to_string())).await;
                    break;
                }
                if let Err(error) = state.sandboxes.touch_terminal(&mut terminal).await {
                    tracing::warn!(error = %error, "recording terminal traffic failed");
                }
            }
            output = terminal.next() => match output {
                Ok(Output::Bytes(bytes)) => {
                    if socket.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Ok(Output::Exited(code)) => {
                    let _ = socket.send(close(1000, format!("exited with code {code}"))).await;
                    break;
                }
                Err(error) => {
                    let _ = socket.send(close(1011, error.to_string())).await;
                    break;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_are_recognised() {
        assert_eq!(
            resize_request(r#"{"resize":{"cols":120,"rows":40}}"#),
            Some((120, 40))
        );
        assert_eq!(resize_request("ls -l\r"), None);
        assert_eq!(resize_request(r#"{"other":1}"#), None);
    }
}
