//! The HTTP client the CLI commands share: base URL, token, and turning the
//! API's error shape into a one-line message.

use std::path::Path;

use anyhow::{Context, bail};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for `server`, authenticated with `FORGE_TOKEN` or else the
    /// admin token saved in the data directory.
    pub fn new(server: &str, token: Option<String>, data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::new(),
            base: server.trim_end_matches('/').to_owned(),
            token: resolve_token(token, data_dir)?,
        })
    }

    /// A GET whose successful answer is returned as it streams.
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the forge at {}", self.base))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            bail!("{} (HTTP {status})", error_message(&text));
        }
        Ok(response)
    }

    /// A GET whose answer is text.
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.stream(path).await?.text().await?)
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the forge at {}", self.base))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer failed")?;
        if !status.is_success() {
            bail!("{} (HTTP {})", error_message(&text), status.as_u16());
        }
        let text = if text.is_empty() {
            "null".to_owned()
        } else {
            text
        };
        serde_json::from_str(&text)
            .with_context(|| format!("the answer to {path} is not the expected JSON"))
    }
}

/// Reads a server-sent event stream, calling `on_event(event, data)` for
/// each event until it returns `false` or the stream ends.
pub async fn read_events(
    response: reqwest::Response,
    mut on_event: impl FnMut(&str, &str) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut event = String::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(
            &chunk.context("the event stream broke")?,
        ));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:")
                && !on_event(&event, data.trim())?
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `token` when given, else the admin token saved in the data directory.
pub fn resolve_token(token: Option<String>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(token.trim().to_owned());
    }
    let path = forge::server::admin_token_path(data_dir);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| {
            format!(
                "no token: set FORGE_TOKEN, or run this where the server's data directory is ({} could not be read)",
                path.display()
            )
        })?
        .trim()
        .to_owned())
}

/// The message of the API's error shape, or the text itself.
fn error_message(text: &str) -> String {
    serde_json::from_str::<api_types::ErrorBody>(text)
        .map(|body| body.error.message)
        .unwrap_or_else(|_| text.to_owned())
}
