/*
 * Entry of every test guest. The VMM enters here in 64-bit long mode, ring 0,
 * with identity page tables (user-accessible), rsi = boot_params and
 * rdi = vCPU index. Ring-0 work is emulated (slow) on PVM hosts, so this stub
 * only loads a GDT that has user segments and drops to ring 3 with IOPL=3
 * (port I/O allowed) and interrupts off. All test logic runs in ring 3.
 */
    .section .text.start, "ax"
    .globl _start
    .code64
_start:
    lgdt gdt_ptr(%rip)
    mov %rdi, %r12
    mov %rsi, %r13
    lea stacks(%rip), %rax
    mov %r12, %rcx
    inc %rcx
    shl $16, %rcx
    add %rcx, %rax
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
    .space 65536 * 8
