//! A fake OpenAI-compatible chat completions endpoint for the review bot's
//! tests: it answers `POST /v1/chat/completions` from a script (a JSON
//! answer, text that is not JSON, an HTTP status, a rate limit, or silence
//! past the client's timeout) and records every request it was sent. It
//! serves on a thread of its own, so it works from plain and from async
//! tests alike, and stops when dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A completion whose message is this JSON, serialised.
    Answer(Value),
    /// A completion whose message is this text.
    Text(String),
    /// An HTTP status with an error body.
    Status(u16),
    /// `429` with `Retry-After`.
    RateLimited { retry_after_secs: u64 },
    /// No answer for this long.
    Silence(Duration),
}

/// A request the fake was sent.
#[derive(Debug, Clone)]
pub struct Request {
    pub authorization: Option<String>,
    pub body: Value,
}

impl Request {
    /// The user message: what the model was asked.
    pub fn prompt(&self) -> &str {
        self.body["messages"][1]["content"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Reply>,
    /// Once the script is used up.
    otherwise: Option<Reply>,
    requests: Vec<Request>,
}

type AppState = Arc<Mutex<Shared>>;

pub struct FakeModel {
    /// The base URL (`http://127.0.0.1:PORT/v1`).
    pub url: String,
    state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeModel {
    /// Answers `replies` in turn, then `otherwise` for every request after
    /// (`503` when `None`).
    pub fn start(replies: Vec<Reply>, otherwise: Option<Reply>) -> FakeModel {
        let state = AppState::new(Mutex::new(Shared {
            script: replies.into(),
            otherwise,
            requests: Vec::new(),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("http://{}/v1", listener.local_addr().expect("address"));
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        FakeModel {
            url,
            state,
            stop: Some(stop),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .clone()
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let reply = {
        let mut shared = state.lock().unwrap_or_else(|p| p.into_inner());
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        shared.requests.push(Request {
            authorization,
            body,
        });
        let next = shared.script.pop_front();
        next.or_else(|| shared.otherwise.clone())
    };
    let message = |content: String| {
        Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
            "choices": [{ "index": 0, "finish_reason": "stop",
                          "message": { "role": "assistant", "content": content } }],
        }))
        .into_response()
    };
    let failure = |status: StatusCode| {
        (
            status,
            Json(json!({ "error": { "message": "scripted failure" } })),
        )
            .into_response()
    };
    match reply {
        Some(Reply::Answer(value)) => message(value.to_string()),
        Some(Reply::Text(text)) => message(text),
        Some(Reply::Status(code)) => {
            failure(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        }
        Some(Reply::RateLimited { retry_after_secs }) => {
            let mut response = failure(StatusCode::TOO_MANY_REQUESTS);
            if let Ok(value) = retry_after_secs.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
        Some(Reply::Silence(pause)) => {
            tokio::time::sleep(pause).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        None => failure(StatusCode::SERVICE_UNAVAILABLE),
    }
}
