//! The phases of the backend calls one task makes, for its caller: the
//! forge wraps each request in [`collect`] and answers with a
//! `Server-Timing` header ([`server_timing`]). Backends report what their
//! blocking work recorded (`sandbox_container::timing`) with [`report`];
//! outside [`collect`] nothing is kept.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;

pub use sandbox_container::timing::Phase;

tokio::task_local! {
    static PHASES: RefCell<Vec<Phase>>;
}

/// Runs `run`, returning its output and the phases reported while it ran.
pub async fn collect<F: Future>(run: F) -> (F::Output, Vec<Phase>) {
    PHASES
        .scope(RefCell::new(Vec::new()), async move {
            let output = run.await;
            (output, PHASES.with(RefCell::take))
        })
        .await
}

/// Whether this task collects phases.
pub fn active() -> bool {
    PHASES.try_with(|_| ()).is_ok()
}

/// Adds `phases` to this task's collection, if it has one.
pub fn report(phases: Vec<Phase>) {
    let _ = PHASES.try_with(|kept| kept.borrow_mut().extend(phases));
}

/// `phases` as a `Server-Timing` header value: `name;dur=ms` entries
/// (milliseconds, to the microsecond), in the order they were recorded.
pub fn server_timing(phases: &[Phase]) -> String {
    let mut out = String::new();
    for phase in phases {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{};dur={:.3}",
            phase.name,
            phase.duration.as_secs_f64() * 1e3
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reports_reach_the_collecting_task_only() {
        let phase = |name, micros| Phase {
            name,
            duration: Duration::from_micros(micros),
        };
        report(vec![phase("lost", 1)]);
        assert!(!active());
        let ((), phases) = collect(async {
            assert!(active());
            report(vec![phase("dump", 81_250)]);
            tokio::task::yield_now().await;
            report(vec![phase("criu-restore", 1_426)]);
        })
        .await;
        assert_eq!(
            server_timing(&phases),
            "dump;dur=81.250, criu-restore;dur=1.426"
        );
        assert_eq!(server_timing(&[]), "");
    }
}
