//! COM1: a 16550A-compatible UART (vm-superio) whose output goes to the
//! serial log file. Input is not wired: the guest console is write-only.

use std::fs::File;
use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::Serial;
use vm_superio::serial::SerialState;

use super::IrqLine;
use super::bus::BusDevice;

/// Number of I/O ports the UART decodes.
pub const SERIAL_PORTS: u64 = 8;

/// UART registers in a snapshot: DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR,
/// SCR, then the receive buffer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// The nine registers.
    pub regs: [u8; 9],
    /// Bytes waiting to be read by the guest.
    pub in_buffer: Vec<u8>,
}

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

    /// A UART restored from `snapshot`.
    pub fn from_snapshot(irq: IrqLine, log: File, s: &SerialSnapshot) -> std::io::Result<Self> {
        let state = SerialState {
            baud_divisor_low: s.regs[0],
            baud_divisor_high: s.regs[1],
            interrupt_enable: s.regs[2],
            interrupt_identification: s.regs[3],
            line_control: s.regs[4],
            line_status: s.regs[5],
            modem_control: s.regs[6],
            modem_status: s.regs[7],
            scratch: s.regs[8],
            in_buffer: s.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, irq, vm_superio::serial::NoEvents, log)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        Ok(Self { uart })
    }

    /// The UART registers.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
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
