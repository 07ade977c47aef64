//! How long each phase of a backend operation took, for whoever asks: the
//! forge sends the phases of a request as its `Server-Timing` header, and
//! the benchmarks print them beside each figure.
//!
//! Collection is per thread and off unless a caller runs the operation
//! inside [`collect`]; [`add`] is then a push onto a short vector, and
//! otherwise nothing. Work done side by side on other threads (the
//! children of a fork) is collected there and folded in with
//! [`add_slowest`].

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// One phase: a short token (`dump`, `criu-restore`, …) and its duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    pub name: &'static str,
    pub duration: Duration,
}

thread_local! {
    static PHASES: RefCell<Option<Vec<Phase>>> = const { RefCell::new(None) };
}

/// Runs `run`, returning its value and the phases it recorded on this
/// thread. Nested collections keep their phases to themselves.
pub fn collect<T>(run: impl FnOnce() -> T) -> (T, Vec<Phase>) {
    let outer = PHASES.replace(Some(Vec::new()));
    let value = run();
    let phases = PHASES.replace(outer).unwrap_or_default();
    (value, phases)
}

/// Whether anyone collects on this thread (to skip work that only feeds
/// the figures, such as reading CRIU's statistics).
pub fn active() -> bool {
    PHASES.with_borrow(Option::is_some)
}

/// Records phase `name`.
pub fn add(name: &'static str, duration: Duration) {
    PHASES.with_borrow_mut(|phases| {
        if let Some(phases) = phases {
            phases.push(Phase { name, duration });
        }
    });
}

/// Records phase `name` as the time since `start`.
pub fn since(name: &'static str, start: Instant) {
    add(name, start.elapsed());
}

/// Runs `run` as phase `name`.
pub fn timed<T>(name: &'static str, run: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let value = run();
    since(name, start);
    value
}

/// Folds in the phases of runs that went side by side: for each name, the
/// slowest run's, in the order the names first appear.
pub fn add_slowest(runs: impl IntoIterator<Item = Vec<Phase>>) {
    let mut slowest: Vec<Phase> = Vec::new();
    for phase in runs.into_iter().flatten() {
        match slowest.iter_mut().find(|p| p.name == phase.name) {
            Some(kept) => kept.duration = kept.duration.max(phase.duration),
            None => slowest.push(phase),
        }
    }
    for phase in slowest {
        add(phase.name, phase.duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_is_kept_unless_collected() {
        add("lost", ms(1));
        assert!(!active());
        let ((), phases) = collect(|| {
            assert!(active());
            add("kept", ms(2));
        });
        assert_eq!(
            phases,
            vec![Phase {
                name: "kept",
                duration: ms(2)
            }]
        );
        assert!(!active());
    }

    #[test]
    fn nested_collections_do_not_leak_into_the_outer_one() {
        let ((), outer) = collect(|| {
            add("a", ms(1));
            let ((), inner) = collect(|| add("b", ms(2)));
            assert_eq!(inner.len(), 1);
        });
        assert_eq!(outer.iter().map(|p| p.name).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn side_by_side_runs_keep_the_slowest_of_each_phase() {
        let phase = |name, n| Phase {
            name,
            duration: ms(n),
        };
        let ((), phases) = collect(|| {
            add_slowest([
                vec![phase("launch", 5), phase("agent", 9)],
                vec![phase("launch", 7), phase("agent", 3)],
            ])
        });
        assert_eq!(phases, vec![phase("launch", 7), phase("agent", 9)]);
    }
}
