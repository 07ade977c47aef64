//! What the project's tests share: what a test needs from its host
//! ([`requirements`]), polling with deadlines instead of fixed sleeps
//! ([`poll`]) and, with the `fake-model` feature, a fake OpenAI-compatible
//! endpoint (`fake_model`).

#![forbid(unsafe_code)]

#[cfg(feature = "fake-model")]
pub mod fake_model;
pub mod poll;
pub mod requirements;
