//! When to try a delivery again, and when to give up on a subscription.
//!
//! The default schedule is Standard Webhooks': attempt 1 at once, then after
//! 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h (8 attempts in all). Each wait
//! gets up to ±`jitter` of itself added at random so that many failing
//! deliveries do not retry in lockstep. A `Retry-After` response header
//! replaces the scheduled wait (capped by `max_retry_after`). A `410 Gone`
//! disables the subscription at once; so do `disable_after_failures`
//! consecutive failed attempts across its deliveries (any success resets the
//! count).

use rand::Rng;
use std::time::{Duration, SystemTime};

/// The retry policy.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    /// Wait before attempt `i + 2` (after attempt `i + 1` failed). The
    /// number of attempts is `delays.len() + 1`.
    pub delays: Vec<Duration>,
    /// Fraction of each wait added or removed at random (0.0 ..= 1.0).
    pub jitter: f64,
    /// Upper bound for a receiver's `Retry-After`.
    pub max_retry_after: Duration,
    /// Consecutive failed attempts after which the subscription is disabled.
    pub disable_after_failures: u32,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        const MIN: u64 = 60;
        const HOUR: u64 = 3600;
        RetrySchedule {
            delays: [
                5,
                5 * MIN,
                30 * MIN,
                2 * HOUR,
                5 * HOUR,
                10 * HOUR,
                10 * HOUR,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(10 * HOUR),
            disable_after_failures: 24,
        }
    }
}

/// What became of one attempt, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// 2xx.
    Success,
    /// `410 Gone`: the receiver asks never to be called again.
    Gone,
    /// Any other status, a timeout or a connection error; `retry_after` is
    /// the receiver's `Retry-After`, if it sent one.
    Failure { retry_after: Option<Duration> },
    /// A failure that retrying cannot fix (e.g. the URL is not allowed).
    Permanent,
}

/// The decision after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Delivered; nothing more to do.
    Done,
    /// Try again at this time.
    RetryAt(SystemTime),
    /// No attempts left (or a permanent failure): the delivery failed.
    GiveUp,
}

impl RetrySchedule {
    /// A schedule for tests: the given waits, no jitter.
    pub fn fixed(delays: &[Duration]) -> RetrySchedule {
        RetrySchedule {
            delays: delays.to_vec(),
            jitter: 0.0,
            max_retry_after: Duration::from_secs(60),
            disable_after_failures: 24,
        }
    }

    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len() + 1).unwrap_or(u32::MAX)
    }

    /// The step after attempt number `attempt` (1-based) ended with `result`.
    pub fn next(&self, attempt: u32, result: &AttemptResult, now: SystemTime) -> NextStep {
        let retry_after = match result {
            AttemptResult::Success => return NextStep::Done,
            AttemptResult::Gone | AttemptResult::Permanent => return NextStep::GiveUp,
            AttemptResult::Failure { retry_after } => *retry_after,
        };
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let Some(delay) = self.delays.get(index) else {
            return NextStep::GiveUp;
        };
        let wait = match retry_after {
            Some(asked) => asked.min(self.max_retry_after),
            None => self.jittered(*delay),
        };
        NextStep::RetryAt(now + wait)
    }

    fn jittered(&self, delay: Duration) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || delay.is_zero() {
            return delay;
        }
        let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
        delay.mul_f64(factor)
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_standard_webhooks() {
        let schedule = RetrySchedule {
            jitter: 0.0,
            ..RetrySchedule::default()
        };
        let now = SystemTime::UNIX_EPOCH;
        let fail = AttemptResult::Failure { retry_after: None };
        let waits: Vec<u64> = (1..=7)
            .map(|attempt| match schedule.next(attempt, &fail, now) {
                NextStep::RetryAt(at) => at.duration_since(now).expect("future").as_secs(),
                other => panic!("attempt {attempt}: {other:?}"),
            })
            .collect();
        assert_eq!(waits, [5, 300, 1800, 7200, 18000, 36000, 36000]);
        assert_eq!(schedule.next(8, &fail, now), NextStep::GiveUp);
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(
            schedule.next(1, &AttemptResult::Success, now),
            NextStep::Done
        );
        assert_eq!(
            schedule.next(1, &AttemptResult::Gone, now),
            NextStep::GiveUp
        );
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let schedule = RetrySchedule::default();
        let now = SystemTime::UNIX_EPOCH;
        let fail = AttemptResult::Failure { retry_after: None };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let NextStep::RetryAt(at) = schedule.next(2, &fail, now) else {
                panic!("retry")
            };
            let wait = at.duration_since(now).expect("future").as_secs_f64();
            assert!((240.0..=360.0).contains(&wait), "{wait}");
            seen.insert(wait.to_bits());
        }
        assert!(seen.len() > 1, "jitter must vary the wait");
    }

    #[test]
    fn retry_after_replaces_the_wait_and_is_capped() {
        let schedule = RetrySchedule::fixed(&[Duration::from_secs(1)]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let asked = AttemptResult::Failure {
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            schedule.next(1, &asked, now),
            NextStep::RetryAt(now + Duration::from_secs(30))
        );
        let huge = AttemptResult::Failure {
            retry_after: Some(Duration::from_secs(86_400)),
        };
        assert_eq!(
            schedule.next(1, &huge, now),
            NextStep::RetryAt(now + Duration::from_secs(60))
        );

        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
