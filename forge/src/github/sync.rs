//! Two-way sync of a linked repository's branches and tags.
//!
//! One pass, under the repository's sync lock:
//! 1. fetch GitHub's branches and tags into the hidden namespace
//!    `refs/github/{heads,tags}/*` of the forge's bare repository (the
//!    `git` CLI, the installation token sent as an `Authorization` header
//!    through `GIT_CONFIG_*` variables: never in argv, a URL or an error);
//! 2. per ref, compare the forge's value F, GitHub's value G and the last
//!    value both agreed on B (stored in `github_refs`):
//!    - F = G: in sync;
//!    - one side lacks the ref: if the other still holds B it was deleted
//!      there, so delete it here; if it never was synced, create it;
//!    - F is an ancestor of G: fast-forward the forge (compare-and-swap
//!      on the old value, so a concurrent push wins);
//!    - G is an ancestor of F: push F to GitHub without force;
//!    - anything else: diverged, both refs are left alone, `sync.diverged`
//!      is recorded once per pair of values;
//! 3. forge updates become `push`/`branch.*`/`tag.*` events marked
//!    `"source": "github"`, which the sync consumer does not send back (no
//!    ping-pong) while pipelines still run for them.
//!
//! A `401` from GitHub's git endpoint renews the installation token and
//! retries once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::json;

use super::auth::{AppAuth, AuthError};
use super::config::Secret;
use crate::auth::Caller;
use crate::events::EventBus;
use crate::git::pktline::Command as RefUpdate;
use crate::git::{Repositories, git_command, redact_credentials};
use crate::store::{GithubLink, GithubRefState, NewEvent, RepoRow, Store, TokenRow, now};

