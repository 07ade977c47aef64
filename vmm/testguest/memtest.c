/* Writes an address-derived pattern over all free RAM (1 MiB..16 MiB and
 * every e820 RAM range above this image, across the MMIO gap), then
 * verifies it. */
#include "rt.h"
static u64 stride = 8; /* "stride=4096" checks one word per page */
static u64 pattern(u64 a) { return a * 0x9e3779b97f4a7c15UL ^ 0x5a5a5a5a5a5a5a5aUL; }
static void fill(u64 lo, u64 hi) { for (u64 a = lo; a < hi; a += stride) *(volatile u64 *)a = pattern(a); }
static int check(u64 lo, u64 hi) {
    for (u64 a = lo; a < hi; a += stride) if (*(volatile u64 *)a != pattern(a)) return 0;
    return 1;
}
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 img = ((u64)_image_end + 0xfffff) & ~0xfffffUL;
    u64 lo, hi, total = 0;
    stride = cmdline_u64(bp, "stride", 8);
    fill(0x100000, 0x1000000);
    for (int n = 0; e820_ram(bp, n, &lo, &hi); n++) {
        if (lo < img) lo = img;
        if (lo < hi) fill(lo, hi);
    }
    if (!check(0x100000, 0x1000000)) fail("pattern mismatch below 16 MiB");
    total += 0x1000000 - 0x100000;
    for (int n = 0; e820_ram(bp, n, &lo, &hi); n++) {
        if (lo < img) lo = img;
        if (lo >= hi) continue;
        if (!check(lo, hi)) fail("pattern mismatch");
        total += hi - lo;
    }
    puts("MEMTEST OK "); put_dec(total >> 20); puts(" MiB\n");
    reset();
}
