//! Why a VM stopped, recorded once (the first cause wins) and signalled to
//! the event loop through an eventfd. vCPU threads, the i8042 and the
//! control socket all end a VM through here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Why the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself (i8042 or a reboot request).
    GuestReset,
    /// The guest asked to power off.
    GuestPowerOff,
    /// The control socket asked for shutdown.
    Shutdown,
    /// The VM was written to disk and the process ends (`pause` to disk).
    PausedToDisk,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN) on vCPU `vcpu`.
    TripleFault {
        /// The vCPU index.
        vcpu: u8,
    },
    /// A vCPU failed.
    VcpuError {
        /// The vCPU index.
        vcpu: u8,
        /// What happened.
        message: String,
    },
}

impl ExitReason {
    /// Process exit status for this reason: 0 for an orderly end.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::GuestReset | Self::GuestPowerOff | Self::Shutdown | Self::PausedToDisk => 0,
            Self::TripleFault { .. } => 2,
            Self::VcpuError { .. } => 3,
        }
    }
}

/// The shared "VM is ending" latch.
pub struct ExitLatch {
    evt: EventFd,
    set: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitLatch {
    /// A latch that is not set.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            set: AtomicBool::new(false),
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the loop.
    pub fn trigger(&self, reason: ExitReason) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some(reason);
        }
        self.set.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// Whether the VM is ending.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// The eventfd the event loop waits on.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}
