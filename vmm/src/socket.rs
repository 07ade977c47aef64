//! Unix socket paths a VMM process owns. A process killed with SIGKILL
//! leaves its socket files behind; binding the same path again first checks
//! whether anybody still listens there: if not, the stale file is removed,
//! if so, the path is in use and the new VM refuses to start.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The pid, in the caller's PID namespace, of the process at the other end
/// of `stream` (`SO_PEERCRED`: the kernel's word): for a VMM's control
/// socket, the VMM itself, also when it runs in a jail's PID namespace.
pub fn peer_pid(stream: &UnixStream) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the length passed.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.pid)
}

/// Errors binding a socket path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live process listens on the path.
    #[error("Socket {0} is in use by a running process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// bind/listen failed.
    #[error("Cannot bind {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Binds a listener at `path`, replacing a stale socket file.
pub fn bind_replacing_stale(path: &Path) -> Result<UnixListener, SocketError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.to_owned()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_owned())),
            Err(e)
                if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound =>
            {
                let _ = std::fs::remove_file(path);
            }
            Err(source) => {
                return Err(SocketError::Bind {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_is_replaced_live_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("vmm-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("s.sock");
        let first = bind_replacing_stale(&path).expect("first bind");
        assert!(matches!(
            bind_replacing_stale(&path),
            Err(SocketError::InUse(_))
        ));
        drop(first); // the file stays, as after SIGKILL
        assert!(path.exists());
        let _second = bind_replacing_stale(&path).expect("stale file replaced");
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").expect("plain file");
        assert!(matches!(
            bind_replacing_stale(&plain),
            Err(SocketError::NotASocket(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
