//! Admission to the caps on live sandboxes: how many may be running or
//! paused in memory, and how much memory they may be given together. A
//! request that would pass a cap waits in a first-in, first-out queue for a
//! bounded time instead of failing at once, and then fails clearly.
//!
//! - Each waiting request holds a ticket; only the head of the queue may
//!   take room, so a large fork cannot be starved by single creates.
//! - Room is `live (from the table) + reserved + wanted <= cap`, for the
//!   count and for the memory ([`Room`]). A request admitted holds a
//!   [`Reservation`] until its VMs are recorded, so two admissions cannot
//!   both count the same free room.
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

/// VMs and the memory they are given (what is live, wanted, or the cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Room {
    pub vms: usize,
    pub mem_mib: u64,
}

impl Room {
    fn plus(self, other: Room) -> Room {
        Room {
            vms: self.vms + other.vms,
            mem_mib: self.mem_mib + other.mem_mib,
        }
    }

    fn fits_in(self, cap: Room) -> bool {
        self.vms <= cap.vms && self.mem_mib <= cap.mem_mib
    }
}

/// The queue in front of the caps.
#[derive(Debug, Default)]
pub struct Admission {
    waiting: Mutex<VecDeque<u64>>,
    next: AtomicU64,
    reserved_vms: AtomicUsize,
    reserved_mib: AtomicU64,
    changed: Notify,
}

/// Room taken for VMs not yet recorded; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    admission: &'a Admission,
    room: Room,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.admission
            .reserved_vms
            .fetch_sub(self.room.vms, Ordering::AcqRel);
        self.admission
            .reserved_mib
            .fetch_sub(self.room.mem_mib, Ordering::AcqRel);
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

    fn reserved(&self) -> Room {
        Room {
            vms: self.reserved_vms.load(Ordering::Acquire),
            mem_mib: self.reserved_mib.load(Ordering::Acquire),
        }
    }

    /// Waits (at most `max_wait`) until `want` more fits under `cap`;
    /// `live` measures what holds resources now.
    pub async fn admit<F, Fut>(
        &self,
        want: Room,
        cap: Room,
        max_wait: Duration,
        live: F,
    ) -> Result<Reservation<'_>, VmError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Room, VmError>>,
    {
        if !want.fits_in(cap) {
            return Err(VmError::Invalid(format!(
                "{} VMs with {} MiB can never fit: the forge holds at most {} VMs and {} MiB",
                want.vms, want.mem_mib, cap.vms, cap.mem_mib
            )));
        }
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
            let taken = now_live.plus(self.reserved());
            if head && taken.plus(want).fits_in(cap) {
                self.reserved_vms.fetch_add(want.vms, Ordering::AcqRel);
                self.reserved_mib.fetch_add(want.mem_mib, Ordering::AcqRel);
                drop(ticket);
                if logged {
                    tracing::info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "admitted from the sandbox queue"
                    );
                }
                return Ok(Reservation {
                    admission: self,
                    room: want,
                });
            }
            let left = max_wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                let queue = self.queue();
                let position = queue.iter().position(|t| *t == ticket.id).unwrap_or(0) + 1;
                let queued = queue.len();
                drop(queue);
                let waited_secs = started.elapsed().as_secs();
                if taken.vms + want.vms > cap.vms {
                    return Err(VmError::Capacity {
                        live: taken.vms,
                        cap: cap.vms,
                        waited_secs,
                        position,
                        queued,
                    });
                }
                return Err(VmError::MemoryCapacity {
                    live_mib: taken.mem_mib,
                    want_mib: want.mem_mib,
                    cap_mib: cap.mem_mib,
                    waited_secs,
                    position,
                    queued,
                });
            }
            if !logged {
                tracing::info!(
                    live = now_live.vms,
                    live_mib = now_live.mem_mib,
                    cap = cap.vms,
                    cap_mib = cap.mem_mib,
                    vms = want.vms,
                    mib = want.mem_mib,
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

    fn vms(n: usize) -> Room {
        Room { vms: n, mem_mib: 0 }
    }

    fn mib(n: u64) -> Room {
        Room { vms: 0, mem_mib: n }
    }

    const CAP: Room = Room {
        vms: 2,
        mem_mib: 4096,
    };

    fn measure(live: Arc<Mutex<Room>>) -> impl Fn() -> std::future::Ready<Result<Room, VmError>> {
        move || std::future::ready(Ok(*live.lock().unwrap_or_else(|p| p.into_inner())))
    }

    #[tokio::test]
    async fn a_waiting_request_is_admitted_when_room_frees_and_fails_clearly_otherwise() {
        let admission = Arc::new(Admission::default());
        let live = Arc::new(Mutex::new(vms(2)));
        // Full, nothing frees: a clear error after the wait.
        let error = admission
            .admit(
                vms(1),
                CAP,
                Duration::from_millis(300),
                measure(live.clone()),
            )
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
                    .admit(vms(1), CAP, Duration::from_secs(10), measure(live))
                    .await
                    .map(|r| r.room)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(admission.waiting(), 1);
        *live.lock().expect("live") = vms(1);
        assert_eq!(waiter.await.expect("join").expect("admitted"), vms(1));

        // A reservation counts until dropped.
        let held = admission
            .admit(vms(1), CAP, Duration::ZERO, measure(live.clone()))
            .await
            .expect("room for one");
        assert!(
            admission
                .admit(vms(1), CAP, Duration::ZERO, measure(live.clone()))
                .await
                .is_err()
        );
        drop(held);
        assert!(
            admission
                .admit(vms(1), CAP, Duration::ZERO, measure(live))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn memory_is_a_cap_of_its_own() {
        let admission = Admission::default();
        let live = Arc::new(Mutex::new(Room {
            vms: 1,
            mem_mib: 3072,
        }));
        let want = Room {
            vms: 1,
            mem_mib: 2048,
        };
        let error = admission
            .admit(want, CAP, Duration::from_millis(100), measure(live.clone()))
            .await
            .expect_err("over the memory cap");
        assert!(
            matches!(
                error,
                VmError::MemoryCapacity {
                    live_mib: 3072,
                    want_mib: 2048,
                    cap_mib: 4096,
                    ..
                }
            ),
            "{error}"
        );
        *live.lock().expect("live") = mib(1024);
        assert!(
            admission
                .admit(want, CAP, Duration::ZERO, measure(live))
                .await
                .is_ok()
        );
        let never = admission
            .admit(mib(8192), CAP, Duration::ZERO, measure(Arc::default()))
            .await
            .expect_err("larger than the cap");
        assert!(matches!(never, VmError::Invalid(_)), "{never}");
    }
}
