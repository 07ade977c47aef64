//! Host-side access to directories a sandbox can write (its run directory,
//! its layers). The host never follows a path there: it opens the directory
//! itself once (a path only the host controls), then resolves every name
//! under it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, so a symlink the sandbox planted is refused,
//! never followed. Files are checked to be of the expected kind after
//! opening (a FIFO planted where a log should be would otherwise block the
//! host forever), and sockets are reached through the descriptor of the
//! socket inode itself, never by path.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// How every name under a sandbox-writable directory is resolved.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A directory the host opened itself, under which a sandbox may write.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn refused(what: &str, path: &Path, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is {what}, refused", path.join(name).display()),
    )
}

/// One plain name: no separators, no `.` or `..`.
fn plain(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

impl Dir {
    /// Opens `path`, which the host controls (no sandbox can write any of
    /// its components), refusing a symlink as its last component.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory's host path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_at(&self, relative: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat2(
            &self.fd,
            relative,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
            RESOLVE,
        )?)
    }

    /// A subdirectory (any depth below, no link on the way).
    pub fn subdir(&self, relative: &str) -> io::Result<Self> {
        let fd = self.open_at(relative, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        Ok(Self {
            fd,
            path: self.path.join(relative),
        })
    }

    /// Opens the regular file `name` for reading.
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        let fd = self.open_at(plain(name)?, OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
        regular(fd, &self.path, name)
    }

    /// Opens the regular file `name` for appending, creating it (mode
    /// `0o644`) if missing. Anything else found under that name (a FIFO, a
    /// socket, a directory) is refused.
    pub fn open_append(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK;
        let fd = self.open_at(plain(name)?, flags, 0o644)?;
        regular(fd, &self.path, name)
    }

    /// Opens `name` for appending like [`Dir::open_append`], replacing
    /// whatever non-file the sandbox left under that name.
    pub fn open_append_replacing(&self, name: &str) -> io::Result<File> {
        match self.open_append(name) {
            // Not a file (InvalidData), a symlink (ELOOP), a FIFO without a
            // reader (ENXIO), a directory (EISDIR): the sandbox's doing; the
            // name is ours to reuse.
            Err(err)
                if err.kind() == io::ErrorKind::InvalidData
                    || matches!(
                        err.raw_os_error(),
                        Some(libc::ELOOP | libc::ENXIO | libc::EISDIR)
                    ) =>
            {
                self.remove(name)?;
                self.open_append(name)
            }
            other => other,
        }
    }

    /// Removes the entry `name` (a file, link, socket or directory with
    /// what is in it); missing is fine. Never follows a link. Call it only
    /// while no sandbox process runs: a directory's content is removed by
    /// path (std's `remove_dir_all`, which never follows links either).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let name = plain(name)?;
        let result = match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Err(rustix::io::Errno::ISDIR) => {
                rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
            }
            other => other,
        };
        match result {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(rustix::io::Errno::NOTEMPTY) => std::fs::remove_dir_all(self.path.join(name)),
            Err(err) => Err(err.into()),
        }
    }

    /// Creates the directory `name` (mode `mode`) if it does not exist.
    pub fn ensure_dir(&self, name: &str, mode: u32) -> io::Result<()> {
        match rustix::fs::mkdirat(&self.fd, plain(name)?, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// An `O_PATH` descriptor of the socket inode `name`, and the path that
    /// reaches exactly that inode (`/proc/self/fd/N`) for `connect(2)`.
    /// Connecting through it cannot be redirected by a link: the kernel
    /// resolves the magic link to the inode the descriptor holds.
    pub fn socket(&self, name: &str) -> io::Result<SocketPath> {
        let fd = self.open_at(plain(name)?, OFlags::PATH, 0)?;
        let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
        if kind != FileType::Socket {
            return Err(refused("not a socket", &self.path, name));
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Ok(SocketPath { _fd: fd, path })
    }

    /// Bytes used by the regular files directly in this directory.
    pub fn file_bytes(&self) -> io::Result<u64> {
        let fd = self.open_at(".", OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
        let mut dir = rustix::fs::Dir::read_from(&fd)?;
        let mut total = 0;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            if let Ok(stat) = rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                && FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            {
                total += stat.st_blocks as u64 * 512;
            }
        }
        Ok(total)
    }
}

/// The file behind `fd` if it is a regular file, made blocking again.
fn regular(fd: OwnedFd, dir: &Path, name: &str) -> io::Result<File> {
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if kind != FileType::RegularFile {
        return Err(refused("not a regular file", dir, name));
    }
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// A path to one socket inode, valid while this value lives.
#[derive(Debug)]
pub struct SocketPath {
    _fd: OwnedFd,
    path: PathBuf,
}

impl SocketPath {
    /// `/proc/self/fd/N`, for `connect(2)`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("beneath-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[test]
    fn a_planted_symlink_is_refused_not_followed() {
        let base = scratch("link");
        let secret = base.join("secret");
        std::fs::write(&secret, "host only").expect("secret");
        let run = base.join("run");
        std::fs::create_dir(&run).expect("run");
        symlink(&secret, run.join("console.log")).expect("link");
        symlink("../secret", run.join("relative")).expect("link");
        let dir = Dir::open(&run).expect("open");
        assert!(dir.open_read("console.log").is_err());
        assert!(dir.open_read("relative").is_err());
        assert!(dir.open_append("console.log").is_err());
        assert!(dir.socket("console.log").is_err());
        // Replacing removes the link itself, never what it points at.
        let mut log = dir.open_append_replacing("console.log").expect("replace");
        log.write_all(b"ok").expect("write");
        assert_eq!(
            std::fs::read_to_string(&secret).expect("secret"),
            "host only"
        );
        assert_eq!(
            std::fs::read_to_string(run.join("console.log")).expect("log"),
            "ok"
        );
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_directory_where_a_file_belongs_is_replaced() {
        let base = scratch("dir");
        std::fs::create_dir_all(base.join("console.log/deep")).expect("dirs");
        std::fs::write(base.join("console.log/deep/x"), "x").expect("file");
        std::fs::create_dir_all(base.join("agent.sock/more")).expect("dirs");
        let dir = Dir::open(&base).expect("open");
        dir.open_append_replacing("console.log").expect("replaced");
        assert!(base.join("console.log").is_file());
        dir.remove("agent.sock").expect("removed");
        assert!(!base.join("agent.sock").exists());
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn names_cannot_climb_or_nest() {
        let base = scratch("names");
        let dir = Dir::open(&base).expect("open");
        for name in ["..", ".", "a/b", "", "../x"] {
            assert!(dir.open_read(name).is_err(), "{name:?}");
            assert!(dir.remove(name).is_err(), "{name:?}");
        }
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_fifo_where_a_file_belongs_is_refused_without_blocking() {
        let base = scratch("fifo");
        nix::unistd::mkfifo(
            &base.join("console.log"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        let dir = Dir::open(&base).expect("open");
        assert!(dir.open_read("console.log").is_err());
        assert!(dir.open_append("console.log").is_err());
        let mut log = dir.open_append_replacing("console.log").expect("replaced");
        log.write_all(b"x").expect("write");
        let mut back = String::new();
        dir.open_read("console.log")
            .expect("read")
            .read_to_string(&mut back)
            .expect("read");
        assert_eq!(back, "x");
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_socket_is_reached_through_its_own_inode() {
        let base = scratch("sock");
        let listener =
            std::os::unix::net::UnixListener::bind(base.join("agent.sock")).expect("bind");
        std::fs::write(base.join("file"), "x").expect("file");
        let dir = Dir::open(&base).expect("open");
        let socket = dir.socket("agent.sock").expect("socket");
        let _client = std::os::unix::net::UnixStream::connect(socket.path()).expect("connect");
        listener.accept().expect("accept");
        assert!(dir.socket("file").is_err(), "a regular file is no socket");
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn the_opened_directory_itself_may_not_be_a_link() {
        let base = scratch("top");
        std::fs::create_dir(base.join("real")).expect("dir");
        symlink(base.join("real"), base.join("link")).expect("link");
        assert!(Dir::open(&base.join("link")).is_err());
        assert!(Dir::open(&base.join("real")).is_ok());
        let _ = std::fs::remove_dir_all(base);
    }
}
