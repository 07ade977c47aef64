/* Every vCPU enters here with its index; each checks that CPUID reports its
 * APIC ID and the vCPU count, checks in, and vCPU 0 reports once all have. */
#include "rt.h"
static volatile u32 checked_in;
static volatile u32 apic_ok[64];
static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
void guest_main(u64 cpu, const u8 *bp) {
    (void)bp;
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    u32 count = (b >> 16) & 0xff;
    apic_ok[cpu] = ((b >> 24) == cpu) ? 1 : 2;
    __atomic_fetch_add(&checked_in, 1, __ATOMIC_SEQ_CST);
    if (cpu != 0) for (;;) pause();
    for (u64 spins = 0; checked_in < count; spins++) {
        if (spins > 2000000000UL) fail("APs did not check in");
        pause();
    }
    for (u32 i = 0; i < count; i++) if (apic_ok[i] != 1) fail("APIC ID mismatch");
    if (!(c & (1U << 31))) fail("hypervisor bit not set");
    cpuid(0x40000000, &a, &b, &c, &d);
    if (b != 0x4b4d564b) fail("KVM CPUID leaves missing");
    const u8 *fp = (const u8 *)0x9fc00;
    if (memcmp(fp, "_MP_", 4)) fail("no MP floating pointer");
    const u8 *mpc = (const u8 *)(u64)*(const u32 *)(fp + 4);
    if (memcmp(mpc, "PCMP", 4)) fail("no MP config table");
    u32 cpus = 0;
    for (const u8 *e = mpc + 44; *e == 0; e += 20) cpus++;
    if (cpus != count) fail("MP table CPU count differs");
    puts("SMP "); put_dec(count); puts(" CPUS OK\n");
    reset();
}
