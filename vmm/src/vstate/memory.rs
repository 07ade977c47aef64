//! Guest RAM of a booted VM: one file on a private huge-page tmpfs, mapped
//! MAP_SHARED region by region (split around the MMIO gap below 4 GiB).
//!
//! Shared file memory is what keeps a live fork's pause from growing with RAM
//! (see `crate::fork`): fork(2) does not copy page tables of a shared
//! file mapping, and [`freeze_shared`] turns the parent's RAM into a
//! private, copy-on-write view of the file by moving the old mapping away
//! (mremap moves whole page-table pages, one entry per 1 GiB where the
//! addresses allow, so it does not walk the RAM) and mapping the file
//! privately in its place, in 256 MiB pieces so that later forks copy only
//! the pieces written since. From then on nobody writes the file: it is the
//! frozen image that the parent and every child map privately.
//!
//! Where the tmpfs cannot be mounted, RAM is private anonymous memory
//! advised for transparent huge pages, and forks copy its page tables.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::arch::{MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating or re-mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("Cannot map {mem_mib} MiB of guest memory: {reason}")]
    Map {
        /// Requested size.
        mem_mib: u64,
        /// Why.
        reason: String,
    },
    /// Moving the shared mapping away or mapping the file privately failed.
    #[error("Cannot freeze guest memory for fork: {op}")]
    Freeze {
        /// The call that failed.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where the moved-away mapping goes: an address congruent to the old one
/// modulo this, so mremap can move whole upper-level page-table entries.
const MOVE_ALIGN: usize = 1 << 30;

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

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn syscall_fd(r: libc::c_long) -> std::io::Result<OwnedFd> {
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// An unnamed `total`-byte file on a tmpfs of its own, mounted with
/// `huge=always` and never attached to any path (fsopen/fsmount): shared
/// memory on 2 MiB pages whatever the host's shmem THP setting (memfd
/// follows that setting, `never` on this project's hosts, and 4 KiB shared
/// pages make a guest's first touch of its RAM many times slower on PVM).
/// Needs CAP_SYS_ADMIN.
fn huge_shmem_file(total: u64) -> std::io::Result<File> {
    // SAFETY: fsopen with a NUL-terminated name; the result is checked.
    let fs =
        syscall_fd(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) })?;
    let size = std::ffi::CString::new(total.to_string()).map_err(std::io::Error::other)?;
    for (key, value) in [(c"huge", c"always"), (c"size", size.as_c_str())] {
        // SAFETY: fsconfig on our fs context with NUL-terminated strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: as above, with no strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fsmount of the context created above; the result is checked.
    let mnt = syscall_fd(unsafe {
        libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0)
    })?;
    // SAFETY: openat on the detached mount's root with a NUL-terminated
    // path; the result is checked.
    let fd = unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    let file = File::from(syscall_fd(libc::c_long::from(fd))?);
    file.set_len(total)?;
    Ok(file)
}

/// Guest RAM's file made by [`prepare`], with its size.
static PREPARED: std::sync::Mutex<Option<(u64, File)>> = std::sync::Mutex::new(None);

/// Makes the huge-page tmpfs file of `mem_mib` MiB of guest RAM now, for
/// the next [`create`] of that size: mounting the tmpfs needs
/// CAP_SYS_ADMIN, which a jailed VMM no longer has when it builds its VM.
/// Where it cannot be made, `create` falls back as it says.
pub fn prepare(mem_mib: u64) {
    let total: u64 = ram_ranges(mem_mib).iter().map(|(_, s)| *s as u64).sum();
    if let Ok(file) = huge_shmem_file(total) {
        *PREPARED.lock().unwrap_or_else(|p| p.into_inner()) = Some((total, file));
    }
}

/// Maps `mem_mib` MiB of guest RAM: shared, per region, from a file on a
/// private huge-page tmpfs (`huge_shmem_file`). Where that cannot be
/// had (no CAP_SYS_ADMIN), private anonymous memory.
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(mem_mib);
    let total: u64 = ranges.iter().map(|(_, s)| *s as u64).sum();
    let map_err = |reason: String| MemoryError::Map { mem_mib, reason };
    let prepared = PREPARED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .filter(|(size, _)| *size == total)
        .map(|(_, file)| file);
    let Some(file) = prepared.or_else(|| huge_shmem_file(total).ok()) else {
        return GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| map_err(e.to_string()));
    };
    let file = Arc::new(file);
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for (addr, size) in ranges {
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| map_err("region wraps the address space".into()))?;
        regions.push(region);
        offset += size as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
}

/// Asks for transparent huge pages over all of guest RAM. Called after the
/// boot structures are written, so those few pages stay small. Matters
/// for private anonymous RAM; the huge-page tmpfs needs no advice.
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

/// The moved-away shared mappings of a frozen guest RAM: address ranges
/// this process still maps but nothing uses. Not inherited by children.
/// Dropping it unmaps them at once.
#[derive(Debug, Default)]
pub struct Retired(Vec<(usize, usize)>);

