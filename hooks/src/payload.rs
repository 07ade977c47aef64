//! JSON payloads, one shape per event type, inside one envelope.
//!
//! Every body has the Standard Webhooks envelope:
//!
//! ```json
//! { "type": "push", "timestamp": "2026-11-28T16:00:00Z", "data": { ... } }
//! ```
//!
//! `data` is [`PushData`] for `push`, [`RefData`] for `branch.*`/`tag.*`,
//! [`PingData`] for `ping`, and [`ActivityData`] (repository, ref, branch,
//! actor plus the event's kind-specific fields) for `run.*`, `review.posted`,
//! `sandbox.*` and `sync.diverged`. The body is rendered once when a delivery
//! is created and stored, so retries and redeliveries send the same bytes.

use serde::Serialize;
use time::OffsetDateTime;

use crate::event::{Commit, Event, EventKind, Person};

/// Where the forge is reachable, for URLs inside payloads.
#[derive(Debug, Clone)]
pub struct PayloadContext {
    /// Public base URL of the forge, without a trailing slash.
    pub base_url: String,
}

/// The envelope around every payload.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<T> {
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub data: T,
}

/// The repository an event happened in.
#[derive(Debug, Clone, Serialize)]
pub struct Repository {
    pub full_name: String,
    pub owner: String,
    pub name: String,
    pub html_url: String,
    pub clone_url: String,
}

impl Repository {
    /// The repository named by an event, `None` for an event of the forge
    /// itself (its `repo` is empty).
    pub fn of(full_name: &str, ctx: &PayloadContext) -> Option<Repository> {
        (!full_name.is_empty()).then(|| Repository::new(full_name, ctx))
    }

    pub fn new(full_name: &str, ctx: &PayloadContext) -> Repository {
        let (owner, name) = full_name.split_once('/').unwrap_or(("", full_name));
        Repository {
            full_name: full_name.to_owned(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            html_url: format!("{}/{}", ctx.base_url, full_name),
            clone_url: format!("{}/{}.git", ctx.base_url, full_name),
        }
    }
}

/// `push`.
#[derive(Debug, Clone, Serialize)]
pub struct PushData {
    pub repository: Repository,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Short branch name; absent for tag pushes.
    pub branch: Option<String>,
    /// Short tag name; absent for branch pushes.
    pub tag: Option<String>,
    pub before: String,
    pub after: String,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    pub commits: Vec<Commit>,
    /// Paths changed between `before` and `after`.
    pub changed_paths: Vec<String>,
    pub changed_paths_truncated: bool,
    pub pusher: Option<Person>,
    pub compare: String,
}

/// `branch.created`, `branch.deleted`, `tag.created`, `tag.deleted`.
#[derive(Debug, Clone, Serialize)]
pub struct RefData {
    pub repository: Repository,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// `branch` or `tag`.
    pub ref_type: &'static str,
    /// Short name of the branch or tag.
    pub name: String,
    /// The commit the ref points to (created) or pointed to (deleted).
    pub sha: Option<String>,
    pub sender: Option<Person>,
}

/// `run.*`, `review.posted`, `sandbox.*`, `sync.diverged`: the common fields
/// plus the event's own fields (`extra`), flattened in. `repository` is
/// absent for an event of a sandbox that belongs to no repository.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    pub sender: Option<Person>,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// `ping`. `repository` is absent for a forge-wide subscription.
#[derive(Debug, Clone, Serialize)]
pub struct PingData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    pub webhook_id: String,
    pub events: Vec<String>,
    pub zen: &'static str,
}

const ZERO_OID: &str = "0000000000000000000000000000000000000000";

fn is_zero(oid: Option<&str>) -> bool {
    oid.is_none_or(|o| o.is_empty() || o.bytes().all(|b| b == b'0'))
}

fn short(oid: &str) -> &str {
    oid.get(..12).unwrap_or(oid)
}

/// Renders the payload body of `event`.
pub fn render(event: &Event, ctx: &PayloadContext) -> Vec<u8> {
    let repository = Repository::new(&event.repo, ctx);
    let timestamp = event.time;
    let kind = event.kind;
    let value = match kind {
        EventKind::Push => {
            let before = event.before.clone().unwrap_or_else(|| ZERO_OID.to_owned());
            let after = event.after.clone().unwrap_or_else(|| ZERO_OID.to_owned());
            let compare = format!(
                "{}/compare/{}...{}",
                repository.html_url,
                short(&before),
                short(&after)
            );
            to_value(Envelope {
                kind,
                timestamp,
                data: PushData {
                    git_ref: event.git_ref.clone().unwrap_or_default(),
                    branch: event.branch().map(str::to_owned),
                    tag: event.tag().map(str::to_owned),
                    created: is_zero(event.before.as_deref()),
                    deleted: is_zero(event.after.as_deref()),
                    forced: event
                        .extra
                        .get("forced")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                    before,
                    after,
                    commits: event.commits.clone(),
                    changed_paths: event.paths.clone(),
                    changed_paths_truncated: event.paths_truncated,
                    pusher: event.actor.clone(),
                    compare,
                    repository,
                },
            })
        }
        EventKind::BranchCreated
        | EventKind::BranchDeleted
        | EventKind::TagCreated
        | EventKind::TagDeleted => {
            let is_branch = matches!(kind, EventKind::BranchCreated | EventKind::BranchDeleted);
            let created = matches!(kind, EventKind::BranchCreated | EventKind::TagCreated);
            let git_ref = event.git_ref.clone().unwrap_or_default();
            let name = if is_branch {
                event.branch()
            } else {
                event.tag()
            };
            let sha = if created { &event.after } else { &event.before };
            to_value(Envelope {
                kind,
                timestamp,
                data: RefData {
                    ref_type: if is_branch { "branch" } else { "tag" },
                    name: name.unwrap_or(&git_ref).to_owned(),
                    git_ref,
                    sha: sha.clone(),
                    sender: event.actor.clone(),
                    repository,
                },
            })
        }
        EventKind::Ping => to_value(Envelope {
            kind,
            timestamp,
            data: PingData {
                repository: Repository::of(&event.repo, ctx),
                webhook_id: string_field(&event.extra, "webhook_id"),
                events: event
                    .extra
                    .get("events")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                zen: "Deliveries are at least once; dedupe on webhook-id.",
            },
        }),
        _ => {
            let details = match &event.extra {
                serde_json::Value::Object(map) => map.clone(),
                serde_json::Value::Null => serde_json::Map::new(),
                other => {
                    let mut map = serde_json::Map::new();
                    map.insert("details".to_owned(), other.clone());
                    map
                }
            };
            to_value(Envelope {
                kind,
                timestamp,
                data: ActivityData {
                    git_ref: event.git_ref.clone(),
                    branch: event.branch().map(str::to_owned),
                    sha: event.after.clone(),
                    sender: event.actor.clone(),
                    details,
                    repository: Repository::of(&event.repo, ctx),
                },
            })
        }
    };
    serde_json::to_vec(&value).expect("a JSON value always serializes")
}

