//! Bringing up the loopback interface of a fresh network namespace with one
//! rtnetlink request (no `ip` binary needed inside or outside the sandbox).
//!
//! Wire layout of the request (native endian), 32 bytes:
//! `nlmsghdr { len: u32, type: u16 = RTM_NEWLINK, flags: u16 = REQUEST|ACK,
//! seq: u32, pid: u32 }` followed by `ifinfomsg { family: u8, pad: u8,
//! type: u16, index: i32 = 1, flags: u32 = IFF_UP, change: u32 = IFF_UP }`.
//! The kernel answers with `NLMSG_ERROR` whose `error` field (i32 at offset
//! 16) is 0 on success or a negative errno.

use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

/// Loopback is interface 1 in every network namespace.
const LOOPBACK_INDEX: i32 = 1;

/// Failure to bring up loopback.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Netlink socket operation failed")]
    Socket(#[source] nix::Error),
    #[error("Kernel refused to bring loopback up (errno {0})")]
    Refused(i32),
    #[error("Short or malformed netlink answer ({0} bytes)")]
    Malformed(usize),
}

fn request() -> [u8; 32] {
    let mut msg = [0u8; 32];
    msg[0..4].copy_from_slice(&32u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = libc::AF_UNSPEC as u8;
    msg[20..24].copy_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    let up = libc::IFF_UP as u32;
    msg[24..28].copy_from_slice(&up.to_ne_bytes());
    msg[28..32].copy_from_slice(&up.to_ne_bytes());
    msg
}

/// Set `lo` up in the caller's network namespace.
pub fn loopback_up() -> Result<(), NetError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(NetError::Socket)?;
    sendto(
        fd.as_raw_fd(),
        &request(),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(NetError::Socket)?;
    let mut answer = [0u8; 256];
    let len = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty()).map_err(NetError::Socket)?;
    if len < 20 {
        return Err(NetError::Malformed(len));
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(NetError::Malformed(len));
    }
    let error = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
    if error != 0 {
        return Err(NetError::Refused(-error));
    }
    Ok(())
}
