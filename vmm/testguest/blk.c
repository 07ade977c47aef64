/* Drives virtio-blk: reads the base image's pattern, writes and flushes a
 * block, reads it back, asks for the device id, and checks that a request
 * past the end of the disk fails. The host checks where the write landed. */
#include "rt.h"

static u8 rings[3 * 4096] __attribute__((aligned(4096)));
static u8 buf[8192] __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } hdr;
static volatile u8 status;
static struct vq q;
static u64 base;

static u8 base_pattern(u64 off) { return (u8)((off * 7 + 3) & 0xff); }

static u8 request(u32 type, u64 sector, void *data, u32 len, int device_writes) {
    struct vdesc c[3];
    int n = 0;
    hdr.type = type; hdr.reserved = 0; hdr.sector = sector;
    status = 0xff;
    c[n++] = (struct vdesc){(u64)&hdr, 16, 0, 0};
    if (len) c[n++] = (struct vdesc){(u64)data, len, device_writes ? VDESC_WRITE : 0, 0};
    c[n++] = (struct vdesc){(u64)&status, 1, VDESC_WRITE, 0};
    vq_submit(base, 0, &q, c, n);
    u32 id;
    vq_wait(&q, &id);
    return status;
}

void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 write_sector = cmdline_u64(bp, "write_sector", 8);
    base = virtio_find(2);
    if (!base) fail("no virtio-blk device");
    int r = virtio_init(base, 2, 1UL << 9, 1, &q, rings);
    if (r) { puts("init step "); put_dec((u64)-r); fail(" failed"); }
    u64 cap = mmio_read32(base + 0x100) | ((u64)mmio_read32(base + 0x104) << 32);
    /* The device's interrupt goes out through an irqfd into KVM's PIC:
     * its IRR bit for our line (OCW3 read-IRR) is clear before the first
     * completion and set after it; InterruptStatus says "used ring". */
    u64 irq = cmdline_u64(bp, "blk_irq", 5);
    outb(0x20, 0x0a);
    if (inb(0x20) & (1 << irq)) fail("IRQ pending before any request");
    if (request(0, 0, buf, 4096, 1) != 0) fail("read sector 0");
    /* KVM may inject an irqfd from a work item: give it time. */
    int seen = 0;
    for (int i = 0; i < 20000 && !seen; i++) {
        outb(0x20, 0x0a);
        seen = inb(0x20) & (1 << irq);
    }
    if (!seen) fail("no interrupt reached the PIC");
    if (!(mmio_read32(base + 0x060) & 1)) fail("InterruptStatus lacks the used-ring bit");
    mmio_write32(base + 0x064, 1);
    if (mmio_read32(base + 0x060) & 1) fail("InterruptACK did not clear the bit");
    for (u64 i = 0; i < 4096; i++) if (buf[i] != base_pattern(i)) fail("base pattern at sector 0");
    if (request(0, 100, buf, 512, 1) != 0) fail("read sector 100");
    for (u64 i = 0; i < 512; i++) if (buf[i] != base_pattern(100 * 512 + i)) fail("base pattern at sector 100");
    for (u64 i = 0; i < 4096; i++) buf[i] = (u8)(0xa5 ^ i);
    if (request(1, write_sector, buf, 4096, 0) != 0) fail("write");
    if (request(4, 0, 0, 0, 0) != 0) fail("flush");
    memset(buf, 0, sizeof buf);
    if (request(0, write_sector, buf, 4096, 1) != 0) fail("read back");
    for (u64 i = 0; i < 4096; i++) if (buf[i] != (u8)(0xa5 ^ i)) fail("read back differs");
    if (request(8, 0, buf, 20, 1) != 0 || memcmp(buf, "forge-blk0", 10)) fail("get id");
    if (request(0, cap, buf, 512, 1) != 1) fail("read past the end did not fail");
    if (request(0, cap - 1, buf, 1024, 1) != 1) fail("read across the end did not fail");
    if (request(77, 0, 0, 0, 0) != 2) fail("unknown request type not UNSUPP");
    puts("BLK OK capacity="); put_dec(cap); putc('\n');
    reset();
}
