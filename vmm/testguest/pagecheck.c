/* Snapshot-after-fork guest: writes an address-derived word into every
 * 4 KiB e820 RAM page above its image, prints "FILLED", then forever: spins
 * for a while without touching that RAM, checks every page and prints
 * "VERIFIED <n>" (or FAIL). A snapshot taken during the spin must hold
 * pages the VMM has not touched since it last re-mapped guest RAM. */
#include "rt.h"
static u64 pattern(u64 a) { return a * 0x9e3779b97f4a7c15UL ^ 0xa5a5a5a5UL; }
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 img = ((u64)_image_end + 0xfff) & ~0xfffUL;
    u64 lo, hi;
    for (int n = 0; e820_ram(bp, n, &lo, &hi); n++) {
        if (lo < img) lo = img;
        for (u64 a = lo; a < hi; a += 4096) *(volatile u64 *)a = pattern(a);
    }
    puts("FILLED\n");
    for (u64 round = 1;; round++) {
        for (volatile u64 i = 0; i < (1UL << 29); i++) {}
        for (int n = 0; e820_ram(bp, n, &lo, &hi); n++) {
            if (lo < img) lo = img;
            for (u64 a = lo; a < hi; a += 4096)
                if (*(volatile u64 *)a != pattern(a)) fail("page lost");
        }
        puts("VERIFIED ");
        put_dec(round);
        putc('\n');
    }
}
