//! `forge github`: configure the GitHub App (writes `<data>/github.toml`,
//! mode 0600, read by `forge serve` at start-up), and link, show or unlink
//! a repository through a running forge.

use std::path::{Path, PathBuf};

use anyhow::Context;
use api_types::github::{GithubLinkRequest, GithubLinkView};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::{Target, body, print_json};
use forge::github::config::{self, FileConfig, Secret};

#[derive(Subcommand)]
pub enum GithubCommand {
    /// Write the app's settings to the data directory (restart the forge to apply).
    Configure {
        /// The GitHub App's id.
        #[arg(long)]
        app_id: u64,
        /// The app's private key (PEM file); its path is recorded, not its content.
        #[arg(long)]
        private_key: PathBuf,
        /// The webhook secret (prefer the environment variable).
        #[arg(long, env = "FORGE_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: String,
        /// The API base URL (GitHub Enterprise Server: https://HOST/api/v3).
        #[arg(long, default_value = config::DEFAULT_API_URL)]
        api_url: String,
        /// The git base URL (GitHub Enterprise Server: https://HOST).
        #[arg(long, default_value = config::DEFAULT_GIT_URL)]
        git_url: String,
        /// Seconds between full reconciles of linked repositories.
        #[arg(long, default_value_t = 300)]
        reconcile_secs: u64,
        /// An OpenAI-compatible endpoint and model for an AI review, as
        /// URL,MODEL (e.g. https://api.openai.com/v1,gpt-4o-mini).
        #[arg(long, value_name = "URL,MODEL")]
        review_model: Option<String>,
        /// A file holding the model's API key; its path is recorded, not its content.
        #[arg(long, value_name = "PATH", requires = "review_model")]
        review_model_key_file: Option<PathBuf>,
        /// Let the model's request for changes on passing steps become
        /// REQUEST_CHANGES (else the review is a COMMENT).
        #[arg(long, requires = "review_model")]
        review_model_can_block: bool,
    },
    /// Link a forge repository to a GitHub repository the app is installed on.
    Link {
        /// `owner/name` in the forge.
        repo: String,
        /// `owner/name` on GitHub.
        github_repo: String,
    },
    /// Show a link's sync state per branch and tag.
    Status {
        /// `owner/name` in the forge.
        repo: String,
    },
    /// Stop syncing a repository.
    Unlink {
        /// `owner/name` in the forge.
        repo: String,
    },
}

pub async fn github(target: &Target<'_>, command: GithubCommand) -> anyhow::Result<()> {
    match command {
        GithubCommand::Configure {
            app_id,
            private_key,
            webhook_secret,
            api_url,
            git_url,
            reconcile_secs,
            review_model,
            review_model_key_file,
            review_model_can_block,
        } => {
            let (review_model_url, review_model) = match review_model {
                Some(spec) => {
                    let (url, model) = config::model_spec(&spec)?;
                    (Some(url), Some(model))
                }
                None => (None, None),
            };
            let review_model_key_path = match review_model_key_file {
                Some(path) => Some(
                    std::fs::canonicalize(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            configure(
                target.data_dir,
                FileConfig {
                    app_id: Some(app_id),
                    private_key_path: Some(
                        std::fs::canonicalize(&private_key)
                            .with_context(|| format!("cannot read {}", private_key.display()))?,
                    ),
                    webhook_secret: Some(Secret::new(webhook_secret)),
                    api_url: Some(api_url),
                    git_url: Some(git_url),
                    reconcile_secs: Some(reconcile_secs),
                    review_model_can_block: review_model
                        .is_some()
                        .then_some(review_model_can_block),
                    review_model_url,
                    review_model,
                    review_model_key_path,
                    review_model_timeout_secs: None,
                },
            )
        }
        GithubCommand::Link { repo, github_repo } => {
            let client = target.client()?;
            let request = GithubLinkRequest {
                repository: github_repo,
            };
            let link: GithubLinkView = client
                .call(
                    Method::POST,
                    &format!("/v1/repos/{repo}/github"),
                    body(&request)?,
                )
                .await?;
            show(target, &link)
        }
        GithubCommand::Status { repo } => {
            let client = target.client()?;
            let link: GithubLinkView = client
                .call(Method::GET, &format!("/v1/repos/{repo}/github"), None)
                .await?;
            show(target, &link)
        }
        GithubCommand::Unlink { repo } => {
            let client = target.client()?;
            let _: Value = client
                .call(Method::DELETE, &format!("/v1/repos/{repo}/github"), None)
                .await?;
            println!("{repo} is no longer synced with GitHub");
            Ok(())
        }
    }
}

fn configure(data_dir: &Path, file: FileConfig) -> anyhow::Result<()> {
    let key = std::fs::read_to_string(file.private_key_path.as_deref().unwrap_or(Path::new("")))
        .context("cannot read the private key")?;
    octocrab::EncodingKey::from_rsa_pem(key.as_bytes())
        .context("the private key is not an RSA key in PEM")?;
    std::fs::create_dir_all(data_dir)?;
    let path = config::file_path(data_dir);
    forge::server::write_private_file(&path, to_toml(&file)?.as_bytes())?;
    println!(
        "wrote {}; restart the forge to apply. Point the app's webhook at <forge URL>/github/webhook",
        path.display()
    );
    Ok(())
}

/// TOML of the file: JSON string escapes are valid TOML basic strings.
fn to_toml(file: &FileConfig) -> anyhow::Result<String> {
    let quote = |s: &str| serde_json::to_string(s);
    let key = file.private_key_path.as_deref().unwrap_or(Path::new(""));
    let mut model = String::new();
    if let (Some(url), Some(name)) = (&file.review_model_url, &file.review_model) {
        model.push_str(&format!(
            "review_model_url = {}\nreview_model = {}\nreview_model_can_block = {}\n",
            quote(url)?,
            quote(name)?,
            file.review_model_can_block.unwrap_or(false)
        ));
        if let Some(path) = &file.review_model_key_path {
            model.push_str(&format!(
                "review_model_key_path = {}\n",
                quote(&path.display().to_string())?
            ));
        }
    }
    Ok(format!(
        "app_id = {}\nprivate_key_path = {}\nwebhook_secret = {}\napi_url = {}\ngit_url = {}\nreconcile_secs = {}\n{model}",
        file.app_id.unwrap_or_default(),
        quote(&key.display().to_string())?,
        quote(
            file.webhook_secret
                .as_ref()
                .map(Secret::expose)
                .unwrap_or("")
        )?,
        quote(file.api_url.as_deref().unwrap_or(config::DEFAULT_API_URL))?,
        quote(file.git_url.as_deref().unwrap_or(config::DEFAULT_GIT_URL))?,
        file.reconcile_secs.unwrap_or(300),
    ))
}

fn show(target: &Target<'_>, link: &GithubLinkView) -> anyhow::Result<()> {
    if target.json {
        return print_json(link);
    }
    println!(
        "linked to {} (installation {})",
        link.repository, link.installation_id
    );
    println!("{:<32} {:<9} {:<26} ERROR", "REF", "STATE", "LAST SYNC");
    for r in &link.refs {
        println!(
            "{:<32} {:<9} {:<26} {}",
            r.ref_name,
            r.state,
            r.last_sync_at,
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
