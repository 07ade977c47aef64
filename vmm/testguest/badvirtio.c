/* Misbehaves towards virtio-blk the ways a hostile guest might: garbage in
 * every register, rings outside RAM, buffers outside RAM, looping chains,
 * wild queue indexes. Then checks the device still serves a good request. */
#include "rt.h"

static u8 rings[3 * 4096] __attribute__((aligned(4096)));
static u8 buf[4096] __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } hdr;
static volatile u8 status;
static struct vq q;
static u64 base;

#define OUTSIDE 0x7000000000UL

static u32 submit_wait(struct vdesc *c, int n) {
    vq_submit(base, 0, &q, c, n);
    u32 id;
    return vq_wait(&q, &id);
}

void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu; (void)bp;
    base = virtio_find(2);
    if (!base) fail("no virtio-blk device");
    /* 1. Garbage in every register, odd widths too. */
    for (u64 off = 0; off < 0x200; off += 4) mmio_write32(base + off, 0xffffffff);
    for (u64 off = 0; off < 0x100; off++) *(volatile u8 *)(base + off) = 0xff;
    mmio_write32(base + 0x050, 12345);
    mmio_write32(base + 0x070, 0);
    if (mmio_read32(base) != 0x74726976) fail("device gone after garbage");
    /* 2. Rings outside RAM: DRIVER_OK must end in DEVICE_NEEDS_RESET. */
    mmio_write32(base + 0x070, 1 | 2);
    mmio_write32(base + 0x024, 1);
    mmio_write32(base + 0x020, 1);
    mmio_write32(base + 0x070, 1 | 2 | 8);
    mmio_write32(base + 0x030, 0);
    mmio_write32(base + 0x038, 16);
    mmio_write32(base + 0x080, 0);
    mmio_write32(base + 0x084, 0x70);
    mmio_write32(base + 0x090, 0x1000);
    mmio_write32(base + 0x0a0, 0x2000);
    mmio_write32(base + 0x044, 1);
    mmio_write32(base + 0x070, 1 | 2 | 8 | 4);
    if (!(mmio_read32(base + 0x070) & 0x40)) fail("rings outside RAM accepted");
    mmio_write32(base + 0x050, 0);
    mmio_write32(base + 0x070, 0);
    /* 3. A proper device, then bad buffers. */
    if (virtio_init(base, 2, 0, 1, &q, rings)) fail("init");
    hdr.type = 0; hdr.sector = 0;
    status = 0xff;
    struct vdesc c[3] = {
        {(u64)&hdr, 16, 0, 0}, {OUTSIDE, 4096, VDESC_WRITE, 0}, {(u64)&status, 1, VDESC_WRITE, 0}};
    submit_wait(c, 3);
    if (status != 1) fail("buffer outside RAM did not fail with IOERR");
    struct vdesc hdr_out[3] = {
        {OUTSIDE, 16, 0, 0}, {(u64)buf, 512, VDESC_WRITE, 0}, {(u64)&status, 1, VDESC_WRITE, 0}};
    status = 0xff;
    submit_wait(hdr_out, 3);
    if (status != 1) fail("header outside RAM did not fail with IOERR");
    struct vdesc st_out[3] = {
        {(u64)&hdr, 16, 0, 0}, {(u64)buf, 512, VDESC_WRITE, 0}, {OUTSIDE, 1, VDESC_WRITE, 0}};
    if (submit_wait(st_out, 3) != 0) fail("status outside RAM reported a length");
    struct vdesc huge[3] = {
        {(u64)&hdr, 16, 0, 0}, {(u64)buf, 0xffffffff, VDESC_WRITE, 0}, {(u64)&status, 1, VDESC_WRITE, 0}};
    status = 0xff;
    submit_wait(huge, 3);
    /* Either IOERR or a chain refused whole (status untouched): never OK. */
    if (status == 0) fail("4 GiB buffer did not fail");
    /* A chain whose next points at itself: submit by hand. */
    u16 head = (u16)((q.next_avail % (q.size / 4)) * 4);
    q.desc[head] = (struct vdesc){(u64)&hdr, 16, VDESC_NEXT, head};
    q.avail[2 + q.next_avail % q.size] = head;
    barrier();
    q.next_avail++;
    q.avail[1] = q.next_avail;
    barrier();
    mmio_write32(base + 0x050, 0);
    u32 id, len;
    for (u64 i = 0; i < 100000000UL && !vq_poll(&q, &id, &len); i++) pause();
    /* 4. The device still works. */
    status = 0xff;
    struct vdesc good[3] = {
        {(u64)&hdr, 16, 0, 0}, {(u64)buf, 512, VDESC_WRITE, 0}, {(u64)&status, 1, VDESC_WRITE, 0}};
    submit_wait(good, 3);
    if (status != 0) fail("good request after abuse failed");
    if (buf[0] != 3 || buf[1] != 10) fail("good request read wrong data");
    puts("BADVIRTIO OK\n");
    reset();
}
