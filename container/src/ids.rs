//! Host id ranges for sandboxes' user namespaces.
//!
//! Every sandbox gets [`IDS_PER_SANDBOX`] consecutive host uids (and the
//! same gids) of its own: root inside is the first, uid 1000 inside is the
//! first + 1000. The ranges come from a pool the backend owns,
//! [`IdPool::default`]: host ids 1,073,741,824 (2^30) up to 1,610,612,735,
//! 8,192 ranges. No host account and no `/etc/subuid` entry may use them;
//! two data directories on one host need disjoint pools
//! ([`crate::BackendConfig::id_pool`]).
//!
//! A range is held from create until destroy (a sandbox paused to disk
//! keeps it: its checkpoint names it). Files never carry these ids: layers
//! and binds are idmapped, so on disk they keep the image's own ids.

use std::collections::BTreeMap;

use crate::spec::IdMap;

/// Ids per sandbox: a full 16-bit range, what distribution images expect
/// (`nobody` is 65534).
pub const IDS_PER_SANDBOX: u32 = 65_536;

/// Where sandbox ranges come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPool {
    /// First host id of the first range.
    pub first: u32,
    /// How many ranges (sandboxes) the pool holds.
    pub ranges: u32,
}

impl Default for IdPool {
    fn default() -> Self {
        Self {
            first: 1 << 30,
            ranges: 8192,
        }
    }
}

/// Failure to hand out a range.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("All {ranges} user id ranges of the pool are in use")]
    Exhausted { ranges: u32 },
    #[error(
        "Id pool starting at {first} with {ranges} ranges does not fit: it must start above 65535 and end below 2^32"
    )]
    BadPool { first: u32, ranges: u32 },
}

impl IdPool {
    /// Whether the pool stays clear of system ids and inside `u32`.
    pub fn check(&self) -> Result<(), IdError> {
        let end = u64::from(self.first) + u64::from(self.ranges) * u64::from(IDS_PER_SANDBOX);
        if self.first < IDS_PER_SANDBOX || self.ranges == 0 || end > u64::from(u32::MAX) {
            return Err(IdError::BadPool {
                first: self.first,
                ranges: self.ranges,
            });
        }
        Ok(())
    }

    fn range(&self, index: u32) -> IdMap {
        IdMap {
            host_base: self.first + index * IDS_PER_SANDBOX,
            count: IDS_PER_SANDBOX,
        }
    }
}

/// Which ranges are taken, and by which sandbox.
#[derive(Debug)]
pub struct IdRanges {
    pool: IdPool,
    taken: BTreeMap<u32, String>,
}

impl IdRanges {
    /// The pool with the ranges `in_use` (sandbox id, its map) taken.
    pub fn new(pool: IdPool, in_use: impl IntoIterator<Item = (String, IdMap)>) -> Self {
        let taken = in_use
            .into_iter()
            .map(|(id, map)| (map.host_base, id))
            .collect();
        Self { pool, taken }
    }

    /// The range `sandbox` holds, or the lowest free one, now its.
    pub fn take(&mut self, sandbox: &str) -> Result<IdMap, IdError> {
        if let Some((&host_base, _)) = self.taken.iter().find(|(_, holder)| *holder == sandbox) {
            return Ok(IdMap {
                host_base,
                count: IDS_PER_SANDBOX,
            });
        }
        let free = (0..self.pool.ranges)
            .map(|i| self.pool.range(i))
            .find(|map| !self.taken.contains_key(&map.host_base))
            .ok_or(IdError::Exhausted {
                ranges: self.pool.ranges,
            })?;
        self.taken.insert(free.host_base, sandbox.to_owned());
        Ok(free)
    }

    /// Frees whatever range `sandbox` held.
    pub fn release(&mut self, sandbox: &str) {
        self.taken.retain(|_, holder| holder != sandbox);
    }

    /// How many ranges are taken.
    pub fn in_use(&self) -> usize {
        self.taken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> IdPool {
        IdPool {
            first: 1 << 20,
            ranges: 3,
        }
    }

    #[test]
    fn ranges_are_disjoint_and_lowest_first() {
        let mut ids = IdRanges::new(small(), []);
        let a = ids.take("a").expect("a");
        let b = ids.take("b").expect("b");
        assert_eq!(a.host_base, 1 << 20);
        assert_eq!(b.host_base, (1 << 20) + IDS_PER_SANDBOX);
        assert!(!a.contains(b.host_base) && !b.contains(a.host_base + IDS_PER_SANDBOX - 1));
        assert_eq!(
            ids.take("a").expect("again").host_base,
            a.host_base,
            "one range per sandbox"
        );
        ids.release("a");
        assert_eq!(ids.take("c").expect("c").host_base, a.host_base);
    }

    #[test]
    fn a_full_pool_says_so() {
        let mut ids = IdRanges::new(small(), []);
        for name in ["a", "b", "c"] {
            ids.take(name).expect("room");
        }
        assert!(matches!(
            ids.take("d"),
            Err(IdError::Exhausted { ranges: 3 })
        ));
    }

    #[test]
    fn ranges_in_use_at_start_are_skipped() {
        let pool = small();
        let mut ids = IdRanges::new(pool, [("old".to_owned(), pool.range(0))]);
        assert_eq!(
            ids.take("new").expect("new").host_base,
            pool.range(1).host_base
        );
        assert_eq!(ids.in_use(), 2);
    }

    #[test]
    fn pools_that_overlap_system_ids_or_overflow_are_refused() {
        assert!(IdPool::default().check().is_ok());
        for (first, ranges) in [(1000, 4), (u32::MAX - 65_536, 2), (1 << 20, 0)] {
            assert!(
                IdPool { first, ranges }.check().is_err(),
                "{first} {ranges}"
            );
        }
    }
}
