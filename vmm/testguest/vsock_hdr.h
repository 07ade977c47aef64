/* The virtio-vsock packet header and operations, shared by the vsock test
 * guests. */
#ifndef VSOCK_HDR_H
#define VSOCK_HDR_H
#include "rt.h"

#define GUEST_CID 3
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };

struct hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
#endif
