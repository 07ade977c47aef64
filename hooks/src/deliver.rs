//! Sending one attempt of a delivery and recording what happened.
//!
//! An attempt, in order:
//! 1. check the URL ([`check_url`]: http(s) only, IP literals against the
//!    policy);
//! 2. sign the stored body for this attempt's timestamp ([`signature_headers`]);
//! 3. POST it through a client whose resolver is the SSRF guard, with
//!    redirects disabled and no proxy, bounded by `timeout` as a whole;
//! 4. read at most `max_response_body` bytes of the response, drain at most
//!    `max_drain` more (so the connection can be reused), then drop it;
//! 5. return an [`AttemptRecord`]: status, duration, response code, headers
//!    and body prefix, and the request headers with signatures redacted.
//!
//! `send` never fails: every error becomes part of the record and an
//! [`AttemptResult`] for the retry policy.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::retry::{AttemptResult, parse_retry_after};
use crate::sign::{HEADER_GITHUB, HEADER_SIGNATURE, Secret, signature_headers, unix_secs};
use crate::ssrf::{NetworkPolicy, SsrfError, check_url, resolver};

/// How the sender behaves.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Bound on a whole attempt: connect, send, response head and body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub policy: NetworkPolicy,
    /// Response body bytes kept in the log.
    pub max_response_body: usize,
    /// Further bytes read and discarded before the connection is dropped.
    pub max_drain: usize,
    pub user_agent: String,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            policy: NetworkPolicy::default(),
            max_response_body: 4096,
            max_drain: 64 * 1024,
            user_agent: concat!("forge-webhooks/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Why a sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("Could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Stable across attempts: the `webhook-id`.
    pub delivery_id: &'a str,
    pub event_type: &'a str,
    pub url: &'a str,
    pub body: &'a [u8],
    /// Valid secrets, newest first.
    pub secrets: &'a [Secret],
}

/// The log entry of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: SystemTime,
    pub duration: Duration,
    pub request_headers: Vec<(String, String)>,
    pub response_status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub response_body_truncated: bool,
    pub remote_addr: Option<SocketAddr>,
    /// What went wrong, for the log (`None` when a response arrived and
    /// was read without error).
    pub error: Option<String>,
    pub result: AttemptResult,
}

/// Sends attempts. Cheap to clone; one per process is enough.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    config: SenderConfig,
}

const MAX_LOGGED_HEADERS: usize = 64;

impl Sender {
    pub fn new(config: SenderConfig) -> Result<Sender, SenderError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(resolver(config.policy))
            .user_agent(config.user_agent.clone())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(SenderError::Client)?;
        Ok(Sender { client, config })
    }

    pub fn config(&self) -> &SenderConfig {
        &self.config
    }

    /// Sends one attempt; see the module docs.
    pub async fn send(&self, out: Outgoing<'_>) -> AttemptRecord {
        let started_at = SystemTime::now();
        let clock = Instant::now();
        let mut headers: Vec<(String, String)> =
            vec![("content-type".into(), "application/json".into())];
        headers.extend(
            signature_headers(
                out.delivery_id,
                out.event_type,
                unix_secs(started_at),
                out.body,
                out.secrets,
            )
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v)),
        );
        let mut record = AttemptRecord {
            started_at,
            duration: Duration::ZERO,
            request_headers: redact(&headers),
            response_status: None,
            response_headers: Vec::new(),
            response_body: Vec::new(),
            response_body_truncated: false,
            remote_addr: None,
            error: None,
            result: AttemptResult::Permanent,
        };
        let url = match check_url(out.url, &self.config.policy) {
            Ok(url) => url,
            Err(e) => {
                record.error = Some(e.to_string());
                record.duration = clock.elapsed();
                return record;
            }
        };
        if url.password().is_some() || !url.username().is_empty() {
            record
                .request_headers
                .push(("authorization".into(), "<redacted>".into()));
        }
        let mut request = self.client.post(url).body(out.body.to_vec());
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        // reqwest's own timeout bounds the attempt; the outer one is a
        // backstop so that no attempt can outlive its lease.
        let deadline = self.config.timeout + Duration::from_secs(1);
        let outcome = tokio::time::timeout(deadline, self.exchange(request, &mut record)).await;
        if outcome.is_err() {
            record.error = Some(format!("Timed out after {} ms", deadline.as_millis()));
            if record.response_status.is_none() {
                record.result = AttemptResult::Failure { retry_after: None };
            }
        }
        record.duration = clock.elapsed();
        record
    }

    async fn exchange(&self, request: reqwest::RequestBuilder, record: &mut AttemptRecord) {
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let blocked = find_ssrf(&e);
                record.error = Some(match &blocked {
                    Some(ssrf) => ssrf.to_string(),
                    None => describe(&e),
                });
                record.result = if blocked.is_some_and(|s| !matches!(s, SsrfError::Resolve { .. }))
                {
                    AttemptResult::Permanent
                } else {
                    AttemptResult::Failure { retry_after: None }
                };
                return;
            }
        };
        let status = response.status();
        record.response_status = Some(status.as_u16());
        record.remote_addr = response.remote_addr();
        record.response_headers = response
            .headers()
            .iter()
            .take(MAX_LOGGED_HEADERS)
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        record.result = if status.is_success() {
            AttemptResult::Success
        } else if status == reqwest::StatusCode::GONE {
            AttemptResult::Gone
        } else {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            AttemptResult::Failure { retry_after }
        };
        let keep = self.config.max_response_body;
        let mut drained = 0usize;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = keep.saturating_sub(record.response_body.len());
                    let take = room.min(chunk.len());
                    record.response_body.extend_from_slice(&chunk[..take]);
                    if take < chunk.len() {
                        record.response_body_truncated = true;
                        drained += chunk.len() - take;
                        if drained > self.config.max_drain {
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    record.error = Some(format!(
                        "Reading the response body failed: {}",
                        describe(&e)
                    ));
                    break;
                }
            }
        }
    }
}

fn find_ssrf(error: &(dyn std::error::Error + 'static)) -> Option<SsrfError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(ssrf) = e.downcast_ref::<SsrfError>() {
            return Some(ssrf.clone());
        }
        current = e.source();
    }
    None
}

/// An error and its causes on one line (reqwest's own text is terse).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        text.push_str(": ");
        text.push_str(&e.to_string());
        current = e.source();
    }
    text
}

/// Request headers as logged: signature values are replaced.
pub fn redact(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            let value = if lower == HEADER_SIGNATURE
                || lower == HEADER_GITHUB
                || lower == "authorization"
            {
                "<redacted>".to_owned()
            } else {
                value.clone()
            };
            (name.clone(), value)
        })
        .collect()
}