impl Retired {
    /// Unmaps the old mappings on a background thread: tearing down the
    /// page tables of a large shared mapping takes time proportional to
    /// what was mapped, and the vCPUs need not wait for it (munmap holds
    /// the address-space lock for reading while it zaps).
    pub fn release_in_background(mut self) {
        let ranges = std::mem::take(&mut self.0);
        if ranges.is_empty() {
            return;
        }
        let kept = ranges.clone();
        let spawned = std::thread::Builder::new()
            .name("ram-unmap".into())
            .spawn(move || {
                crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Worker);
                release(&ranges)
            });
        // Without a thread, unmap here: slower, still correct.
        if spawned.is_err() {
            release(&kept);
        }
    }
}

impl Drop for Retired {
    fn drop(&mut self) {
        release(&self.0);
    }
}

fn release(ranges: &[(usize, usize)]) {
    for (addr, len) in ranges {
        // SAFETY: each range is a reservation `freeze_shared` made, holding
        // only the moved-away mapping that nothing refers to any more.
        unsafe { libc::munmap(*addr as *mut libc::c_void, *len) };
    }
}

fn os_err(op: &'static str) -> MemoryError {
    MemoryError::Freeze {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// Turns the shared file regions of `mem`, from index `*from` on, into
/// private mappings of the same file ranges at the same addresses;
/// afterwards this process never writes those file ranges again. Each old
/// mapping is moved (with its page tables, not walked) into a fresh
/// reservation marked MADV_DONTFORK and left in `retired` for the caller
/// to unmap ([`Retired::release_in_background`]). `*from` advances past
/// each region done, so after an error the regions before it are private
/// and the rest still shared, each intact.
///
/// Nothing may access guest RAM while this runs (vCPUs paused, devices
/// idle): between the move and the new mapping the range is unmapped.
pub fn freeze_shared(
    mem: &GuestMemoryMmap,
    from: &mut usize,
    retired: &mut Retired,
) -> Result<(), MemoryError> {
    for region in mem.iter().skip(*from) {
        if let Some(fo) = region.file_offset() {
            freeze_region(region, fo, retired)?;
        }
        *from += 1;
    }
    Ok(())
}

/// Moves the mapping of `len` bytes at `from` to `to`, replacing whatever
/// was mapped there; returns the new address or `MAP_FAILED`.
///
/// # Safety
/// `from..from + len` must be one mapping of this process, and
/// `to..to + len` a range this process owns and nothing else uses.
unsafe fn move_mapping(from: usize, to: usize, len: usize) -> *mut libc::c_void {
    // SAFETY: the caller's contract.
    unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    }
}

fn freeze_region(
    region: &GuestRegionMmap,
    fo: &FileOffset,
    retired: &mut Retired,
) -> Result<(), MemoryError> {
    let len = region.len() as usize;
    let host = region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|_| MemoryError::Freeze {
            op: "host address",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })? as usize;
    let resv_len = len + MOVE_ALIGN;
    // SAFETY: a new anonymous PROT_NONE reservation; it overlaps nothing.
    let resv = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            resv_len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if resv == libc::MAP_FAILED {
        return Err(os_err("mmap reservation"));
    }
    let resv = resv as usize;
    retired.0.push((resv, resv_len));
    // SAFETY: MADV_DONTFORK on our own reservation only keeps children
    // from inheriting it (and the mapping moved into it).
    if unsafe { libc::madvise(resv as *mut libc::c_void, resv_len, libc::MADV_DONTFORK) } != 0 {
        return Err(os_err("madvise MADV_DONTFORK"));
    }
    // Same offset modulo 1 GiB as the old address, inside the reservation.
    let target = resv + (host.wrapping_sub(resv) % MOVE_ALIGN);
    // SAFETY: moves the region's own mapping into our reservation
    // (MREMAP_FIXED replaces part of it); nothing touches guest RAM
    // meanwhile (the caller's contract), and the range is mapped again
    // below, or the mapping moved back, before anyone can.
    let moved = unsafe { move_mapping(host, target, len) };
    if moved == libc::MAP_FAILED {
        return Err(os_err("mremap"));
    }
    // The moved mapping keeps its own flags, not the reservation's: mark it
    // too, so no child ever holds a writable shared view of the file.
    // SAFETY: only sets VM_DONTCOPY on the mapping just moved there.
    if unsafe { libc::madvise(target as *mut libc::c_void, len, libc::MADV_DONTFORK) } != 0 {
        let err = os_err("madvise MADV_DONTFORK");
        // SAFETY: puts the shared mapping back where `mem` expects it.
        unsafe { move_mapping(target, host, len) };
        return Err(err);
    }
    // SAFETY: maps the same file range privately over the address range
    // the move just emptied, which `mem` owns and unmaps on drop.
    let mapped = unsafe {
        libc::mmap(
            host as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
            fo.file().as_raw_fd(),
            fo.start() as libc::off_t,
        )
    };
    if mapped == libc::MAP_FAILED {
        let err = os_err("mmap private");
        // SAFETY: puts the shared mapping back where `mem` expects it.
        unsafe { move_mapping(target, host, len) };
        return Err(err);
    }
    split_private_view(host, len);
    Ok(())
}

