//! The input side of webhooks: the event kinds a subscription can ask for and
//! the generic [`Event`] the forge maps each row of its `events` outbox into.
//!
//! The forge owns the outbox; this crate only sees events through this type,
//! so it never depends on the forge's storage.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Every event type a subscription can name. `Ping` is sent only on request
/// (`POST .../ping`) and bypasses filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "push")]
    Push,
    #[serde(rename = "branch.created")]
    BranchCreated,
    #[serde(rename = "branch.deleted")]
    BranchDeleted,
    #[serde(rename = "tag.created")]
    TagCreated,
    #[serde(rename = "tag.deleted")]
    TagDeleted,
    #[serde(rename = "run.started")]
    RunStarted,
    #[serde(rename = "run.completed")]
    RunCompleted,
    #[serde(rename = "review.posted")]
    ReviewPosted,
    #[serde(rename = "sandbox.created")]
    SandboxCreated,
    #[serde(rename = "sandbox.paused")]
    SandboxPaused,
    #[serde(rename = "sandbox.resumed")]
    SandboxResumed,
    #[serde(rename = "sandbox.forked")]
    SandboxForked,
    #[serde(rename = "sandbox.deleted")]
    SandboxDeleted,
    #[serde(rename = "sandbox.crashed")]
    SandboxCrashed,
    #[serde(rename = "sandbox.expired")]
    SandboxExpired,
    #[serde(rename = "sandbox.lost")]
    SandboxLost,
    #[serde(rename = "sandbox.found")]
    SandboxFound,
    #[serde(rename = "sync.diverged")]
    SyncDiverged,
    #[serde(rename = "ping")]
    Ping,
}

impl EventKind {
    /// All kinds, in a fixed order (the bit order of compiled filters).
    pub const ALL: [EventKind; 19] = [
        EventKind::Push,
        EventKind::BranchCreated,
        EventKind::BranchDeleted,
        EventKind::TagCreated,
        EventKind::TagDeleted,
        EventKind::RunStarted,
        EventKind::RunCompleted,
        EventKind::ReviewPosted,
        EventKind::SandboxCreated,
        EventKind::SandboxPaused,
        EventKind::SandboxResumed,
        EventKind::SandboxForked,
        EventKind::SandboxDeleted,
        EventKind::SandboxCrashed,
        EventKind::SandboxExpired,
        EventKind::SandboxLost,
        EventKind::SandboxFound,
        EventKind::SyncDiverged,
        EventKind::Ping,
    ];

    /// The wire name, e.g. `branch.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::BranchCreated => "branch.created",
            EventKind::BranchDeleted => "branch.deleted",
            EventKind::TagCreated => "tag.created",
            EventKind::TagDeleted => "tag.deleted",
            EventKind::RunStarted => "run.started",
            EventKind::RunCompleted => "run.completed",
            EventKind::ReviewPosted => "review.posted",
            EventKind::SandboxCreated => "sandbox.created",
            EventKind::SandboxPaused => "sandbox.paused",
            EventKind::SandboxResumed => "sandbox.resumed",
            EventKind::SandboxForked => "sandbox.forked",
            EventKind::SandboxDeleted => "sandbox.deleted",
            EventKind::SandboxCrashed => "sandbox.crashed",
            EventKind::SandboxExpired => "sandbox.expired",
            EventKind::SandboxLost => "sandbox.lost",
            EventKind::SandboxFound => "sandbox.found",
            EventKind::SyncDiverged => "sync.diverged",
            EventKind::Ping => "ping",
        }
    }

    /// Parses a wire name; `None` for kinds webhooks do not deliver (the
    /// outbox may carry others, which the consumer skips).
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person or token that caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Person {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// One commit introduced by a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Commit {
    pub id: String,
    pub message: String,
    #[serde(default)]
    pub author: Person,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub timestamp: Option<OffsetDateTime>,
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub modified: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

/// A forge event as webhooks see it. The forge fills it from one `events`
/// row; fields that an event kind does not use stay empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The outbox sequence number (the consumer's cursor).
    pub id: i64,
    pub kind: EventKind,
    /// `owner/name`; empty for an event of the forge itself (a sandbox
    /// created without a repository).
    pub repo: String,
    /// Full ref name, e.g. `refs/heads/main` or `refs/tags/v1`.
    pub git_ref: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub commits: Vec<Commit>,
    /// Paths changed between `before` and `after`.
    pub paths: Vec<String>,
    /// The forge caps `paths`; when set, more paths changed than listed.
    pub paths_truncated: bool,
    pub actor: Option<Person>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Kind-specific fields (run status, review verdict, sandbox id, ...),
    /// copied into the payload as they are.
    pub extra: serde_json::Value,
}

impl Event {
    /// A minimal event of `kind` for `repo`; callers fill the rest.
    pub fn new(id: i64, kind: EventKind, repo: impl Into<String>) -> Event {
        Event {
            id,
            kind,
            repo: repo.into(),
            git_ref: None,
            before: None,
            after: None,
            commits: Vec::new(),
            paths: Vec::new(),
            paths_truncated: false,
            actor: None,
            time: OffsetDateTime::now_utc(),
            extra: serde_json::Value::Null,
        }
    }

    /// The short branch name when the event's ref is a branch
    /// (`refs/heads/feature/x` → `feature/x`). Tags are not branches.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.as_deref()?.strip_prefix("refs/heads/")
    }

    /// The short tag name when the event's ref is a tag.
    pub fn tag(&self) -> Option<&str> {
        self.git_ref.as_deref()?.strip_prefix("refs/tags/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_names_and_serde() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(EventKind::parse("repo.created"), None);
    }

    #[test]
    fn branch_and_tag_are_read_from_the_ref() {
        let mut event = Event::new(1, EventKind::Push, "acme/web");
        event.git_ref = Some("refs/heads/feature/x".into());
        assert_eq!(event.branch(), Some("feature/x"));
        assert_eq!(event.tag(), None);
        event.git_ref = Some("refs/tags/main".into());
        assert_eq!(event.branch(), None);
        assert_eq!(event.tag(), Some("main"));
    }
}