/// Where GitHub's refs are mirrored inside the forge's repository.
const MIRROR: &str = "refs/github/";
const ZERO: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Getting an installation token failed")]
    Auth(#[from] AuthError),
    #[error("git {what} failed: {stderr}")]
    Git { what: &'static str, stderr: String },
    #[error("Running git failed")]
    Spawn(#[source] std::io::Error),
    #[error("The database failed")]
    Store(#[from] crate::store::StoreError),
    #[error("The forge repository of the link is gone")]
    NoRepo,
    #[error("Reading the synced commits failed: {0}")]
    Inspect(String),
}

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    pub to_forge: usize,
    pub to_github: usize,
    pub diverged: Vec<String>,
}

pub struct Syncer {
    store: Store,
    repos: Repositories,
    events: EventBus,
    auth: Arc<AppAuth>,
    git_url: String,
    public_url: String,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A decision about one ref.
enum Action {
    InSync,
    /// Set the forge's ref from `old` to `new` (zero = absent).
    Forge {
        old: String,
        new: String,
    },
    /// Set GitHub's ref to `new` (`None` deletes).
    Github {
        new: Option<String>,
    },
    Diverged,
}

impl Syncer {
    pub fn new(
        store: Store,
        repos: Repositories,
        events: EventBus,
        auth: Arc<AppAuth>,
        git_url: String,
        public_url: String,
    ) -> Self {
        Self {
            store,
            repos,
            events,
            auth,
            git_url,
            public_url,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The git URL of a GitHub repository (`owner/name`).
    pub fn remote_url(&self, github_repo: &str) -> String {
        format!("{}/{github_repo}.git", self.git_url)
    }

    fn lock(&self, repo_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(repo_id.to_owned())
            .or_default()
            .clone()
    }

    /// Runs `git` with the installation's token, renewing it once when
    /// GitHub refuses it.
    async fn git_with_token(
        &self,
        link: &GithubLink,
        dir: &Path,
        args: &[String],
        what: &'static str,
    ) -> Result<String, SyncError> {
        let installation = link.installation_id as u64;
        let token = self.auth.token(installation).await?;
        match run_git(dir, args, Some(&token), what).await {
            Err(SyncError::Git { stderr, .. }) if refused(&stderr) => {
                tracing::info!(installation, "GitHub refused the git token: renewing it");
                self.auth.invalidate(installation);
                let token = self.auth.token(installation).await?;
                run_git(dir, args, Some(&token), what).await
            }
            other => other,
        }
    }

    /// One full pass over the refs of `link` (see the module docs).
    pub async fn sync(&self, link: &GithubLink) -> Result<SyncReport, SyncError> {
        let lock = self.lock(&link.repo_id);
        let _held = lock.lock().await;
        let repo = self
            .store
            .repo_by_id(&link.repo_id)
            .await?
            .ok_or(SyncError::NoRepo)?;
        let dir = self.repos.path(&repo.id);
        let url = self.remote_url(&link.github_repo);
        let fetch: Vec<String> = [
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &url,
            "+refs/heads/*:refs/github/heads/*",
            "+refs/tags/*:refs/github/tags/*",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.git_with_token(link, &dir, &fetch, "fetch").await?;
        let (forge, github) = read_refs(&dir).await?;
        let previous: HashMap<String, GithubRefState> = self
            .store
            .github_ref_states(&repo.id)
            .await?
            .into_iter()
            .map(|state| (state.ref_name.clone(), state))
            .collect();
        let names: BTreeSet<&String> = forge
            .keys()
            .chain(github.keys())
            .chain(previous.keys())
            .collect();
        let mut report = SyncReport::default();
        let mut forge_updates = Vec::new();
        let mut pushes: Vec<(String, Option<String>)> = Vec::new();
        let mut states = Vec::new();
        for name in names {
            let f = forge.get(name).cloned();
            let g = github.get(name).cloned();
            let base = previous.get(name).and_then(|p| p.synced_sha.clone());
            let action = decide(&dir, f.as_deref(), g.as_deref(), base.as_deref()).await?;
            let mut state = GithubRefState {
                ref_name: name.clone(),
                synced_sha: base.clone(),
                forge_sha: f.clone(),
                github_sha: g.clone(),
                state: "in_sync".into(),
                last_sync_at: now(),
                last_error: None,
            };
            match action {
                Action::InSync => state.synced_sha = f.clone(),
                Action::Forge { old, new } => forge_updates.push((name.clone(), old, new)),
                Action::Github { new } => pushes.push((name.clone(), new)),
                Action::Diverged => {
                    state.state = "diverged".into();
                    let known = previous.get(name).is_some_and(|p| {
                        p.state == "diverged" && p.forge_sha == f && p.github_sha == g
                    });
                    if !known {
                        self.record_diverged(&repo, name, f.as_deref(), g.as_deref())
                            .await;
                    }
                    report.diverged.push(name.clone());
                }
            }
            states.push(state);
        }
        // GitHub → forge.
        let mut applied = Vec::new();
        for (name, old, new) in &forge_updates {
            let state = states
                .iter_mut()
                .find(|s| &s.ref_name == name)
                .expect("every ref has a state");
            match update_forge_ref(&dir, name, old, new).await {
                Ok(()) => {
                    state.forge_sha = (new != ZERO).then(|| new.clone());
                    state.synced_sha = state.forge_sha.clone();
                    applied.push(RefUpdate {
                        old: old.clone(),
                        new: new.clone(),
                        refname: name.clone(),
                    });
                }
                Err(error) => {
                    state.state = "error".into();
                    state.last_error = Some(error.to_string());
                }
            }
        }
        report.to_forge = applied.len();
        if !applied.is_empty() {
            self.record_forge_updates(&repo, &dir, &applied).await?;
        }
        // Forge → GitHub.
        if !pushes.is_empty() {
            let mut args: Vec<String> = vec![
                "push".into(),
                "--porcelain".into(),
                "--".into(),
                url.clone(),
            ];
            args.extend(pushes.iter().map(|(name, new)| match new {
                Some(sha) => format!("{sha}:{name}"),
                None => format!(":{name}"),
            }));
            let outcome = self.git_with_token(link, &dir, &args, "push").await;
            let output = match &outcome {
                Ok(out) => out.clone(),
                Err(SyncError::Git { stderr, .. }) => stderr.clone(),
                Err(_) => String::new(),
            };
            for (name, new) in &pushes {
                let state = states
                    .iter_mut()
                    .find(|s| &s.ref_name == name)
                    .expect("every ref has a state");
                if pushed(&output, name) || outcome.is_ok() {
                    let mirror = format!("{MIRROR}{}", name.trim_start_matches("refs/"));
                    let _ = match new {
                        Some(sha) => {
                            run_git(
                                &dir,
                                &["update-ref".into(), mirror, sha.clone()],
                                None,
                                "update-ref",
                            )
                            .await
                        }
                        None => {
                            run_git(
                                &dir,
                                &["update-ref".into(), "-d".into(), mirror],
                                None,
                                "update-ref",
                            )
                            .await
                        }
                    };
                    state.github_sha = new.clone();
                    state.synced_sha = new.clone();
                    report.to_github += 1;
                } else {
                    state.state = "error".into();
                    state.last_error = Some(match &outcome {
                        Err(error) => redact_credentials(&error.to_string()),
                        Ok(_) => "GitHub rejected the update".into(),
                    });
                }
            }
        }
        for mut state in states {
            if state.state == "in_sync" {
                state.state = classify(&state).into();
            }
            self.store.put_github_ref_state(&repo.id, &state).await?;
        }
        Ok(report)
    }

    /// Drops the mirror of GitHub's refs (the link is gone): a later link
    /// starts from a clean slate.
    pub async fn forget(&self, dir: &Path) -> Result<(), SyncError> {
        let args: Vec<String> = ["for-each-ref", "--format=%(refname)", "refs/github"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for name in run_git(dir, &args, None, "for-each-ref").await?.lines() {
            run_git(
                dir,
                &["update-ref".into(), "-d".into(), name.to_owned()],
                None,
                "update-ref",
            )
            .await?;
        }
        Ok(())
    }

    async fn record_forge_updates(
        &self,
        repo: &RepoRow,
        dir: &Path,
        applied: &[RefUpdate],
    ) -> Result<(), SyncError> {
        let caller = Caller::from_row(&TokenRow {
            id: "github".into(),
            name: "GitHub sync".into(),
            scopes: String::new(),
            repo_id: None,
            vm_id: None,
            created_at: String::new(),
            last_used_at: None,
            revoked_at: None,
        });
        let (dir, row, url, commands) = (
            dir.to_owned(),
            repo.clone(),
            self.public_url.clone(),
            applied.to_vec(),
        );
        let mut events = tokio::task::spawn_blocking(move || {
            crate::git::push::events_for(&dir, &row, &caller, &url, &commands)
        })
        .await
        .map_err(|e| SyncError::Inspect(e.to_string()))?
        .map_err(|e| SyncError::Inspect(e.to_string()))?;
        for event in &mut events {
            event.payload["source"] = json!("github");
        }
        self.events
            .record(
                &self.store,
                &repo.id,
                &repo.full_name(),
                Some("github"),
                &events,
            )
            .await?;
        Ok(())
    }

    async fn record_diverged(
        &self,
        repo: &RepoRow,
        name: &str,
        forge: Option<&str>,
        github: Option<&str>,
    ) {
        tracing::warn!(repo = %repo.full_name(), r#ref = name, "the forge and GitHub diverged");
        let event = NewEvent {
            kind: "sync.diverged".into(),
            ref_name: Some(name.to_owned()),
            payload: json!({
                "repo": repo.full_name(), "ref": name,
                "branch": name.strip_prefix("refs/heads/"),
                "forge_sha": forge, "github_sha": github, "sha": forge,
            }),
        };
        let recorded = self
            .events
            .record(&self.store, &repo.id, &repo.full_name(), None, &[event])
            .await;
        if let Err(error) = recorded {
            tracing::error!(%error, "recording sync.diverged failed");
        }
    }
}

/// The three-way decision for one ref.
async fn decide(
    dir: &Path,
    f: Option<&str>,
    g: Option<&str>,
    base: Option<&str>,
) -> Result<Action, SyncError> {
    Ok(match (f, g) {
        (None, None) => Action::InSync,
        (Some(f), Some(g)) if f == g => Action::InSync,
        (Some(f), None) if base == Some(f) => Action::Forge {
            old: f.into(),
            new: ZERO.into(),
        },
        (Some(f), None) if base.is_none() => Action::Github {
            new: Some(f.into()),
        },
        (None, Some(g)) if base == Some(g) => Action::Github { new: None },
        (None, Some(g)) if base.is_none() => Action::Forge {
            old: ZERO.into(),
            new: g.into(),
        },
        (Some(f), Some(g)) => {
            if is_ancestor(dir, f, g).await? {
                Action::Forge {
                    old: f.into(),
                    new: g.into(),
                }
            } else if is_ancestor(dir, g, f).await? {
                Action::Github {
                    new: Some(f.into()),
                }
            } else {
                Action::Diverged
            }
        }
        _ => Action::Diverged,
    })
}

/// How a ref stands after a pass.
fn classify(state: &GithubRefState) -> &'static str {
    match (&state.forge_sha, &state.github_sha) {
        (f, g) if f == g => "in_sync",
        (_, g) if *g == state.synced_sha => "ahead",
        (f, _) if *f == state.synced_sha => "behind",
        _ => "diverged",
    }
}

/// Whether git's porcelain push output reports `name` as updated.
fn pushed(output: &str, name: &str) -> bool {
    output.lines().any(|line| {
        let mut parts = line.split('\t');
        let flag = parts.next().unwrap_or("");
        let refs = parts.next().unwrap_or("");
        refs.ends_with(&format!(":{name}")) && matches!(flag, " " | "*" | "-" | "=")
    })
}

fn refused(stderr: &str) -> bool {
    stderr.contains("401")
        || stderr.contains("Authentication failed")
        || stderr.contains("could not read Username")
}

async fn is_ancestor(dir: &Path, older: &str, newer: &str) -> Result<bool, SyncError> {
    let status = git_command(dir)
        .args(["merge-base", "--is-ancestor", older, newer])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(SyncError::Spawn)?;
    Ok(status.success())
}

async fn update_forge_ref(dir: &Path, name: &str, old: &str, new: &str) -> Result<(), SyncError> {
    let args: Vec<String> = if new == ZERO {
        vec!["update-ref".into(), "-d".into(), name.into(), old.into()]
    } else {
        vec!["update-ref".into(), name.into(), new.into(), old.into()]
    };
    run_git(dir, &args, None, "update-ref").await.map(|_| ())
}

/// The forge's refs and GitHub's mirrored refs, by full ref name.
async fn read_refs(
    dir: &Path,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), SyncError> {
    let args: Vec<String> = [
        "for-each-ref",
        "--format=%(objectname) %(refname)",
        "refs/heads",
        "refs/tags",
        "refs/github",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let listing = run_git(dir, &args, None, "for-each-ref").await?;
    let (mut forge, mut github) = (BTreeMap::new(), BTreeMap::new());
    for line in listing.lines() {
        let Some((sha, name)) = line.split_once(' ') else {
            continue;
        };
        match name.strip_prefix(MIRROR) {
            Some(rest) => github.insert(format!("refs/{rest}"), sha.to_owned()),
            None => forge.insert(name.to_owned(), sha.to_owned()),
        };
    }
    Ok((forge, github))
}

/// Runs git in `dir`; with a token, GitHub's git host gets it as a Basic
/// `x-access-token` header passed in the environment.
async fn run_git(
    dir: &Path,
    args: &[String],
    token: Option<&Secret>,
    what: &'static str,
) -> Result<String, SyncError> {
    let mut command = git_command(dir);
    command.args(args).env("GIT_ALLOW_PROTOCOL", "http:https");
    if let Some(token) = token {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("x-access-token:{}", token.expose()));
        command
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Basic {basic}"),
            );
    }
    let output = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .map_err(SyncError::Spawn)?;
    if !output.status.success() {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if what == "push" {
            stderr = format!(
                "{}\n{stderr}",
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        if let Some(token) = token {
            stderr = stderr.replace(token.expose(), "***");
        }
        return Err(SyncError::Git {
            what,
            stderr: redact_credentials(&stderr),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_push_output_is_read() {
        let out = "To http://x/a.git\n \tabc:refs/heads/main\t[up to date]\n!\tdef:refs/heads/dev\t[rejected] (non-fast-forward)\nDone\n";
        assert!(pushed(out, "refs/heads/main"));
        assert!(!pushed(out, "refs/heads/dev"));
    }

    #[test]
    fn states_are_classified() {
        let state = |f: Option<&str>, g: Option<&str>, b: Option<&str>| GithubRefState {
            ref_name: "refs/heads/main".into(),
            synced_sha: b.map(Into::into),
            forge_sha: f.map(Into::into),
            github_sha: g.map(Into::into),
            state: String::new(),
            last_sync_at: String::new(),
            last_error: None,
        };
        assert_eq!(classify(&state(Some("a"), Some("a"), Some("a"))), "in_sync");
        assert_eq!(classify(&state(Some("b"), Some("a"), Some("a"))), "ahead");
        assert_eq!(classify(&state(Some("a"), Some("b"), Some("a"))), "behind");
        assert_eq!(
            classify(&state(Some("b"), Some("c"), Some("a"))),
            "diverged"
        );
    }
}
