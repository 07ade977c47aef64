//! The virtio-vsock packet header (virtio 1.2 §5.10.6) and the operations
//! it carries, as the device reads them from the tx queue and writes them
//! to the rx queue.
//!
//! Wire layout: 44 bytes, little-endian, packed, followed by `len` bytes
//! of payload (in the same descriptor or the next one):
//!
//! | offset | size | field | |
//! | --- | --- | --- | --- |
//! | 0 | 8 | `src_cid` | sender's context id (host = 2) |
//! | 8 | 8 | `dst_cid` | receiver's context id |
//! | 16 | 4 | `src_port` | |
//! | 20 | 4 | `dst_port` | |
//! | 24 | 4 | `len` | payload bytes |
//! | 28 | 2 | `type` | 1 = stream, the only type served |
//! | 30 | 2 | `op` | [`Op`] |
//! | 32 | 4 | `flags` | SHUTDOWN: bit 0 no more receives, bit 1 no more sends |
//! | 36 | 4 | `buf_alloc` | sender's receive buffer for this connection |
//! | 40 | 4 | `fwd_cnt` | bytes the sender has consumed, free-running |
//!
//! Every packet carries the sender's `buf_alloc` and `fwd_cnt`, so every
//! packet is also a credit update (see `connection`). Descriptor chains
//! are parsed by the `virtio-vsock` crate; this module only names the
//! fields and says which packets the device accepts.

use virtio_vsock::packet::VsockPacket;

/// The host's context id (VMADDR_CID_HOST).
pub(super) const HOST_CID: u64 = 2;
/// VIRTIO_VSOCK_TYPE_STREAM.
pub(super) const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flags: the sender will neither receive nor send.
pub(super) const SHUTDOWN_BOTH: u32 = 3;
/// Largest packet payload accepted or produced.
pub(super) const MAX_PKT_DATA: u32 = 64 * 1024;

/// The `op` field.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Op {
    /// Open a connection.
    Request,
    /// Accept a REQUEST.
    Response,
    /// Refuse or abort a connection.
    Rst,
    /// The sender will stop receiving and/or sending (`flags`).
    Shutdown,
    /// Payload.
    Rw,
    /// Unsolicited `buf_alloc`/`fwd_cnt`.
    CreditUpdate,
    /// Ask the receiver for a CREDIT_UPDATE.
    CreditRequest,
}

impl Op {
    /// The op a wire value names; None for values the spec does not define.
    pub(super) fn from_wire(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }

    /// The wire value.
    pub(super) fn wire(self) -> u16 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Rst => 3,
            Self::Shutdown => 4,
            Self::Rw => 5,
            Self::CreditUpdate => 6,
            Self::CreditRequest => 7,
        }
    }
}

/// The two ends of a connection: the host-side port and the guest's port.
/// A guest packet names them as (dst_port, src_port), a device packet as
/// (src_port, dst_port).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct Ports {
    /// The port on the host (CID 2) side.
    pub(super) host: u32,
    /// The port on the guest side.
    pub(super) guest: u32,
}

/// A packet header, field by field as on the wire; `op` stays raw so an
/// undefined op can still be answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Header {
    pub(super) src_cid: u64,
    pub(super) dst_cid: u64,
    pub(super) src_port: u32,
    pub(super) dst_port: u32,
    pub(super) len: u32,
    pub(super) type_: u16,
    pub(super) op: u16,
    pub(super) flags: u32,
    pub(super) buf_alloc: u32,
    pub(super) fwd_cnt: u32,
}

