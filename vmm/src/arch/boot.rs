//! Boot-time structures written into guest memory before the first
//! instruction, and the matching special registers: a flat GDT, an empty IDT,
//! identity page tables for the low 4 GiB (2 MiB pages, user-accessible so the
//! ring-3 test guests can reach their MMIO windows; Linux replaces them at
//! once) and the Linux zero page with its e820 map and command line.

use kvm_bindings::{kvm_segment, kvm_sregs};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    BOOT_STACK_POINTER, CMDLINE_START, EBDA_START, HIGH_MEMORY_START, KERNEL_START, MMIO_GAP_END,
    MMIO_GAP_START, ZERO_PAGE_START,
};

const GDT_START: u64 = 0x500;
const IDT_START: u64 = 0x520;
const PML4_START: u64 = 0x9000;
const PDPT_START: u64 = 0xa000;
const PD_START: u64 = 0xb000;
/// Present, writable, user.
const PTE_PRW_USER: u64 = 0x7;
/// Large (2 MiB) page.
const PTE_PS: u64 = 0x80;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 0x10;
const CR0_PG: u64 = 0x8000_0000;
const CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Errors writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A structure did not fit in guest memory.
    #[error("Guest memory too small for the {what} at {addr:#x}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Where it should go.
        addr: u64,
        /// Why the write failed.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The e820 table has no room left.
    #[error("Too many e820 entries")]
    E820Full,
}

fn write<T: ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), BootError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| BootError::Write { what, addr, source })
}

/// Builds a GDT descriptor from flags, base and limit (the classic layout).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The KVM view of GDT descriptor `entry` found at GDT slot `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

const GDT: [u64; 4] = [
    0,
    // code64: flags 0xa09b, data: 0xc093, TSS: 0x808b; base 0, limit 0xfffff.
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];

/// Page directories for GiB 4 and up (GiB 0..4 use `PD_START`).
const HIGH_PD_START: u64 = 0x30000;
/// Most guest-physical memory the boot page tables map.
pub const IDENTITY_MAP_GIB: u64 = 64;

/// Writes GDT, IDT and identity page tables (once per VM): the low 4 GiB
/// (RAM below the MMIO gap, the gap itself) and all RAM above, up to
/// `IDENTITY_MAP_GIB`.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let ram_end = mem.last_addr().raw_value() + 1;
    let gibs = ram_end.div_ceil(1 << 30).clamp(4, IDENTITY_MAP_GIB);
    for (i, e) in GDT.iter().enumerate() {
        write(mem, *e, GDT_START + 8 * i as u64, "GDT")?;
    }
    write(mem, 0u64, IDT_START, "IDT")?;
    write(mem, PDPT_START | PTE_PRW_USER, PML4_START, "PML4")?;
    for gib in 0..gibs {
        let pd = if gib < 4 {
            PD_START + gib * 0x1000
        } else {
            HIGH_PD_START + (gib - 4) * 0x1000
        };
        write(mem, pd | PTE_PRW_USER, PDPT_START + gib * 8, "PDPT")?;
        let mut bytes = Vec::with_capacity(4096);
        for j in 0..512u64 {
            let e = (gib << 30) | (j << 21) | PTE_PRW_USER | PTE_PS;
            bytes.extend_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&bytes, GuestAddress(pd))
            .map_err(|source| BootError::Write {
                what: "page directory",
                addr: pd,
                source,
            })?;
    }
    Ok(())
}

/// Sets `sregs` for 64-bit long mode over the tables `write_boot_tables` wrote.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let gdt = GDT;
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Initial general registers of a vCPU entering the kernel at `entry`.
///
/// Only the boot vCPU gets the boot stack. The others (which run from here
/// only with `ap_entry: kernel_entry`) start with `rsp = 0`: vCPUs sharing
/// one stack corrupt each other's frames at random, so a guest must set its
/// own stack, and one that pushes first faults at once instead.
pub fn boot_regs(entry: u64, vcpu_index: u8) -> kvm_bindings::kvm_regs {
    let stack = if vcpu_index == 0 {
        BOOT_STACK_POINTER
    } else {
        0
    };
    kvm_bindings::kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: stack,
        rbp: stack,
        rsi: ZERO_PAGE_START,
        rdi: u64::from(vcpu_index),
        ..Default::default()
    }
}

/// The zero page as plain bytes for guest memory.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_boot_vcpu_gets_the_boot_stack() {
        let bsp = boot_regs(0x100_0000, 0);
        assert_eq!(
            (bsp.rip, bsp.rsp, bsp.rdi),
            (0x100_0000, BOOT_STACK_POINTER, 0)
        );
        for index in [1, 2, 31] {
            let ap = boot_regs(0x100_0000, index);
            assert_eq!((ap.rsp, ap.rbp, ap.rdi), (0, 0, u64::from(index)));
        }
    }

    #[test]
    fn gdt_constants_match_their_flags() {
        assert_eq!(GDT[1], gdt_entry(0xa09b, 0, 0xfffff));
        assert_eq!(GDT[2], gdt_entry(0xc093, 0, 0xfffff));
        assert_eq!(GDT[3], gdt_entry(0x808b, 0, 0xfffff));
        let code = kvm_segment_from_gdt(GDT[1], 1);
        assert_eq!((code.l, code.present, code.selector), (1, 1, 8));
        assert_eq!(code.limit, 0xffff_ffff);
    }
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a repr(C, packed) struct of integers and arrays of
// integers: every bit pattern is valid and it has no padding or pointers.
unsafe impl ByteValued for ZeroPage {}

/// Initrd placement in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct InitrdPlacement {
    /// Guest address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// Writes the command line and the zero page (with e820 map).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    cmdline: &[u8],
    setup: Option<setup_header>,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let mut cl = cmdline.to_vec();
    cl.push(0);
    mem.write_slice(&cl, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::Write {
            what: "command line",
            addr: CMDLINE_START,
            source,
        })?;
    let mut params = boot_params::default();
    if let Some(hdr) = setup {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    params.hdr.kernel_alignment = KERNEL_START as u32;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    let mut entries = Vec::new();
    entries.push((0, EBDA_START, E820_RAM));
    entries.push((EBDA_START, HIGH_MEMORY_START - EBDA_START, E820_RESERVED));
    let end = mem.last_addr().raw_value() + 1;
    let low_end = end.min(MMIO_GAP_START);
    entries.push((HIGH_MEMORY_START, low_end - HIGH_MEMORY_START, E820_RAM));
    if end > MMIO_GAP_END {
        entries.push((MMIO_GAP_END, end - MMIO_GAP_END, E820_RAM));
    }
    if entries.len() > params.e820_table.len() {
        return Err(BootError::E820Full);
    }
    for (i, (addr, size, type_)) in entries.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *type_;
    }
    params.e820_entries = entries.len() as u8;
    write(mem, ZeroPage(params), ZERO_PAGE_START, "zero page")
}

/// Highest guest address below the MMIO gap usable for an initrd of `size`.
pub fn initrd_address(mem: &GuestMemoryMmap, size: u64) -> Option<u64> {
    let low_end = (mem.last_addr().raw_value() + 1).min(MMIO_GAP_START);
    low_end.checked_sub(size).map(|a| a & !0xfff)
}
