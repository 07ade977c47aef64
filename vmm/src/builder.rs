//! Builds a VM in ordered, named steps, each timed for the boot breakdown.
//! Two paths run the same steps over shared helpers: `boot` (from
//! [`Vmm::build`]) starts a kernel, `restore` (from [`Vmm::build_from`] with
//! [`Source::Restore`]) resumes a snapshot or a forked child.
//!
//! | step | boot | restore |
//! | --- | --- | --- |
//! | 1. KVM setup | open /dev/kvm, create the VM (`create_vm`) | same |
//! | 2. Memory | map fresh RAM, register it with KVM (`register_memory`) | register RAM already mapped: a snapshot's memory file, or the mapping a forked child inherited |
//! | 3. KVM setup, continued | in-kernel irqchip and PIT, after memory (30× cheaper here, see `register_memory`) | same |
//! | 4. Load | kernel (ELF or bzImage), initrd, boot tables, MP table (`load_guest`) | the saved irqchip, PIT and clock |
//! | 5. Devices | serial, i8042, virtio-mmio with ioeventfd and irqfd (`build_devices`), then the zero page with the final command line | same, with their saved registers and queues |
//! | 6. vCPUs | create and configure at the kernel entry (`configure_vcpus`) | create and restore (`restore_vcpus`) |
//! | 7. Start | vCPU threads, event loop, control socket (`start`) | same, paused if asked; devices hear of the restore |
//!
//! Then [`Vmm::run`] serves the event loop until the VM ends.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::loader::{KernelLoader, KernelLoaderResult, bzimage::BzImage, elf::Elf};
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::arch::{self, boot};
use crate::config::{ApEntry, VmConfig};
use crate::control::ControlServer;
use crate::devices::IrqLine;
use crate::devices::bus::Bus;
use crate::devices::i8042::{I8042, I8042_PORTS};
use crate::devices::serial::{SERIAL_PORTS, SerialConsole};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::wiring::{Placed, place};
use crate::disk::{LayerError, LayeredDisk};
use crate::event_loop::{EventLoop, Ops, Subscriber};
use crate::machine::Machine;
use crate::snapshot::{SnapshotError, VmSnapshot};
use crate::socket::{SocketError, bind_replacing_stale};
use crate::vcpus::VcpuSet;
use crate::vstate::exit::{ExitLatch, ExitReason};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vcpu_state::StateContext;
use crate::vstate::vm::{Vm, VmError};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// KVM refused something.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The kernel could not be loaded.
    #[error("Cannot load kernel {path}")]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A file the VM needs could not be opened.
    #[error("Cannot open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit.
    #[error("Initrd does not fit in guest memory")]
    InitrdTooLarge,
    /// Boot structures could not be written.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Device wiring failed.
    #[error("Cannot set up device {what}")]
    Device {
        /// Which device.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A bus range clash (a bug in the layout).
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] arch::mptable::MptableError),
    /// A disk could not be opened.
    #[error(transparent)]
    Disk(#[from] LayerError),
    /// A snapshot could not be read or applied.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A snapshot does not fit the VM it is restored into.
    #[error("Snapshot does not match the VM: {0}")]
    Mismatch(String),
    /// The event loop failed.
    #[error("Event loop failed")]
    EventLoop(#[source] std::io::Error),
}

fn device_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Device { what, source }
}

/// How long each build step took.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BootTimings {
    /// Opening KVM, creating the VM, irqchip and PIT.
    pub kvm_setup_us: u64,
    /// Mapping and registering guest RAM.
    pub memory_us: u64,
    /// Loading kernel, command line and zero page, or restoring VM state.
    pub load_us: u64,
    /// Creating devices.
    pub devices_us: u64,
    /// Creating, configuring and starting vCPUs.
    pub vcpus_us: u64,
    /// From vCPU start to the first exit of vCPU 0 (guest code ran).
    pub first_exit_us: Option<u64>,
    /// From the event loop seeing the VM end to every vCPU thread joined.
    pub stop_us: Option<u64>,
    /// From the event loop seeing the VM end to the VM freed (devices,
    /// KVM file descriptors, guest RAM): set by the caller of
    /// [`Vmm::run`] once it returned, from `stopped_at`.
    pub freed_us: Option<u64>,
    #[serde(skip)]
    pub stopped_at: Option<Instant>,
}

