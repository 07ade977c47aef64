//! Lifecycle events of sandboxes, recorded in the events outbox like a
//! push: `sandbox.created`, `sandbox.paused`, `sandbox.resumed`,
//! `sandbox.forked`, `sandbox.deleted`, `sandbox.crashed`,
//! `sandbox.expired`, and `sandbox.lost` and `sandbox.found` (its node
//! stopped reporting, and reports again). A VM of a repository records them in that
//! repository's outbox (its webhooks and event feed see them, with
//! `refs/heads/<branch>` as the ref); a VM of none records them as events
//! of the forge (`GET /v1/events`, forge-wide webhooks).
//!
//! The payload is `{"sandbox": {...}, ...}` plus the kind's own fields:
//! `parent` (forked), `mode` (paused: `memory` or `disk`), `on_demand`
//! (resumed by a request rather than by `POST .../resume`), `reason`
//! (paused, deleted: `requested`, `idle` or `expired`), and `actor` when a
//! token caused it. Recording is best effort: a failure is logged, the
//! operation it describes has happened all the same.

use serde_json::{Value, json};

use super::Sandboxes;
use crate::store::{NewEvent, VmRow};

/// What happened to a sandbox.
#[derive(Debug, Clone, Copy)]
pub enum Lifecycle<'a> {
    Created,
    Paused {
        to_disk: bool,
        reason: Why,
    },
    Resumed {
        on_demand: bool,
    },
    Forked {
        parent: &'a str,
    },
    Deleted {
        reason: Why,
    },
    Crashed,
    Expired,
    /// Its sandbox node stopped reporting.
    Lost {
        node: &'a str,
    },
    /// Its node reports again; the VM is in the state the node has.
    Found {
        node: &'a str,
    },
}

/// Why a sandbox was paused or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A request asked for it.
    Requested,
    /// It was idle past its idle timeout.
    Idle,
    /// Its deadline (`ttl_secs`) passed.
    Expired,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Requested => "requested",
            Why::Idle => "idle",
            Why::Expired => "expired",
        }
    }
}

impl Lifecycle<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Lifecycle::Created => "sandbox.created",
            Lifecycle::Paused { .. } => "sandbox.paused",
            Lifecycle::Resumed { .. } => "sandbox.resumed",
            Lifecycle::Forked { .. } => "sandbox.forked",
            Lifecycle::Deleted { .. } => "sandbox.deleted",
            Lifecycle::Crashed => "sandbox.crashed",
            Lifecycle::Expired => "sandbox.expired",
            Lifecycle::Lost { .. } => "sandbox.lost",
            Lifecycle::Found { .. } => "sandbox.found",
        }
    }

    /// The kind's own fields.
    fn fields(&self) -> Value {
        match *self {
            Lifecycle::Paused { to_disk, reason } => json!({
                "mode": if to_disk { "disk" } else { "memory" },
                "reason": reason.as_str(),
            }),
            Lifecycle::Resumed { on_demand } => json!({ "on_demand": on_demand }),
            Lifecycle::Forked { parent } => json!({ "parent": parent }),
            Lifecycle::Deleted { reason } => json!({ "reason": reason.as_str() }),
            Lifecycle::Lost { node } | Lifecycle::Found { node } => json!({ "node": node }),
            Lifecycle::Created | Lifecycle::Crashed | Lifecycle::Expired => json!({}),
        }
    }
}

/// The `sandbox` object of a lifecycle event.
pub fn sandbox_object(row: &VmRow) -> Value {
    json!({
        "id": row.id,
        "backend": row.backend,
        "state": row.state,
        "parent": row.parent_id,
        "vcpus": row.vcpus,
        "mem_mib": row.mem_mib,
        "labels": row.labels(),
        "expires_at": row.expires_at(),
    })
}

impl Sandboxes {
    /// Records that `what` happened to VM `row`, caused by token `actor`
    /// when a token did.
    pub(super) async fn announce(&self, row: &VmRow, what: Lifecycle<'_>, actor: Option<&str>) {
        if let Err(error) = self.try_announce(row, what, actor).await {
            tracing::warn!(vm = %row.id, kind = what.kind(), error = %error, "recording a sandbox event failed");
        }
    }

    async fn try_announce(
        &self,
        row: &VmRow,
        what: Lifecycle<'_>,
        actor: Option<&str>,
    ) -> crate::store::Result<()> {
        let repo = match &row.repo_id {
            Some(repo_id) => self.store.repo_by_id(repo_id).await?,
            None => None,
        };
        let mut payload = what.fields();
        payload["sandbox"] = sandbox_object(row);
        if let Some(token) = actor {
            let name = self.store.token_by_id(token).await?.map(|t| t.name);
            payload["actor"] = json!({ "token_id": token, "name": name });
        }
        let event = NewEvent {
            kind: what.kind().to_owned(),
            ref_name: repo
                .as_ref()
                .and(row.branch.as_ref())
                .map(|branch| format!("refs/heads/{branch}")),
            payload,
        };
        let full_name = repo.as_ref().map(|repo| repo.full_name());
        let owner = repo
            .as_ref()
            .map(|repo| repo.id.as_str())
            .zip(full_name.as_deref());
        self.events
            .record_of(&self.store, owner, actor, &[event])
            .await?;
        Ok(())
    }
}
