//! The forge: a git server where every branch is a sandbox.
//!
//! Modules: [`server`] (start-up, shutdown, shared state), [`api`] (HTTP
//! handlers and the common error shape), [`auth`] (tokens and scopes),
//! [`git`] (repositories on disk, smart HTTP, reading history),
//! [`events`] (the outbox and its in-process fan-out), [`vms`] (sandboxes:
//! backend, limits, lifecycle, snapshots), [`templates`] (images built
//! from a spec), [`pipelines`] (a run per push), [`webhooks`]
//! (subscriptions fed from the outbox), [`github`] (the GitHub App: sync and
//! the review bot), [`review`] (tool findings placed on a change's diff)
//! and [`store`] (every SQL query). The
//! `forge` binary adds the command line.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod git;
pub mod github;
pub mod mcp;
pub mod metrics;
pub mod nodes;
pub mod pipelines;
pub mod review;
pub mod server;
pub mod store;
pub mod templates;
#[cfg(test)]
mod testing;
pub mod vms;
pub mod webhooks;