/// Files and sockets a running VM owns, removed when it ends.
pub struct OwnedPaths(pub Vec<PathBuf>);

impl Drop for OwnedPaths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Where a VM's memory and state come from.
pub enum Source {
    /// Fresh anonymous RAM, kernel loaded from the config.
    Boot,
    /// A snapshot's state over memory already mapped (from the snapshot's
    /// memory file, or inherited by a forked child).
    Restore {
        /// The saved state.
        snapshot: Box<VmSnapshot>,
        /// Guest RAM with the saved contents.
        memory: GuestMemoryMmap,
        /// The file `memory` privately maps, if any.
        memory_file: Option<PathBuf>,
        /// Leave the vCPUs paused (a `resume` starts them).
        start_paused: bool,
    },
}

/// A built, running VM.
pub struct Vmm {
    machine: Rc<RefCell<Machine>>,
    event_loop: EventLoop,
    timings: BootTimings,
    vcpus_started: Instant,
    _paths: OwnedPaths,
}

struct LatchWatcher;

impl Subscriber for LatchWatcher {
    fn handle(&mut self, _fd: std::os::fd::RawFd, _events: EventSet, _ops: &mut Ops) {}
}

fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Loads an ELF vmlinux (at its `p_paddr`, 16 MiB or above) or a bzImage
/// (its protected-mode code at its `code32_start`, 1 MiB or above); returns
/// what was loaded and the 64-bit entry point.
fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &PathBuf,
) -> Result<(KernelLoaderResult, u64), BuildError> {
    let mut file = File::open(path).map_err(|source| BuildError::Open {
        path: path.clone(),
        source,
    })?;
    match Elf::load(mem, None, &mut file, Some(GuestAddress(arch::KERNEL_START))) {
        Ok(r) => {
            let entry = r.kernel_load.raw_value();
            Ok((r, entry))
        }
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            // The decompressor moves the kernel proper to 16 MiB or above
            // itself (`kernel_alignment` in the zero page).
            let low = Some(GuestAddress(arch::HIGH_MEMORY_START));
            let r =
                BzImage::load(mem, None, &mut file, low).map_err(|source| BuildError::Kernel {
                    path: path.clone(),
                    source,
                })?;
            // The 64-bit entry of a bzImage is 0x200 past where it loads.
            let entry = r.kernel_load.raw_value() + 0x200;
            Ok((r, entry))
        }
        Err(source) => Err(BuildError::Kernel {
            path: path.clone(),
            source,
        }),
    }
}

impl Vmm {
    /// Builds and starts the VM `config` describes.
    pub fn build(config: &VmConfig) -> Result<Self, BuildError> {
        Self::build_from(config, Source::Boot)
    }

    /// Builds and starts a VM, booting it or restoring it from `source`.
    pub fn build_from(config: &VmConfig, source: Source) -> Result<Self, BuildError> {
        match source {
            Source::Boot => boot(config),
            Source::Restore {
                snapshot,
                memory,
                memory_file,
                start_paused,
            } => restore(
                config,
                &snapshot,
                memory,
                Resumed {
                    memory_file,
                    start_paused,
                },
            ),
        }
    }

