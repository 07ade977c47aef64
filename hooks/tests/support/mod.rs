//! Test support: a real HTTP receiver on loopback that verifies both
//! signature schemes, and an in-memory `DeliveryStore` with the same claim,
//! lease and ordering rules the forge's sqlx store implements.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use hooks::sign::{self, Secret};
use hooks::{AttemptRecord, DisableReason, DueDelivery, NextStep};
#[allow(unused_imports)] // each test crate uses its own subset
pub use test_support::poll::stays_async as stays;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// Never answers.
    Hang,
    /// 200 with a body of this many bytes.
    Big(usize),
    /// Answers 200 after this long.
    Slow(Duration),
    /// `302 Found` to this location.
    Redirect(String),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub standard_ok: bool,
    pub github_ok: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

struct ReceiverState {
    secret: Secret,
    script: Vec<Reply>,
    /// Replies per URL path prefix, checked before the script.
    by_path: HashMap<String, Reply>,
    received: Vec<Received>,
}

/// An HTTP/1 receiver on 127.0.0.1.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts a receiver that answers with `script` in order, then 200.
    pub async fn start(secret: Secret, script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(ReceiverState {
            secret,
            script,
            by_path: HashMap::new(),
            received: Vec::new(),
        }));
        let arrived = Arc::new(Notify::new());
        let (s, a) = (state.clone(), arrived.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, arrived) = (s.clone(), a.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(state.clone(), arrived.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            state,
            arrived,
            task,
        }
    }

    /// Answers requests whose path starts with `prefix` with `reply`, always.
    pub fn route(&self, prefix: &str, reply: Reply) {
        self.state
            .lock()
            .expect("lock")
            .by_path
            .insert(prefix.to_owned(), reply);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("lock").received.clone()
    }

    /// Waits until `n` requests arrived; panics after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} requests within {limit:?}, got {}",
                    self.received().len()
                );
            }
        }
    }
}

async fn handle(
    state: Arc<Mutex<ReceiverState>>,
    arrived: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let reply = {
        let mut state = state.lock().expect("lock");
        let standard_ok = sign::verify_standard(
            &state.secret,
            &text(sign::HEADER_ID),
            &text(sign::HEADER_TIMESTAMP),
            &text(sign::HEADER_SIGNATURE),
            &body,
            SystemTime::now(),
            Duration::from_secs(300),
        )
        .is_ok();
        let github_ok = headers
            .get_all(sign::HEADER_GITHUB)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| sign::verify_github(&state.secret, v, &body).is_ok());
        state.received.push(Received {
            at: Instant::now(),
            headers: headers.clone(),
            body,
            standard_ok,
            github_ok,
        });
        if !(standard_ok && github_ok) {
            Reply::Status(401)
        } else if let Some((_, reply)) = state
            .by_path
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
        {
            reply.clone()
        } else if state.script.is_empty() {
            Reply::Status(200)
        } else {
            state.script.remove(0)
        }
    };
    arrived.notify_waiters();
    let response = match reply {
        Reply::Status(code) => status(code, Bytes::from_static(b"ok")),
        Reply::RetryAfter(code, secs) => {
            let mut r = status(code, Bytes::new());
            r.headers_mut().insert("retry-after", secs.into());
            r
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            status(200, Bytes::new())
        }
        Reply::Big(size) => status(200, Bytes::from(vec![b'x'; size])),
        Reply::Redirect(location) => {
            let mut r = status(302, Bytes::new());
            r.headers_mut()
                .insert("location", location.parse().expect("valid location"));
            r
        }
        Reply::Slow(wait) => {
            tokio::time::sleep(wait).await;
            status(200, Bytes::new())
        }
    };
    Ok(response)
}

fn status(code: u16, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(code).expect("valid status");
    response
}

/// A subscription as the memory store keeps it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub url: String,
    pub secrets: Vec<Secret>,
    pub active: bool,
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pending,
    Delivered,
    Failed,
}

/// A delivery row.
#[derive(Debug, Clone)]
pub struct Row {
    pub due: DueDelivery,
    pub status: Status,
    pub next_at: SystemTime,
    pub lease_until: Option<SystemTime>,
    pub attempts: Vec<(u32, AttemptRecord, NextStep)>,
}

#[derive(Default)]
struct Tables {
    subscriptions: HashMap<String, Subscription>,
    rows: Vec<Row>,
    notices: Vec<(String, DisableReason)>,
}

/// An in-memory `DeliveryStore`.
#[derive(Default, Clone)]
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
}

#[derive(Debug, thiserror::Error)]
#[error("Memory store error")]
pub struct StoreError;

impl MemoryStore {
    pub fn subscribe(&self, id: &str, url: &str, secret: &Secret) {
        self.tables.lock().expect("lock").subscriptions.insert(
            id.to_owned(),
            Subscription {
                url: url.to_owned(),
                secrets: vec![secret.clone()],
                active: true,
                consecutive_failures: 0,
            },
        );
    }

