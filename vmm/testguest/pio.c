/* Port-I/O exit benchmark: "PIO START", n writes to port 0x80 (each a
 * full exit to the VMM), "PIO DONE <n>", reset. n from "pio_count=". */
#include "rt.h"
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu;
    u64 n = cmdline_u64(bp, "pio_count", 100000);
    puts("PIO START\n");
    for (u64 i = 0; i < n; i++) outb(0x80, (u8)i);
    puts("PIO DONE "); put_dec(n); putc('\n');
    reset();
}