    /// Serves devices and the control socket until the VM ends.
    pub fn run(mut self) -> Result<(ExitReason, BootTimings), BuildError> {
        let latch = self.machine.borrow().latch.clone();
        while !latch.is_set() {
            self.event_loop
                .run_once(-1)
                .map_err(BuildError::EventLoop)?;
        }
        let stopping = Instant::now();
        self.timings.stopped_at = Some(stopping);
        let mut machine = self.machine.borrow_mut();
        machine.vcpus.exit_all();
        if let Ok(mut s) = machine.serial.lock() {
            s.flush();
        }
        let mut timings = self.timings.clone();
        timings.stop_us = Some(us(stopping));
        timings.first_exit_us = crate::vstate::vcpu::first_exit()
            .map(|t| t.saturating_duration_since(self.vcpus_started).as_micros() as u64);
        let reason = latch.reason().unwrap_or(ExitReason::Shutdown);
        Ok((reason, timings))
    }
}

/// The boot path: fresh RAM, the kernel and boot tables the config names,
/// vCPUs configured to enter the kernel.
fn boot(config: &VmConfig) -> Result<Vmm, BuildError> {
    let mut timings = BootTimings::default();
    let mut paths = OwnedPaths(Vec::new());

    let t = Instant::now();
    let (vm, ctx) = create_vm()?;
    timings.kvm_setup_us = us(t);

    let t = Instant::now();
    let memory = memory::create(config.mem_mib)?;
    register_memory(&vm, &memory)?;
    timings.memory_us = us(t);

    let t = Instant::now();
    vm.create_irqchip_and_pit()?;
    timings.kvm_setup_us += us(t);

    let t = Instant::now();
    let kernel = load_guest(config, &memory)?;
    timings.load_us = us(t);

    let t = Instant::now();
    let devices = build_devices(config, &vm, &memory, &mut paths, None)?;
    // The command line is known only now: each virtio device adds itself.
    boot::write_zero_page(
        &memory,
        devices.cmdline.trim().as_bytes(),
        kernel.loaded.setup_header,
        kernel.initrd,
    )?;
    memory::advise_huge_pages(&memory);
    timings.devices_us = us(t);

    let t = Instant::now();
    let vcpus = configure_vcpus(&vm, config, kernel.entry)?;
    timings.vcpus_us = us(t);

    start(
        Assembled {
            config,
            vm,
            ctx,
            memory,
            devices,
            vcpus,
            timings,
            paths,
        },
        Origin::Booted,
    )
}

/// The restore path (a snapshot, or a forked child): `snapshot`'s state
/// over `memory`, which already holds the saved RAM.
fn restore(
    config: &VmConfig,
    snapshot: &VmSnapshot,
    memory: GuestMemoryMmap,
    resumed: Resumed,
) -> Result<Vmm, BuildError> {
    let mut timings = BootTimings::default();
    let mut paths = OwnedPaths(Vec::new());

    let t = Instant::now();
    let (vm, ctx) = create_vm()?;
    timings.kvm_setup_us = us(t);

    let t = Instant::now();
    register_memory(&vm, &memory)?;
    timings.memory_us = us(t);

    let t = Instant::now();
    vm.create_irqchip_and_pit()?;
    timings.kvm_setup_us += us(t);

    let t = Instant::now();
    vm.restore_state(&snapshot.vm)?;
    timings.load_us = us(t);

    let t = Instant::now();
    let devices = build_devices(config, &vm, &memory, &mut paths, Some(snapshot))?;
    timings.devices_us = us(t);

    let t = Instant::now();
    let vcpus = restore_vcpus(&vm, &ctx, config, snapshot)?;
    timings.vcpus_us = us(t);

    start(
        Assembled {
            config,
            vm,
            ctx,
            memory,
            devices,
            vcpus,
            timings,
            paths,
        },
        Origin::Restored(resumed),
    )
}

/// Step 1: the KVM VM, and what reading and writing vCPU state needs.
fn create_vm() -> Result<(Vm, Arc<StateContext>), BuildError> {
    let vm = Vm::new()?;
    let ctx = StateContext::new(vm.kvm()).map_err(|e| VmError::Kvm {
        op: e.op,
        source: e.source,
    })?;
    Ok((vm, Arc::new(ctx)))
}

