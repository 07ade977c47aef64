//! The i8042 keyboard controller, kept for one job: the CPU reset command
//! (0xFE on port 0x64) that Linux (`reboot=k`) and the test guests use to
//! end the VM. A reset ends the VM with a clean exit status.

use std::sync::Arc;

use vm_superio::I8042Device;

use super::bus::BusDevice;
use crate::vstate::exit::{ExitLatch, ExitReason};

/// Ports 0x60..=0x64.
pub const I8042_PORTS: u64 = 5;

/// Ends the VM when the guest asks for a reset.
pub struct ResetTrigger(Arc<ExitLatch>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger(ExitReason::GuestReset);
        Ok(())
    }
}

/// The controller.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller whose reset triggers `latch`.
    pub fn new(latch: Arc<ExitLatch>) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger(latch)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.dev.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let _ = self.dev.write(offset as u8, data[0]);
        }
    }
}
