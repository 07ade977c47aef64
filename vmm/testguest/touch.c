/* Fork benchmark guest: writes every 4 KiB e820 RAM page above its image
 * (so all guest memory is touched), prints "TOUCHED", then prints a "."
 * heartbeat about every millisecond forever. */
#include "rt.h"
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 img = ((u64)_image_end + 0xfff) & ~0xfffUL;
    u64 lo, hi;
    for (int n = 0; e820_ram(bp, n, &lo, &hi); n++) {
        if (lo < img) lo = img;
        for (u64 a = lo; a < hi; a += 4096) *(volatile u64 *)a = a | 1;
    }
    puts("TOUCHED\n");
    for (;;) {
        for (volatile u64 i = 0; i < (1UL << 18); i++) {}
        putc('.');
    }
}
