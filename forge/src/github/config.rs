//! The GitHub App's configuration: app id, private key (a PEM file),
//! webhook secret, API base URL and git base URL.
//!
//! Sources, later ones winning: `<data>/github.toml` (written by `forge
//! github configure`, mode 0600), then the environment
//! (`FORGE_GITHUB_APP_ID`, `FORGE_GITHUB_PRIVATE_KEY` (a path),
//! `FORGE_GITHUB_WEBHOOK_SECRET`, `FORGE_GITHUB_API_URL`,
//! `FORGE_GITHUB_GIT_URL`, `FORGE_GITHUB_RECONCILE_SECS`). The app is off
//! unless an app id, a key and a secret are all given. Secrets are kept in
//! [`Secret`], whose `Debug` prints nothing of them.
//!
//! The review bot's model ([`crate::review::model`]) is optional:
//! `review_model_url` and `review_model` (`FORGE_REVIEW_MODEL=URL,MODEL`),
//! its API key read from `review_model_key_path` (a file whose path is
//! recorded, like the App's key; `FORGE_REVIEW_MODEL_KEY_FILE`, or the key
//! itself in `FORGE_REVIEW_MODEL_KEY`), `review_model_can_block`
//! (`FORGE_REVIEW_MODEL_CAN_BLOCK=true`) and `review_model_timeout_secs`
//! (`FORGE_REVIEW_MODEL_TIMEOUT_SECS`, default 60).

use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::review::model::ModelConfig;

/// GitHub's public API and git hosts.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
pub const DEFAULT_GIT_URL: &str = "https://github.com";

/// A value that must never be printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What `<data>/github.toml` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub app_id: Option<u64>,
    pub private_key_path: Option<PathBuf>,
    pub webhook_secret: Option<Secret>,
    pub api_url: Option<String>,
    pub git_url: Option<String>,
    pub reconcile_secs: Option<u64>,
    pub review_model_url: Option<String>,
    pub review_model: Option<String>,
    pub review_model_key_path: Option<PathBuf>,
    pub review_model_can_block: Option<bool>,
    pub review_model_timeout_secs: Option<u64>,
}

/// A complete configuration of the app.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    pub app_id: u64,
    pub private_key_pem: Secret,
    pub webhook_secret: Secret,
    pub api_url: String,
    pub git_url: String,
    /// Seconds between full reconciles of every linked repository.
    pub reconcile_secs: u64,
    /// The review bot's model, when one is configured.
    pub review_model: Option<ModelConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid GitHub configuration")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{name} must be a number")]
    Number { name: &'static str },
    #[error("The GitHub App is partly configured: {missing} is missing")]
    Incomplete { missing: &'static str },
    #[error("The review model must be given as URL,MODEL (got {0:?})")]
    ModelSpec(String),
}

/// The file `forge github configure` writes.
pub fn file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("github.toml")
}

/// Reads the file (if any), then the environment; `None` when the app is
/// not configured at all.
pub fn load(data_dir: &Path) -> Result<Option<GithubConfig>, ConfigError> {
    let (file, key) = read(data_dir)?;
    resolve(file, key)
}

/// The review bot's model alone (the forge's own reviews of branches use
/// it without the App).
pub fn load_review_model(data_dir: &Path) -> Result<Option<ModelConfig>, ConfigError> {
    let (file, key) = read(data_dir)?;
    review_model(&file, key)
}

/// The file (if any) with the environment over it, and the model's key
/// from the environment.
fn read(data_dir: &Path) -> Result<(FileConfig, Option<Secret>), ConfigError> {
    let path = file_path(data_dir);
    let mut file = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => FileConfig::default(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(id) = env("FORGE_GITHUB_APP_ID") {
        file.app_id = Some(id.parse().map_err(|_| ConfigError::Number {
            name: "FORGE_GITHUB_APP_ID",
        })?);
    }
    if let Some(key) = env("FORGE_GITHUB_PRIVATE_KEY") {
        file.private_key_path = Some(PathBuf::from(key));
    }
    if let Some(secret) = env("FORGE_GITHUB_WEBHOOK_SECRET") {
        file.webhook_secret = Some(Secret::new(secret));
    }
    if let Some(url) = env("FORGE_GITHUB_API_URL") {
        file.api_url = Some(url);
    }
    if let Some(url) = env("FORGE_GITHUB_GIT_URL") {
        file.git_url = Some(url);
    }
    if let Some(secs) = env("FORGE_GITHUB_RECONCILE_SECS") {
        file.reconcile_secs = Some(secs.parse().map_err(|_| ConfigError::Number {
            name: "FORGE_GITHUB_RECONCILE_SECS",
        })?);
    }
    if let Some(spec) = env("FORGE_REVIEW_MODEL") {
        let (url, model) = model_spec(&spec)?;
        file.review_model_url = Some(url);
        file.review_model = Some(model);
    }
    if let Some(path) = env("FORGE_REVIEW_MODEL_KEY_FILE") {
        file.review_model_key_path = Some(PathBuf::from(path));
    }
    if let Some(flag) = env("FORGE_REVIEW_MODEL_CAN_BLOCK") {
        file.review_model_can_block = Some(matches!(flag.as_str(), "1" | "true" | "yes"));
    }
    if let Some(secs) = env("FORGE_REVIEW_MODEL_TIMEOUT_SECS") {
        file.review_model_timeout_secs = Some(secs.parse().map_err(|_| ConfigError::Number {
            name: "FORGE_REVIEW_MODEL_TIMEOUT_SECS",
        })?);
    }
    let key = env("FORGE_REVIEW_MODEL_KEY").map(Secret::new);
    Ok((file, key))
}

/// `URL,MODEL` split; the URL must be http(s).
pub fn model_spec(spec: &str) -> Result<(String, String), ConfigError> {
    let (url, model) = spec
        .rsplit_once(',')
        .ok_or_else(|| ConfigError::ModelSpec(spec.to_owned()))?;
    let (url, model) = (url.trim(), model.trim());
    if model.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::ModelSpec(spec.to_owned()));
    }
    Ok((trimmed(url), model.to_owned()))
}

