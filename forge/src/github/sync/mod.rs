//! Two-way sync of a linked repository's branches and tags.
//!
//! One pass, under the repository's sync lock:
//! 1. fetch GitHub's branches and tags into the hidden namespace
//!    `refs/github/{heads,tags}/*` of the forge's bare repository (the
//!    `git` CLI, the installation token sent as an `Authorization` header
//!    through `GIT_CONFIG_*` variables: never in argv, a URL or an error);
//! 2. take a [`plan::Snapshot`]: the forge's refs, GitHub's mirrored refs,
//!    what the previous pass stored per ref (`github_refs`), and for each
//!    ref the two sides hold at different commits, which contains which;
//! 3. [`plan::plan`] decides, without I/O, what each ref needs and why
//!    (in sync, fast-forward the forge, push to GitHub, delete on either
//!    side, diverged: the rules are in [`plan`]'s docs);
//! 4. [`apply::apply`] performs the plan: forge updates are
//!    compare-and-swap, so a concurrent push wins; pushes never force; a
//!    step that fails for one ref is recorded against that ref (state
//!    `error`, `last_error`) and the other refs still sync;
//! 5. each ref's state is stored. Forge updates become `push`/`branch.*`/
//!    `tag.*` events marked `"source": "github"`, which the sync consumer
//!    does not send back (no ping-pong) while pipelines still run for them.
//!
//! A `401` from GitHub's git endpoint renews the installation token and
//! retries once.

mod apply;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::json;

use self::apply::{Effects, ZERO};
use self::plan::{Lineage, Snapshot};
use super::auth::{AppAuth, AuthError};
use super::config::Secret;
use crate::auth::Caller;
use crate::events::EventBus;
use crate::git::pktline::Command as RefUpdate;
use crate::git::{Repositories, git_command, redact_credentials};
use crate::store::{GithubLink, NewEvent, RepoRow, Store, TokenRow, now};

/// Where GitHub's refs are mirrored inside the forge's repository.
const MIRROR: &str = "refs/github/";

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
    /// The refs whose update failed, with why (also stored as their
    /// `last_error`).
    pub failed: BTreeMap<String, String>,
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
        let snapshot = self.snapshot(&repo, &dir).await?;
        let plan = plan::plan(&snapshot);
        let live = Live {
            syncer: self,
            link,
            repo: &repo,
            dir: &dir,
            url,
        };
        let applied = apply::apply(&live, &plan, &now()).await?;
        for row in &applied.rows {
            self.store.put_github_ref_state(&repo.id, row).await?;
        }
        Ok(applied.report)
    }

    /// What the planner needs, read from the repository (GitHub's refs as
    /// just fetched) and the store.
    async fn snapshot(&self, repo: &RepoRow, dir: &Path) -> Result<Snapshot, SyncError> {
        let (forge, github) = read_refs(dir).await?;
        let previous = self
            .store
            .github_ref_states(&repo.id)
            .await?
            .into_iter()
            .map(|state| (state.ref_name.clone(), state))
            .collect();
        let mut snapshot = Snapshot {
            forge,
            github,
            previous,
            lineage: BTreeMap::new(),
        };
        let differing: Vec<(String, String, String)> = snapshot
            .differing()
            .map(|(name, f, g)| (name.to_owned(), f.to_owned(), g.to_owned()))
            .collect();
        for (name, f, g) in differing {
            let lineage = if is_ancestor(dir, &f, &g).await? {
                Lineage::ForgeBehind
            } else if is_ancestor(dir, &g, &f).await? {
                Lineage::GithubBehind
            } else {
                Lineage::Unrelated
            };
            snapshot.lineage.insert(name, lineage);
        }
        Ok(snapshot)
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
            crate::git::push::events_for(&dir, &row, &caller, &url, &commands, &Default::default())
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

/// A pass's effects on the forge's repository, GitHub and the event log.
struct Live<'a> {
    syncer: &'a Syncer,
    link: &'a GithubLink,
    repo: &'a RepoRow,
    dir: &'a Path,
    /// GitHub's git URL of the linked repository.
    url: String,
}

