//! Where the agent listens: a Unix socket (container sandboxes, tests) or a
//! vsock port (microVMs). A vsock connection is wrapped in [`VsockStream`],
//! a non-blocking socket registered with the tokio reactor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Vsock(u32),
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            return port
                .parse()
                .map(Address::Vsock)
                .map_err(|_| format!("bad vsock port in {s:?}"));
        }
        Err(format!(
            "listen address must be unix:PATH or vsock:PORT, not {s:?}"
        ))
    }
}

pub enum Listener {
    Unix(tokio::net::UnixListener),
    Vsock(AsyncFd<OwnedFd>),
}

/// A connected socket of any kind (a vsock one with its peer's CID).
pub enum Conn {
    Unix(tokio::net::UnixStream),
    Vsock(VsockStream, u32),
}

/// The host's vsock CID (`VMADDR_CID_HOST`).
const CID_HOST: u32 = 2;

impl Conn {
    /// Whether the peer is outside the sandbox: over a Unix socket, a
    /// process this PID namespace cannot see (the kernel reports pid 0);
    /// over vsock, the host's CID.
    pub fn from_host(&self) -> bool {
        match self {
            Conn::Unix(s) => s
                .peer_cred()
                .is_ok_and(|cred| cred.pid().is_none_or(|pid| pid == 0)),
            Conn::Vsock(_, cid) => *cid == CID_HOST,
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and unchanged until the AsyncFd that
    // owns it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

impl Listener {
    pub fn bind(addr: &Address) -> io::Result<Self> {
        match addr {
            Address::Unix(path) => {
                let _ = std::fs::remove_file(path);
                Ok(Listener::Unix(tokio::net::UnixListener::bind(path)?))
            }
            Address::Vsock(port) => {
                // SAFETY: socket() takes integer arguments only.
                let fd = cvt(unsafe {
                    libc::socket(
                        libc::AF_VSOCK,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                })?;
                // SAFETY: socket() succeeded; the descriptor is ours.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: an all-zero sockaddr_vm is valid; fields set below.
                let mut sa: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
                sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
                sa.svm_port = *port;
                sa.svm_cid = libc::VMADDR_CID_ANY;
                // SAFETY: bind reads `size_of::<sockaddr_vm>()` bytes of `sa`.
                cvt(unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_vm).cast(),
                        std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                    )
                })?;
                // SAFETY: listen takes integer arguments only.
                cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
                Ok(Listener::Vsock(register(fd)?))
            }
        }
    }

    pub async fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Unix(l) => Ok(Conn::Unix(l.accept().await?.0)),
            Listener::Vsock(fd) => loop {
                let mut guard = fd.readable().await?;
                // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
                let mut peer: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
                let res = guard.try_io(|fd| {
                    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
                    // SAFETY: `peer` and `len` are live and `len` is the size
                    // of `peer`, which the kernel writes at most.
                    cvt(unsafe {
                        libc::accept4(
                            fd.as_raw_fd(),
                            (&mut peer as *mut libc::sockaddr_vm).cast(),
                            &mut len,
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    })
                });
                match res {
                    Ok(Ok(conn)) => {
                        // SAFETY: accept4 succeeded; the descriptor is ours.
                        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
                        return Ok(Conn::Vsock(VsockStream(register(conn)?), peer.svm_cid));
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            },
        }
    }
}

/// A connected, non-blocking vsock socket.
pub struct VsockStream(AsyncFd<OwnedFd>);

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|fd| {
                // SAFETY: read writes at most `unfilled.len()` bytes into it.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let res = guard.try_io(|fd| {
                // SAFETY: write reads `data.len()` bytes from `data`.
                let n = unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown takes integer arguments only.
        let rc = unsafe { libc::shutdown(self.0.get_ref().as_raw_fd(), libc::SHUT_WR) };
        Poll::Ready(cvt(rc).map(|_| ()))
    }
}
