/* A hostile guest for the VMM's growth bounds: it never posts a vsock RX
 * buffer, so every reply the device owes it stays owed, and it floods the
 * TX queue with connection requests to ports nobody serves, data for
 * connections that do not exist and credit requests, while it writes the
 * serial console as fast as it can. It never stops on its own. */
#include "vsock_hdr.h"

#define SLOTS 64

static u8 rings[3 * 3 * 4096] __attribute__((aligned(4096)));
static struct vq q[3];
static struct hdr tx_hdr[SLOTS];
static u8 payload[4096];

void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    (void)bp;
    u64 base = virtio_find(19);
    if (!base) fail("no virtio-vsock device");
    if (virtio_init(base, 19, 0, 3, q, rings)) fail("init");
    for (u32 i = 0; i < sizeof payload; i++) payload[i] = (u8)i;
    puts("FLOOD START\n");
    u32 outstanding = 0;
    u64 sent = 0;
    for (u64 round = 0;; round++) {
        u32 id, len;
        while (vq_poll(&q[1], &id, &len)) outstanding--;
        if (outstanding < SLOTS) {
            u16 slot = q[1].next_avail % SLOTS;
            struct hdr *h = &tx_hdr[slot];
            u32 kind = sent % 3;
            u16 op = kind == 0 ? OP_REQUEST : kind == 1 ? OP_RW : OP_CREDIT_REQUEST;
            *h = (struct hdr){GUEST_CID, 2, 1024 + (u32)(sent % 50000), 6000 + (u32)(sent % 4000),
                              kind == 1 ? sizeof payload : 0, 1, op, 0, 65536, 0};
            struct vdesc c[2] = {{(u64)h, sizeof *h, 0, 0}, {(u64)payload, sizeof payload, 0, 0}};
            vq_submit(base, 1, &q[1], c, kind == 1 ? 2 : 1);
            outstanding++;
            sent++;
        }
        if (round % 16 == 0) {
            puts("FLOOD ");
            put_dec(sent);
            puts(" packets; the serial log is not a place to keep all of this\n");
        }
    }
}
