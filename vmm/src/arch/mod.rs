//! x86_64 guest physical layout and the boot-time CPU and memory structures
//! the VMM writes before the first instruction: GDT, identity page tables,
//! the Linux zero page with its e820 map, the MP table for SMP, and each
//! vCPU's CPUID table.
//!
//! Layout (guest physical):
//!
//! | range | what |
//! | --- | --- |
//! | `0x500` | boot GDT (null, code64, data, TSS) |
//! | `0x520` | empty IDT |
//! | `0x7000` | Linux zero page (`boot_params`) |
//! | `0x8ff0` | boot stack top of the BSP |
//! | `0x9000..0xf000` | PML4, PDPT, four PDs: identity map of the low 4 GiB in 2 MiB pages |
//! | `0x20000` | kernel command line |
//! | `0x30000..0x6c000` | PDs mapping RAM from 4 GiB up to 64 GiB |
//! | `0x9fc00` | MP floating pointer and table |
//! | `0x100000` | bzImage protected-mode code (its `code32_start`, 1 MiB), which decompresses the kernel to 16 MiB or above |
//! | `0x1000000` | kernel (ELF `p_paddr`, 16 MiB) |
//! | `0xd000_0000..` | virtio-mmio windows, 4 KiB each |
//! | `0xfec0_0000` | IOAPIC, `0xfee0_0000` LAPIC |
//! | `4 GiB..` | RAM beyond the MMIO gap |

pub mod boot;
pub mod cpuid;
pub mod mptable;

/// Start of the MMIO gap below 4 GiB; RAM above this moves past 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First legacy IRQ line given to virtio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Where the kernel is loaded (and the lowest address it may use).
pub const KERNEL_START: u64 = 0x100_0000;
/// Start of RAM above the legacy hole (1 MiB): the e820 map's second RAM
/// range, and where a bzImage's protected-mode code loads (every standard
/// bzImage asks for 1 MiB in `code32_start`).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// The Linux zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (bytes, without the trailing NUL).
pub const CMDLINE_MAX_SIZE: usize = 2047;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Where KVM's TSS pages live (three pages, must not overlap RAM in use).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Start of the EBDA, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// 8250 COM1 port base and IRQ.
pub const SERIAL_PORT: u16 = 0x3f8;
/// IRQ line of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port; the command port is at +4.
pub const I8042_PORT: u16 = 0x60;
/// LAPIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
