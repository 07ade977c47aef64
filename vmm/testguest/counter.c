/* Counts forever. vCPU 0 prints "COUNT <n>" every 2^22 steps; any other
 * vCPU prints "CPU<i> <n>". Lines are printed under a lock so vCPUs do not
 * interleave characters. Never resets. */
#include "rt.h"
static volatile u64 counter[64];
static volatile u32 line_lock;
static void lock(void) { while (__atomic_exchange_n(&line_lock, 1, __ATOMIC_ACQUIRE)) pause(); }
static void unlock(void) { __atomic_store_n(&line_lock, 0, __ATOMIC_RELEASE); }
void guest_main(u64 cpu, const u8 *bp) {
    (void)bp;
    if (cpu == 0) puts("COUNTER START\n");
    for (u64 n = 1;; n++) {
        for (u64 i = 0; i < (1UL << 22); i++) counter[cpu]++;
        lock();
        if (cpu == 0) puts("COUNT ");
        else { puts("CPU"); put_dec(cpu); putc(' '); }
        put_dec(n); putc('\n');
        unlock();
    }
}