impl Header {
    /// A header from the host to guest `guest_cid` on connection `ports`,
    /// with no payload, flags or credit yet.
    pub(super) fn to_guest(guest_cid: u64, ports: Ports, op: Op) -> Self {
        Self {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: ports.host,
            dst_port: ports.guest,
            len: 0,
            type_: TYPE_STREAM,
            op: op.wire(),
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// The same header advertising the sender's `buf_alloc` and `fwd_cnt`.
    pub(super) fn with_credit(self, buf_alloc: u32, fwd_cnt: u32) -> Self {
        Self {
            buf_alloc,
            fwd_cnt,
            ..self
        }
    }

    /// The op, if the spec defines it.
    pub(super) fn op(&self) -> Option<Op> {
        Op::from_wire(self.op)
    }

    /// The connection a guest packet belongs to.
    pub(super) fn ports_from_guest(&self) -> Ports {
        Ports {
            host: self.dst_port,
            guest: self.src_port,
        }
    }

    /// Whether a guest packet is a stream packet from guest `guest_cid` to
    /// the host: the only kind the device serves.
    pub(super) fn is_stream_to_host(&self, guest_cid: u64) -> bool {
        self.dst_cid == HOST_CID && self.src_cid == guest_cid && self.type_ == TYPE_STREAM
    }

    /// The header of a parsed packet.
    pub(super) fn read(pkt: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Writes every field into `pkt`'s header buffer.
    pub(super) fn write(&self, pkt: &mut VsockPacket<'_, ()>) {
        pkt.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }
}

#[cfg(test)]
mod tests {
    use virtio_vsock::packet::PKT_HEADER_SIZE;

    use super::*;

    #[test]
    fn every_defined_op_round_trips_and_others_are_undefined() {
        for wire in 1..=7 {
            let op = Op::from_wire(wire).expect("ops 1 to 7 are defined");
            assert_eq!(op.wire(), wire);
        }
        assert_eq!(Op::from_wire(0), None);
        assert_eq!(Op::from_wire(8), None);
        assert_eq!(Op::from_wire(u16::MAX), None);
    }

    #[test]
    fn a_header_is_written_at_the_documented_offsets_and_reads_back() {
        let header = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 0x1112_1314_1516_1718,
            src_port: 0x2122_2324,
            dst_port: 0x3132_3334,
            len: 0x4142_4344,
            type_: 0x5152,
            op: 0x6162,
            flags: 0x7172_7374,
            buf_alloc: 0x8182_8384,
            fwd_cnt: 0x9192_9394,
        };
        let mut bytes = [0u8; PKT_HEADER_SIZE];
        {
            // SAFETY: `bytes` outlives `pkt`, which ends with this block;
            // nothing else touches `bytes` meanwhile.
            let mut pkt = unsafe { VsockPacket::new(&mut bytes, None) }.expect("44-byte header");
            header.write(&mut pkt);
            assert_eq!(Header::read(&pkt), header);
        }
        let field = |at: usize, size: usize| {
            let mut le = [0u8; 8];
            le[..size].copy_from_slice(&bytes[at..at + size]);
            u64::from_le_bytes(le)
        };
        assert_eq!(PKT_HEADER_SIZE, 44);
        assert_eq!(field(0, 8), header.src_cid);
        assert_eq!(field(8, 8), header.dst_cid);
        assert_eq!(field(16, 4), u64::from(header.src_port));
        assert_eq!(field(20, 4), u64::from(header.dst_port));
        assert_eq!(field(24, 4), u64::from(header.len));
        assert_eq!(field(28, 2), u64::from(header.type_));
        assert_eq!(field(30, 2), u64::from(header.op));
        assert_eq!(field(32, 4), u64::from(header.flags));
        assert_eq!(field(36, 4), u64::from(header.buf_alloc));
        assert_eq!(field(40, 4), u64::from(header.fwd_cnt));
    }

    #[test]
    fn device_packets_name_the_host_port_first_and_guest_packets_second() {
        let ports = Ports {
            host: 1 << 30,
            guest: 52,
        };
        let out = Header::to_guest(3, ports, Op::Request).with_credit(4096, 7);
        assert_eq!((out.src_cid, out.dst_cid), (HOST_CID, 3));
        assert_eq!((out.src_port, out.dst_port), (1 << 30, 52));
        assert_eq!((out.buf_alloc, out.fwd_cnt), (4096, 7));
        assert_eq!(out.op(), Some(Op::Request));
        let reply = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 52,
            dst_port: 1 << 30,
            ..out
        };
        assert_eq!(reply.ports_from_guest(), ports);
        assert!(reply.is_stream_to_host(3));
    }

    #[test]
    fn only_stream_packets_from_this_guest_to_the_host_are_served() {
        let good = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1,
            dst_port: 2,
            len: 0,
            type_: TYPE_STREAM,
            op: Op::Rw.wire(),
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        };
        assert!(good.is_stream_to_host(3));
        assert!(!good.is_stream_to_host(4), "another guest's cid");
        assert!(
            !Header { dst_cid: 5, ..good }.is_stream_to_host(3),
            "not the host"
        );
        assert!(
            !Header { type_: 2, ..good }.is_stream_to_host(3),
            "seqpacket"
        );
    }
}
