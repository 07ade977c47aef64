/* Every vCPU enters here with its index and checks the CPUID the VMM gave
 * it (read in ring 0 by start.S) against the MP table: its own APIC ID in
 * leaves 1, 0xB and AMD's 0x8000_001E, the VM's CPU count in leaf 1, 0xB,
 * Intel's leaf 4 and AMD's 0x8000_0008. Then it checks in, and vCPU 0
 * reports the first failure of any vCPU, or success once all have. */
#include "rt.h"

enum { L_VENDOR, L_FEATURES, L_SMT, L_CORE, L_CACHE, L_EXT_MAX, L_EXT_FEATURES,
       L_EXT_SIZES, L_EXT_TOPOLOGY, L_KVM, L_COUNT };
const u32 ring0_cpuid_leaves[][2] = {
    [L_VENDOR] = {0, 0},
    [L_FEATURES] = {1, 0},
    [L_SMT] = {0xb, 0},
    [L_CORE] = {0xb, 1},
    [L_CACHE] = {4, 0},
    [L_EXT_MAX] = {0x80000000, 0},
    [L_EXT_FEATURES] = {0x80000001, 0},
    [L_EXT_SIZES] = {0x80000008, 0},
    [L_EXT_TOPOLOGY] = {0x8000001e, 0},
    [L_KVM] = {0x40000000, 0},
    {0xffffffff, 0},
};
_Static_assert(L_COUNT <= RING0_CPUID_MAX, "start.S fills RING0_CPUID_MAX leaves per CPU");
struct cpuid_regs ring0_cpuid[GUEST_MAX_CPUS][RING0_CPUID_MAX];

static volatile u32 checked_in;
/* Per vCPU: 0 not yet, 1 all good, else the failed check + 2. */
static volatile u32 verdict[GUEST_MAX_CPUS];
static const char *const checks[] = {
    "no MP table",
    "more vCPUs than the test guest has stacks for",
    "leaf 1 APIC ID is not the vCPU index",
    "leaf 1 CPU count differs from the MP table",
    "hypervisor bit not set",
    "KVM CPUID leaves missing",
    "leaf 0xB SMT level wrong",
    "leaf 0xB core level wrong",
    "leaf 4 core count differs from the MP table",
    "AMD CmpLegacy does not match the CPU count",
    "AMD 0x80000008 core count differs from the MP table",
    "AMD 0x8000001E APIC ID is not the vCPU index",
};
enum { C_NO_MP, C_TOO_MANY, C_APIC, C_COUNT, C_HV, C_KVM, C_SMT, C_CORE, C_CACHE, C_CMP,
       C_NC, C_EXT_APIC };

static int is_vendor(const struct cpuid_regs *r, const char name[13]) {
    const u32 *w = (const u32 *)name;
    return r->b == w[0] && r->d == w[1] && r->c == w[2];
}

/* Processor entries of the VMM's MP table, or 0 if there is none. */
static u32 mp_cpus(void) {
    const u8 *fp = (const u8 *)0x9fc00;
    if (memcmp(fp, "_MP_", 4)) return 0;
    const u8 *mpc = (const u8 *)(u64)*(const u32 *)(fp + 4);
    if (memcmp(mpc, "PCMP", 4)) return 0;
    u32 cpus = 0;
    for (const u8 *e = mpc + 44; *e == 0; e += 20) cpus++;
    return cpus;
}

/* The first check vCPU `cpu` of `count` fails, or -1. */
static int check(u64 cpu, u32 count) {
    const struct cpuid_regs *r = ring0_cpuid[cpu];
    if (count == 0) return C_NO_MP;
    if (count > GUEST_MAX_CPUS) return C_TOO_MANY;
    if ((r[L_FEATURES].b >> 24) != cpu) return C_APIC;
    if (((r[L_FEATURES].b >> 16) & 0xff) != count) return C_COUNT;
    if (!(r[L_FEATURES].c & (1U << 31))) return C_HV;
    if (r[L_KVM].b != 0x4b4d564b) return C_KVM;
    if (r[L_VENDOR].a >= 0xb) {
        const struct cpuid_regs *smt = &r[L_SMT], *core = &r[L_CORE];
        if (smt->d != cpu || ((smt->c >> 8) & 0xff) != 1 || (smt->b & 0xffff) != 1) return C_SMT;
        if (core->d != cpu || ((core->c >> 8) & 0xff) != 2 || (core->b & 0xffff) != count)
            return C_CORE;
    }
    u32 ext_max = r[L_EXT_MAX].a;
    if (is_vendor(&r[L_VENDOR], "GenuineIntel") && (r[L_CACHE].a & 0x1f) &&
        (r[L_CACHE].a >> 26) + 1 != count)
        return C_CACHE;
    if (is_vendor(&r[L_VENDOR], "AuthenticAMD")) {
        u32 ecx = r[L_EXT_FEATURES].c;
        if (!!(ecx & (1U << 1)) != (count > 1)) return C_CMP;
        if (ext_max >= 0x80000008 && (r[L_EXT_SIZES].c & 0xff) + 1 != count) return C_NC;
        if ((ecx & (1U << 22)) && ext_max >= 0x8000001e && r[L_EXT_TOPOLOGY].a != cpu)
            return C_EXT_APIC;
    }
    return -1;
}

void guest_main(u64 cpu, const u8 *bp) {
    (void)bp;
    u32 count = mp_cpus();
    int failed = check(cpu, count);
    verdict[cpu] = failed < 0 ? 1 : (u32)failed + 2;
    __atomic_fetch_add(&checked_in, 1, __ATOMIC_SEQ_CST);
    if (cpu != 0) for (;;) pause();
    if (failed >= 0) { puts("vCPU 0: "); fail(checks[failed]); }
    for (u64 spins = 0; checked_in < count; spins++) {
        if (spins > 2000000000UL) fail("APs did not check in");
        pause();
    }
    for (u32 i = 0; i < count; i++) {
        if (verdict[i] != 1) {
            puts("vCPU "); put_dec(i); puts(": ");
            fail(checks[verdict[i] - 2]);
        }
    }
    puts("SMP "); put_dec(count); puts(" CPUS OK\n");
    reset();
}
