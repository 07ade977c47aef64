//! Reading repositories with gitoxide: branches, commits, and what a ref
//! update changed (the commits it added and the paths it touched). All
//! functions block; call them from a blocking task.

use std::path::Path;

use gix::ObjectId;
use gix::bstr::ByteSlice;
use serde::Serialize;

/// At most this many commits are described per ref update.
pub const MAX_COMMITS: usize = 100;
/// At most this many changed paths are listed per ref update (and per commit).
pub const MAX_PATHS: usize = 1000;

#[derive(Debug, thiserror::Error)]
#[error("Reading the repository failed: {0}")]
pub struct InspectError(String);

pub(super) fn err(error: impl std::fmt::Display) -> InspectError {
    InspectError(error.to_string())
}

pub(super) type Result<T> = std::result::Result<T, InspectError>;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// A commit as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CommitSummary {
    pub id: String,
    pub message: String,
    pub author: Author,
    /// Author time, RFC 3339.
    pub time: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Branch {
    pub name: String,
    pub commit: CommitSummary,
}

/// A commit added by a push, with the paths it changed against its first
/// parent.
#[derive(Debug, Clone, Serialize)]
pub struct PushedCommit {
    #[serde(flatten)]
    pub commit: CommitSummary,
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

/// What one ref update changed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct UpdateSummary {
    /// Newest first, at most [`MAX_COMMITS`].
    pub commits: Vec<PushedCommit>,
    pub commits_total: usize,
    /// The old value is not an ancestor of the new one.
    pub forced: bool,
    /// Paths changed between old and new (for a new ref: between the new
    /// commits' base and new), sorted, at most [`MAX_PATHS`].
    pub paths: Vec<String>,
    pub paths_truncated: bool,
}

pub(super) fn open(git_dir: &Path) -> Result<gix::Repository> {
    let mut repo = gix::open_opts(git_dir, gix::open::Options::isolated()).map_err(err)?;
    repo.object_cache_size_if_unset(4 << 20);
    Ok(repo)
}

fn summarise(commit: &gix::Commit<'_>) -> Result<CommitSummary> {
    let author = commit.author().map_err(err)?;
    let seconds = author.seconds();
    let time = time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(err)?;
    let message = commit
        .message_raw_sloppy()
        .to_str_lossy()
        .trim_end()
        .to_owned();
    Ok(CommitSummary {
        id: commit.id.to_string(),
        message,
        author: Author {
            name: author.name.to_str_lossy().trim().to_owned(),
            email: author.email.to_str_lossy().trim().to_owned(),
        },
        time,
    })
}

/// Every branch with its head commit, by name.
pub fn branches(git_dir: &Path) -> Result<Vec<Branch>> {
    let repo = open(git_dir)?;
    let references = repo.references().map_err(err)?;
    let mut branches = Vec::new();
    for reference in references.local_branches().map_err(err)? {
        let mut reference = reference.map_err(err)?;
        let name = reference.name().shorten().to_str_lossy().into_owned();
        let Ok(commit) = reference.peel_to_commit() else {
            continue;
        };
        branches.push(Branch {
            name,
            commit: summarise(&commit)?,
        });
    }
    branches.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(branches)
}

/// The commit `id`, summarised.
pub fn commit(git_dir: &Path, id: &str) -> Result<CommitSummary> {
    let repo = open(git_dir)?;
    let id = ObjectId::from_hex(id.as_bytes()).map_err(err)?;
    summarise(&repo.find_commit(id).map_err(err)?)
}

/// The object each branch points at (no commit is read).
pub fn branch_tips(git_dir: &Path) -> Result<Vec<String>> {
    let repo = open(git_dir)?;
    let references = repo.references().map_err(err)?;
    let mut tips = Vec::new();
    for reference in references.local_branches().map_err(err)? {
        if let Ok(id) = reference.map_err(err)?.peel_to_id() {
            tips.push(id.to_string());
        }
    }
    Ok(tips)
}

/// The current value of `refname`, if it exists.
pub fn resolve(git_dir: &Path, refname: &str) -> Result<Option<String>> {
    let repo = open(git_dir)?;
    let found = repo.try_find_reference(refname).map_err(err)?;
    Ok(match found {
        Some(mut reference) => Some(reference.peel_to_id().map_err(err)?.to_string()),
        None => None,
    })
}