/// The model's settings of `file`; `key` (from the environment) wins over
/// the key file.
fn review_model(
    file: &FileConfig,
    key: Option<Secret>,
) -> Result<Option<ModelConfig>, ConfigError> {
    let (Some(url), Some(model)) = (&file.review_model_url, &file.review_model) else {
        return Ok(None);
    };
    let api_key = match (key, &file.review_model_key_path) {
        (Some(key), _) => Some(key),
        (None, Some(path)) => Some(Secret::new(
            std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?
                .trim(),
        )),
        (None, None) => None,
    };
    Ok(Some(ModelConfig {
        url: url.clone(),
        model: model.clone(),
        api_key,
        timeout: Duration::from_secs(file.review_model_timeout_secs.unwrap_or(60).max(1)),
        can_block: file.review_model_can_block.unwrap_or(false),
    }))
}

fn resolve(file: FileConfig, key: Option<Secret>) -> Result<Option<GithubConfig>, ConfigError> {
    let model = review_model(&file, key)?;
    if file.app_id.is_none() && file.private_key_path.is_none() && file.webhook_secret.is_none() {
        return Ok(None);
    }
    let app_id = file.app_id.ok_or(ConfigError::Incomplete {
        missing: "the app id",
    })?;
    let key_path = file.private_key_path.ok_or(ConfigError::Incomplete {
        missing: "the private key",
    })?;
    let webhook_secret = file.webhook_secret.ok_or(ConfigError::Incomplete {
        missing: "the webhook secret",
    })?;
    let pem = std::fs::read_to_string(&key_path).map_err(|source| ConfigError::Read {
        path: key_path.display().to_string(),
        source,
    })?;
    Ok(Some(GithubConfig {
        app_id,
        private_key_pem: Secret::new(pem),
        webhook_secret,
        api_url: trimmed(file.api_url.as_deref().unwrap_or(DEFAULT_API_URL)),
        git_url: trimmed(file.git_url.as_deref().unwrap_or(DEFAULT_GIT_URL)),
        reconcile_secs: file.reconcile_secs.unwrap_or(300).max(1),
        review_model: model,
    }))
}

fn trimmed(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn partial_configuration_is_an_error() {
        let file = FileConfig {
            app_id: Some(1),
            ..FileConfig::default()
        };
        assert!(matches!(
            resolve(file, None),
            Err(ConfigError::Incomplete { .. })
        ));
        assert!(
            resolve(FileConfig::default(), None)
                .unwrap_or(None)
                .is_none()
        );
    }

    #[test]
    fn a_model_is_given_as_url_and_name() {
        assert_eq!(
            model_spec("http://127.0.0.1:8080/v1/,qwen2.5-coder").expect("valid"),
            ("http://127.0.0.1:8080/v1".into(), "qwen2.5-coder".into())
        );
        for bad in ["qwen", "ftp://x,m", "http://x,", ",m"] {
            assert!(model_spec(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-secret\n").expect("write");
        let file = FileConfig {
            review_model_url: Some("https://models.example/v1".into()),
            review_model: Some("m".into()),
            review_model_key_path: Some(key),
            ..FileConfig::default()
        };
        let model = review_model(&file, None)
            .expect("read")
            .expect("configured");
        assert_eq!(
            model.api_key.as_ref().map(Secret::expose),
            Some("sk-secret")
        );
        assert_eq!(model.timeout, Duration::from_secs(60));
        assert!(!model.can_block);
        let from_env = review_model(&file, Some(Secret::new("sk-env"))).expect("read");
        assert_eq!(
            from_env
                .and_then(|m| m.api_key)
                .as_ref()
                .map(Secret::expose),
            Some("sk-env")
        );
        assert!(
            review_model(&FileConfig::default(), None)
                .expect("read")
                .is_none()
        );
    }
}
