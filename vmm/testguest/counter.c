/* Counts forever, printing "COUNT <n>" every 2^22 steps; never resets. */
#include "rt.h"
static volatile u64 counter;
void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu; (void)bp;
    puts("COUNTER START\n");
    for (u64 n = 1;; n++) {
        for (u64 i = 0; i < (1UL << 22); i++) counter++;
        puts("COUNT "); put_dec(n); putc('\n');
    }
}
