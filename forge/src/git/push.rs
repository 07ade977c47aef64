//! Turning a successful push into events: for each ref that changed, a
//! `push` event (commits, changed paths, forced or not), plus
//! `branch.created` / `branch.deleted` / `tag.created` / `tag.deleted`.
//! All events of one push are written in one transaction.
//!
//! What a push may change in the first place is [`rules`]'s to say.

pub mod options;
pub mod rules;

use std::path::Path;

use serde_json::json;

use super::inspect::{self, InspectError, UpdateSummary};
use super::pktline::{Command, is_zero};
use crate::auth::Caller;
use crate::store::{NewEvent, RepoRow};

/// The kind of ref a command touched.
enum RefKind<'a> {
    Branch(&'a str),
    Tag(&'a str),
    Other,
}

fn classify(refname: &str) -> RefKind<'_> {
    if let Some(branch) = refname.strip_prefix("refs/heads/") {
        RefKind::Branch(branch)
    } else if let Some(tag) = refname.strip_prefix("refs/tags/") {
        RefKind::Tag(tag)
    } else {
        RefKind::Other
    }
}

/// Builds the events of the applied `commands` (blocking: reads the repository).
pub fn events_for(
    git_dir: &Path,
    repo: &RepoRow,
    caller: &Caller,
    public_url: &str,
    commands: &[Command],
    options: &options::PushOptions,
) -> Result<Vec<NewEvent>, InspectError> {
    let tips = inspect::branch_tips(git_dir)?;
    let full_name = repo.full_name();
    let pusher = json!({ "token_id": caller.token_id, "name": caller.token_name });
    let mut events = Vec::new();
    for command in commands {
        let summary: UpdateSummary =
            inspect::summarise_update(git_dir, &command.old, &command.new, &tips)?;
        let (branch, tag) = match classify(&command.refname) {
            RefKind::Branch(name) => (Some(name), None),
            RefKind::Tag(name) => (None, Some(name)),
            RefKind::Other => (None, None),
        };
        let compare_url = (!is_zero(&command.old) && !is_zero(&command.new)).then(|| {
            format!(
                "{public_url}/{full_name}/compare/{}...{}",
                &command.old, &command.new
            )
        });
        let mut payload = json!({
                "repo": full_name,
                "ref": command.refname,
                "branch": branch,
                "tag": tag,
                "before": command.old,
                "after": command.new,
                "created": command.is_create(),
                "deleted": command.is_delete(),
                "forced": summary.forced,
                "commits": summary.commits,
                "commits_total": summary.commits_total,
                "paths": summary.paths,
                "paths_truncated": summary.paths_truncated,
                "pusher": pusher,
                "compare_url": compare_url,
        });
        if !options.is_empty() {
            payload["push_options"] = options.to_json();
        }
        events.push(NewEvent {
            kind: "push".into(),
            ref_name: Some(command.refname.clone()),
            payload,
        });
        let lifecycle = match (
            classify(&command.refname),
            command.is_create(),
            command.is_delete(),
        ) {
            (RefKind::Branch(name), true, _) => Some(("branch.created", "branch", name)),
            (RefKind::Branch(name), _, true) => Some(("branch.deleted", "branch", name)),
            (RefKind::Tag(name), true, _) => Some(("tag.created", "tag", name)),
            (RefKind::Tag(name), _, true) => Some(("tag.deleted", "tag", name)),
            _ => None,
        };
        if let Some((kind, field, name)) = lifecycle {
            events.push(NewEvent {
                kind: kind.into(),
                ref_name: Some(command.refname.clone()),
                payload: json!({
                    "repo": full_name,
                    "ref": command.refname,
                    field: name,
                    "before": command.old,
                    "after": command.new,
                    "pusher": pusher,
                }),
            });
        }
    }
    Ok(events)
}
