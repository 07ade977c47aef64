//! Entry points for the fuzz targets (the `fuzz-targets` crate) into
//! device code private to its modules. Not an API.

/// A script of guest vsock packets against the host-side muxer, its bounds
/// checked after every step (`devices::virtio::vsock::muxer`).
pub fn vsock_muxer(data: &[u8]) {
    crate::devices::virtio::vsock::fuzz_script(data);
}

/// A guest driving one virtio-mmio device, its registers and its queues:
/// the first byte picks the device (virtio-blk over a layered disk,
/// virtio-rng or virtio-vsock); the next two give the length of an image
/// copied into the 64 KiB of guest RAM (descriptor tables, rings, buffers);
/// the rest is a script of guest actions ([`mmio_script`]). Nothing a guest
/// writes may panic the VMM, touch memory outside guest RAM or make a
/// device publish more used entries than the driver made available.
pub fn virtio_mmio(data: &[u8]) {
    use crate::devices::virtio::VirtioDevice;
    use crate::devices::virtio::block::Block;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::vsock::Vsock;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (image, script) = rest.split_at(len);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    mem.write_slice(image, GuestAddress(0)).expect("image fits");
    let scratch = std::env::temp_dir().join(format!(
        "forge-fuzz-mmio-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let device: Box<dyn VirtioDevice> = match pick % 3 {
        0 => {
            let base = scratch.join("base");
            std::fs::write(&base, vec![0x5a; 64 << 10]).expect("base");
            let disk = crate::disk::LayeredDisk::open(&base, &[scratch.join("top")], false)
                .expect("a fresh disk opens");
            Box::new(Block::new(disk, "fuzz"))
        }
        1 => Box::new(Rng),
        _ => {
            let uds = scratch.join("v.sock");
            let listener = std::os::unix::net::UnixListener::bind(&uds).expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            Box::new(Vsock::new(3, uds, listener).expect("vsock device"))
        }
    };
    let irq = crate::devices::IrqLine::new().expect("eventfd");
    let mut transport = MmioTransport::new(device, mem.clone(), irq);
    mmio_script(&mut transport, &mem, script);
    drop(transport);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Guest RAM of [`virtio_mmio`].
const RAM: usize = 0x10000;

/// Runs the guest actions of `script`, each an opcode byte and its
/// arguments: 0 register write (u16 offset, u32 value), 1 register read
/// (u16 offset), 2 queue notify (u8 index), 3 configuration write (u8
/// offset, u8 length, bytes), 4 guest memory write (u16 address, u8 length,
/// bytes), 5 a whole driver set-up of one queue (u8 index, u8 size, three
/// u16 addresses: descriptors, available ring, used ring), which takes the
/// fuzzer past the handshake to the queues.
fn mmio_script(
    transport: &mut crate::devices::virtio::mmio::MmioTransport,
    mem: &vm_memory::GuestMemoryMmap,
    mut script: &[u8],
) {
    use crate::devices::bus::BusDevice;
    use vm_memory::{Bytes, GuestAddress};

    fn take<'a>(script: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = script.split_at_checked(n)?;
        *script = tail;
        Some(head)
    }
    fn u16_at(b: &[u8]) -> u16 {
        u16::from_le_bytes([b[0], b[1]])
    }
    let reg = |t: &mut crate::devices::virtio::mmio::MmioTransport, off: u64, v: u32| {
        t.write(off, &v.to_le_bytes());
    };
    // The used ring's index of each queue set up by opcode 5, to check
    // that a notify publishes no more than the driver made available.
    let mut rings: Vec<(u64, u64, u16)> = Vec::new();
    while let Some(op) = take(&mut script, 1) {
        match op[0] % 6 {
            0 => {
                let Some(a) = take(&mut script, 6) else {
                    return;
                };
                let value = u32::from_le_bytes([a[2], a[3], a[4], a[5]]);
                reg(transport, u64::from(u16_at(a) & 0x1fc), value);
            }
            1 => {
                let Some(a) = take(&mut script, 2) else {
                    return;
                };
                let mut out = [0u8; 4];
                transport.read(u64::from(u16_at(a) & 0x1ff), &mut out);
            }
            2 => {
                let Some(a) = take(&mut script, 1) else {
                    return;
                };
                let before: Vec<u16> = rings
                    .iter()
                    .map(|(_, used, _)| mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap_or(0))
                    .collect();
                reg(transport, 0x50, u32::from(a[0] % 4));
                for ((_, used, size), was) in rings.iter().zip(before) {
                    let now = mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap_or(0);
                    assert!(
                        now.wrapping_sub(was) <= *size,
                        "a notify published {} used entries on a queue of {size}",
                        now.wrapping_sub(was)
                    );
                }
            }
            3 => {
                let Some(a) = take(&mut script, 2) else {
                    return;
                };
                let Some(bytes) = take(&mut script, usize::from(a[1] % 9)) else {
                    return;
                };
                transport.write(0x100 + u64::from(a[0]), bytes);
            }
            4 => {
                let Some(a) = take(&mut script, 3) else {
                    return;
                };
                let Some(bytes) = take(&mut script, usize::from(a[2])) else {
                    return;
                };
                let at = u64::from(u16_at(a)).min((RAM - bytes.len()) as u64);
                let _ = mem.write_slice(bytes, GuestAddress(at));
            }
            _ => {
                let Some(a) = take(&mut script, 8) else {
                    return;
                };
                let size = 1u16 << (a[1] % 9);
                let (desc, avail, used) = (
                    u64::from(u16_at(&a[2..])),
                    u64::from(u16_at(&a[4..])),
                    u64::from(u16_at(&a[6..])),
                );
                use crate::devices::virtio::mmio::status;
                reg(transport, 0x70, status::ACKNOWLEDGE | status::DRIVER);
                reg(transport, 0x24, 1);
                reg(transport, 0x20, 1); // VIRTIO_F_VERSION_1
                reg(
                    transport,
                    0x70,
                    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
                );
                reg(transport, 0x30, u32::from(a[0] % 4));
                reg(transport, 0x38, u32::from(size));
                for (off, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                    reg(transport, off, addr as u32);
                    reg(transport, off + 4, 0);
                }
                reg(transport, 0x44, 1);
                reg(
                    transport,
                    0x70,
                    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
                );
                rings.push((avail, used, size));
            }
        }
    }
}
