//! The snapshot memory file: guest RAM regions back to back, sparse.
//!
//! Writing skips all-zero pages (they stay holes), so a mostly idle guest
//! costs little disk. Reading maps the file MAP_PRIVATE per region: pages
//! load on first touch, guest writes go to private copies, the file stays
//! as it was (several VMs can resume from one snapshot).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
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

/// Which pages of guest RAM a snapshot must write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Pages present in this process, and pages holding data in the file
    /// RAM is mapped from, if any (a booted VM's memfd, shared; the frozen
    /// file a fork maps privately; another snapshot's memory file a
    /// restored VM maps privately): any other page is zero and stays a
    /// hole. The cost follows the data, not the size of RAM.
    Present,
    /// Only pages this process changed: RAM is a private map of the very
    /// file being written, whose other pages are already right.
    Dirty,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;

/// One pagemap entry per 4 KiB page of `[host, host + len)`, or None when
/// /proc/self/pagemap cannot be read (then every page is scanned).
fn page_flags(host: u64, len: usize) -> Option<Vec<u64>> {
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let pages = len / PAGE;
    let mut raw = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut raw, host / PAGE as u64 * 8)
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect(),
    )
}

/// Marks as present the pages of `[start, start + len)` of `file` that hold
/// data (SEEK_DATA), so a private map of a file whose untouched pages are
/// not in this process's page tables is still written out whole.
fn mark_file_data(flags: &mut [u64], file: &File, start: u64, len: usize) {
    let fd = file.as_raw_fd();
    let end = start + len as u64;
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on an fd `file` owns; results are checked.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= end {
            return;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        let first = (data as u64 - start) as usize / PAGE;
        let last = ((hole - start) as usize).div_ceil(PAGE);
        for f in flags.iter_mut().take(last).skip(first) {
            *f |= PM_PRESENT;
        }
        pos = hole;
    }
}

fn wanted(flags: Option<&Vec<u64>>, page: usize, scan: Scan) -> bool {
    let Some(f) = flags.and_then(|f| f.get(page / PAGE)) else {
        return true;
    };
    match scan {
        Scan::Present => f & PM_PRESENT != 0,
        Scan::Dirty => f & PM_PRESENT != 0 && f & PM_FILE == 0,
    }
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes of pages written.
    pub written: u64,
    /// Bytes of pages read to decide (zero pages included).
    pub scanned: u64,
}

/// Writes guest RAM to `path`. With `durable`, the data is on disk
/// (fdatasync) before this returns.
pub fn write(
    mem: &GuestMemoryMmap,
    path: &Path,
    scan: Scan,
    durable: bool,
) -> Result<Written, SnapshotError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(scan != Scan::Dirty)
        .open(path)
        .map_err(|e| mem_err(path, e.to_string()))?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)
        .map_err(|e| mem_err(path, e.to_string()))?;
    let mut file_off = 0u64;
    let mut written = 0u64;
    let mut scanned = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| mem_err(path, e.to_string()))?;
        // SAFETY: `host..host+len` is one live mapping owned by `mem`; the
        // vCPUs are paused, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        let mut flags = page_flags(host as u64, len);
        if let (Scan::Present, Some(f), Some(fo)) = (scan, flags.as_mut(), region.file_offset()) {
            mark_file_data(f, fo.file(), fo.start(), len);
        }
        // A page is read only when it may hold data; dirty pages are written
        // even when zero (the file may hold data there).
        let mut run: Option<usize> = None;
        let mut page = 0;
        loop {
            let keep = page < len && wanted(flags.as_ref(), page, scan) && {
                let end = (page + PAGE).min(len);
                scanned += (end - page) as u64;
                scan == Scan::Dirty || bytes[page..end].iter().any(|b| *b != 0)
            };
            match (keep, run) {
                (true, None) => run = Some(page),
                (false, Some(start)) => {
                    // One write for the whole run of kept pages.
                    file.write_all_at(&bytes[start..page], file_off + start as u64)
                        .map_err(|e| mem_err(path, e.to_string()))?;
                    written += (page - start) as u64;
                    run = None;
                }
                _ => {}
            }
            if page == len {
                break;
            }
            page = (page + PAGE).min(len);
        }
        file_off += len as u64;
    }
    if durable {
        file.sync_data().map_err(|e| mem_err(path, e.to_string()))?;
    }
    Ok(Written { written, scanned })
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
