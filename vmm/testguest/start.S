/*
 * Entry of every test guest. The VMM enters here in 64-bit long mode, ring 0,
 * with identity page tables (user-accessible), rsi = boot_params and
 * rdi = vCPU index. Ring-0 work is emulated (slow) on PVM hosts, so this stub
 * only loads a GDT that has user segments, reads the CPUID leaves a guest
 * asked for (see rt.h), and drops to ring 3 with IOPL=3 (port I/O allowed)
 * and interrupts off. All test logic runs in ring 3.
 */
#include "rt.h"
    .section .text.start, "ax"
    .globl _start
    .code64
_start:
    lgdt gdt_ptr(%rip)
    mov %rdi, %r12
    mov %rsi, %r13
    /* Own stack first: only vCPU 0 has one at entry. vCPUs past the last
     * stack park here, and vCPU 0 reports that they never checked in. */
    cmp $GUEST_MAX_CPUS, %r12
    jae 1f
    lea stacks(%rip), %rsp
    mov %r12, %rcx
    inc %rcx
    shl $16, %rcx
    add %rcx, %rsp
    /* ring0_cpuid[cpu][i] = CPUID(ring0_cpuid_leaves[i]) until the
     * 0xffffffff end mark; both weak, absent in most guests. Each CPUID is
     * PVM's synthetic form, "invlpg 0xffffffffff4d5650; cpuid": PVM traps
     * the INVLPG and emulates the pair with the VMM's table, where a bare
     * CPUID may run on the host CPU; elsewhere it is an INVLPG of an
     * unmapped page, then CPUID. */
    .weak ring0_cpuid_leaves, ring0_cpuid
    mov $ring0_cpuid_leaves, %r8
    test %r8, %r8
    jz 3f
    mov %r12, %r9
    shl $RING0_CPUID_ROW_SHIFT, %r9
    add $ring0_cpuid, %r9
2:  mov (%r8), %eax
    cmp $0xffffffff, %eax
    je 3f
    mov 4(%r8), %ecx
    .byte 0x0f, 0x01, 0x3c, 0x25, 0x50, 0x56, 0x4d, 0xff
    cpuid
    mov %eax, (%r9)
    mov %ebx, 4(%r9)
    mov %ecx, 8(%r9)
    mov %edx, 12(%r9)
    add $8, %r8
    add $16, %r9
    jmp 2b
3:
    mov %rsp, %rax
    pushq $0x23
    pushq %rax
    pushq $0x3002
    pushq $0x1b
    lea user_entry(%rip), %rax
    pushq %rax
    iretq
user_entry:
    mov %r12, %rdi
    mov %r13, %rsi
    call guest_main
1:  jmp 1b

    .section .data
    .align 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff /* 0x08 kernel code 64 */
    .quad 0x00cf92000000ffff /* 0x10 kernel data */
    .quad 0x00affa000000ffff /* 0x18 user code 64, DPL 3 */
    .quad 0x00cff2000000ffff /* 0x20 user data, DPL 3 */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .bss
    .align 4096
stacks:
    .space 65536 * GUEST_MAX_CPUS
