/* virtio-vsock conformance: (A) connects to host port 5000, streams 1 MiB
 * of a pattern and checks the host's echo byte for byte; (B) accepts a
 * host connection on port 1234 and echoes everything until the host
 * closes. Honours the credit flow control of both directions. */
#include "vsock_hdr.h"

#define BUF 32768
#define SLOTS 16
#define GUEST_BUF_ALLOC (64 * 1024)
#define TOTAL (1UL << 20)

static u8 rings[3 * 3 * 4096] __attribute__((aligned(4096)));
static struct vq q[3];
static struct hdr rx_hdr[SLOTS];
static u8 rx_data[SLOTS][BUF];
static struct hdr tx_hdr[SLOTS];
static u8 tx_data[SLOTS][BUF];
static u8 ring[GUEST_BUF_ALLOC];
static u64 base;
static u32 tx_outstanding;
static u32 local_port, peer_port, peer_buf_alloc, peer_fwd_cnt, tx_cnt, fwd_cnt, fwd_told;

static u8 pat(u64 o) { return (u8)(o * 131 + (o >> 12)); }

static void post_rx(void) {
    u16 slot = q[0].next_avail % SLOTS;
    struct vdesc c[2] = {{(u64)&rx_hdr[slot], sizeof(struct hdr), VDESC_WRITE, 0},
                         {(u64)rx_data[slot], BUF, VDESC_WRITE, 0}};
    vq_submit(base, 0, &q[0], c, 2);
}

static void tx_reap(void) {
    u32 id, len;
    while (vq_poll(&q[1], &id, &len)) tx_outstanding--;
}

static u32 peer_credit(void) {
    u32 in_flight = tx_cnt - peer_fwd_cnt;
    return peer_buf_alloc > in_flight ? peer_buf_alloc - in_flight : 0;
}

static void send_pkt(u16 op, u32 flags, const u8 *data, u32 len) {
    for (u64 spins = 0; tx_outstanding >= SLOTS; spins++) {
        if (spins > 3000000000UL) fail("tx queue stuck");
        tx_reap();
        pause();
    }
    u16 slot = q[1].next_avail % SLOTS;
    struct hdr *h = &tx_hdr[slot];
    *h = (struct hdr){GUEST_CID, 2, local_port, peer_port, len, 1, op, flags, GUEST_BUF_ALLOC, fwd_cnt};
    struct vdesc c[2] = {{(u64)h, sizeof *h, 0, 0}, {(u64)tx_data[slot], len, 0, 0}};
    if (len) memcpy(tx_data[slot], data, len);
    vq_submit(base, 1, &q[1], c, len ? 2 : 1);
    tx_outstanding++;
    if (op == OP_RW) tx_cnt += len;
    fwd_told = fwd_cnt;
}

/* Next received packet, or 0. Its data stays valid until rx_done(). */
static struct hdr *rx_next(u8 **data) {
    u32 id, len;
    if (!vq_poll(&q[0], &id, &len)) return 0;
    u32 slot = id / 4;
    struct hdr *h = &rx_hdr[slot];
    if (h->src_port == peer_port && h->dst_port == local_port) {
        peer_buf_alloc = h->buf_alloc;
        peer_fwd_cnt = h->fwd_cnt;
    }
    *data = rx_data[slot];
    return h;
}
static void rx_done(void) { post_rx(); }

static struct hdr *rx_wait(u8 **data) {
    struct hdr *h;
    for (u64 spins = 0; !(h = rx_next(data)); spins++) {
        if (spins > 3000000000UL) fail("no packet from the host");
        tx_reap();
        pause();
    }
    return h;
}

