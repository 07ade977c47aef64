//! COM1: a 16550A-compatible UART (vm-superio) whose output goes to the
//! serial log file. Input is not wired: the guest console is write-only.

use std::fs::File;
use std::io::Write;

use vm_superio::Serial;

use super::IrqLine;
use super::bus::BusDevice;

/// Number of I/O ports the UART decodes.
pub const SERIAL_PORTS: u64 = 8;

/// The serial console device.
pub struct SerialConsole {
    uart: Serial<IrqLine, vm_superio::serial::NoEvents, File>,
}

impl SerialConsole {
    /// A UART raising `irq` and writing to `log`.
    pub fn new(irq: IrqLine, log: File) -> Self {
        Self {
            uart: Serial::new(irq, log),
        }
    }

    /// Flushes the log file.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let _ = self.uart.write(offset as u8, data[0]);
        }
    }
}
