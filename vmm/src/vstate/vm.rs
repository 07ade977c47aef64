//! The KVM VM: its file descriptor, memory slots, in-kernel irqchip
//! (PIC ×2 + IOAPIC), PIT, and the ioeventfd/irqfd wiring devices use.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use std::os::unix::fs::OpenOptionsExt;

use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{
    Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::KVM_TSS_ADDRESS;

/// Errors creating or wiring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("Cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A capability the VMM needs is absent.
    #[error("KVM lacks capability {0}")]
    MissingCap(&'static str),
    /// A KVM VM ioctl failed.
    #[error("KVM {op} failed")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The `/dev/kvm` handle opened before a jail took the device's path
/// away (see [`preopen_kvm`]); every VM of the process, fork children's
/// too, is created through a duplicate of it.
static PREOPENED_KVM: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// Opens `/dev/kvm` now and keeps it for every later [`Vm::new`]: a
/// jailed VMM runs as a user that may not open the device.
pub fn preopen_kvm() -> std::io::Result<()> {
    if PREOPENED_KVM.get().is_some() {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")?;
    let _ = PREOPENED_KVM.set(file.into());
    Ok(())
}

/// The preopened `/dev/kvm` descriptor, if any (fork children keep it).
pub fn preopened_kvm_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    PREOPENED_KVM.get().map(|fd| fd.as_raw_fd())
}

/// A KVM handle: a duplicate of the preopened one, else `/dev/kvm` opened.
fn open_kvm() -> Result<Kvm, VmError> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let Some(fd) = PREOPENED_KVM.get() else {
        return Kvm::new().map_err(VmError::OpenKvm);
    };
    let dup = fd.try_clone().map_err(|e| {
        VmError::OpenKvm(kvm_ioctls::Error::new(
            e.raw_os_error().unwrap_or(libc::EBADF),
        ))
    })?;
    // SAFETY: `dup` is an open /dev/kvm descriptor whose ownership moves
    // into the Kvm handle.
    Ok(unsafe { Kvm::from_raw_fd(dup.into_raw_fd()) })
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// One KVM VM.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens KVM and creates the VM (no devices yet).
    pub fn new() -> Result<Self, VmError> {
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::Ioeventfd, "IOEVENTFD"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(kvm_err("CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("SET_TSS_ADDR"))?;
        Ok(Self { kvm, fd })
    }

    /// Creates the in-kernel irqchip (PIC ×2 + IOAPIC) and PIT. Like
    /// memory slots, each waits for a KVM SRCU grace period (milliseconds
    /// on a busy host), so the builder runs this beside slot registration.
    pub fn create_irqchip_and_pit(&self) -> Result<(), VmError> {
        self.fd
            .create_irq_chip()
            .map_err(kvm_err("CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(kvm_err("CREATE_PIT2"))
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn set_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VmError::MissingCap("host address of guest memory"))?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range belongs to `mem`, which the VMM keeps
            // mapped for as long as the VM exists (it is dropped after it).
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(kvm_err("SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Reads irqchip (PIC master, PIC slave, IOAPIC), PIT and kvmclock.
    pub fn save_state(&self) -> Result<crate::snapshot::VmKvmState, VmError> {
        let mut irqchips = Vec::with_capacity(3);
        for chip_id in 0..3 {
            let mut chip = kvm_bindings::kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(kvm_err("GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        let pit = self.fd.get_pit2().map_err(kvm_err("GET_PIT2"))?;
        let mut clock = self.fd.get_clock().map_err(kvm_err("GET_CLOCK"))?;
        // Only the time travels; flags describe the source host's clock.
        clock.flags = 0;
        Ok(crate::snapshot::VmKvmState {
            irqchips,
            pit,
            clock,
        })
    }

    /// Loads what `save_state` read.
    pub fn restore_state(&self, s: &crate::snapshot::VmKvmState) -> Result<(), VmError> {
        for chip in &s.irqchips {
            self.fd.set_irqchip(chip).map_err(kvm_err("SET_IRQCHIP"))?;
        }
        self.fd.set_pit2(&s.pit).map_err(kvm_err("SET_PIT2"))?;
        self.fd.set_clock(&s.clock).map_err(kvm_err("SET_CLOCK"))
    }

    /// The /dev/kvm handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
