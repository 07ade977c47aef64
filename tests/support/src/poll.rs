//! Waiting for something to happen, or to keep not happening, with a
//! deadline and a message that says what was awaited and what was seen.
//! Tests poll with these instead of sleeping a fixed time: a fixed sleep is
//! either too short on a slow host or wasted on a fast one.
//!
//! Each helper comes as a blocking function and as an `async` one (for
//! tests on a tokio runtime); both poll the same way.

use std::time::{Duration, Instant};

/// The first pause between two probes of [`eventually`]; it doubles up to
/// [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);
/// How often [`stays`] looks.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// Polls `probe` until it returns `Ok` and returns that value. `Err` carries
/// what the probe saw instead; after `within`, the test fails naming `what`
/// and the last of those.
pub fn eventually<T, E: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, E>,
) -> T {
    let mut wait = Wait::new(within);
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) => std::thread::sleep(wait.next(what, &seen)),
        }
    }
}

/// [`eventually`] for async probes.
pub async fn eventually_async<T, E: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let mut wait = Wait::new(within);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => tokio::time::sleep(wait.next(what, &seen)).await,
        }
    }
}

/// Observes `observe` for `window` and returns what it saw; the test fails,
/// naming `what`, as soon as it sees something else than at the start. For
/// what must not happen: each caller says why its window is long enough.
pub fn stays<T: PartialEq + std::fmt::Debug>(
    window: Duration,
    what: &str,
    mut observe: impl FnMut() -> T,
) -> T {
    let watch = Watch::new(window, what, observe());
    while let Some(pause) = watch.pause() {
        std::thread::sleep(pause);
        watch.check(observe());
    }
    watch.first
}

/// [`stays`] for async observations.
pub async fn stays_async<T: PartialEq + std::fmt::Debug>(
    window: Duration,
    what: &str,
    mut observe: impl AsyncFnMut() -> T,
) -> T {
    let watch = Watch::new(window, what, observe().await);
    while let Some(pause) = watch.pause() {
        tokio::time::sleep(pause).await;
        watch.check(observe().await);
    }
    watch.first
}

/// The deadline and growing pause of one [`eventually`].
struct Wait {
    start: Instant,
    within: Duration,
    pause: Duration,
}

impl Wait {
    fn new(within: Duration) -> Self {
        Self {
            start: Instant::now(),
            within,
            pause: FIRST_PAUSE,
        }
    }

    /// The pause before the next probe; fails the test once the deadline
    /// has passed, with the last thing seen.
    fn next(&mut self, what: &str, seen: &impl std::fmt::Debug) -> Duration {
        let within = self.within;
        assert!(
            self.start.elapsed() < within,
            "{what}: not within {within:?}; last saw {seen:?}"
        );
        let pause = self.pause;
        self.pause = (pause * 2).min(LONGEST_PAUSE);
        pause
    }
}

/// The window and first observation of one [`stays`].
struct Watch<'a, T> {
    start: Instant,
    window: Duration,
    what: &'a str,
    first: T,
}

impl<'a, T: PartialEq + std::fmt::Debug> Watch<'a, T> {
    fn new(window: Duration, what: &'a str, first: T) -> Self {
        Self {
            start: Instant::now(),
            window,
            what,
            first,
        }
    }

    /// The pause before the next look, or `None` once the window is over.
    fn pause(&self) -> Option<Duration> {
        let left = self.window.checked_sub(self.start.elapsed())?;
        (!left.is_zero()).then(|| WATCH_EVERY.min(left))
    }

    fn check(&self, now: T) {
        assert!(
            now == self.first,
            "{}: changed after {:?} from {:?} to {now:?}",
            self.what,
            self.start.elapsed(),
            self.first
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn eventually_returns_the_first_ok_value() {
        let calls = Cell::new(0);
        let value = eventually(Duration::from_secs(5), "the third call", || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(calls.get())
            } else {
                Ok("done")
            }
        });
        assert_eq!((value, calls.get()), ("done", 3));
    }

    #[test]
    #[should_panic(expected = "never: not within 30ms; last saw \"no\"")]
    fn eventually_fails_with_what_it_saw_last() {
        eventually::<(), _>(Duration::from_millis(30), "never", || Err("no"));
    }

    #[test]
    fn stays_watches_the_whole_window() {
        let start = Instant::now();
        assert_eq!(stays(Duration::from_millis(50), "constant", || 7), 7);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    #[should_panic(expected = "counter: changed after")]
    fn stays_fails_on_the_first_change() {
        let calls = Cell::new(0);
        stays(Duration::from_secs(5), "counter", || {
            calls.set(calls.get() + 1);
            calls.get() > 2
        });
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_async_helpers_poll_the_same_way() {
        let mut calls = 0;
        let value = eventually_async(Duration::from_secs(5), "the second call", async || {
            calls += 1;
            if calls < 2 { Err(calls) } else { Ok(calls) }
        })
        .await;
        assert_eq!(value, 2);
        assert_eq!(
            stays_async(Duration::from_millis(50), "constant", async || 1).await,
            1
        );
    }
}