/// Step 2: guest RAM into KVM's memory slots. Both paths call it before
/// the irqchip and PIT exist: registered after them, the first slot waits
/// 5-10 ms for a KVM SRCU grace period on this project's hosts; before
/// them, 0.2 ms.
fn register_memory(vm: &Vm, memory: &GuestMemoryMmap) -> Result<(), BuildError> {
    Ok(vm.set_memory(memory)?)
}

/// What the boot path loaded into guest RAM.
struct Kernel {
    loaded: KernelLoaderResult,
    /// The 64-bit entry point.
    entry: u64,
    initrd: Option<boot::InitrdPlacement>,
}

/// Step 4 when booting: kernel, initrd, boot page tables and GDT, MP table.
fn load_guest(config: &VmConfig, memory: &GuestMemoryMmap) -> Result<Kernel, BuildError> {
    let (loaded, entry) = load_kernel(memory, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(memory, path)?),
        None => None,
    };
    boot::write_boot_tables(memory)?;
    arch::mptable::write(memory, config.vcpus)?;
    Ok(Kernel {
        loaded,
        entry,
        initrd,
    })
}

/// Step 6 when booting: every vCPU gets the supported CPUID (made its
/// own) and long-mode registers at `entry`; APs run from it too only if
/// the config says so.
fn configure_vcpus(vm: &Vm, config: &VmConfig, entry: u64) -> Result<Vec<Vcpu>, BuildError> {
    let mut cpuid = vm
        .kvm()
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmError::Kvm {
            op: "GET_SUPPORTED_CPUID",
            source,
        })?;
    if vm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        arch::cpuid::announce_tsc_deadline(&mut cpuid);
    }
    let runnable = config.ap_entry == ApEntry::KernelEntry;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for i in 0..config.vcpus {
        let vcpu = Vcpu::new(vm, i)?;
        vcpu.configure(&cpuid, config.vcpus, entry, runnable)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Step 6 when restoring: one vCPU per saved state, which must be as many
/// as the config asks for.
fn restore_vcpus(
    vm: &Vm,
    ctx: &StateContext,
    config: &VmConfig,
    snapshot: &VmSnapshot,
) -> Result<Vec<Vcpu>, BuildError> {
    if snapshot.vcpus.len() != usize::from(config.vcpus) {
        return Err(BuildError::Mismatch("vCPU count".into()));
    }
    let mut vcpus = Vec::with_capacity(snapshot.vcpus.len());
    for state in &snapshot.vcpus {
        let vcpu = Vcpu::new(vm, state.index)?;
        vcpu.restore(ctx, state)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// A VM with every part in place and no thread running yet.
struct Assembled<'c> {
    config: &'c VmConfig,
    vm: Vm,
    ctx: Arc<StateContext>,
    memory: GuestMemoryMmap,
    devices: Devices,
    vcpus: Vec<Vcpu>,
    timings: BootTimings,
    paths: OwnedPaths,
}

/// How a restored VM continues.
struct Resumed {
    /// The file guest RAM privately maps, if any.
    memory_file: Option<PathBuf>,
    /// Leave the vCPUs paused (a `resume` starts them).
    start_paused: bool,
}

/// Where a VM came from, for what differs once it runs.
enum Origin {
    /// Booted: its RAM is still the shared mapping the first fork freezes.
    Booted,
    /// Restored or forked: its devices must drop host state that did not
    /// survive and tell the guest.
    Restored(Resumed),
}

/// Steps 7 and on, shared: start the vCPU threads, subscribe the devices
/// and the control socket to the event loop, and hand back the running VM.
fn start(parts: Assembled<'_>, origin: Origin) -> Result<Vmm, BuildError> {
    let Assembled {
        config,
        vm,
        ctx,
        memory,
        devices,
        vcpus,
        mut timings,
        paths,
    } = parts;
    let (restored, memory_source, start_paused) = match origin {
        Origin::Booted => (false, None, false),
        Origin::Restored(resumed) => (true, resumed.memory_file, resumed.start_paused),
    };

    let t = Instant::now();
    let latch = devices.latch.clone();
    let pio = Arc::new(devices.pio);
    let mmio = Arc::new(devices.mmio);
    let vcpus_started = Instant::now();
    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        handles.push(vcpu.start(
            pio.clone(),
            mmio.clone(),
            latch.clone(),
            ctx.clone(),
            start_paused,
        )?);
    }
    timings.vcpus_us += us(t);

    let mut event_loop = EventLoop::new().map_err(BuildError::EventLoop)?;
    event_loop
        .subscribe(
            Box::new(LatchWatcher),
            &[(latch.eventfd().as_raw_fd(), EventSet::IN)],
        )
        .map_err(BuildError::EventLoop)?;
    let mut transports = Vec::new();
    for placed in devices.virtio {
        transports.push(placed.transport.clone());
        event_loop
            .subscribe(Box::new(placed.subscriber), &placed.fds)
            .map_err(BuildError::EventLoop)?;
    }
    if restored {
        for t in &transports {
            if let Ok(mut t) = t.lock() {
                t.kick_after_restore();
            }
        }
    }
    let machine = Rc::new(RefCell::new(Machine {
        vcpus: VcpuSet::new(handles, start_paused),
        config: config.clone(),
        latch,
        serial: devices.serial,
        transports,
        vm,
        memory,
        fork_generation: 0,
        shared_ram_from: (!restored).then_some(0),
        memory_source,
        snapshot_generation: 0,
    }));
    let server = ControlServer::new(devices.control, machine.clone());
    let lfd = server.listener_fd();
    event_loop
        .subscribe(Box::new(server), &[(lfd, EventSet::IN)])
        .map_err(BuildError::EventLoop)?;

    Ok(Vmm {
        machine,
        event_loop,
        timings,
        vcpus_started,
        _paths: paths,
    })
}

/// Devices of one VM before the vCPUs start.
struct Devices {
    latch: Arc<ExitLatch>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialConsole>>,
    control: std::os::unix::net::UnixListener,
    virtio: Vec<Placed>,
    /// The command line with the virtio-mmio devices appended.
    cmdline: String,
}

fn build_devices(
    config: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    paths: &mut OwnedPaths,
    snapshot: Option<&VmSnapshot>,
) -> Result<Devices, BuildError> {
    let latch = Arc::new(ExitLatch::new().map_err(device_err("exit latch"))?);
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let mut cmdline = config.cmdline.clone();
    let mut virtio = Vec::new();
    let devices = virtio_devices(config, paths)?;
    if let Some(s) = snapshot
        && s.virtio.len() != devices.len()
    {
        return Err(BuildError::Mismatch("virtio device count".into()));
    }
    for device in devices {
        let i = virtio.len();
        let base = arch::VIRTIO_MMIO_BASE + i as u64 * arch::VIRTIO_MMIO_SIZE;
        let irq = arch::VIRTIO_IRQ_BASE + i as u32;
        let placed =
            place(vm, &mut mmio, mem, device, base, irq).map_err(device_err("virtio-mmio"))?;
        if let Some(s) = snapshot
            && let Ok(mut t) = placed.transport.lock()
        {
            t.restore(&s.virtio[i]).map_err(BuildError::Mismatch)?;
        }
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
        virtio.push(placed);
    }
    let serial_irq = IrqLine::new().map_err(device_err("serial irq"))?;
    vm.fd()
        .register_irqfd(serial_irq.eventfd(), arch::SERIAL_IRQ)
        .map_err(|e| BuildError::Device {
            what: "serial irqfd",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.serial_log)
        .map_err(|source| BuildError::Open {
            path: config.serial_log.clone(),
            source,
        })?;
    let log = crate::devices::serial::CappedLog::new(log, config.serial_log_max_bytes);
    let console = match snapshot {
        Some(s) => SerialConsole::from_snapshot(serial_irq, log, &s.serial)
            .map_err(device_err("serial state"))?,
        None => SerialConsole::new(serial_irq, log),
    };
    let serial = Arc::new(Mutex::new(console));
    pio.insert(serial.clone(), u64::from(arch::SERIAL_PORT), SERIAL_PORTS)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(latch.clone()))),
        u64::from(arch::I8042_PORT),
        I8042_PORTS,
    )?;
    let control = bind_replacing_stale(&config.control_socket)?;
    paths.0.push(config.control_socket.clone());
    control
        .set_nonblocking(true)
        .map_err(device_err("control socket"))?;
    Ok(Devices {
        latch,
        pio,
        mmio,
        serial,
        control,
        virtio,
        cmdline,
    })
}

