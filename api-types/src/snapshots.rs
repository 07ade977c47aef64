//! `/v1/snapshots` and `POST /v1/vms/{id}/snapshots`: a VM's disk and, where
//! the backend can, its memory and processes, kept to start new VMs from.

use serde::{Deserialize, Serialize};

use crate::vms::Kept;

/// `POST /v1/vms/{id}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Unique across the forge: letters, digits, `.`, `_`, `-` (at most
    /// 63). `POST /v1/vms {"snapshot"}` takes the name or the id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A snapshot as every snapshot endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotView {
    pub id: String,
    pub name: Option<String>,
    /// `container` or `microvm`.
    pub backend: String,
    /// The VM it was taken from (it may be gone since).
    pub source_vm: Option<String>,
    /// `owner/name` of the repository the source VM had checked out.
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// Every VM started from it has these.
    pub vcpus: i64,
    pub mem_mib: i64,
    /// What it holds: always `disk`; `memory` and `processes` when the
    /// backend could save them (VMs from it then resume its processes).
    pub kept: Vec<Kept>,
    /// Why less than everything was kept, when known.
    pub note: Option<String>,
    /// The template whose image it is, if any: deleted with its template.
    pub template: Option<String>,
    /// Bytes its disk layer takes, when the backend knows.
    pub disk_bytes: Option<u64>,
    /// Bytes its saved memory and processes take.
    pub saved_bytes: Option<u64>,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_request_may_be_empty_and_refuses_unknown_fields() {
        let empty: CreateSnapshot = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.name, None);
        assert!(serde_json::from_str::<CreateSnapshot>(r#"{"nmae":"x"}"#).is_err());
    }
}