    /// Writes a pending delivery; returns its id.
    pub fn enqueue(&self, subscription: &str, event_type: &str, body: Vec<u8>) -> String {
        let mut t = self.tables.lock().expect("lock");
        let sub = t
            .subscriptions
            .get(subscription)
            .expect("known subscription")
            .clone();
        let id = hooks::new_delivery_id();
        t.rows.push(Row {
            due: DueDelivery {
                id: id.clone(),
                subscription_id: subscription.to_owned(),
                url: sub.url,
                event_type: event_type.to_owned(),
                body,
                secrets: sub.secrets,
                attempts_made: 0,
            },
            status: Status::Pending,
            next_at: SystemTime::now(),
            lease_until: None,
            attempts: Vec::new(),
        });
        id
    }

    pub fn row(&self, id: &str) -> Row {
        self.tables
            .lock()
            .expect("lock")
            .rows
            .iter()
            .find(|r| r.due.id == id)
            .expect("row")
            .clone()
    }

    pub fn subscription(&self, id: &str) -> Subscription {
        self.tables.lock().expect("lock").subscriptions[id].clone()
    }

    pub fn notices(&self) -> Vec<(String, DisableReason)> {
        self.tables.lock().expect("lock").notices.clone()
    }

    /// Claims like the worker does, without sending (a worker that then
    /// crashes).
    pub fn claim_and_forget(&self, lease: Duration) -> Vec<DueDelivery> {
        let now = SystemTime::now();
        let mut tables = self.tables.lock().expect("lock");
        claim(&mut tables, now, usize::MAX, now + lease)
    }

    /// Waits until delivery `id` is no longer pending.
    pub async fn wait_settled(&self, id: &str, limit: Duration) -> Row {
        let deadline = Instant::now() + limit;
        loop {
            let row = self.row(id);
            if row.status != Status::Pending {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "delivery {id} still pending after {limit:?}: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn claim(
    t: &mut Tables,
    now: SystemTime,
    limit: usize,
    lease_until: SystemTime,
) -> Vec<DueDelivery> {
    let mut busy: HashSet<String> = t
        .rows
        .iter()
        .filter(|r| r.lease_until.is_some_and(|l| l > now))
        .map(|r| r.due.subscription_id.clone())
        .collect();
    let mut out = Vec::new();
    for row in &mut t.rows {
        if out.len() >= limit {
            break;
        }
        // Cheap checks first: most rows are settled or of a busy subscription.
        if row.status != Status::Pending
            || row.next_at > now
            || busy.contains(&row.due.subscription_id)
        {
            continue;
        }
        let active = t
            .subscriptions
            .get(&row.due.subscription_id)
            .is_some_and(|s| s.active);
        if !active {
            continue;
        }
        busy.insert(row.due.subscription_id.clone());
        row.lease_until = Some(lease_until);
        let mut due = row.due.clone();
        due.attempts_made = u32::try_from(row.attempts.len()).expect("few attempts");
        out.push(due);
    }
    out
}

impl hooks::DeliveryStore for MemoryStore {
    type Error = StoreError;

    async fn claim_due(
        &self,
        now: SystemTime,
        limit: usize,
        lease_until: SystemTime,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let mut tables = self.tables.lock().map_err(|_| StoreError)?;
        Ok(claim(&mut tables, now, limit, lease_until))
    }

    async fn record_attempt(
        &self,
        delivery: &DueDelivery,
        attempt: u32,
        record: &AttemptRecord,
        next: &NextStep,
    ) -> Result<u32, StoreError> {
        let mut t = self.tables.lock().map_err(|_| StoreError)?;
        let row = t
            .rows
            .iter_mut()
            .find(|r| r.due.id == delivery.id)
            .ok_or(StoreError)?;
        row.attempts.push((attempt, record.clone(), next.clone()));
        row.lease_until = None;
        match next {
            NextStep::Done => row.status = Status::Delivered,
            NextStep::RetryAt(at) => row.next_at = *at,
            NextStep::GiveUp => row.status = Status::Failed,
        }
        let sub = t
            .subscriptions
            .get_mut(&delivery.subscription_id)
            .ok_or(StoreError)?;
        if *next == NextStep::Done {
            sub.consecutive_failures = 0;
        } else {
            sub.consecutive_failures += 1;
        }
        Ok(sub.consecutive_failures)
    }

    async fn disable_subscription(
        &self,
        subscription_id: &str,
        reason: &DisableReason,
    ) -> Result<(), StoreError> {
        let mut t = self.tables.lock().map_err(|_| StoreError)?;
        t.subscriptions
            .get_mut(subscription_id)
            .ok_or(StoreError)?
            .active = false;
        for row in t
            .rows
            .iter_mut()
            .filter(|r| r.due.subscription_id == subscription_id)
        {
            if row.status == Status::Pending {
                row.status = Status::Failed;
            }
        }
        t.notices.push((subscription_id.to_owned(), reason.clone()));
        Ok(())
    }
}
