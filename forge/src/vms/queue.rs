//! Admission to the cap on live sandboxes: a request that would pass the
//! cap waits in a first-in, first-out queue for a bounded time instead of
//! failing at once, and then fails clearly.
//!
//! - Each waiting request holds a ticket; only the head of the queue may
//!   take room, so a large fork cannot be starved by single creates.
//! - Room is `live (from the table) + reserved + wanted <= cap`. A request
//!   admitted holds a [`Reservation`] until its VMs are recorded, so two
//!   admissions cannot both count the same free slot.
//! - The head looks again when a reservation or ticket is dropped, and at
//!   least every [`POLL`] (VMs paused to disk or deleted free room too).
//! - After `max_wait` the request fails with [`VmError::Capacity`], which
//!   names the cap, how long it waited and its place in the queue.
//!   `GET /v1/system` shows how many wait.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::VmError;

/// How often the head of the queue looks again without being woken.
pub const POLL: Duration = Duration::from_millis(250);

/// The queue in front of the cap.
#[derive(Debug, Default)]
pub struct Admission {
    waiting: Mutex<VecDeque<u64>>,
    next: AtomicU64,
    reserved: AtomicUsize,
    changed: Notify,
}

/// Room taken for VMs not yet recorded; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    admission: &'a Admission,
    count: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.admission
            .reserved
            .fetch_sub(self.count, Ordering::AcqRel);
        self.admission.changed.notify_waiters();
    }
}

/// A place in the queue; leaving (admitted, timed out or the request
/// dropped) removes it.
struct Ticket<'a> {
    admission: &'a Admission,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.admission.queue().retain(|t| *t != self.id);
        self.admission.changed.notify_waiters();
    }
}

impl Admission {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<u64>> {
        // Plain numbers: a panic cannot leave the queue inconsistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many requests wait.
    pub fn waiting(&self) -> usize {
        self.queue().len()
    }

    /// Waits (at most `max_wait`) until `count` more VMs fit under `cap`;
    /// `live` counts the VMs that hold resources now.
    pub async fn admit<F, Fut>(
        &self,
        count: usize,
        cap: usize,
        max_wait: Duration,
        live: F,
    ) -> Result<Reservation<'_>, VmError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<usize, VmError>>,
    {
        let started = Instant::now();
        let ticket = Ticket {
            admission: self,
            id: self.next.fetch_add(1, Ordering::Relaxed),
        };
        self.queue().push_back(ticket.id);
        let mut logged = false;
        loop {
            let notified = self.changed.notified();
            let now_live = live().await?;
            let head = self.queue().front() == Some(&ticket.id);
            let reserved = self.reserved.load(Ordering::Acquire);
            if head && now_live + reserved + count <= cap {
                self.reserved.fetch_add(count, Ordering::AcqRel);
                drop(ticket);
                if logged {
                    tracing::info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "admitted from the sandbox queue"
                    );
                }
                return Ok(Reservation {
                    admission: self,
                    count,
                });
            }
            let left = max_wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                let queue = self.queue();
                let position = queue.iter().position(|t| *t == ticket.id).unwrap_or(0) + 1;
                let queued = queue.len();
                drop(queue);
                return Err(VmError::Capacity {
                    live: now_live + reserved,
                    cap,
                    waited_secs: started.elapsed().as_secs(),
                    position,
                    queued,
                });
            }
            if !logged {
                tracing::info!(
                    live = now_live,
                    cap,
                    count,
                    "sandbox cap reached: request queued"
                );
                logged = true;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(left.min(POLL)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_waiting_request_is_admitted_when_room_frees_and_fails_clearly_otherwise() {
        let admission = Arc::new(Admission::default());
        let live = Arc::new(AtomicUsize::new(2));
        let count = |live: Arc<AtomicUsize>| {
            move || {
                let live = live.clone();
                async move { Ok(live.load(Ordering::SeqCst)) }
            }
        };
        // Full, nothing frees: a clear error after the wait.
        let error = admission
            .admit(1, 2, Duration::from_millis(300), count(live.clone()))
            .await
            .expect_err("full");
        let text = error.to_string();
        assert!(
            text.contains("cap is 2") && text.contains("position 1 of 1"),
            "{text}"
        );
        assert_eq!(admission.waiting(), 0);

        // Room frees while waiting: admitted.
        let waiter = {
            let (admission, live) = (admission.clone(), live.clone());
            tokio::spawn(async move {
                admission
                    .admit(1, 2, Duration::from_secs(10), count(live))
                    .await
                    .map(|r| r.count)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(admission.waiting(), 1);
        live.store(1, Ordering::SeqCst);
        assert_eq!(waiter.await.expect("join").expect("admitted"), 1);

        // A reservation counts until dropped.
        let held = admission
            .admit(1, 2, Duration::ZERO, count(live.clone()))
            .await
            .expect("room for one");
        assert!(
            admission
                .admit(1, 2, Duration::ZERO, count(live.clone()))
                .await
                .is_err()
        );
        drop(held);
        assert!(
            admission
                .admit(1, 2, Duration::ZERO, count(live))
                .await
                .is_ok()
        );
    }
}
