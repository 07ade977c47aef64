//! A vCPU: its KVM configuration at boot (CPUID, MSRs, registers, LAPIC,
//! FPU) and the thread that runs it.
//!
//! The thread is a small state machine driven by messages:
//!
//! ```text
//!   Running --Pause--> Paused --Resume--> Running
//!      |                  |
//!      +------Exit--------+----> Exited
//!   Running --guest reset / triple fault / error--> Exiting --Exit--> Exited
//! ```
//!
//! A message is sent on the channel, then the thread is kicked with a
//! real-time signal whose handler sets `kvm_run.immediate_exit`, so a vCPU
//! inside (or about to enter) KVM_RUN returns at once and reads its mailbox.
//! While paused, the thread is outside KVM_RUN: its state can be read.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_run};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::exit::{ExitLatch, ExitReason};
use super::vcpu_state::{self, StateContext, StateError, VcpuSnapshot};
use crate::arch::{boot, cpuid};
use crate::devices::bus::Bus;

/// Errors configuring or starting a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {index}: KVM {op} failed")]
    Kvm {
        /// vCPU index.
        index: u8,
        /// The operation.
        op: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Its CPUID table could not be built.
    #[error("vCPU {index}: cannot build its CPUID table")]
    Cpuid {
        /// vCPU index.
        index: u8,
        /// Why.
        #[source]
        source: cpuid::CpuidError,
    },
    /// The thread could not be spawned or the kick signal installed.
    #[error("vCPU {index}: cannot start its thread")]
    Thread {
        /// vCPU index.
        index: u8,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread did not answer in time.
    #[error("vCPU {index} did not answer {request:?}")]
    NoAnswer {
        /// vCPU index.
        index: u8,
        /// What was asked.
        request: VcpuRequest,
    },
}

/// Messages to a vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRequest {
    /// Leave KVM_RUN and wait.
    Pause,
    /// Continue running.
    Resume,
    /// End the thread.
    Exit,
    /// Read the vCPU's KVM state (only while paused).
    Save,
}

/// What a vCPU thread sends back.
pub enum VcpuReply {
    /// Its state after a Pause, Resume or Exit.
    State(VcpuState),
    /// The answer to Save.
    Saved(Box<Result<VcpuSnapshot, StateError>>),
}

