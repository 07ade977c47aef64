//! Putting a branch of a forge repository into a sandbox's `/workspace`:
//! a git bundle (only what the sandbox lacks, when it already has a commit)
//! is made on the host, copied in through the agent, fetched and checked
//! out, with the forge as `origin` (through the sandbox's git remote,
//! `gitrelay.rs`). Every command runs without a shell, so
//! branch names cannot inject anything.

use std::time::Duration;

use ::sandbox::Command;

use super::Sandboxes;
use crate::git::{Repositories, git_command};

const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the bundle lands inside the sandbox.
const BUNDLE_IN_SANDBOX: &str = "/tmp/forge-checkout.bundle";

/// What to check out where.
#[derive(Debug)]
pub struct Target<'a> {
    pub vm: &'a str,
    pub repo_id: &'a str,
    pub clone_url: &'a str,
    pub branch: &'a str,
    pub commit: &'a str,
    /// A commit the sandbox already has: the bundle then holds only what is new.
    pub have: Option<&'a str>,
}

/// Checks `target.commit` out in the sandbox; returns the log.
pub async fn checkout(
    sandboxes: &Sandboxes,
    repos: &Repositories,
    target: &Target<'_>,
) -> anyhow::Result<String> {
    let bundle = bundle(repos, target).await?;
    let mut log = format!("bundle of {} bytes\n", bundle.len());
    sandboxes
        .write_file(target.vm, BUNDLE_IN_SANDBOX, &bundle)
        .await?;
    let origin = super::gitrelay::origin_url(target.clone_url);
    let refspec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", target.branch);
    let commands: [&[&str]; 5] = [
        &["git", "init", "-q", "/workspace"],
        &[
            "git",
            "-C",
            "/workspace",
            "fetch",
            "-q",
            "--force",
            BUNDLE_IN_SANDBOX,
            &refspec,
        ],
        &[
            "git",
            "-C",
            "/workspace",
            "checkout",
            "-q",
            "--force",
            "-B",
            target.branch,
            target.commit,
        ],
        &[
            "git",
            "-C",
            "/workspace",
            "config",
            "remote.origin.url",
            &origin,
        ],
        &["rm", "-f", BUNDLE_IN_SANDBOX],
    ];
    for argv in commands {
        let command = Command::new(argv.iter().copied()).timeout(CHECKOUT_TIMEOUT);
        let output = sandboxes.exec(target.vm, command).await?;
        log.push_str(&String::from_utf8_lossy(&output.stdout));
        log.push_str(&String::from_utf8_lossy(&output.stderr));
        if !output.exited.status.success() {
            anyhow::bail!("{log}`{}` failed", argv.join(" "));
        }
    }
    log.push_str(&format!(
        "checked out {} at {}\n",
        target.branch, target.commit
    ));
    Ok(log)
}

/// A bundle of the branch, incremental from `target.have` when possible.
async fn bundle(repos: &Repositories, target: &Target<'_>) -> anyhow::Result<Vec<u8>> {
    let dir = repos.path(target.repo_id);
    let branch_ref = format!("refs/heads/{}", target.branch);
    let mut attempts = vec![None];
    if let Some(have) = target.have {
        attempts.insert(0, Some(format!("^{have}")));
    }
    let mut last_error = String::new();
    for exclude in attempts {
        let mut command = git_command(&dir);
        command
            // To stdout: no host file, so no shared temporary name for
            // concurrent checkouts (or forges) to collide on.
            .args(["bundle", "create", "-q", "-"])
            .arg(&branch_ref);
        if let Some(exclude) = &exclude {
            command.arg(exclude);
        }
        let output = command.output().await?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        // An empty incremental bundle (nothing new) or a vanished base: try the whole branch.
        last_error = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    }
    anyhow::bail!("git bundle failed: {last_error}")
}
