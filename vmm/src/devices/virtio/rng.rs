//! virtio-rng (virtio 1.2 §5.4): fills every device-writable buffer of a
//! request with bytes from the host's getrandom(2).

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{FdChanges, VIRTIO_F_VERSION_1, VirtioDevice, device_type};

const QUEUE_SIZES: &[u16] = &[64];
/// Most bytes served per request.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng;

fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `buf`, which is valid for writes for the whole call.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

impl Rng {
    fn serve(descs: &[Descriptor], mem: &GuestMemoryMmap) -> u32 {
        let mut written = 0usize;
        for d in descs.iter().filter(|d| d.is_write_only()) {
            let n = (d.len() as usize).min(MAX_REQUEST_BYTES - written);
            if n == 0 {
                break;
            }
            let mut buf = vec![0u8; n];
            if !fill_random(&mut buf) || mem.write_slice(&buf, d.addr()).is_err() {
                break;
            }
            written += n;
        }
        written as u32
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        _watch: &mut FdChanges,
    ) -> bool {
        let Some(q) = queues.get_mut(index) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let len = Self::serve(&descs, mem);
            if q.add_used(mem, head, len).is_ok() {
                used = true;
            }
        }
        used
    }
}
