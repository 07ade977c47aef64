//! The contract of the forge's REST API, shared by the server (`forge`),
//! its CLI and the web UI so that a renamed field or state breaks the build
//! instead of a page.
//!
//! - [`states`]: every closed set of strings the forge stores or sends —
//!   VM, run, step, ref sync, delivery, dev server and pull request states,
//!   review verdicts. With the `sqlx` feature they are also `TEXT` columns
//!   (SQLite or PostgreSQL, through sqlx's `Any` driver); the CHECKs of
//!   `migrations/sqlite/0009_state_checks.sql` and
//!   `migrations/postgres/0001_schema.sql` hold the database to the same
//!   lists.
//! - One module per resource with its request and response bodies:
//!   [`vms`], [`nodes`], [`snapshots`], [`templates`], [`runs`], [`repos`], [`events`], [`tokens`], [`webhooks`], [`github`],
//!   and the error body every failure uses, [`error`].
//!
//! The JSON these types produce is the wire format the README documents:
//! field names, optional fields (absent or `null`) and enum spellings are
//! part of the contract and pinned by the tests beside each type.

#![forbid(unsafe_code)]

pub mod error;
pub mod events;
pub mod github;
pub mod nodes;
pub mod repos;
pub mod runs;
pub mod snapshots;
pub mod states;
pub mod templates;
pub mod tokens;
pub mod vms;
pub mod webhooks;

pub use error::{ErrorBody, ErrorCode, ErrorDetail, FieldError};
pub use states::{
    DeliveryState, DevServerState, PullState, RefSyncState, ReviewVerdict, RunState, StepState,
    TemplateState, UnknownState, VmState,
};
