//! The CPUID table each vCPU runs with: KVM's supported table, with every
//! leaf that describes the processor topology rewritten for the VM's own
//! shape, so no host topology reaches the guest.
//!
//! The VM is one package of `count` cores with one thread each; vCPU `i`
//! has (x2)APIC ID `i`, the ID the MP table gives it. KVM passes most
//! topology fields straight from the host CPU (AMD's core count in
//! 0x8000_0008, the cache-sharing counts of leaves 4 and 0x8000_001D, the
//! level counts of 0xB), so a guest would otherwise mix the host's numbers
//! with ours. Rewritten, for Intel and AMD alike:
//!
//! | leaf | field | value |
//! | --- | --- | --- |
//! | 1 | EBX[31:24] initial APIC ID, EBX[23:16] logical CPUs | `i`, `count` |
//! | 1 | ECX[31] hypervisor, EDX[28] HTT | set, `count > 1` |
//! | 4, 0x8000_001D | EAX[25:14] CPUs sharing the cache − 1 | 0 for L1/L2, `count − 1` for L3 |
//! | 4 | EAX[31:26] cores per package − 1 | `count − 1` |
//! | 6 | ECX[3] energy-performance bias | clear (no such MSR) |
//! | 0xB, 0x1F | subleaf 0: SMT level, 1: core level, 2: end | shifts 0 and `core_shift`; EDX = `i` |
//! | 0x8000_0001 | ECX[1] CmpLegacy (AMD) | `count > 1` |
//! | 0x8000_0008 | ECX[7:0] cores − 1, ECX[15:12] APIC ID bits (AMD) | `count − 1`, `core_shift` |
//! | 0x8000_001E | EAX ext. APIC ID, EBX core ID, ECX node (AMD) | `i`, `i`, node 0 of 1 |
//!
//! Besides, where KVM's in-kernel LAPIC emulates it (`KVM_CAP_TSC_DEADLINE_
//! TIMER`, which KVM's supported table leaves out), leaf 1 ECX[24]
//! announces the TSC-deadline timer, as other VMMs do: a Linux guest then
//! skips calibrating its LAPIC timer against the PIT, a wait of about
//! 100 ms on every boot (and, under emulated nested SVM, a loop the guest
//! can spin in for good).
//!
//! Every vCPU's table is set before any vCPU thread starts, so no vCPU ever
//! runs with another's (or KVM's default) CPUID.
//!
//! On PVM hosts the guest's hardware ring 3 executes `cpuid` natively unless
//! the host CPU can fault it (Intel's CPUID faulting; AMD hosts usually
//! cannot), so code there sees the *host's* leaves whatever this table says.
//! A PVM guest reads this table with the synthetic sequence
//! `invlpg 0xffffffffff4d5650; cpuid`, which PVM traps and emulates and
//! which is an ordinary INVLPG plus CPUID under hardware virtualisation.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry is selected by ECX too.
const FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// Level types of leaves 0xB/0x1F, ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The CPU maker, read from leaf 0's vendor string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD" (and Hygon's "HygonGenuine", which follows AMD).
    Amd,
    /// Anything else: only the vendor-neutral leaves are rewritten.
    Other,
}

impl Vendor {
    /// Reads the vendor from a CPUID table's leaf 0.
    pub fn of(entries: &[kvm_cpuid_entry2]) -> Self {
        let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
            return Self::Other;
        };
        let mut name = [0u8; 12];
        name[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        name[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        name[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
        match &name {
            b"GenuineIntel" => Self::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Self::Amd,
            _ => Self::Other,
        }
    }
}

/// Where one vCPU sits in the VM: one package of `count` single-thread
/// cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// This vCPU's index, which is also its APIC ID.
    pub index: u8,
    /// vCPUs in the VM (at least 1).
    pub count: u8,
}

impl Topology {
    /// Bits of the APIC ID that number the cores: ceil(log2(count)).
    pub fn core_shift(self) -> u32 {
        u32::from(self.count.max(1))
            .next_power_of_two()
            .trailing_zeros()
    }
}

/// Errors building a vCPU's CPUID table.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// More entries than KVM accepts.
    #[error("CPUID table of {entries} entries is larger than KVM accepts")]
    TooLarge {
        /// How many entries the table had.
        entries: usize,
    },
}

