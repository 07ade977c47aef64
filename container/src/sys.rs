//! The two kernel calls the container backend needs that neither `nix` nor
//! `rustix` wraps: `mount_setattr(2)` (to make an idmapped mount) and
//! `close_range(2)` (to close descriptors PID 1 inherited). This is the
//! only module of the crate allowed `unsafe`; each block names what makes
//! it sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
const MOUNT_ATTR_NODEV: u64 = 0x4;
/// `MOUNT_ATTR_IDMAP`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `AT_EMPTY_PATH`: operate on the descriptor itself.
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
/// `AT_RECURSIVE`: the whole tree under the descriptor.
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Attributes to set on a detached mount tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs<'a> {
    /// Map ids through this user namespace (owner ids on disk are seen as
    /// the namespace maps them).
    pub idmap: Option<BorrowedFd<'a>>,
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
}

/// Applies `attrs` to the mount tree `tree` (an `open_tree(OPEN_TREE_CLONE)`
/// descriptor), recursively.
pub fn mount_setattr(tree: BorrowedFd<'_>, attrs: Attrs<'_>) -> io::Result<()> {
    let mut set = 0;
    if attrs.read_only {
        set |= MOUNT_ATTR_RDONLY;
    }
    if attrs.nosuid {
        set |= MOUNT_ATTR_NOSUID;
    }
    if attrs.nodev {
        set |= MOUNT_ATTR_NODEV;
    }
    let userns_fd = match attrs.idmap {
        Some(fd) => {
            set |= MOUNT_ATTR_IDMAP;
            fd.as_raw_fd() as u64
        }
        None => 0,
    };
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    let empty = c"";
    // SAFETY: the path is a valid NUL-terminated string, `attr` is a live,
    // correctly laid out `struct mount_attr` whose size is passed with it,
    // and the kernel only reads both for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every descriptor from `first` up (`close_range(first, ~0, 0)`).
/// Only for a process about to exec, that owns no descriptor above `first`
/// it still needs.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes integers only; the caller guarantees no live
    // Rust object (File, OwnedFd) refers to a descriptor in the range.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
