//! Git hosting: repositories on disk, the smart HTTP transport, and what a
//! push changed.
//!
//! Each repository is a bare git directory `<data>/repos/<id>.git`, named by
//! its database id so that a name never becomes a path. Creation builds the
//! directory under a temporary name and renames it into place; deletion
//! removes the record first (the commit point), then the directory.
//! Transport is git's own (`git upload-pack` / `git receive-pack
//! --stateless-rpc`, see [`http`]); reading is gitoxide's ([`inspect`]).

pub mod http;
pub mod inspect;
pub mod name;
pub mod pktline;
pub mod push;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

pub use name::{NameError, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("Running git {what} failed")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("git {what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
    #[error("Filesystem operation on {path} failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The directory that holds every repository.
#[derive(Debug, Clone)]
pub struct Repositories {
    root: PathBuf,
}

impl Repositories {
    /// Opens (creating) `root` and removes leftovers of interrupted
    /// creations.
    pub fn open(root: PathBuf) -> Result<Self, GitError> {
        let io = |source| GitError::Io {
            path: root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(io)?;
        for entry in std::fs::read_dir(&root).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(".tmp-")
                || name.to_string_lossy().starts_with(".trash-")
            {
                tracing::info!(path = %entry.path().display(), "removing an interrupted repository operation");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Self { root })
    }

    /// The bare directory of repository `id`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.git"))
    }

    fn temporary(&self, id: &str) -> PathBuf {
        self.root.join(format!(".tmp-{id}"))
    }

    /// Creates an empty bare repository whose HEAD names `default_branch`.
    pub async fn init(&self, id: &str, default_branch: &str) -> Result<(), GitError> {
        let temporary = self.temporary(id);
        let result = async {
            run(
                git_command(&self.root)
                    .arg("init")
                    .arg("--bare")
                    .arg("--quiet")
                    .arg(format!("--initial-branch={default_branch}"))
                    .arg(&temporary),
                "init",
            )
            .await?;
            configure(&temporary).await?;
            self.commit(id).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&temporary).await;
        }
        result
    }

    /// Clones every branch and tag of `url` (http or https) into a new
    /// repository and returns the default branch (the source's HEAD unless
    /// `default_branch` is given).
    pub async fn import(
        &self,
        id: &str,
        url: &str,
        default_branch: Option<&str>,
        resolve: Option<&str>,
    ) -> Result<String, GitError> {
        let temporary = self.temporary(id);
        let result = async {
            let mut clone = git_command(&self.root);
            // No redirect is followed (it could lead anywhere the checked
            // URL does not), and the host is reached at the address that
            // was checked (`resolve`, curl's `host:port:address`).
            clone
                .env("GIT_ALLOW_PROTOCOL", "http:https")
                .args(["-c", "http.followRedirects=false"]);
            if let Some(resolve) = resolve {
                clone
                    .arg("-c")
                    .arg(format!("http.curloptResolve={resolve}"));
            }
            run(
                clone
                    .arg("clone")
                    .arg("--bare")
                    .arg("--quiet")
                    .arg("--")
                    .arg(url)
                    .arg(&temporary),
                "clone",
            )
            .await?;
            // The source URL may carry credentials: do not keep it.
            run(
                git_command(&temporary).args(["remote", "remove", "origin"]),
                "remote remove",
            )
            .await?;
            configure(&temporary).await?;
            let branch = match default_branch {
                Some(branch) => {
                    run(
                        git_command(&temporary)
                            .args(["symbolic-ref", "HEAD"])
                            .arg(format!("refs/heads/{branch}")),
                        "symbolic-ref",
                    )
                    .await?;
                    branch.to_owned()
                }
                None => {
                    let head = run(
                        git_command(&temporary).args(["symbolic-ref", "--short", "HEAD"]),
                        "symbolic-ref",
                    )
                    .await?;
                    head.trim().to_owned()
                }
            };
            self.commit(id).await?;
            Ok(branch)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&temporary).await;
        }
        result
    }

    async fn commit(&self, id: &str) -> Result<(), GitError> {
        let target = self.path(id);
        tokio::fs::rename(self.temporary(id), &target)
            .await
            .map_err(|source| GitError::Io {
                path: target.display().to_string(),
                source,
            })
    }

    /// Removes a repository's directory (after its record is gone).
    pub async fn remove(&self, id: &str) -> Result<(), GitError> {
        let path = self.path(id);
        let trash = self.root.join(format!(".trash-{id}"));
        let io = |source| GitError::Io {
            path: path.display().to_string(),
            source,
        };
        match tokio::fs::rename(&path, &trash).await {
            Ok(()) => tokio::fs::remove_dir_all(&trash).await.map_err(io),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io(error)),
        }
    }
}

/// Settings every hosted repository gets.
async fn configure(git_dir: &Path) -> Result<(), GitError> {
    for (key, value) in [
        // Partial clones (`--filter=blob:none`) for agents that want a fast checkout.
        ("uploadpack.allowFilter", "true"),
        // Reject objects that are malformed, as a forge that serves them onward must.
        ("receive.fsckObjects", "true"),
        ("core.logAllRefUpdates", "false"),
    ] {
        run(git_command(git_dir).args(["config", key, value]), "config").await?;
    }
    Ok(())
}

/// A `git` command with a sanitised environment: nothing of the forge's
/// environment leaks in, and no system or user configuration applies.
pub fn git_command(cwd: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(cwd)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", "/nonexistent")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The first `max` bytes of blob `id` in `git_dir`, streamed from `git
/// cat-file`, which is stopped there: however large the blob inflates,
/// the forge holds `max` bytes.
pub async fn blob_head(git_dir: &Path, id: &str, max: usize) -> Result<Vec<u8>, GitError> {
    use tokio::io::AsyncReadExt;
    let what = "cat-file";
    let mut child = git_command(git_dir)
        .args(["cat-file", "blob", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| GitError::Spawn { what, source })?;
    let stdout = child.stdout.take().expect("piped");
    let mut head = Vec::with_capacity(max.min(1 << 20));
    stdout
        .take(max as u64)
        .read_to_end(&mut head)
        .await
        .map_err(|source| GitError::Spawn { what, source })?;
    // Dropping the child kills it (`kill_on_drop`), and reaps it.
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok(head)
}

async fn run(command: &mut Command, what: &'static str) -> Result<String, GitError> {
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| GitError::Spawn { what, source })?;
    if !output.status.success() {
        return Err(GitError::Failed {
            what,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `branch` is an acceptable branch name for a default branch.
pub fn valid_branch_name(branch: &str) -> bool {
    !branch.is_empty()
        && branch.len() <= 200
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("/.")
}

/// Replaces the credentials of every URL in `text` (`scheme://user:secret@`)
/// with `***`, for logs and messages.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', ' ', '\'', '"']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                rest = &tail[user_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_credentials("cloning 'https://x:forge_abc@host/a.git' failed"),
            "cloning 'https://***@host/a.git' failed"
        );
        assert_eq!(redact_credentials("http://host/a"), "http://host/a");
    }

    #[test]
    fn branch_names() {
        for good in ["main", "release/1.0", "feat_x-y"] {
            assert!(valid_branch_name(good), "{good}");
        }
        for bad in [
            "", "-x", "a..b", "a/", "x.lock", "a b", "/a", "a//b", "a/.b",
        ] {
            assert!(!valid_branch_name(bad), "{bad}");
        }
    }
}