/// The CPUID table for the vCPU at `topology`, from KVM's supported table.
pub fn for_vcpu(supported: &CpuId, topology: Topology) -> Result<CpuId, CpuidError> {
    let entries = build(supported.as_slice(), topology);
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooLarge {
        entries: entries.len(),
    })
}

/// Sets leaf 1 ECX[24], the TSC-deadline timer, in `supported` (see the
/// module docs; call it only where KVM emulates the timer).
pub fn announce_tsc_deadline(supported: &mut CpuId) {
    for entry in supported.as_mut_slice() {
        if entry.function == 1 {
            entry.ecx |= 1 << 24;
        }
    }
}

/// The pure part of [`for_vcpu`]: rewrites the topology leaves of `supported`.
pub fn build(supported: &[kvm_cpuid_entry2], topology: Topology) -> Vec<kvm_cpuid_entry2> {
    let vendor = Vendor::of(supported);
    let max_basic = supported
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    let index = u32::from(topology.index);
    let count = u32::from(topology.count.max(1));
    let multi = count > 1;
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| !matches!(e.function, 0xb | 0x1f))
        .copied()
        .collect();
    for entry in &mut out {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (index << 24) | ((count & 0xff) << 16);
                entry.ecx |= 1 << 31;
                set_bit(&mut entry.edx, 28, multi);
            }
            4 => {
                set_cache_sharing(entry, count);
                if entry.eax & 0x1f != 0 {
                    entry.eax = (entry.eax & 0x03ff_ffff) | ((count - 1).min(0x3f) << 26);
                }
            }
            6 => entry.ecx &= !(1 << 3),
            0x8000_0001 if vendor == Vendor::Amd => set_bit(&mut entry.ecx, 1, multi),
            0x8000_0008 if vendor == Vendor::Amd => {
                entry.ecx =
                    (entry.ecx & !0xf0ff) | (topology.core_shift() << 12) | ((count - 1) & 0xff);
            }
            0x8000_001d => set_cache_sharing(entry, count),
            0x8000_001e if vendor == Vendor::Amd => {
                entry.eax = index;
                // Core ID; threads per compute unit − 1 = 0.
                entry.ebx = index & 0xff;
                // Node 0; nodes per package − 1 = 0.
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        if max_basic >= leaf {
            out.extend(extended_topology(leaf, topology));
        }
    }
    out
}

/// Leaf 0xB or 0x1F: an SMT level of one thread, a core level of `count`
/// cores, then the invalid level that ends the list.
fn extended_topology(function: u32, topology: Topology) -> [kvm_cpuid_entry2; 3] {
    let apic_id = u32::from(topology.index);
    let level = |index: u32, eax: u32, ebx: u32, kind: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: FLAG_SIGNIFICANT_INDEX,
        eax,
        ebx,
        ecx: (kind << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        level(0, 0, 1, LEVEL_SMT),
        level(
            1,
            topology.core_shift(),
            u32::from(topology.count.max(1)),
            LEVEL_CORE,
        ),
        level(2, 0, 0, 0),
    ]
}

