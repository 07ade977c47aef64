//! Saving and restoring one vCPU's KVM state for snapshots and forks.
//!
//! Save order: MP state first (it may flush pending events into the other
//! state), then regs, sregs, XSAVE, XCRs, debug regs, LAPIC, MSRs, vCPU
//! events, CPUID. Restore order follows KVM's dependencies: CPUID, MP
//! state, regs before events, sregs before LAPIC, LAPIC before MSRs (the
//! TSC deadline MSR needs the LAPIC mode), events last.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// Largest CPUID table read back.
const MAX_CPUID_ENTRIES: usize = 256;

/// Everything KVM holds about one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuSnapshot {
    /// vCPU index (= APIC id).
    pub index: u8,
    /// MP state (runnable, halted, waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM lets us read.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
    /// The CPUID table the vCPU runs with.
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

/// A failed vCPU state ioctl.
#[derive(Debug, thiserror::Error)]
#[error("KVM {op} failed")]
pub struct StateError {
    /// The ioctl.
    pub op: &'static str,
    /// errno.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError { op, source }
}

/// Host facts state save and restore need, read once per VM.
#[derive(Clone, Debug)]
pub struct StateContext {
    /// MSRs KVM can save and restore.
    pub msr_indices: Vec<u32>,
    /// Whether this host's XSAVE area fits `kvm_xsave` (4 KiB, no AMX).
    pub xsave_fits: bool,
}

impl StateContext {
    /// Reads the facts from /dev/kvm.
    pub fn new(kvm: &Kvm) -> Result<Self, StateError> {
        let size = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(err("GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(Self {
            msr_indices,
            xsave_fits: size <= 0 || size as usize <= std::mem::size_of::<kvm_xsave>(),
        })
    }
}

/// Reads `indices` in chunks, skipping MSRs KVM refuses.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|i| kvm_msr_entry {
                index: *i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError {
            op: "GET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(err("GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Writes `entries` in chunks, skipping MSRs KVM refuses.
pub fn write_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    let mut rest = entries;
    while !rest.is_empty() {
        let msrs = Msrs::from_entries(rest).map_err(|_| StateError {
            op: "SET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.set_msrs(&msrs).map_err(err("SET_MSRS"))?;
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    Ok(())
}

/// Reads the state of a vCPU that is outside KVM_RUN.
pub fn save(ctx: &StateContext, fd: &VcpuFd, index: u8) -> Result<VcpuSnapshot, StateError> {
    let mp_state = fd.get_mp_state().map_err(err("GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(err("GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(err("GET_SREGS"))?;
    let xsave = if ctx.xsave_fits {
        fd.get_xsave().map_err(err("GET_XSAVE"))?
    } else {
        kvm_xsave::default()
    };
    let xcrs = fd.get_xcrs().map_err(err("GET_XCRS"))?;
    let debugregs = fd.get_debug_regs().map_err(err("GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(err("GET_LAPIC"))?;
    let msrs = read_msrs(fd, &ctx.msr_indices)?;
    let events = fd.get_vcpu_events().map_err(err("GET_VCPU_EVENTS"))?;
    let cpuid = fd
        .get_cpuid2(MAX_CPUID_ENTRIES)
        .map_err(err("GET_CPUID2"))?
        .as_slice()
        .to_vec();
    Ok(VcpuSnapshot {
        index,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        events,
        cpuid,
    })
}

/// Loads `s` into a freshly created vCPU.
pub fn restore(ctx: &StateContext, fd: &VcpuFd, s: &VcpuSnapshot) -> Result<(), StateError> {
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| StateError {
        op: "SET_CPUID2",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    fd.set_cpuid2(&cpuid).map_err(err("SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state).map_err(err("SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(err("SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(err("SET_SREGS"))?;
    if ctx.xsave_fits {
        // SAFETY: `StateContext::new` checked that KVM's XSAVE area is no larger
        // than `kvm_xsave`, so KVM reads only within `s.xsave`.
        unsafe { fd.set_xsave(&s.xsave) }.map_err(err("SET_XSAVE"))?;
    }
    fd.set_xcrs(&s.xcrs).map_err(err("SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(err("SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(err("SET_LAPIC"))?;
    write_msrs(fd, &s.msrs)?;
    fd.set_vcpu_events(&s.events)
        .map_err(err("SET_VCPU_EVENTS"))?;
    Ok(())
}