/// The virtio devices `config` asks for, in window order: disks, rng, vsock.
fn virtio_devices(
    config: &VmConfig,
    paths: &mut OwnedPaths,
) -> Result<Vec<Box<dyn VirtioDevice>>, BuildError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let layered = LayeredDisk::open(&disk.base, &disk.layers, disk.read_only)?;
        devices.push(Box::new(Block::new(layered, &format!("forge-blk{i}"))));
    }
    if config.rng {
        devices.push(Box::new(Rng));
    }
    if let Some(vsock) = &config.vsock {
        let listener = bind_replacing_stale(&vsock.uds_path)?;
        paths.0.push(vsock.uds_path.clone());
        let device = Vsock::new(u64::from(vsock.guest_cid), vsock.uds_path.clone(), listener)
            .map_err(|e| BuildError::Device {
                what: "vsock",
                source: std::io::Error::other(e.to_string()),
            })?;
        devices.push(Box::new(device));
    }
    Ok(devices)
}

fn load_initrd(mem: &GuestMemoryMmap, path: &PathBuf) -> Result<boot::InitrdPlacement, BuildError> {
    use vm_memory::Bytes;
    let mut file = File::open(path).map_err(|source| BuildError::Open {
        path: path.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BuildError::Open {
            path: path.clone(),
            source,
        })?
        .len();
    let addr = boot::initrd_address(mem, size).ok_or(BuildError::InitrdTooLarge)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|_| BuildError::InitrdTooLarge)?;
    Ok(boot::InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    /// A bzImage as every standard build lays it out: four setup sectors
    /// after the boot sector, the boot protocol header at 0x1f1, and
    /// `code32_start` = 1 MiB; then the protected-mode code.
    fn standard_bzimage(code: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1] = 4; // setup_sects
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x211] = 1; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image.extend_from_slice(code);
        image
    }

    /// A file of `bytes` in a directory of this test's own.
    fn file(test: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn a_standard_bzimage_loads_at_one_mib_and_enters_past_its_header() {
        let code: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let path = file("bzimage", "bzImage", &standard_bzimage(&code));
        let mem = memory::create(64).expect("guest memory");
        let (loaded, entry) = load_kernel(&mem, &path).expect("a standard bzImage loads");
        assert_eq!(loaded.kernel_load.raw_value(), arch::HIGH_MEMORY_START);
        assert_eq!(entry, arch::HIGH_MEMORY_START + 0x200, "64-bit entry");
        let header = loaded.setup_header.expect("the setup header is kept");
        assert_eq!({ header.code32_start }, 0x10_0000);
        let mut back = vec![0u8; code.len()];
        mem.read_slice(&mut back, GuestAddress(arch::HIGH_MEMORY_START))
            .expect("read back");
        assert_eq!(back, code, "the protected-mode code is in place");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_file_that_is_no_kernel_is_refused_with_its_path() {
        let path = file("no-kernel", "notes.txt", &[b'x'; 4096]);
        let mem = memory::create(64).expect("guest memory");
        let err = load_kernel(&mem, &path).expect_err("not a kernel");
        assert!(err.to_string().contains("notes.txt"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
