//! The GitHub App: the forge installs as an app on GitHub, keeps linked
//! repositories in sync both ways and reviews pull requests: the head's
//! code, run with the base branch's steps.
//!
//! Parts: [`config`] (app id, key, secret, URLs), [`auth`] (app JWT and
//! installation tokens through octocrab), [`webhook`] (inbound deliveries:
//! verify, store, process), [`sync`] (one three-way pass per repository),
//! [`review`] (the review bot). Background tasks, started by [`Github::take_up_duties`] on
//! the server holding the duties (`store/locks.rs`):
//! - the delivery processor, woken by each stored delivery;
//! - the outbox consumer (cursor `github_cursor`): forge pushes not caused
//!   by GitHub are synced to GitHub, and `run.completed` feeds the bot;
//! - the reconcile loop: every `reconcile_secs`, a sync pass of every link
//!   repairs what missed webhooks left behind, and reviews that could not
//!   be posted are tried again.

pub mod auth;
pub mod config;
pub mod review;
pub mod sync;
pub mod webhook;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::git::Repositories;
use crate::store::Store;

pub use config::GithubConfig;
pub use review::ReviewMode;

/// The running app, shared by the API handlers and its background tasks.
pub struct Github {
    pub config: GithubConfig,
    pub auth: Arc<auth::AppAuth>,
    pub syncer: sync::Syncer,
    pub reviewer: review::Reviewer,
    store: Store,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Github {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Github")
            .field("app_id", &self.config.app_id)
            .finish_non_exhaustive()
    }
}

impl Github {
    /// Wakes the delivery processor (a delivery was stored).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Settings a linked forge repository gets: the mirror of GitHub's
    /// refs is invisible to clients of the forge.
    pub async fn prepare(&self, git_dir: &Path) -> anyhow::Result<()> {
        let status = crate::git::git_command(git_dir)
            .args(["config", "transfer.hideRefs", "refs/github"])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "git config failed");
        Ok(())
    }

    /// Reads the outbox after the cursor: forge pushes go to GitHub, run
    /// completions to the bot. Returns how many events were read.
    async fn consume(&self) -> anyhow::Result<usize> {
        let cursor = self.store.github_cursor().await?;
        let events = self.store.all_events_after(cursor, 100).await?;
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(0);
        };
        let mut to_sync = BTreeSet::new();
        for event in &events {
            // Events of the forge itself (sandboxes without a repository)
            // concern no linked repository.
            let Some(repo_id) = &event.repo_id else {
                continue;
            };
            let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
            match event.kind.as_str() {
                "push" if payload["source"] != "github" => {
                    if let (Some(branch), Some(after)) =
                        (payload["branch"].as_str(), payload["after"].as_str())
                        && payload["deleted"] != true
                    {
                        self.store
                            .move_github_pull_heads(repo_id, branch, after)
                            .await?;
                    }
                    to_sync.insert(repo_id.clone());
                }
                "run.completed" => {
                    if let Err(error) = self.reviewer.on_run_completed(repo_id, &payload).await {
                        tracing::warn!(error = format!("{error:#}"), "posting a review failed");
                    }
                }
                _ => {}
            }
        }
        for repo_id in to_sync {
            if let Some(link) = self.store.github_link(&repo_id).await?
                && let Err(error) = self.syncer.sync(&link).await
            {
                tracing::warn!(repo = %link.github_repo, error = format!("{error:#}"), "syncing to GitHub failed");
            }
        }
        self.store.set_github_cursor(last).await?;
        Ok(events.len())
    }

    /// One sync pass of every linked repository, then a second chance for
    /// reviews whose posting failed (GitHub down, a crash).
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        for link in self.store.github_links().await? {
            if let Err(error) = self.syncer.sync(&link).await {
                tracing::warn!(repo = %link.github_repo, error = format!("{error:#}"), "reconciling with GitHub failed");
            }
            for pull in self.store.all_open_github_pulls(&link.repo_id).await? {
                if let Err(error) = self.reviewer.on_pull(&link, &pull).await {
                    tracing::warn!(repo = %link.github_repo, pull = pull.number, error = format!("{error:#}"), "retrying a review failed");
                }
            }
        }
        Ok(())
    }
}

/// Loads the configuration: the app, when it is configured. Its background
/// tasks start with [`Github::take_up_duties`].
pub async fn load(
    data_dir: &Path,
    store: Store,
    repos: Repositories,
    events: EventBus,
    public_url: &str,
    review_mode: ReviewMode,
) -> anyhow::Result<Option<Arc<Github>>> {
    let Some(config) = config::load(data_dir)? else {
        return Ok(None);
    };
    let auth = Arc::new(auth::AppAuth::new(&config)?);
    let github = Arc::new(Github {
        syncer: sync::Syncer::new(
            store.clone(),
            repos.clone(),
            events.clone(),
            auth.clone(),
            config.git_url.clone(),
            public_url.to_owned(),
        ),
        reviewer: review::Reviewer::new(
            store.clone(),
            repos.clone(),
            events.clone(),
            auth.clone(),
            public_url.to_owned(),
            review_mode,
            config.review_model.clone(),
        ),
        auth,
        config,
        store,
        wake: tokio::sync::Notify::new(),
    });
    tracing::info!(app_id = github.config.app_id, api = %github.config.api_url, "GitHub App configured");
    Ok(Some(github))
}

impl Github {
    /// Starts the background tasks (the delivery processor, the outbox
    /// consumer, the reconcile loop), which stop when `shutdown` is
    /// cancelled: on the server holding the duties only (`store/locks.rs`),
    /// so two servers never sync one repository at once. A delivery
    /// stored by another server is found by the processor's next look.
    pub fn take_up_duties(self: &Arc<Self>, events: &EventBus, shutdown: CancellationToken) {
        let github = self;
        let processor = github.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                match processor.process_pending().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(error) => tracing::error!(
                        error = format!("{error:#}"),
                        "reading GitHub deliveries failed"
                    ),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = processor.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
        let consumer = github.clone();
        let stop = shutdown.clone();
        let mut news = events.subscribe();
        tokio::spawn(async move {
            loop {
                match consumer.consume().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(error) => tracing::error!(
                        error = format!("{error:#}"),
                        "reading events for GitHub failed"
                    ),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = news.recv() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
        let reconciler = github.clone();
        tokio::spawn(async move {
            let period = Duration::from_secs(reconciler.config.reconcile_secs);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                if let Err(error) = reconciler.reconcile().await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "reconciling with GitHub failed"
                    );
                }
            }
        });
    }
}
