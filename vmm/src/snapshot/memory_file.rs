//! The snapshot memory file: guest RAM regions back to back, sparse.
//!
//! Writing skips all-zero pages (they stay holes), so a mostly idle guest
//! costs little disk. Reading maps the file MAP_PRIVATE per region: pages
//! load on first touch, guest writes go to private copies, the file stays
//! as it was (several VMs can resume from one snapshot).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use super::SnapshotError;

const PAGE: usize = 4096;

fn mem_err(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Memory {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The (guest address, size) of each region.
pub fn regions_of(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect()
}

/// Writes guest RAM to `path`; returns the bytes of non-zero pages written.
pub fn write(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, SnapshotError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| mem_err(path, e.to_string()))?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)
        .map_err(|e| mem_err(path, e.to_string()))?;
    let mut file_off = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| mem_err(path, e.to_string()))?;
        // SAFETY: `host..host+len` is one live mapping owned by `mem`; the
        // vCPUs are paused, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        let mut page = 0;
        while page < len {
            let end = (page + PAGE).min(len);
            let chunk = &bytes[page..end];
            if chunk.iter().any(|b| *b != 0) {
                // Extend the run of non-zero pages for one larger write.
                let mut run_end = end;
                while run_end < len {
                    let next = &bytes[run_end..(run_end + PAGE).min(len)];
                    if next.iter().all(|b| *b == 0) {
                        break;
                    }
                    run_end = (run_end + PAGE).min(len);
                }
                file.write_all_at(&bytes[page..run_end], file_off + page as u64)
                    .map_err(|e| mem_err(path, e.to_string()))?;
                written += (run_end - page) as u64;
                page = run_end;
            } else {
                page = end;
            }
        }
        file_off += len as u64;
    }
    file.sync_data().map_err(|e| mem_err(path, e.to_string()))?;
    Ok(written)
}

/// Maps `path` privately as guest RAM with the given regions.
pub fn map(path: &Path, regions: &[(u64, u64)]) -> Result<GuestMemoryMmap, SnapshotError> {
    let file = File::open(path).map_err(|e| mem_err(path, e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| mem_err(path, e.to_string()))?
        .len();
    let total: u64 = regions.iter().map(|(_, s)| s).sum();
    if len != total {
        return Err(mem_err(
            path,
            format!("has {len} bytes, the snapshot's RAM is {total}"),
        ));
    }
    let file = Arc::new(file);
    let mut out = Vec::with_capacity(regions.len());
    let mut offset = 0u64;
    for (addr, size) in regions {
        let mapping = MmapRegionBuilder::new(*size as usize)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()
            .map_err(|e| mem_err(path, e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(*addr))
            .ok_or_else(|| mem_err(path, "region wraps the address space"))?;
        out.push(region);
        offset += size;
    }
    GuestMemoryMmap::from_regions(out).map_err(|e| mem_err(path, e.to_string()))
}
