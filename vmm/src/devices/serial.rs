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

/// The serial log: appends until it holds `max_bytes` (counting what the
/// file already had), then writes one line saying output was dropped and
/// accepts, but drops, everything after.
pub struct CappedLog {
    file: File,
    written: u64,
    max_bytes: u64,
    full: bool,
}

impl CappedLog {
    /// `file` (opened for appending) with room up to `max_bytes`.
    pub fn new(file: File, max_bytes: u64) -> Self {
        let written = file.metadata().map_or(0, |m| m.len());
        Self {
            file,
            written,
            max_bytes,
            full: written >= max_bytes,
        }
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.full {
            return Ok(buf.len());
        }
        let room = usize::try_from(self.max_bytes - self.written).unwrap_or(usize::MAX);
        if buf.len() <= room {
            self.file.write_all(buf)?;
            self.written += buf.len() as u64;
            return Ok(buf.len());
        }
        self.file.write_all(&buf[..room])?;
        writeln!(
            self.file,
            "\n[forge-vmm: the serial log reached {} bytes; later output is dropped]",
            self.max_bytes
        )?;
        self.written = self.max_bytes;
        self.full = true;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The serial console device.
pub struct SerialConsole {
    uart: Serial<IrqLine, vm_superio::serial::NoEvents, CappedLog>,
}

impl SerialConsole {
    /// A UART raising `irq` and writing to `log`.
    pub fn new(irq: IrqLine, log: CappedLog) -> Self {
        Self {
            uart: Serial::new(irq, log),
        }
    }

    /// A UART restored from `snapshot`.
    pub fn from_snapshot(
        irq: IrqLine,
        log: CappedLog,
        s: &SerialSnapshot,
    ) -> std::io::Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_stops_at_its_cap_and_says_so_once() {
        let path = std::env::temp_dir().join(format!("serial-cap-{}", std::process::id()));
        std::fs::write(&path, b"boot ").expect("seed");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let mut log = CappedLog::new(file, 12);
        assert_eq!(log.write(b"hello").expect("write"), 5);
        assert_eq!(log.write(b"world, and more").expect("write"), 15);
        assert_eq!(log.write(b"dropped").expect("write"), 7);
        log.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with("boot hellowo\n[forge-vmm: the serial log reached 12 bytes"),
            "{text}"
        );
        assert_eq!(text.matches("forge-vmm").count(), 1);
        // Reopened full: nothing more is written.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let mut again = CappedLog::new(file, 12);
        again.write_all(b"after restart").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        let _ = std::fs::remove_file(path);
    }
}