/// Size of the pieces the private view of frozen RAM is cut into: each
/// costs fork(2) a few microseconds, and a written one costs KVM a walk of
/// about 0.06 ms on PVM.
const VIEW_CHUNK: usize = 256 << 20;

/// Cuts the private view at `[host, host + len)` into [`VIEW_CHUNK`]
/// mappings that the kernel keeps apart, by marking every other one
/// MADV_DONTDUMP (guest RAM in a VMM core dump is of no use anyway).
///
/// fork(2) copies, and makes KVM re-check, only mappings that hold pages
/// of their own; whole, the view would be one mapping as soon as the
/// guest writes anywhere, and every later fork would walk all of RAM (on
/// PVM, KVM's shadow MMU walks its reverse map per 4 KiB page). Cut, a
/// later fork walks only the pieces written since the freeze. Best effort:
/// a piece left whole costs time, not correctness.
fn split_private_view(host: usize, len: usize) {
    let mut at = VIEW_CHUNK;
    while at < len {
        let piece = VIEW_CHUNK.min(len - at);
        // SAFETY: MADV_DONTDUMP only sets a flag on part of the mapping
        // just made; it changes no contents.
        unsafe { libc::madvise((host + at) as *mut libc::c_void, piece, libc::MADV_DONTDUMP) };
        at += 2 * VIEW_CHUNK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// `(device, inode)` of `file` as /proc/self/maps prints them (each
    /// test's tmpfs numbers its inodes from the same start).
    fn maps_id(file: &File) -> (String, String) {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().expect("stat");
        let dev = m.dev();
        (
            format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev)),
            m.ino().to_string(),
        )
    }

    /// For each shared mapping of `id` in this process: whether it is
    /// marked not to be inherited (VmFlags `dc`).
    fn shared_maps_of(id: &(String, String)) -> Vec<bool> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut out = Vec::new();
        let mut current = false;
        for line in smaps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 && f[0].contains('-') && !line.starts_with("VmFlags") {
                current = f[1].ends_with('s') && f[3] == id.0 && f[4] == id.1;
            } else if current && line.starts_with("VmFlags:") {
                out.push(f.contains(&"dc"));
                current = false;
            }
        }
        out
    }

    /// How many private mappings of `id` this process has.
    fn private_maps_of(id: &(String, String)) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 5 && f[1].ends_with('p') && f[3] == id.0 && f[4] == id.1)
            .count()
    }

    #[test]
    fn frozen_view_is_cut_into_pieces_later_forks_copy_apart() {
        let mem = create(3 * (VIEW_CHUNK as u64 >> 20)).expect("map");
        let file = mem
            .iter()
            .next()
            .and_then(|r| r.file_offset().map(|f| f.arc().clone()))
            .expect("RAM on the huge-page tmpfs (needs CAP_SYS_ADMIN)");
        let id = maps_id(&file);
        assert_eq!(private_maps_of(&id), 0);
        let (mut from, mut retired) = (0, Retired::default());
        freeze_shared(&mem, &mut from, &mut retired).expect("freeze");
        drop(retired);
        // A write gives one piece pages of its own; the pieces stay apart.
        mem.write_obj(1u64, GuestAddress(VIEW_CHUNK as u64 + 8))
            .expect("write");
        assert_eq!(private_maps_of(&id), 3);
    }

    #[test]
    fn frozen_memory_keeps_contents_and_stops_writing_the_file() {
        let mem = create(8).expect("map");
        mem.write_obj(0x1234_5678u64, GuestAddress(0x2000))
            .expect("write");
        let file = mem
            .iter()
            .next()
            .and_then(|r| r.file_offset().map(|f| f.arc().clone()))
            .expect("RAM on the huge-page tmpfs (needs CAP_SYS_ADMIN)");
        let (mut from, mut retired) = (0, Retired::default());
        freeze_shared(&mem, &mut from, &mut retired).expect("freeze");
        assert_eq!(from, 1);
        let id = maps_id(&file);
        let shared = shared_maps_of(&id);
        assert_eq!(shared.len(), 1, "the moved-away mapping: {shared:?}");
        assert!(shared[0], "children must not inherit the shared mapping");
        drop(retired);
        assert!(shared_maps_of(&id).is_empty(), "unmapped on drop");
        let v: u64 = mem.read_obj(GuestAddress(0x2000)).expect("read");
        assert_eq!(v, 0x1234_5678);
        mem.write_obj(0xdead_beefu64, GuestAddress(0x2000))
            .expect("write");
        let mut buf = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, 0x2000).expect("pread");
        assert_eq!(
            u64::from_le_bytes(buf),
            0x1234_5678,
            "the file stayed frozen"
        );
        let v: u64 = mem.read_obj(GuestAddress(0x2000)).expect("read");
        assert_eq!(v, 0xdead_beef);
    }
}
