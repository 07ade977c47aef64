/* Fork isolation guest. Forever: take a fresh 64-bit token from virtio-rng
 * (each VM gets its own after a fork), fill a 4 MiB region with it, write
 * it to disk sector 8 and flush, spin, then check the region and the disk
 * still hold this VM's token and print "ROUND <n> <token>". Shared memory
 * or a shared disk top layer between forks would show another VM's token
 * and print FAIL. */
#include "rt.h"

#define REGION 0x2000000UL
#define REGION_BYTES (4UL << 20)
static u8 rng_rings[3 * 4096] __attribute__((aligned(4096)));
static u8 blk_rings[3 * 4096] __attribute__((aligned(4096)));
static struct vq rng_q, blk_q;
static u64 rng_base, blk_base;
static u64 token_buf;
static u8 sector[4096] __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } hdr;
static volatile u8 status;

static u64 fresh_token(void) {
    struct vdesc c = {(u64)&token_buf, 8, VDESC_WRITE, 0};
    u32 id;
    vq_submit(rng_base, 0, &rng_q, &c, 1);
    if (vq_wait(&rng_q, &id) != 8) fail("rng short read");
    return token_buf;
}

static u8 blk(u32 type, void *data, u32 len, int device_writes) {
    hdr.type = type; hdr.reserved = 0; hdr.sector = 8; status = 0xff;
    struct vdesc c[3];
    int n = 0;
    c[n++] = (struct vdesc){(u64)&hdr, 16, 0, 0};
    if (len) c[n++] = (struct vdesc){(u64)data, len, device_writes ? VDESC_WRITE : 0, 0};
    c[n++] = (struct vdesc){(u64)&status, 1, VDESC_WRITE, 0};
    vq_submit(blk_base, 0, &blk_q, c, n);
    u32 id;
    vq_wait(&blk_q, &id);
    return status;
}

void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu; (void)bp;
    rng_base = virtio_find(4);
    blk_base = virtio_find(2);
    if (!rng_base || virtio_init(rng_base, 4, 0, 1, &rng_q, rng_rings)) fail("rng");
    if (!blk_base || virtio_init(blk_base, 2, 1UL << 9, 1, &blk_q, blk_rings)) fail("blk");
    volatile u64 *region = (volatile u64 *)REGION;
    for (u64 round = 1;; round++) {
        u64 token = fresh_token();
        for (u64 i = 0; i < REGION_BYTES / 8; i++) region[i] = token;
        for (u64 i = 0; i < 4096 / 8; i++) ((u64 *)sector)[i] = token;
        if (blk(1, sector, 4096, 0) != 0 || blk(4, 0, 0, 0) != 0) fail("disk write");
        for (volatile u64 spin = 0; spin < 20000000UL; spin++) {}
        for (u64 i = 0; i < REGION_BYTES / 8; i++)
            if (region[i] != token) fail("memory holds another VM's token");
        memset(sector, 0, sizeof sector);
        if (blk(0, sector, 4096, 1) != 0) fail("disk read");
        for (u64 i = 0; i < 4096 / 8; i++)
            if (((u64 *)sector)[i] != token) fail("disk holds another VM's token");
        puts("ROUND "); put_dec(round); putc(' '); put_hex(token); putc('\n');
    }
}