impl Effects for Live<'_> {
    async fn set_forge_ref(&self, name: &str, old: &str, new: &str) -> Result<(), SyncError> {
        update_forge_ref(self.dir, name, old, new).await
    }

    async fn record_forge_updates(&self, applied: &[RefUpdate]) -> Result<(), SyncError> {
        self.syncer
            .record_forge_updates(self.repo, self.dir, applied)
            .await
    }

    async fn push(&self, updates: &[(&str, Option<&str>)]) -> Result<String, SyncError> {
        let mut args: Vec<String> = vec![
            "push".into(),
            "--porcelain".into(),
            "--".into(),
            self.url.clone(),
        ];
        args.extend(updates.iter().map(|(name, new)| match new {
            Some(sha) => format!("{sha}:{name}"),
            None => format!(":{name}"),
        }));
        self.syncer
            .git_with_token(self.link, self.dir, &args, "push")
            .await
    }

    async fn set_mirror_ref(&self, name: &str, new: Option<&str>) -> Result<(), SyncError> {
        let mirror = format!("{MIRROR}{}", name.trim_start_matches("refs/"));
        let args: Vec<String> = match new {
            Some(sha) => vec!["update-ref".into(), mirror, sha.into()],
            None => vec!["update-ref".into(), "-d".into(), mirror],
        };
        run_git(self.dir, &args, None, "update-ref")
            .await
            .map(|_| ())
    }

    async fn announce_diverged(&self, name: &str, forge: Option<&str>, github: Option<&str>) {
        self.syncer
            .record_diverged(self.repo, name, forge, github)
            .await;
    }
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

/// Moves the forge's ref `name` from `old` to `new` ([`ZERO`]: absent),
/// only if it still is at `old`: git checks and moves under the ref's lock.
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

    /// A bare repository with two commits, `first` and its child `second`.
    struct Repository {
        dir: tempfile::TempDir,
        first: String,
        second: String,
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn repository() -> Repository {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "--quiet", "--bare"]);
        let tree = git(
            dir.path(),
            &["hash-object", "-t", "tree", "-w", "/dev/null"],
        );
        let first = git(dir.path(), &["commit-tree", &tree, "-m", "first"]);
        let second = git(
            dir.path(),
            &["commit-tree", &tree, "-p", &first, "-m", "second"],
        );
        Repository { dir, first, second }
    }

    fn forge_ref(repo: &Repository, name: &str) -> Option<String> {
        let listing = git(
            repo.dir.path(),
            &["for-each-ref", "--format=%(objectname)", name],
        );
        (!listing.is_empty()).then_some(listing)
    }

    #[tokio::test]
    async fn a_forge_ref_is_created_moved_and_deleted_from_the_value_it_was_seen_at() {
        let repo = repository();
        let (dir, main) = (repo.dir.path(), "refs/heads/main");
        update_forge_ref(dir, main, ZERO, &repo.first)
            .await
            .expect("create");
        update_forge_ref(dir, main, &repo.first, &repo.second)
            .await
            .expect("fast-forward");
        assert_eq!(forge_ref(&repo, main), Some(repo.second.clone()));
        update_forge_ref(dir, main, &repo.second, ZERO)
            .await
            .expect("delete");
        assert_eq!(forge_ref(&repo, main), None);
    }

    #[tokio::test]
    async fn a_forge_ref_moved_since_it_was_seen_is_left_to_the_concurrent_push() {
        let repo = repository();
        let (dir, main) = (repo.dir.path(), "refs/heads/main");
        // The pass saw `main` absent, then a push created it.
        git(dir, &["update-ref", main, &repo.second]);
        let created = update_forge_ref(dir, main, ZERO, &repo.first).await;
        assert!(
            matches!(
                &created,
                Err(SyncError::Git {
                    what: "update-ref",
                    ..
                })
            ),
            "{created:?}"
        );
        // The pass saw `first`, the push moved it to `second`.
        let deleted = update_forge_ref(dir, main, &repo.first, ZERO).await;
        assert!(deleted.is_err(), "{deleted:?}");
        assert_eq!(forge_ref(&repo, main), Some(repo.second.clone()));
    }

    #[tokio::test]
    async fn github_refs_are_read_from_the_mirror_and_the_forges_from_heads_and_tags() {
        let repo = repository();
        let dir = repo.dir.path();
        git(dir, &["update-ref", "refs/heads/main", &repo.second]);
        git(dir, &["update-ref", "refs/tags/v1", &repo.first]);
        git(dir, &["update-ref", "refs/github/heads/main", &repo.first]);
        git(dir, &["update-ref", "refs/github/tags/v1", &repo.first]);
        git(dir, &["update-ref", "refs/notes/commits", &repo.first]);
        let (forge, github) = read_refs(dir).await.expect("refs");
        let names = |refs: &BTreeMap<String, String>| refs.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&forge), ["refs/heads/main", "refs/tags/v1"]);
        assert_eq!(names(&github), ["refs/heads/main", "refs/tags/v1"]);
        assert_eq!(forge["refs/heads/main"], repo.second);
        assert_eq!(github["refs/heads/main"], repo.first);
    }
}
