//! One lock per microVM: lifecycle changes of the same VM (create, pause,
//! resume, fork, destroy) run one at a time, since each reads the VM's
//! record, drives its VMM and rewrites the record; changes of different
//! VMs never wait on each other, however long one takes (a boot waits up
//! to the boot timeout for the agent).
//!
//! A lock exists while somebody holds or waits for it: the table keeps,
//! per VM id, the lock and how many callers use it, and the last one out
//! removes the entry. The table therefore holds only the VMs with an
//! operation in flight, which also tells a directory sweep which VMs are
//! being set up ([`VmLocks::in_flight`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The lock table of one backend.
#[derive(Debug, Default)]
pub struct VmLocks {
    table: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    lock: Arc<AsyncMutex<()>>,
    /// Callers holding or waiting for `lock`.
    users: usize,
}

/// The lifecycle of one VM, held: released on drop.
#[derive(Debug)]
pub struct VmLock<'a> {
    // Field order is drop order: the lock is released before the caller
    // leaves the table, so an entry never goes while its lock is held.
    _held: OwnedMutexGuard<()>,
    _user: User<'a>,
}

/// One caller's claim on a table entry, also while it waits: a waiter
/// that is cancelled leaves the table as a finished holder does.
#[derive(Debug)]
struct User<'a> {
    locks: &'a VmLocks,
    id: String,
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        let mut table = self.locks.table();
        if let Some(entry) = table.get_mut(&self.id) {
            entry.users -= 1;
            if entry.users == 0 {
                table.remove(&self.id);
            }
        }
    }
}

impl VmLocks {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Counts and handles only: a panic cannot leave them half-updated.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until no other lifecycle change of `id` runs, and hold it.
    pub async fn lock(&self, id: &str) -> VmLock<'_> {
        let (user, lock) = {
            let mut table = self.table();
            let entry = table.entry(id.to_owned()).or_insert_with(|| Entry {
                lock: Arc::default(),
                users: 0,
            });
            entry.users += 1;
            let user = User {
                locks: self,
                id: id.to_owned(),
            };
            (user, Arc::clone(&entry.lock))
        };
        VmLock {
            _held: lock.lock_owned().await,
            _user: user,
        }
    }

    /// Hold `id`'s lifecycle if no change of it runs or waits.
    pub fn try_lock(&self, id: &str) -> Option<VmLock<'_>> {
        let mut table = self.table();
        let entry = table.entry(id.to_owned()).or_insert_with(|| Entry {
            lock: Arc::default(),
            users: 0,
        });
        let held = Arc::clone(&entry.lock).try_lock_owned();
        let Ok(held) = held else {
            // Somebody holds it, so the entry has users and stays.
            return None;
        };
        entry.users += 1;
        Some(VmLock {
            _held: held,
            _user: User {
                locks: self,
                id: id.to_owned(),
            },
        })
    }

    /// Whether a lifecycle change of `id` runs or waits.
    pub fn in_flight(&self, id: &str) -> bool {
        self.table().contains_key(id)
    }

    /// VMs with a lifecycle change running or waiting.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no lifecycle change runs or waits.
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }
}

/// Polls `future` once: ready, or waiting (for a lock, say).
#[cfg(test)]
pub(crate) fn poll_once<F: std::future::Future + ?Sized>(
    future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    use std::task::{Context, Waker};
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_vm_busy_for_long_does_not_hold_up_another() {
        let locks = VmLocks::default();
        let _booting = locks.lock("vm-a").await;
        let other = tokio::time::timeout(Duration::from_secs(10), locks.lock("vm-b"))
            .await
            .expect("vm-b is not held up by vm-a");
        assert!(locks.in_flight("vm-a") && locks.in_flight("vm-b"));
        drop(other);
        assert!(!locks.in_flight("vm-b"));
    }

    #[tokio::test]
    async fn changes_of_one_vm_run_one_at_a_time() {
        let locks = VmLocks::default();
        let first = locks.lock("vm-a").await;
        let mut second = pin!(locks.lock("vm-a"));
        assert!(poll_once(second.as_mut()).is_pending(), "ran alongside");
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("runs once the first is done");
        assert_eq!(locks.len(), 1);
    }

    #[tokio::test]
    async fn try_lock_takes_only_a_free_vm() {
        let locks = VmLocks::default();
        let held = locks.try_lock("vm-a").expect("free");
        assert!(locks.try_lock("vm-a").is_none());
        let mut waiter = pin!(locks.lock("vm-a"));
        assert!(poll_once(waiter.as_mut()).is_pending());
        assert!(locks.try_lock("vm-b").is_some());
        drop(held);
        let _waiter = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter gets it");
        assert!(locks.try_lock("vm-a").is_none());
    }

    #[tokio::test]
    async fn the_table_holds_only_vms_in_flight() {
        let locks = VmLocks::default();
        for k in 0..100 {
            let _held = locks.lock(&format!("vm-{k}")).await;
        }
        assert!(locks.is_empty());
        // A waiter given up on leaves no entry behind either.
        let held = locks.lock("vm-a").await;
        {
            let mut waiter = pin!(locks.lock("vm-a"));
            assert!(poll_once(waiter.as_mut()).is_pending());
        }
        assert_eq!(locks.len(), 1);
        drop(held);
        assert!(locks.is_empty());
        assert!(!locks.in_flight("vm-a"));
    }
}
