//! File operations, confined to the agent's file root.
//!
//! Path policy (what "hostile paths" do):
//! - The file root is `/` inside a sandbox (the sandbox's whole filesystem,
//!   served as root: the sandbox itself is the boundary) and the directory
//!   given by `--files-root` when the agent runs as a plain process.
//! - Every path is taken relative to the root, with or without a leading
//!   `/`. It is normalised lexically first: empty and `.` components are
//!   dropped, `..` removes the previous component and stops at the root.
//!   A path containing NUL is rejected (`InvalidInput`).
//! - Resolution uses `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so
//!   a symlink (absolute or with `..`) is resolved as if the root were `/`,
//!   like in a chroot: nothing outside the root is reachable, and
//!   `/proc/*/root`-style magic links are refused.
//! - The last component is never followed for `stat`, `remove` and
//!   `write` (a symlink is reported, removed or replaced itself).
//! - Writes are atomic: a temporary file beside the target, `fsync`, then
//!   `renameat` over the target; the temporary is removed on failure.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use agent_proto::{Body, DirEntry, ErrorKind, FileKind, FileStat, RemoteError, WriteFile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::Op;

type Io<T> = std::io::Result<T>;

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cvt(rc: libc::c_int) -> Io<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The directory file operations are confined to.
pub struct FileRoot {
    dir: OwnedFd,
}

/// A normalised path: its components below the root.
struct Rel(Vec<String>);

impl Rel {
    fn parse(path: &str) -> Result<Self, RemoteError> {
        if path.contains('\0') {
            return Err(RemoteError::new(
                ErrorKind::InvalidInput,
                "path contains NUL",
            ));
        }
        let mut comps: Vec<String> = Vec::new();
        for c in path.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    comps.pop();
                }
                c => comps.push(c.to_owned()),
            }
        }
        Ok(Rel(comps))
    }

    fn joined(&self) -> CString {
        let s = if self.0.is_empty() {
            ".".to_owned()
        } else {
            self.0.join("/")
        };
        CString::new(s).expect("components were checked for NUL")
    }

    fn split_last(&self) -> Option<(Rel, CString)> {
        let (last, parent) = self.0.split_last()?;
        let name = CString::new(last.as_str()).expect("components were checked for NUL");
        Some((Rel(parent.to_vec()), name))
    }
}

fn err(path: &str, e: std::io::Error) -> RemoteError {
    RemoteError::new(ErrorKind::from(&e), format!("{path}: {e}"))
}

