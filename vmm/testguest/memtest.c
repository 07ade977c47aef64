/* Writes an address-derived pattern over all free RAM (1 MiB..16 MiB and
 * from the end of this image to the top of RAM), then verifies it. */
#include "rt.h"
static u64 pattern(u64 a) { return a * 0x9e3779b97f4a7c15UL ^ 0x5a5a5a5a5a5a5a5aUL; }
static void fill(u64 lo, u64 hi) { for (u64 a = lo; a < hi; a += 8) *(volatile u64 *)a = pattern(a); }
static int check(u64 lo, u64 hi) {
    for (u64 a = lo; a < hi; a += 8) if (*(volatile u64 *)a != pattern(a)) return 0;
    return 1;
}
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 top = ram_top(bp);
    u64 img = ((u64)_image_end + 0xfffff) & ~0xfffffUL;
    if (top <= img) fail("no RAM above the image");
    fill(0x100000, 0x1000000);
    fill(img, top);
    if (!check(0x100000, 0x1000000) || !check(img, top)) fail("pattern mismatch");
    puts("MEMTEST OK "); put_dec((0x1000000 - 0x100000 + top - img) >> 20); puts(" MiB\n");
    reset();
}
