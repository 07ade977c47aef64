//! The Intel MultiProcessor table (MP spec 1.4) Linux reads to find its
//! CPUs, the IOAPIC and the ISA interrupt routing when there is no ACPI.
//!
//! Layout at the start of the EBDA (`0x9fc00`, 1 KiB):
//!
//! ```text
//! 0x00  floating pointer "_MP_" (16 B) -> config table
//! 0x10  config table "PCMP" header (44 B), then entries:
//!       processor ×vcpus (20 B each, APIC id = index, CPU 0 is BSP)
//!       bus ISA (8 B) · IOAPIC (8 B, id = vcpus) ·
//!       I/O interrupt ×24 (ISA IRQ i -> IOAPIC pin i) ·
//!       local interrupt ×2 (ExtINT -> LINT0, NMI -> LINT1)
//! ```
//!
//! Both structures carry a checksum making their bytes sum to zero.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{APIC_START, EBDA_START, IOAPIC_START};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_PINS: u8 = 24;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;

/// Errors writing the table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the EBDA.
    #[error("MP table for {0} vCPUs does not fit in the EBDA")]
    TooLarge(u8),
    /// Guest memory write failed.
    #[error("Cannot write the MP table")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table bytes for `vcpus` CPUs, to be placed at `EBDA_START`.
pub fn build(vcpus: u8) -> Vec<u8> {
    let table_addr = EBDA_START as u32 + 16;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        entries.push(0u8); // processor
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU | APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic_id = vcpus;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // I/O interrupt, type INT, default polarity/trigger, ISA bus.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // Local interrupts: ExtINT -> LINT0, NMI -> LINT1 on every LAPIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let length = (44 + entries.len()) as u16;
    let mut table = Vec::with_capacity(length as usize);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum
    table.extend_from_slice(b"FORGEVMM");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // ext length, ext checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

/// Writes the MP table for `vcpus` CPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus);
    if bytes.len() > 1024 {
        return Err(MptableError::TooLarge(vcpus));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_hold_and_every_cpu_is_listed() {
        for vcpus in [1u8, 2, 32] {
            let b = build(vcpus);
            assert!(b.len() <= 1024, "{vcpus} vCPUs fit the EBDA");
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0);
            let table = &b[16..];
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let cpus = table[44..].chunks(20).take(vcpus as usize);
            for (i, e) in cpus.enumerate() {
                assert_eq!(e[0], 0);
                assert_eq!(e[1] as usize, i);
            }
        }
    }
}
