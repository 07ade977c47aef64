//! The warm pool: sandboxes created ahead of demand and paused in memory,
//! handed out by a create that asks for nothing they lack, and refilled in
//! the background. A create served from the pool costs a resume (a thaw)
//! instead of a sandbox's start.
//!
//! - **What matches**: a create with no repository, no dev server, no
//!   environment of its own and the pool's sizes (the defaults: 1 vCPU,
//!   512 MiB, 2 GiB of disk). Its other settings (labels, deadline,
//!   persistence, idle timeout) are applied when it is handed out, and its
//!   creator becomes the caller. Anything else is created cold.
//! - **Caps**: pooled sandboxes are live (paused in memory), so they count
//!   against `--max-sandboxes` and the memory cap like any other; the pool
//!   refills only while a slot stays free for a cold create.
//! - **Book-keeping**: pooled sandboxes are rows of `vms` created by
//!   [`POOL_ACTOR`] with the label `forge/role: pool`, invisible to every
//!   token but an admin's. Those a previous run left are destroyed at
//!   start-up, and the pool fills again.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The creator of pooled sandboxes.
pub const POOL_ACTOR: &str = "pool";

/// The label of a pooled sandbox (dropped when it is handed out).
pub const POOL_LABEL: (&str, &str) = ("forge/role", "pool");

/// Sizes of the pool's sandboxes (the API's defaults).
pub const POOL_VCPUS: u8 = 1;
pub const POOL_MEM_MIB: u64 = 512;
pub const POOL_DISK_MIB: u64 = 2048;

/// The pool: how many it keeps and the ids of those ready.
#[derive(Default)]
pub struct WarmPool {
    target: usize,
    ready: Mutex<VecDeque<String>>,
    /// Woken when one is taken, so the refill starts at once.
    pub(super) taken: Notify,
}

impl WarmPool {
    pub fn new(target: usize) -> WarmPool {
        WarmPool {
            target,
            ..WarmPool::default()
        }
    }

    pub fn target(&self) -> usize {
        self.target
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many are ready now.
    pub fn len(&self) -> usize {
        self.ready().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ready().is_empty()
    }

    /// The oldest ready one, if any.
    pub(super) fn take(&self) -> Option<String> {
        let taken = self.ready().pop_front();
        if taken.is_some() {
            self.taken.notify_one();
        }
        taken
    }

    pub(super) fn put(&self, id: String) {
        self.ready().push_back(id);
    }

    /// Forgets `id` (destroyed or crashed while pooled).
    pub(super) fn forget(&self, id: &str) {
        self.ready().retain(|ready| ready != id);
    }
}

/// Parses `--warm-pool`: `default=N` (the only template so far) or `N`.
pub fn parse_warm_pool(text: &str) -> Result<usize, String> {
    let count = match text.split_once('=') {
        Some(("default", count)) => count,
        Some((name, _)) => {
            return Err(format!(
                "no template named {name:?}: the pool serves the default image (default=N)"
            ));
        }
        None => text,
    };
    count
        .parse()
        .map_err(|_| format!("{count:?} is not a number of sandboxes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_size_is_read_from_default_or_a_bare_number() {
        assert_eq!(parse_warm_pool("default=3"), Ok(3));
        assert_eq!(parse_warm_pool("2"), Ok(2));
        assert!(parse_warm_pool("python=2").is_err());
        assert!(parse_warm_pool("default=many").is_err());
    }

    #[test]
    fn ready_sandboxes_are_handed_out_oldest_first() {
        let pool = WarmPool::new(2);
        pool.put("a".into());
        pool.put("b".into());
        pool.forget("a");
        assert_eq!(pool.take().as_deref(), Some("b"));
        assert_eq!(pool.take(), None);
    }
}
