//! Turning one event into the deliveries it causes.
//!
//! The forge's consumer reads an `events` row, maps it to an [`Event`],
//! calls [`fan_out`] with the repository's active subscriptions and writes
//! the returned deliveries in the same transaction that advances its cursor.
//! The payload is rendered once per event and shared by every delivery.

use std::sync::Arc;

use crate::event::{Event, EventKind};
use crate::filter::{PreparedEvent, SubscriptionFilter};
use crate::payload::{self, PayloadContext};

/// A delivery to write: pending, due now, no attempts yet.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The `webhook-id` of every attempt (see [`crate::new_delivery_id`]).
    pub id: String,
    pub subscription_id: String,
    pub event_id: i64,
    pub event_type: EventKind,
    pub body: Arc<[u8]>,
}

/// The deliveries `event` causes among `subscriptions` (id, compiled
/// filter), in the order given.
pub fn fan_out<'a, I>(event: &Event, subscriptions: I, ctx: &PayloadContext) -> Vec<NewDelivery>
where
    I: IntoIterator<Item = (&'a str, &'a SubscriptionFilter)>,
{
    let prepared = PreparedEvent::new(event);
    let mut body: Option<Arc<[u8]>> = None;
    subscriptions
        .into_iter()
        .filter(|(_, filter)| filter.matches_prepared(&prepared))
        .map(|(subscription_id, _)| NewDelivery {
            id: crate::new_delivery_id(),
            subscription_id: subscription_id.to_owned(),
            event_id: event.id,
            event_type: event.kind,
            body: body
                .get_or_insert_with(|| payload::render(event, ctx).into())
                .clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_delivery_per_matching_subscription_sharing_one_body() {
        let none: &[&str] = &[];
        let main = SubscriptionFilter::new(&["push"], &["main"], none).expect("valid");
        let tags = SubscriptionFilter::new(&["tag.created"], none, none).expect("valid");
        let all = SubscriptionFilter::new(&["*"], none, &["src/**"]).expect("valid");
        let mut event = Event::new(5, EventKind::Push, "acme/web");
        event.git_ref = Some("refs/heads/main".into());
        event.paths = vec!["src/a.rs".into()];
        let ctx = PayloadContext {
            base_url: "http://f".into(),
        };
        let out = fan_out(&event, [("a", &main), ("b", &tags), ("c", &all)], &ctx);
        let subs: Vec<&str> = out.iter().map(|d| d.subscription_id.as_str()).collect();
        assert_eq!(subs, ["a", "c"]);
        assert_ne!(out[0].id, out[1].id);
        assert!(Arc::ptr_eq(&out[0].body, &out[1].body));
        assert_eq!(out[0].event_id, 5);
    }
}