/// Leaves 4 and 0x8000_001D, EAX[25:14]: a core's own L1 and L2; an L3 (or
/// any outer level) shared by every vCPU.
fn set_cache_sharing(entry: &mut kvm_cpuid_entry2, count: u32) {
    if entry.eax & 0x1f == 0 {
        return;
    }
    let level = (entry.eax >> 5) & 0x7;
    let sharing = if level >= 3 { count - 1 } else { 0 };
    entry.eax = (entry.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= 1 << bit;
    } else {
        *reg &= !(1 << bit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(max: u32, name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes([name[i], name[i + 1], name[i + 2], name[i + 3]]);
        e(0, 0, [max, word(0), word(8), word(4)])
    }

    /// KVM_GET_SUPPORTED_CPUID on a 2-core Intel host (abridged, values as
    /// read on one): the host's APIC ID and count in leaf 1, its cache
    /// sharing in leaf 4, one 0xB subleaf.
    fn intel_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(0x1c, b"GenuineIntel"),
            e(1, 0, [0xc06f2, 0x0102_0800, 0x8120_2000, 0x0f8b_fbff]),
            e(4, 0, [0x0400_0121, 0x02c0_003f, 0x3f, 0]),
            e(4, 2, [0x0400_0143, 0x03c0_003f, 0x7ff, 0]),
            e(4, 3, [0x0400_4163, 0x04c0_003f, 0x33fff, 0]),
            e(4, 4, [0, 0, 0, 0]),
            e(6, 0, [4, 0, 8, 0]),
            e(0xb, 0, [0, 0, 0, 1]),
            e(0x8000_0001, 0, [0, 0, 0x101, 0x2010_0800]),
            e(0x8000_0008, 0, [0x3930, 0, 0, 0]),
        ]
    }

    /// The same from an AMD EPYC host with 64 cores: host counts in leaf
    /// 1, 0x8000_0008 and 0x8000_001D, TOPOEXT set.
    fn amd_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(0x10, b"AuthenticAMD"),
            e(1, 0, [0x00a0_0f11, 0x2380_0800, 0xfef8_3203, 0x178b_fbff]),
            e(0xb, 0, [1, 2, 0x100, 0x23]),
            e(0xb, 1, [7, 0x80, 0x201, 0x23]),
            e(0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
            e(0x8000_0001, 0, [0x00a0_0f11, 0, 0x0040_0001, 0x2fd3_fbff]),
            e(0x8000_0008, 0, [0x3030, 0, 0x0000_707f, 0]),
            e(0x8000_001d, 0, [0x0000_4121, 0x01c0_003f, 0x3f, 0]),
            e(0x8000_001d, 3, [0x0003_c163, 0x03c0_003f, 0x7fff, 1]),
            e(0x8000_001e, 0, [0x23, 0x0000_0111, 0, 0]),
        ]
    }

    fn leaf(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    fn at(index: u8, count: u8) -> Topology {
        Topology { index, count }
    }

    #[test]
    fn vendor_is_read_from_leaf_zero() {
        assert_eq!(Vendor::of(&intel_host()), Vendor::Intel);
        assert_eq!(Vendor::of(&amd_host()), Vendor::Amd);
        assert_eq!(Vendor::of(&[vendor_leaf(1, b"HygonGenuine")]), Vendor::Amd);
        assert_eq!(
            Vendor::of(&[vendor_leaf(1, b"VIA VIA VIA ")]),
            Vendor::Other
        );
        assert_eq!(Vendor::of(&[]), Vendor::Other);
    }

    #[test]
    fn core_shift_is_the_bits_that_number_the_cores() {
        for (count, shift) in [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (32, 5), (33, 6)] {
            assert_eq!(at(0, count).core_shift(), shift, "count {count}");
        }
    }

    #[test]
    fn leaf_one_names_this_vcpu_and_the_vm_count_on_both_vendors() {
        for host in [intel_host(), amd_host()] {
            for (index, count) in [(0, 1), (0, 2), (1, 2), (3, 4), (31, 32)] {
                let l1 = leaf(&build(&host, at(index, count)), 1, 0);
                assert_eq!(l1.ebx >> 24, u32::from(index));
                assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count));
                assert_eq!(l1.ebx & 0xffff, leaf(&host, 1, 0).ebx & 0xffff);
                assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
                assert_eq!(l1.edx & (1 << 28) != 0, count > 1, "HTT");
            }
        }
    }

    #[test]
    fn the_tsc_deadline_timer_is_announced_in_leaf_one_only() {
        for mut host in [intel_host(), amd_host()] {
            for entry in host.iter_mut().filter(|e| e.function == 1) {
                entry.ecx &= !(1 << 24);
            }
            let mut table = CpuId::from_entries(&host).expect("a table");
            announce_tsc_deadline(&mut table);
            let announced = table.as_slice();
            assert_ne!(leaf(announced, 1, 0).ecx & (1 << 24), 0);
            for (before, after) in host.iter().zip(announced).filter(|(e, _)| e.function != 1) {
                assert_eq!(
                    (before.eax, before.ebx, before.ecx, before.edx),
                    (after.eax, after.ebx, after.ecx, after.edx)
                );
            }
            let l1 = leaf(&build(announced, at(0, 2)), 1, 0);
            assert_ne!(l1.ecx & (1 << 24), 0, "kept by the topology rewrite");
        }
    }

    #[test]
    fn extended_topology_has_smt_core_and_end_levels() {
        for host in [intel_host(), amd_host()] {
            let out = build(&host, at(2, 3));
            let subleaves: Vec<_> = out.iter().filter(|e| e.function == 0xb).collect();
            assert_eq!(subleaves.len(), 3, "host subleaves are replaced");
            let smt = leaf(&out, 0xb, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            let core = leaf(&out, 0xb, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
            let end = leaf(&out, 0xb, 2);
            assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 2));
            assert!(
                subleaves
                    .iter()
                    .all(|e| e.flags & FLAG_SIGNIFICANT_INDEX != 0)
            );
            assert!(
                !out.iter().any(|e| e.function == 0x1f),
                "no 0x1F below max leaf"
            );
        }
    }

    #[test]
    fn leaf_0x1f_is_built_when_the_host_reports_it() {
        let mut host = intel_host();
        host[0].eax = 0x1f;
        host.push(e(0x1f, 0, [1, 2, 0x100, 7]));
        host.push(e(0x1f, 1, [4, 8, 0x201, 7]));
        host.push(e(0x1f, 2, [6, 16, 0x502, 7]));
        let out = build(&host, at(1, 2));
        let core = leaf(&out, 0x1f, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (1, 2, 1));
        assert_eq!(leaf(&out, 0x1f, 2).ecx, 2, "the die level is gone");
        assert_eq!(out.iter().filter(|e| e.function == 0x1f).count(), 3);
    }

    #[test]
    fn intel_cache_leaf_shares_l3_only_and_counts_vm_cores() {
        let out = build(&intel_host(), at(0, 4));
        let l1d = leaf(&out, 4, 0);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!(l1d.eax & 0x3fff, 0x121, "type and level kept");
        let l3 = leaf(&out, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(l3.eax >> 26, 3);
        assert_eq!(leaf(&out, 4, 4).eax, 0, "the end of the list stays empty");
        assert_eq!(leaf(&out, 6, 0).ecx & (1 << 3), 0);
    }

    #[test]
    fn amd_leaves_describe_the_vm_not_the_host() {
        let out = build(&amd_host(), at(3, 4));
        let ext1 = leaf(&out, 0x8000_0001, 0);
        assert_ne!(ext1.ecx & (1 << 1), 0, "CmpLegacy with 4 cores");
        assert_ne!(ext1.ecx & (1 << 22), 0, "TOPOEXT kept");
        let size = leaf(&out, 0x8000_0008, 0);
        assert_eq!(size.ecx & 0xff, 3, "cores - 1");
        assert_eq!((size.ecx >> 12) & 0xf, 2, "APIC ID core bits");
        assert_eq!(size.eax, 0x3030, "address sizes kept");
        let topo = leaf(&out, 0x8000_001e, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx, topo.edx), (3, 3, 0, 0));
        assert_eq!((leaf(&out, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((leaf(&out, 0x8000_001d, 3).eax >> 14) & 0xfff, 3);

        let single = build(&amd_host(), at(0, 1));
        assert_eq!(leaf(&single, 0x8000_0001, 0).ecx & (1 << 1), 0);
        assert_eq!(leaf(&single, 0x8000_0008, 0).ecx & 0xf0ff, 0);
    }

    #[test]
    fn amd_only_fields_are_left_alone_on_intel() {
        let host = intel_host();
        let out = build(&host, at(1, 2));
        assert_eq!(
            leaf(&out, 0x8000_0001, 0).ecx,
            leaf(&host, 0x8000_0001, 0).ecx
        );
        assert_eq!(leaf(&out, 0x8000_0008, 0).ecx, 0);
    }

    #[test]
    fn every_vcpu_gets_its_own_ids_from_one_supported_table() {
        let host = amd_host();
        for index in 0..8u8 {
            let out = build(&host, at(index, 8));
            let id = u32::from(index);
            assert_eq!(leaf(&out, 1, 0).ebx >> 24, id);
            assert_eq!(leaf(&out, 0xb, 0).edx, id);
            assert_eq!(leaf(&out, 0xb, 1).edx, id);
            assert_eq!(leaf(&out, 0x8000_001e, 0).eax, id);
        }
    }

    #[test]
    fn the_table_fits_kvm() {
        let cpuid = for_vcpu(
            &CpuId::from_entries(&amd_host()).expect("small table"),
            at(0, 2),
        )
        .expect("fits");
        assert_eq!(cpuid.as_slice().len(), amd_host().len() + 1);
    }
}