static void guest_to_host(void) {
    local_port = 1025; peer_port = 5000;
    tx_cnt = fwd_cnt = fwd_told = peer_fwd_cnt = 0; peer_buf_alloc = 0;
    send_pkt(OP_REQUEST, 0, 0, 0);
    u8 *d;
    struct hdr *h = rx_wait(&d);
    if (h->op != OP_RESPONSE) fail("connect to host port 5000 refused");
    rx_done();
    u64 sent = 0, recvd = 0;
    u8 chunk[BUF];
    for (u64 spins = 0; recvd < TOTAL; spins++) {
        if (spins > 3000000000UL) fail("guest->host stream stalled");
        tx_reap();
        if (sent < TOTAL && tx_outstanding < SLOTS) {
            u64 n = TOTAL - sent;
            if (n > BUF) n = BUF;
            if (n > peer_credit()) n = peer_credit();
            if (n) {
                for (u64 i = 0; i < n; i++) chunk[i] = pat(sent + i);
                send_pkt(OP_RW, 0, chunk, (u32)n);
                sent += n;
            }
        }
        if ((h = rx_next(&d))) {
            if (h->op == OP_RW) {
                for (u32 i = 0; i < h->len; i++)
                    if (d[i] != pat(recvd + i)) fail("echo from host differs");
                recvd += h->len;
                fwd_cnt += h->len;
            } else if (h->op == OP_CREDIT_REQUEST) {
                send_pkt(OP_CREDIT_UPDATE, 0, 0, 0);
            } else if (h->op != OP_CREDIT_UPDATE) {
                fail("connection to host dropped");
            }
            rx_done();
        }
        if (fwd_cnt - fwd_told >= GUEST_BUF_ALLOC / 2) send_pkt(OP_CREDIT_UPDATE, 0, 0, 0);
    }
    send_pkt(OP_SHUTDOWN, 3, 0, 0);
    for (;;) {
        h = rx_wait(&d);
        u16 op = h->op;
        rx_done();
        if (op == OP_RST) break;
    }
    puts("VSOCK GUEST->HOST OK "); put_dec(recvd); putc('\n');
}

static void host_to_guest(void) {
    u8 *d;
    struct hdr *h;
    puts("VSOCK LISTENING 1234\n");
    for (;;) {
        h = rx_wait(&d);
        if (h->op == OP_REQUEST && h->dst_port == 1234) break;
        rx_done();
    }
    local_port = 1234; peer_port = h->src_port;
    peer_buf_alloc = h->buf_alloc; peer_fwd_cnt = h->fwd_cnt;
    tx_cnt = fwd_cnt = fwd_told = 0;
    rx_done();
    send_pkt(OP_RESPONSE, 0, 0, 0);
    u64 head = 0, tail = 0, echoed = 0; /* ring holds [tail, head) */
    for (u64 spins = 0;; spins++) {
        if (spins > 3000000000UL) fail("host->guest stream stalled");
        tx_reap();
        if ((h = rx_next(&d))) {
            u16 op = h->op;
            if (op == OP_RW) {
                if (head - tail + h->len > GUEST_BUF_ALLOC) fail("host overran its credit");
                for (u32 i = 0; i < h->len; i++) ring[(head + i) % GUEST_BUF_ALLOC] = d[i];
                head += h->len;
            }
            rx_done();
            if (op == OP_SHUTDOWN || op == OP_RST) {
                if (op == OP_SHUTDOWN) send_pkt(OP_RST, 0, 0, 0);
                break;
            }
            if (op == OP_CREDIT_REQUEST) send_pkt(OP_CREDIT_UPDATE, 0, 0, 0);
        }
        if (head > tail && tx_outstanding < SLOTS) {
            u64 n = head - tail, off = tail % GUEST_BUF_ALLOC;
            if (n > BUF) n = BUF;
            if (n > GUEST_BUF_ALLOC - off) n = GUEST_BUF_ALLOC - off;
            if (n > peer_credit()) n = peer_credit();
            if (n) {
                fwd_cnt += (u32)n;
                send_pkt(OP_RW, 0, ring + off, (u32)n);
                tail += n;
                echoed += n;
            }
        }
    }
    puts("VSOCK HOST->GUEST OK "); put_dec(echoed); putc('\n');
}

void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    base = virtio_find(19);
    if (!base) fail("no virtio-vsock device");
    if (virtio_init(base, 19, 0, 3, q, rings)) fail("init");
    if ((mmio_read32(base + 0x100)) != GUEST_CID) fail("guest cid");
    for (int i = 0; i < SLOTS; i++) post_rx();
    /* reset_watch=1: wait for a transport reset event (restore or fork). */
    if (cmdline_u64(bp, "reset_watch", 0)) {
        static volatile u32 event = 0xffffffff;
        struct vdesc e = {(u64)&event, 4, VDESC_WRITE, 0};
        vq_submit(base, 2, &q[2], &e, 1);
        puts("EVENT READY\n");
        u32 id, len;
        for (;;) {
            if (vq_poll(&q[2], &id, &len)) {
                if (len == 4 && event == 0) { puts("TRANSPORT RESET\n"); reset(); }
                fail("unexpected vsock event");
            }
            pause();
        }
    }
    /* echo_rounds=N: skip the guest->host part, serve N host connections. */
    u64 rounds = cmdline_u64(bp, "echo_rounds", 0);
    if (!rounds) {
        guest_to_host();
        host_to_guest();
    }
    for (u64 i = 0; i < rounds; i++) host_to_guest();
    reset();
}