/// Answers from a vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Running guest code.
    Running,
    /// Stopped, outside KVM_RUN.
    Paused,
    /// The VM is ending; waiting for Exit.
    Exiting,
    /// The thread ended.
    Exited,
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// KVM_MP_STATE_RUNNABLE.
const MP_STATE_RUNNABLE: u32 = 0;

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], off: usize) -> u32 {
    u32::from_le_bytes([
        regs[off] as u8,
        regs[off + 1] as u8,
        regs[off + 2] as u8,
        regs[off + 3] as u8,
    ])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

/// One vCPU before its thread starts.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index` in `vm`.
    pub fn new(vm: &super::vm::Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Kvm {
                index,
                op: "CREATE_VCPU",
                source,
            })?;
        Ok(Self { index, fd })
    }

    fn kvm(&self, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Kvm { index, op, source }
    }

    /// Boot configuration: CPUID (KVM's `supported` table made this vCPU's
    /// of `count`, see [`cpuid`]), MSRs, long-mode registers at `entry`,
    /// FPU and LAPIC. `runnable` puts an AP straight into RUNNABLE (entry
    /// without SIPI).
    pub fn configure(
        &self,
        supported: &CpuId,
        count: u8,
        entry: u64,
        runnable: bool,
    ) -> Result<(), VcpuError> {
        let topology = cpuid::Topology {
            index: self.index,
            count,
        };
        let cpuid = cpuid::for_vcpu(supported, topology).map_err(|source| VcpuError::Cpuid {
            index: self.index,
            source,
        })?;
        self.fd.set_cpuid2(&cpuid).map_err(self.kvm("SET_CPUID2"))?;
        self.set_boot_msrs()?;
        let mut sregs = self.fd.get_sregs().map_err(self.kvm("GET_SREGS"))?;
        boot::long_mode_sregs(&mut sregs);
        self.fd.set_sregs(&sregs).map_err(self.kvm("SET_SREGS"))?;
        self.fd
            .set_regs(&boot::boot_regs(entry, self.index))
            .map_err(self.kvm("SET_REGS"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(self.kvm("SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(self.kvm("GET_LAPIC"))?;
        let lint0 = lapic_reg(&lapic.regs, APIC_LVT0);
        set_lapic_reg(
            &mut lapic.regs,
            APIC_LVT0,
            (lint0 & !0x700) | (APIC_MODE_EXTINT << 8),
        );
        let lint1 = lapic_reg(&lapic.regs, APIC_LVT1);
        set_lapic_reg(
            &mut lapic.regs,
            APIC_LVT1,
            (lint1 & !0x700) | (APIC_MODE_NMI << 8),
        );
        self.fd.set_lapic(&lapic).map_err(self.kvm("SET_LAPIC"))?;
        if runnable && self.index > 0 {
            self.fd
                .set_mp_state(kvm_mp_state {
                    mp_state: MP_STATE_RUNNABLE,
                })
                .map_err(self.kvm("SET_MP_STATE"))?;
        }
        Ok(())
    }

    fn set_boot_msrs(&self) -> Result<(), VcpuError> {
        let values = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, 1),
            (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
        ];
        // KVM stops at the first MSR it refuses; skip it and go on, since
        // hosts differ in what they accept and none of these is vital.
        let mut rest: &[(u32, u64)] = &values;
        while !rest.is_empty() {
            let entries: Vec<kvm_msr_entry> = rest
                .iter()
                .map(|(index, data)| kvm_msr_entry {
                    index: *index,
                    data: *data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Kvm {
                index: self.index,
                op: "SET_MSRS",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let done = self.fd.set_msrs(&msrs).map_err(self.kvm("SET_MSRS"))?;
            rest = rest.get(done + 1..).unwrap_or(&[]);
        }
        Ok(())
    }

    /// Loads a saved state instead of the boot configuration.
    pub fn restore(&self, ctx: &StateContext, snapshot: &VcpuSnapshot) -> Result<(), VcpuError> {
        vcpu_state::restore(ctx, &self.fd, snapshot).map_err(|e| VcpuError::Kvm {
            index: self.index,
            op: e.op,
            source: e.source,
        })
    }

    /// The index of this vCPU.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Starts the vCPU thread `vcpu<index>`, paused when `start_paused`.
    pub fn start(
        self,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        latch: Arc<ExitLatch>,
        ctx: Arc<StateContext>,
        start_paused: bool,
    ) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler().map_err(|source| VcpuError::Thread {
            index: self.index,
            source,
        })?;
        let index = self.index;
        let (req_tx, req_rx) = channel();
        let (state_tx, state_rx) = channel();
        let runner = Runner {
            vcpu: self,
            pio,
            mmio,
            latch,
            ctx,
            requests: req_rx,
            states: state_tx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || runner.run(start_paused))
            .map_err(|source| VcpuError::Thread { index, source })?;
        Ok(VcpuHandle {
            index,
            thread: Some(thread),
            requests: req_tx,
            states: state_rx,
        })
    }
}

/// When vCPU 0 first left KVM_RUN with an exit (guest code had run). One VM
/// per process, so one value; used for the boot-time breakdown only.
static FIRST_EXIT: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// The instant vCPU 0 first exited, if it has.
pub fn first_exit() -> Option<std::time::Instant> {
    FIRST_EXIT.get().copied()
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // the vCPU thread for the lifetime of its VcpuFd; KVM reads
        // immediate_exit on entry, so a plain byte store is what it expects.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

struct Runner {
    vcpu: Vcpu,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    latch: Arc<ExitLatch>,
    ctx: Arc<StateContext>,
    requests: Receiver<VcpuRequest>,
    states: Sender<VcpuReply>,
}

enum Step {
    Continue,
    Stop(ExitReason),
}

impl Runner {
    fn run(mut self, start_paused: bool) {
        crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Vcpu);
        let run_ptr: *mut kvm_run = self.vcpu.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run_ptr));
        let mut state = if start_paused {
            VcpuState::Paused
        } else {
            VcpuState::Running
        };
        loop {
            match state {
                VcpuState::Running => match self.requests.try_recv() {
                    Ok(VcpuRequest::Pause) => {
                        state = VcpuState::Paused;
                        let _ = self.states.send(VcpuReply::State(state));
                    }
                    Ok(VcpuRequest::Resume) | Ok(VcpuRequest::Save) => {
                        let _ = self.states.send(VcpuReply::State(state));
                    }
                    Ok(VcpuRequest::Exit) | Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        if self.latch.is_set() {
                            state = VcpuState::Exiting;
                            continue;
                        }
                        if let Step::Stop(reason) = self.run_once() {
                            self.latch.trigger(reason);
                            state = VcpuState::Exiting;
                        }
                    }
                },
                VcpuState::Paused | VcpuState::Exiting => match self.requests.recv() {
                    Ok(VcpuRequest::Resume) if state == VcpuState::Paused => {
                        state = VcpuState::Running;
                        let _ = self.states.send(VcpuReply::State(state));
                    }
                    Ok(VcpuRequest::Save) => {
                        let saved = vcpu_state::save(&self.ctx, &self.vcpu.fd, self.vcpu.index);
                        let _ = self.states.send(VcpuReply::Saved(Box::new(saved)));
                    }
                    Ok(VcpuRequest::Exit) | Err(_) => break,
                    Ok(_) => {
                        let _ = self.states.send(VcpuReply::State(state));
                    }
                },
                VcpuState::Exited => break,
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
        let _ = self.states.send(VcpuReply::State(VcpuState::Exited));
    }

    fn run_once(&mut self) -> Step {
        let index = self.vcpu.index;
        match self.vcpu.fd.run() {
            Ok(exit) => {
                if index == 0 {
                    FIRST_EXIT.get_or_init(std::time::Instant::now);
                }
                match exit {
                    VcpuExit::IoIn(port, data) => {
                        if !self.pio.read(u64::from(port), data) {
                            data.fill(0xff);
                        }
                        Step::Continue
                    }
                    VcpuExit::IoOut(port, data) => {
                        self.pio.write(u64::from(port), data);
                        Step::Continue
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !self.mmio.read(addr, data) {
                            data.fill(0xff);
                        }
                        Step::Continue
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        self.mmio.write(addr, data);
                        Step::Continue
                    }
                    VcpuExit::Hlt => Step::Continue,
                    VcpuExit::Shutdown => Step::Stop(ExitReason::TripleFault { vcpu: index }),
                    VcpuExit::SystemEvent(kind, _) => match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => Step::Stop(ExitReason::GuestReset),
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                            Step::Stop(ExitReason::GuestPowerOff)
                        }
                        other => Step::Stop(ExitReason::VcpuError {
                            vcpu: index,
                            message: format!("unhandled system event {other}"),
                        }),
                    },
                    VcpuExit::FailEntry(reason, cpu) => Step::Stop(ExitReason::VcpuError {
                        vcpu: index,
                        message: format!("KVM entry failed: reason {reason:#x} on cpu {cpu}"),
                    }),
                    VcpuExit::InternalError => Step::Stop(ExitReason::VcpuError {
                        vcpu: index,
                        message: "KVM internal error".into(),
                    }),
                    other => Step::Stop(ExitReason::VcpuError {
                        vcpu: index,
                        message: format!("unexpected exit {other:?}"),
                    }),
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.vcpu.fd.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(e) => Step::Stop(ExitReason::VcpuError {
                vcpu: index,
                message: format!("KVM_RUN failed: {e}"),
            }),
        }
    }
}

/// The VMM's end of a running vCPU thread.
pub struct VcpuHandle {
    index: u8,
    thread: Option<JoinHandle<()>>,
    requests: Sender<VcpuRequest>,
    states: Receiver<VcpuReply>,
}

/// How long a vCPU has to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl VcpuHandle {
    /// Sends `request` and kicks the thread out of KVM_RUN.
    pub fn send(&self, request: VcpuRequest) {
        if self.requests.send(request).is_ok()
            && let Some(t) = &self.thread
        {
            let _ = t.kill(kick_signal());
        }
    }

    /// Waits for the state answering the last request.
    pub fn wait(&self, request: VcpuRequest) -> Result<VcpuState, VcpuError> {
        match self.states.recv_timeout(ANSWER_TIMEOUT) {
            Ok(VcpuReply::State(s)) => Ok(s),
            Ok(VcpuReply::Saved(_)) => Err(VcpuError::NoAnswer {
                index: self.index,
                request,
            }),
            Err(RecvTimeoutError::Disconnected) => Ok(VcpuState::Exited),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::NoAnswer {
                index: self.index,
                request,
            }),
        }
    }

    /// Reads the KVM state of this (paused) vCPU.
    pub fn save(&self) -> Result<VcpuSnapshot, VcpuError> {
        self.send(VcpuRequest::Save);
        match self.states.recv_timeout(ANSWER_TIMEOUT) {
            Ok(VcpuReply::Saved(r)) => (*r).map_err(|e| VcpuError::Kvm {
                index: self.index,
                op: e.op,
                source: e.source,
            }),
            _ => Err(VcpuError::NoAnswer {
                index: self.index,
                request: VcpuRequest::Save,
            }),
        }
    }

    /// Ends the thread and joins it.
    pub fn exit(&mut self) {
        self.send(VcpuRequest::Exit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.exit();
    }
}
