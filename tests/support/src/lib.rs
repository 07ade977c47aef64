//! What the project's tests share: what a test needs from its host
//! ([`requirements`]) and polling with deadlines instead of fixed sleeps
//! ([`poll`]).

#![forbid(unsafe_code)]

pub mod poll;
pub mod requirements;
