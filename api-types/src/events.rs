//! `GET /v1/repos/{owner}/{name}/events`: what happened in a repository,
//! oldest first, from a cursor (a long poll with `wait_secs`).

use serde::{Deserialize, Serialize};

/// One event. `kind` is open-ended (`push`, `branch.created`,
/// `sync.diverged`, `webhook.disabled`, ...: the README lists them), and
/// `payload` is the kind's own object, as webhooks deliver it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// The cursor: strictly increasing across the whole forge.
    pub id: i64,
    /// `null` for an event of the forge itself: a sandbox created without
    /// a repository.
    pub repo_id: Option<String>,
    /// `owner/name` when the event happened.
    pub repo: Option<String>,
    pub kind: String,
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    /// The token that caused the event.
    pub actor: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub payload: serde_json::Value,
}

/// A page of events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `after` to continue.
    pub next_cursor: i64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_names_its_ref_ref() {
        let event = Event {
            id: 7,
            repo_id: Some("r1".into()),
            repo: Some("acme/web".into()),
            kind: "push".into(),
            ref_name: Some("refs/heads/main".into()),
            actor: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            payload: json!({ "forced": false }),
        };
        let wire = serde_json::to_value(&event).expect("serialises");
        assert_eq!(wire["ref"], "refs/heads/main");
        assert_eq!(
            serde_json::from_value::<Event>(wire).expect("parses"),
            event
        );
    }
}
