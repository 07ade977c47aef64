//! Authenticating as the GitHub App, with octocrab: the app JWT (RS256,
//! issued 60 s in the past, valid 9 minutes) for app endpoints, and one
//! installation client per installation whose token octocrab caches until
//! 30 s before the `expires_at` GitHub gave it and then renews. The client
//! is shared, never cloned: a clone of an octocrab client starts with an
//! empty token cache of its own, and would mint a token per call.
//!
//! A token can still be refused before that (revoked, clock skew): any
//! `401` drops the installation's client, so the next call mints a new
//! token, and the call is retried once. Token strings are opaque: nothing
//! here assumes their length or prefix. Rate-limit answers (403/429 with
//! reset headers) are waited out and retried by octocrab's retry layer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::secrecy::ExposeSecret;
use octocrab::service::middleware::retry::{NoOpRateLimitMetrics, RetryConfig};
use serde_json::Value;

use super::config::{GithubConfig, Secret};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("The GitHub App's private key is not an RSA PEM key")]
    Key(#[source] octocrab::jsonwebtoken::errors::Error),
    #[error("Building the GitHub client failed")]
    Client(#[source] octocrab::Error),
    #[error("GitHub answered {status} to {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("Calling GitHub ({what}) failed")]
    Call {
        what: String,
        #[source]
        source: octocrab::Error,
    },
}

impl AuthError {
    /// The HTTP status GitHub answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The HTTP methods the forge calls GitHub with.
#[derive(Debug, Clone, Copy)]
pub enum Method {
    Get,
    Post,
    Patch,
}

/// The app's identity and its installation clients.
pub struct AppAuth {
    app: Octocrab,
    installations: Mutex<HashMap<u64, Arc<Octocrab>>>,
}

impl AppAuth {
    pub fn new(config: &GithubConfig) -> Result<Self, AuthError> {
        let key = octocrab::EncodingKey::from_rsa_pem(config.private_key_pem.expose().as_bytes())
            .map_err(AuthError::Key)?;
        let retry = RetryConfig::HandleRateLimits {
            metrics: Arc::new(NoOpRateLimitMetrics),
            max_retries: 5,
            min_wait_seconds: 1,
            retry_on_forbidden: false,
        };
        let app = Octocrab::builder()
            .add_retry_config(retry)
            .base_uri(config.api_url.as_str())
            .map_err(AuthError::Client)?
            .app(AppId(config.app_id), key)
            .build()
            .map_err(AuthError::Client)?;
        Ok(Self {
            app,
            installations: Mutex::new(HashMap::new()),
        })
    }

    fn installation(&self, id: u64) -> Result<Arc<Octocrab>, AuthError> {
        let mut installations = self.installations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = installations.get(&id) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            self.app
                .installation(InstallationId(id))
                .map_err(AuthError::Client)?,
        );
        installations.insert(id, client.clone());
        Ok(client)
    }

    /// Forgets the cached token of installation `id` (it was refused).
    pub fn invalidate(&self, id: u64) {
        self.installations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// A token of installation `id`, valid for at least 30 more seconds as
    /// far as GitHub said.
    pub async fn token(&self, id: u64) -> Result<Secret, AuthError> {
        let client = self.installation(id)?;
        let token = client
            .installation_token()
            .await
            .map_err(|source| classify("an installation token", source))?;
        Ok(Secret::new(token.expose_secret()))
    }

    /// Calls an app endpoint with the app JWT.
    pub async fn as_app(
        &self,
        method: Method,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Value, AuthError> {
        send(&self.app, method, route, body).await
    }

    /// Calls an endpoint as installation `id`, renewing a refused token once.
    pub async fn as_installation(
        &self,
        id: u64,
        method: Method,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Value, AuthError> {
        let client = self.installation(id)?;
        match send(&client, method, route, body).await {
            Err(error) if error.status() == Some(401) => {
                tracing::info!(
                    installation = id,
                    "GitHub refused the installation token: renewing it"
                );
                self.invalidate(id);
                let renewed = self.installation(id)?;
                send(&renewed, method, route, body).await
            }
            other => other,
        }
    }
}

async fn send(
    client: &Octocrab,
    method: Method,
    route: &str,
    body: Option<&Value>,
) -> Result<Value, AuthError> {
    let result = match method {
        Method::Get => client.get::<Value, _, _>(route, None::<&()>).await,
        Method::Post => client.post::<_, Value>(route, body).await,
        Method::Patch => client.patch::<Value, _, _>(route, body).await,
    };
    result.map_err(|source| classify(route, source))
}

fn classify(what: &str, source: octocrab::Error) -> AuthError {
    match source {
        octocrab::Error::GitHub { source, .. } => AuthError::Status {
            what: what.to_owned(),
            status: source.status_code.as_u16(),
            message: source.message,
        },
        source => AuthError::Call {
            what: what.to_owned(),
            source,
        },
    }
}
