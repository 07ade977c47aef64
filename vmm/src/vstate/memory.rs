//! Guest RAM: private anonymous mappings (so fork(2) shares them
//! copy-on-write), split around the MMIO gap below 4 GiB, and advised for
//! transparent huge pages to keep page tables, and so forks, small.

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::{MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("Cannot map {mem_mib} MiB of guest memory")]
    Map {
        /// Requested size.
        mem_mib: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The guest-physical RAM ranges for `mem_mib` MiB.
pub fn ram_ranges(mem_mib: u64) -> Vec<(GuestAddress, usize)> {
    let size = mem_mib << 20;
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Maps `mem_mib` MiB of anonymous guest RAM.
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::<()>::from_ranges(&ram_ranges(mem_mib))
        .map_err(|source| MemoryError::Map { mem_mib, source })
}

/// Asks for transparent huge pages over all of guest RAM. Called after the
/// boot structures are written, so those few pages stay small (a huge page
/// costs a 2 MiB clear on first touch) while the guest's own memory gets
/// huge pages, which keep page tables, and so fork(2), small.
pub fn advise_huge_pages(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        if let Ok(ptr) = region.get_host_address(MemoryRegionAddress(0)) {
            // SAFETY: the range is exactly one mapping owned by `mem`;
            // MADV_HUGEPAGE only changes how the kernel backs it.
            unsafe {
                libc::madvise(ptr.cast(), region.len() as usize, libc::MADV_HUGEPAGE);
            }
        }
    }
}
