/* Sequential-read benchmark: reads the whole first disk in chunk_kib
 * requests between "BLKREAD START" and "BLKREAD DONE <bytes>". */
#include "rt.h"
static u8 rings[3 * 4096] __attribute__((aligned(4096)));
static u8 buf[1 << 20] __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } hdr;
static volatile u8 status;
static struct vq q;
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 chunk = cmdline_u64(bp, "chunk_kib", 512) << 10;
    if (chunk > sizeof buf) chunk = sizeof buf;
    u64 base = virtio_find(2);
    if (!base || virtio_init(base, 2, 0, 1, &q, rings)) fail("no virtio-blk");
    u64 bytes = (mmio_read32(base + 0x100) | ((u64)mmio_read32(base + 0x104) << 32)) * 512;
    puts("BLKREAD START\n");
    u64 done = 0;
    while (done < bytes) {
        u64 n = bytes - done < chunk ? bytes - done : chunk;
        hdr.type = 0; hdr.sector = done / 512; status = 0xff;
        struct vdesc c[3] = {{(u64)&hdr, 16, 0, 0}, {(u64)buf, (u32)n, VDESC_WRITE, 0},
                             {(u64)&status, 1, VDESC_WRITE, 0}};
        vq_submit(base, 0, &q, c, 3);
        u32 id;
        vq_wait(&q, &id);
        if (status != 0) fail("read failed");
        done += n;
    }
    puts("BLKREAD DONE "); put_dec(done); putc('\n');
    reset();
}
