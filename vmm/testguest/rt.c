/* Ring-3 runtime of the test guests: serial output, reset, virtio-mmio. */
#include "rt.h"

void *memset(void *d, int c, u64 n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, u64 n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
int memcmp(const void *a, const void *b, u64 n) {
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++) if (*p != *q) return *p < *q ? -1 : 1;
    return 0;
}
u64 strlen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }

#define COM1 0x3f8
/* The VMM's UART takes a byte at once (THR is always empty), so no LSR
 * poll: each poll would be one more exit, ~50 us on a PVM host. */
void putc(char c) { outb(COM1, (u8)c); }
void puts(const char *s) { while (*s) putc(*s++); }
void put_hex(u64 v) {
    const char *d = "0123456789abcdef";
    puts("0x");
    for (int i = 60; i >= 0; i -= 4) putc(d[(v >> i) & 0xf]);
}
void put_dec(u64 v) {
    char b[24]; int i = 0;
    do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) putc(b[--i]);
}
void reset(void) {
    outb(0x64, 0xfe);
    for (;;) pause();
}
void fail(const char *why) {
    puts("FAIL: "); puts(why); puts("\n");
    reset();
}

int e820_ram(const u8 *bp, int n, u64 *start, u64 *end) {
    u8 count = bp[BOOT_PARAMS_E820_ENTRIES];
    for (u8 i = 0; i < count; i++) {
        const u8 *e = bp + BOOT_PARAMS_E820_TABLE + 20 * i;
        if (*(const u32 *)(e + 16) != 1) continue;
        if (n-- == 0) {
            *start = *(const u64 *)e;
            *end = *start + *(const u64 *)(e + 8);
            return 1;
        }
    }
    return 0;
}

u64 ram_top(const u8 *bp) {
    u8 n = bp[BOOT_PARAMS_E820_ENTRIES];
    u64 top = 0;
    for (u8 i = 0; i < n; i++) {
        const u8 *e = bp + BOOT_PARAMS_E820_TABLE + 20 * i;
        u64 addr = *(const u64 *)e, size = *(const u64 *)(e + 8);
        u32 type = *(const u32 *)(e + 16);
        if (type == 1 && addr + size > top) top = addr + size;
    }
    return top;
}

u64 cmdline_u64(const u8 *bp, const char *key, u64 dflt) {
    const char *c = (const char *)(u64)*(const u32 *)(bp + BOOT_PARAMS_CMDLINE_PTR);
    u64 kl = strlen(key);
    for (; c && *c; c++) {
        if ((c == (const char *)(u64)*(const u32 *)(bp + BOOT_PARAMS_CMDLINE_PTR) || c[-1] == ' ')
            && !memcmp(c, key, kl) && c[kl] == '=') {
            u64 v = 0;
            for (c += kl + 1; *c >= '0' && *c <= '9'; c++) v = v * 10 + (u64)(*c - '0');
            return v;
        }
    }
    return dflt;
}

#define R(base, off) ((base) + (off))
int virtio_init(u64 base, u32 device_id, u64 features, int nqueues, struct vq *qs, u8 *mem) {
    if (mmio_read32(R(base, 0x000)) != 0x74726976) return -1;
    if (mmio_read32(R(base, 0x004)) != 2) return -2;
    if (mmio_read32(R(base, 0x008)) != device_id) return -3;
    mmio_write32(R(base, 0x070), 0);
    mmio_write32(R(base, 0x070), 1);
    mmio_write32(R(base, 0x070), 1 | 2);
    mmio_write32(R(base, 0x014), 0);
    u64 offered = mmio_read32(R(base, 0x010));
    mmio_write32(R(base, 0x014), 1);
    offered |= (u64)mmio_read32(R(base, 0x010)) << 32;
    u64 want = (features | (1UL << 32)) & offered;
    if (!(want & (1UL << 32))) return -4;
    mmio_write32(R(base, 0x024), 0);
    mmio_write32(R(base, 0x020), (u32)want);
    mmio_write32(R(base, 0x024), 1);
    mmio_write32(R(base, 0x020), (u32)(want >> 32));
    mmio_write32(R(base, 0x070), 1 | 2 | 8);
    if (!(mmio_read32(R(base, 0x070)) & 8)) return -5;
    for (int q = 0; q < nqueues; q++) {
        struct vq *v = &qs[q];
        u8 *m = mem + (u64)q * 3 * 4096;
        memset(m, 0, 3 * 4096);
        mmio_write32(R(base, 0x030), (u32)q);
        u32 max = mmio_read32(R(base, 0x034));
        if (max == 0) return -6;
        v->size = max < 64 ? (u16)max : 64;
        v->desc = (struct vdesc *)m;
        v->avail = (u16 *)(m + 4096);
        v->used = m + 8192;
        v->last_used = 0;
        v->next_avail = 0;
        mmio_write32(R(base, 0x038), v->size);
        mmio_write32(R(base, 0x080), (u32)(u64)v->desc);
        mmio_write32(R(base, 0x084), (u32)((u64)v->desc >> 32));
        mmio_write32(R(base, 0x090), (u32)(u64)v->avail);
        mmio_write32(R(base, 0x094), (u32)((u64)v->avail >> 32));
        mmio_write32(R(base, 0x0a0), (u32)(u64)v->used);
        mmio_write32(R(base, 0x0a4), (u32)((u64)v->used >> 32));
        mmio_write32(R(base, 0x044), 1);
    }
    mmio_write32(R(base, 0x070), 1 | 2 | 8 | 4);
    return 0;
}

void vq_submit(u64 base, int q, struct vq *vq, struct vdesc *chain, int n) {
    u16 head = (u16)((vq->next_avail % (vq->size / 4)) * 4);
    for (int i = 0; i < n; i++) {
        vq->desc[head + i] = chain[i];
        vq->desc[head + i].next = (u16)(head + i + 1);
        if (i + 1 < n) vq->desc[head + i].flags |= VDESC_NEXT;
        else vq->desc[head + i].flags &= (u16)~VDESC_NEXT;
    }
    vq->avail[2 + vq->next_avail % vq->size] = head;
    barrier();
    vq->next_avail++;
    vq->avail[1] = vq->next_avail;
    barrier();
    mmio_write32(R(base, 0x050), (u32)q);
}

int vq_poll(struct vq *vq, u32 *id, u32 *len) {
    barrier();
    u16 used_idx = *(volatile u16 *)(vq->used + 2);
    if (used_idx == vq->last_used) return 0;
    const u8 *e = vq->used + 4 + 8 * (vq->last_used % vq->size);
    *id = *(const volatile u32 *)e;
    *len = *(const volatile u32 *)(e + 4);
    vq->last_used++;
    return 1;
}

u32 vq_wait(struct vq *vq, u32 *id) {
    u32 len;
    for (u64 spins = 0; !vq_poll(vq, id, &len); spins++) {
        if (spins > 4000000000UL) fail("virtqueue timeout");
        pause();
    }
    return len;
}

u64 virtio_find(u32 device_id) {
    for (u64 i = 0; i < 16; i++) {
        u64 base = VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE;
        if (mmio_read32(base) == 0x74726976 && mmio_read32(base + 8) == device_id) return base;
    }
    return 0;
}