/// The content of `path` in `commit`, if it is a file there.
pub fn read_file_at(git_dir: &Path, commit: &str, path: &str) -> Result<Option<Vec<u8>>> {
    let repo = open(git_dir)?;
    let id = ObjectId::from_hex(commit.as_bytes()).map_err(err)?;
    let tree = repo.find_commit(id).map_err(err)?.tree().map_err(err)?;
    let Some(entry) = tree.lookup_entry_by_path(path).map_err(err)? else {
        return Ok(None);
    };
    if !entry.mode().is_blob() {
        return Ok(None);
    }
    Ok(Some(entry.object().map_err(err)?.data.clone()))
}

/// Describes the update of a ref from `old` to `new` (either may be the
/// zero id). `other_tips` are the values of the repository's other refs,
/// which bound the commits a new ref "adds".
pub fn summarise_update(
    git_dir: &Path,
    old: &str,
    new: &str,
    other_tips: &[String],
) -> Result<UpdateSummary> {
    let repo = open(git_dir)?;
    let parse = |hex: &str| -> Result<Option<ObjectId>> {
        if hex.bytes().all(|b| b == b'0') {
            return Ok(None);
        }
        ObjectId::from_hex(hex.as_bytes()).map(Some).map_err(err)
    };
    let (old, new) = (parse(old)?, parse(new)?);
    let Some(new) = new else {
        return Ok(UpdateSummary::default());
    };
    let new_commit = match repo.find_object(new).map_err(err)?.try_into_commit() {
        Ok(commit) => commit,
        // An annotated tag or a non-commit object: no history to describe.
        Err(_) => return Ok(UpdateSummary::default()),
    };
    let hidden: Vec<ObjectId> = match old {
        Some(old) => vec![old],
        None => other_tips
            .iter()
            .filter_map(|tip| ObjectId::from_hex(tip.as_bytes()).ok())
            .filter(|tip| *tip != new)
            .filter(|tip| repo.find_commit(*tip).is_ok())
            .collect(),
    };
    let mut summary = UpdateSummary::default();
    let mut oldest_parent = None;
    let walk = repo
        .rev_walk([new])
        .with_hidden(hidden)
        .all()
        .map_err(err)?;
    for info in walk {
        let info = info.map_err(err)?;
        summary.commits_total += 1;
        let commit = info.object().map_err(err)?;
        oldest_parent = Some(commit.parent_ids().next().map(|id| id.detach()));
        if summary.commits.len() < MAX_COMMITS {
            let parent = commit.parent_ids().next().map(|id| id.detach());
            let (added, modified, removed) = changed_paths(&repo, parent, commit.id)?;
            summary.commits.push(PushedCommit {
                commit: summarise(&commit)?,
                added,
                modified,
                removed,
            });
        }
    }
    if let Some(old) = old {
        summary.forced = match repo.merge_base(old, new) {
            Ok(Some(base)) => base.detach() != old,
            _ => true,
        };
    }
    let base = match old {
        Some(old) => Some(old),
        None => oldest_parent.flatten(),
    };
    let base = base.filter(|id| repo.find_commit(*id).is_ok());
    let (added, modified, removed) = changed_paths(&repo, base, new_commit.id)?;
    let mut paths: Vec<String> = added.into_iter().chain(modified).chain(removed).collect();
    paths.sort();
    paths.dedup();
    summary.paths_truncated = paths.len() > MAX_PATHS;
    paths.truncate(MAX_PATHS);
    summary.paths = paths;
    Ok(summary)
}

type PathLists = (Vec<String>, Vec<String>, Vec<String>);

/// Files added, modified and removed from commit `old` (none: the empty
/// tree) to commit `new`; directories are not listed.
fn changed_paths(
    repo: &gix::Repository,
    old: Option<ObjectId>,
    new: ObjectId,
) -> Result<PathLists> {
    let tree_of = |id: ObjectId| -> Result<gix::Tree<'_>> {
        repo.find_commit(id).map_err(err)?.tree().map_err(err)
    };
    let new_tree = tree_of(new)?;
    let old_tree = old.map(tree_of).transpose()?;
    let changes = repo
        .diff_tree_to_tree(
            old_tree.as_ref(),
            Some(&new_tree),
            gix::diff::Options::default(),
        )
        .map_err(err)?;
    let (mut added, mut modified, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for change in changes {
        use gix::object::tree::diff::ChangeDetached as Change;
        if change.entry_mode().is_tree() {
            continue;
        }
        let (list, location) = match &change {
            Change::Addition { location, .. } => (&mut added, location),
            Change::Deletion { location, .. } => (&mut removed, location),
            Change::Modification { location, .. } => (&mut modified, location),
            Change::Rewrite { location, .. } => (&mut added, location),
        };
        if list.len() <= MAX_PATHS {
            list.push(location.to_str_lossy().into_owned());
        }
    }
    Ok((added, modified, removed))
}