impl FileRoot {
    pub fn open(path: &Path) -> Io<Self> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a valid C string for the duration of the call.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: open succeeded, so `fd` is a new descriptor we own.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { dir })
    }

    fn open_rel(&self, rel: &Rel, flags: libc::c_int, mode: u32) -> Io<OwnedFd> {
        let path = rel.joined();
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: if flags & libc::O_CREAT != 0 {
                mode as u64
            } else {
                0
            },
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 reads the path string and `how` (of the size we
        // pass), both valid for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: openat2 succeeded, so `rc` is a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
    }

    fn open_dir(&self, rel: &Rel) -> Io<OwnedFd> {
        self.open_rel(rel, libc::O_PATH | libc::O_DIRECTORY, 0)
    }

    /// The parent directory (resolved in the root) and the last name.
    fn parent(&self, rel: &Rel) -> Io<(OwnedFd, CString)> {
        let Some((parent, name)) = rel.split_last() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the operation needs a path below the root",
            ));
        };
        Ok((self.open_dir(&parent)?, name))
    }

    pub fn stat(&self, path: &str) -> Result<FileStat, RemoteError> {
        let rel = Rel::parse(path)?;
        let res = match rel.split_last() {
            None => stat_at(self.dir.as_raw_fd(), c"", libc::AT_EMPTY_PATH),
            Some(_) => self
                .parent(&rel)
                .and_then(|(dir, name)| stat_at(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)),
        };
        res.map_err(|e| err(path, e))
    }

    pub fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, RemoteError> {
        let rel = Rel::parse(path)?;
        let dir = self
            .open_rel(&rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| err(path, e))?;
        let mut out = Vec::new();
        for name in read_names(&dir).map_err(|e| err(path, e))? {
            // An entry removed meanwhile is simply skipped.
            if let Ok(stat) = stat_at(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW) {
                out.push(DirEntry {
                    name: name.to_string_lossy().into_owned(),
                    stat,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<(), RemoteError> {
        let rel = Rel::parse(path)?;
        self.mkdir_rel(&rel, mode).map_err(|e| err(path, e))
    }

    fn mkdir_rel(&self, rel: &Rel, mode: u32) -> Io<()> {
        let mut dir = self.open_dir(&Rel(Vec::new()))?;
        for i in 0..rel.0.len() {
            let prefix = Rel(rel.0[..=i].to_vec());
            match self.open_dir(&prefix) {
                Ok(d) => dir = d,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = CString::new(rel.0[i].as_str()).expect("checked for NUL");
                    // SAFETY: mkdirat reads the name, valid for the call.
                    let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) };
                    if rc < 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                    dir = self.open_dir(&prefix)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn remove(&self, path: &str, recursive: bool) -> Result<(), RemoteError> {
        let rel = Rel::parse(path)?;
        let (dir, name) = self.parent(&rel).map_err(|e| err(path, e))?;
        remove_at(dir.as_raw_fd(), &name, recursive).map_err(|e| err(path, e))
    }
}

fn stat_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> Io<FileStat> {
    // SAFETY: an all-zero `stat` is a valid value; fstatat overwrites it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat reads the name and writes `st`, both valid.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    let link_target = if kind == FileKind::Symlink {
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: readlinkat writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
    } else {
        None
    };
    Ok(FileStat {
        kind,
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        modified_unix_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
        link_target,
    })
}

/// Names in a directory, without `.` and `..`.
fn read_names(dir: &OwnedFd) -> Io<Vec<CString>> {
    let fd = dir.try_clone()?;
    // SAFETY: fdopendir takes ownership of a valid directory descriptor.
    let d = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if d.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    std::mem::forget(fd); // now owned by `d`, closed by closedir
    let mut names = Vec::new();
    loop {
        // SAFETY: `d` is a valid DIR stream until closedir below.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir64 returned a valid entry whose d_name is a C string.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `d` came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(d) };
    Ok(names)
}

fn remove_at(dir: RawFd, name: &CStr, recursive: bool) -> Io<()> {
    // SAFETY: unlinkat reads the name, valid for the call.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EISDIR) {
        return Err(e);
    }
    if recursive {
        // SAFETY: openat reads the name; O_NOFOLLOW keeps us on this tree.
        let fd = cvt(unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: openat succeeded; the descriptor is ours.
        let sub = unsafe { OwnedFd::from_raw_fd(fd) };
        for child in read_names(&sub)? {
            remove_at(sub.as_raw_fd(), &child, true)?;
        }
    }
    // SAFETY: unlinkat reads the name, valid for the call.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) }).map(|_| ())
}

/// Streams a file to the client as `Data` frames.
pub async fn read(op: Op, root: &FileRoot, path: &str) -> Result<Body, RemoteError> {
    let rel = Rel::parse(path)?;
    let fd = root
        .open_rel(&rel, libc::O_RDONLY, 0)
        .map_err(|e| err(path, e))?;
    let st = stat_at(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH).map_err(|e| err(path, e))?;
    if st.kind == FileKind::Dir {
        return Err(RemoteError::new(
            ErrorKind::IsADirectory,
            format!("{path}: is a directory"),
        ));
    }
    let mut file = tokio::fs::File::from_std(std::fs::File::from(fd));
    let out = op.sender();
    let mut buf = vec![0u8; agent_proto::CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| err(path, e))?;
        if n == 0 {
            return Ok(Body::Done);
        }
        out.send_data(&buf[..n], Body::Data).await?;
    }
}

/// Removes the temporary file unless the write completed.
struct TempGuard<'a> {
    dir: &'a OwnedFd,
    name: CString,
    armed: bool,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: unlinkat reads the name, valid for the call.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Receives `Data` until `Eof` into a temporary file, then renames it over
/// the target.
pub async fn write(mut op: Op, root: &FileRoot, req: WriteFile) -> Result<Body, RemoteError> {
    let path = req.path.as_str();
    let rel = Rel::parse(path)?;
    let Some((parent_rel, name)) = rel.split_last() else {
        return Err(RemoteError::new(
            ErrorKind::InvalidInput,
            "cannot write the root",
        ));
    };
    if req.create_parents {
        root.mkdir_rel(&parent_rel, 0o755)
            .map_err(|e| err(path, e))?;
    }
    let dir = root.open_dir(&parent_rel).map_err(|e| err(path, e))?;
    let tmp = CString::new(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
    .expect("no NUL in the name");
    let mode = req.mode & 0o7777;
    // SAFETY: openat reads the name, valid for the call.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })
    .map_err(|e| err(path, e))?;
    let mut guard = TempGuard {
        dir: &dir,
        name: tmp,
        armed: true,
    };
    // SAFETY: openat succeeded; the descriptor is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The umask may have cleared bits the caller asked for.
    // SAFETY: fchmod on our descriptor.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map_err(|e| err(path, e))?;
    let mut file = tokio::fs::File::from_std(std::fs::File::from(fd));
    let out = op.sender();
    loop {
        match op.input.recv().await {
            Some(Body::Data(d)) => {
                file.write_all(&d).await.map_err(|e| err(path, e))?;
                out.credit(d.len()).await?;
            }
            Some(Body::Eof) => break,
            Some(Body::Cancel) | None => {
                return Err(RemoteError::new(ErrorKind::Io, "write cancelled"));
            }
            Some(_) => {}
        }
    }
    file.sync_all().await.map_err(|e| err(path, e))?;
    drop(file);
    // SAFETY: renameat reads both names, valid for the call.
    cvt(unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            guard.name.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
        )
    })
    .map_err(|e| err(path, e))?;
    guard.armed = false;
    Ok(Body::Done)
}