/// The event a `ping` request sends, for [`render`].
pub fn ping_event(repo: &str, webhook_id: &str, events: &[String]) -> Event {
    let mut event = Event::new(0, EventKind::Ping, repo);
    event.extra = serde_json::json!({ "webhook_id": webhook_id, "events": events });
    event
}

fn string_field(value: &serde_json::Value, key: &str) -> String {
    value
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn to_value<T: Serialize>(envelope: Envelope<T>) -> serde_json::Value {
    // Payload types hold only strings, numbers, maps and sequences with
    // string keys, which serde_json always represents.
    serde_json::to_value(envelope).expect("payload types serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PayloadContext {
        PayloadContext {
            base_url: "https://forge.example".into(),
        }
    }

    fn parse(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).expect("valid JSON")
    }

    #[test]
    fn push_payload_carries_refs_commits_and_compare_url() {
        let mut event = Event::new(7, EventKind::Push, "acme/web");
        event.git_ref = Some("refs/heads/main".into());
        event.before = Some("a".repeat(40));
        event.after = Some("b".repeat(40));
        event.paths = vec!["src/a.ts".into()];
        event.actor = Some(Person {
            name: "ci-token".into(),
            email: None,
        });
        event.extra = serde_json::json!({ "forced": true });
        event.commits = vec![Commit {
            id: "b".repeat(40),
            message: "Add a".into(),
            added: vec!["src/a.ts".into()],
            ..Commit::default()
        }];
        let json = parse(&render(&event, &ctx()));
        assert_eq!(json["type"], "push");
        let data = &json["data"];
        assert_eq!(data["ref"], "refs/heads/main");
        assert_eq!(data["branch"], "main");
        assert_eq!(data["created"], false);
        assert_eq!(data["deleted"], false);
        assert_eq!(data["forced"], true);
        assert_eq!(data["commits"][0]["added"][0], "src/a.ts");
        assert_eq!(data["pusher"]["name"], "ci-token");
        assert_eq!(
            data["repository"]["clone_url"],
            "https://forge.example/acme/web.git"
        );
        assert_eq!(
            data["compare"],
            "https://forge.example/acme/web/compare/aaaaaaaaaaaa...bbbbbbbbbbbb"
        );
    }

    #[test]
    fn ref_and_activity_payloads() {
        let mut deleted = Event::new(8, EventKind::BranchDeleted, "acme/web");
        deleted.git_ref = Some("refs/heads/feature/x".into());
        deleted.before = Some("c".repeat(40));
        deleted.after = Some(ZERO_OID.into());
        let json = parse(&render(&deleted, &ctx()));
        assert_eq!(json["data"]["name"], "feature/x");
        assert_eq!(json["data"]["ref_type"], "branch");
        assert_eq!(json["data"]["sha"], "c".repeat(40));

        let mut run = Event::new(9, EventKind::RunCompleted, "acme/web");
        run.git_ref = Some("refs/heads/main".into());
        run.extra = serde_json::json!({ "run": { "id": 3, "conclusion": "success" } });
        let json = parse(&render(&run, &ctx()));
        assert_eq!(json["type"], "run.completed");
        assert_eq!(json["data"]["run"]["conclusion"], "success");
        assert_eq!(json["data"]["branch"], "main");

        let ping = parse(&render(
            &ping_event("acme/web", "wh_1", &["push".into()]),
            &ctx(),
        ));
        assert_eq!(ping["data"]["webhook_id"], "wh_1");
        assert_eq!(ping["data"]["events"][0], "push");
    }

    #[test]
    fn an_event_of_a_sandbox_without_a_repository_has_no_repository() {
        let mut expired = Event::new(10, EventKind::SandboxExpired, "");
        expired.extra = serde_json::json!({ "sandbox": { "id": "vm_1", "backend": "container" } });
        let json = parse(&render(&expired, &ctx()));
        assert_eq!(json["type"], "sandbox.expired");
        assert!(json["data"].get("repository").is_none(), "{json}");
        assert_eq!(json["data"]["sandbox"]["id"], "vm_1");
        let ping = parse(&render(&ping_event("", "wh_2", &["*".into()]), &ctx()));
        assert!(ping["data"].get("repository").is_none(), "{ping}");
    }
}
