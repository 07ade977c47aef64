/* Fork benchmark guest: writes every 4 KiB page of RAM above its image
 * (so all guest memory is touched), prints "TOUCHED", then prints a "."
 * heartbeat about every millisecond forever. */
#include "rt.h"
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 top = ram_top(bp);
    u64 img = ((u64)_image_end + 0xfff) & ~0xfffUL;
    for (u64 a = img; a < top; a += 4096) *(volatile u64 *)a = a | 1;
    puts("TOUCHED\n");
    for (;;) {
        for (volatile u64 i = 0; i < (1UL << 18); i++) {}
        putc('.');
    }
}
