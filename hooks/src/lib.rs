//! Webhooks: which events a subscription receives ([`filter`]), what is sent
//! ([`payload`]), how it is signed ([`sign`]), where it may go ([`ssrf`]),
//! how one attempt is made and logged ([`deliver`]), when it is retried
//! ([`retry`]) and the durable worker pool that drives it all from a
//! [`worker::DeliveryStore`] ([`worker`]).
//!
//! This crate knows nothing of the forge: the forge maps its `events` rows
//! into [`Event`], stores subscriptions and deliveries, and implements
//! [`DeliveryStore`] over its database.
#![forbid(unsafe_code)]

pub mod deliver;
pub mod event;
pub mod fanout;
pub mod filter;
pub mod payload;
pub mod retry;
pub mod sign;
pub mod ssrf;
pub mod worker;

pub use deliver::{AttemptRecord, Outgoing, Sender, SenderConfig};
pub use event::{Commit, Event, EventKind, Person};
pub use fanout::{NewDelivery, fan_out};
pub use filter::{FilterError, PreparedEvent, SubscriptionFilter};
pub use payload::PayloadContext;
pub use retry::{AttemptResult, NextStep, RetrySchedule};
pub use sign::{Secret, SecretSet};
pub use ssrf::NetworkPolicy;
pub use worker::{DeliveryStore, DisableReason, DueDelivery, Waker, WorkerConfig, WorkerPool};

/// A new delivery id (`msg_` + 24 random alphanumerics), used as the
/// `webhook-id` of every attempt of that delivery.
pub fn new_delivery_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let suffix: String = (0..24)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("msg_{suffix}")
}
