//! The layered copy-on-write disk (ARCHITECTURE.md decision 5): a read-only
//! raw base image shared by every sandbox of that image, plus a chain of
//! overlay layers; only the top one is writable. A read of a block comes
//! from the highest layer that holds it, else from the base (zeros past the
//! base's end). A write goes to the top layer only: partial blocks are first
//! copied up from below.
//!
//! Layer file format (little-endian), version 1:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `FRGLAYR1` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | block size in bytes (4096) |
//! | 16 | 8 | disk size in bytes (the base's size) |
//! | 24 | 1 | sealed: 1 once the layer became read-only for good |
//! | 4096 | ⌈blocks/8⌉, padded to 4 KiB | index: bit *i* set = block *i* is in this layer |
//! | data_off | blocks × block size | block *i* at `data_off + i × block size`, sparse |
//!
//! A block's data is written before its index bit, so a crash leaves at
//! worst an unused copy. `flush` syncs the top layer. For a fork (issue
//! "snapshot/fork"), [`LayeredDisk::seal_top_and_push`] seals the top layer
//! and stacks a new empty one: O(1), nothing is copied.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{ReadVolatile, VolatileSlice};

/// Block size of every layer.
pub const BLOCK_SIZE: u64 = 4096;
const MAGIC: &[u8; 8] = b"FRGLAYR1";
const VERSION: u32 = 1;
const HEADER_SIZE: u64 = 4096;
const SEALED_OFFSET: u64 = 24;

/// Errors opening or using a layered disk.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file could not be opened or created.
    #[error("Cannot open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A layer file is not in this format or does not match the base.
    #[error("Layer {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A write to a read-only disk.
    #[error("Disk is read-only")]
    ReadOnly,
    /// An access past the end of the disk.
    #[error("Access at {offset}+{len} is past the disk's {size} bytes")]
    OutOfRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// I/O on a layer or the base failed.
    #[error("Disk I/O failed")]
    Io(#[from] std::io::Error),
}

struct Layer {
    path: PathBuf,
    file: File,
    index: Vec<u64>,
    data_off: u64,
}

fn index_bytes(disk_size: u64) -> u64 {
    let blocks = disk_size.div_ceil(BLOCK_SIZE);
    blocks.div_ceil(8).div_ceil(4096) * 4096
}

impl Layer {
    fn has(&self, block: u64) -> bool {
        self.index
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn create(path: &Path, disk_size: u64) -> Result<Self, LayerError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| LayerError::Open {
                path: path.to_owned(),
                source,
            })?;
        let mut header = vec![0u8; HEADER_SIZE as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        header[16..24].copy_from_slice(&disk_size.to_le_bytes());
        file.write_all_at(&header, 0)?;
        let data_off = HEADER_SIZE + index_bytes(disk_size);
        file.set_len(data_off)?;
        let words = disk_size.div_ceil(BLOCK_SIZE).div_ceil(64) as usize;
        Ok(Self {
            path: path.to_owned(),
            file,
            index: vec![0; words],
            data_off,
        })
    }

    fn open(path: &Path, disk_size: u64, writable: bool) -> Result<Self, LayerError> {
        let invalid = |reason: &str| LayerError::Invalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| LayerError::Open {
                path: path.to_owned(),
                source,
            })?;
        let mut header = [0u8; 32];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| invalid("shorter than its header"))?;
        if &header[..8] != MAGIC {
            return Err(invalid("bad magic"));
        }
        let word =
            |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        if word(8) != VERSION {
            return Err(invalid("unsupported version"));
        }
        if u64::from(word(12)) != BLOCK_SIZE {
            return Err(invalid("unsupported block size"));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&header[16..24]);
        if u64::from_le_bytes(size) != disk_size {
            return Err(invalid("disk size differs from the base image"));
        }
        if writable && header[SEALED_OFFSET as usize] != 0 {
            return Err(invalid("sealed layer cannot be the writable top"));
        }
        let words = disk_size.div_ceil(BLOCK_SIZE).div_ceil(64) as usize;
        let mut raw = vec![0u8; words * 8];
        file.read_exact_at(&mut raw, HEADER_SIZE)
            .map_err(|_| invalid("index is truncated"))?;
        let index = raw
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Ok(Self {
            path: path.to_owned(),
            file,
            index,
            data_off: HEADER_SIZE + index_bytes(disk_size),
        })
    }

    fn mark(&mut self, block: u64) -> std::io::Result<()> {
        let w = (block / 64) as usize;
        self.index[w] |= 1 << (block % 64);
        self.file
            .write_all_at(&self.index[w].to_le_bytes(), HEADER_SIZE + w as u64 * 8)
    }
}

/// A base image plus overlay layers.
pub struct LayeredDisk {
    base: File,
    base_len: u64,
    size: u64,
    layers: Vec<Layer>,
    read_only: bool,
}

impl LayeredDisk {
    /// Opens `base` and `layers` (bottom first). When writable, the last
    /// layer is the top: created empty if it does not exist.
    pub fn open(base: &Path, layers: &[PathBuf], read_only: bool) -> Result<Self, LayerError> {
        let base_file = File::open(base).map_err(|source| LayerError::Open {
            path: base.to_owned(),
            source,
        })?;
        let base_len = base_file.metadata()?.len();
        let size = base_len / 512 * 512;
        let mut opened = Vec::with_capacity(layers.len());
        for (i, path) in layers.iter().enumerate() {
            let is_top = i + 1 == layers.len();
            let writable = is_top && !read_only;
            if writable && !path.exists() {
                opened.push(Layer::create(path, size)?);
            } else {
                opened.push(Layer::open(path, size, writable)?);
            }
        }
        if !read_only && opened.is_empty() {
            return Err(LayerError::Invalid {
                path: base.to_owned(),
                reason: "a writable disk needs a top layer".into(),
            });
        }
        Ok(Self {
            base: base_file,
            base_len,
            size,
            layers: opened,
            read_only,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Layer paths, bottom first.
    pub fn layer_paths(&self) -> Vec<PathBuf> {
        self.layers.iter().map(|l| l.path.clone()).collect()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), LayerError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(LayerError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Reads one block's bytes `[from, from + buf.len())` from the highest
    /// layer that holds it, below layer `below` (exclusive).
    fn read_in_block(
        &self,
        block: u64,
        from: u64,
        buf: &mut [u8],
        below: usize,
    ) -> std::io::Result<()> {
        for layer in self.layers[..below].iter().rev() {
            if layer.has(block) {
                return layer
                    .file
                    .read_exact_at(buf, layer.data_off + block * BLOCK_SIZE + from);
            }
        }
        let pos = block * BLOCK_SIZE + from;
        let avail = self.base_len.saturating_sub(pos).min(buf.len() as u64) as usize;
        self.base.read_exact_at(&mut buf[..avail], pos)?;
        buf[avail..].fill(0);
        Ok(())
    }

    /// Which layer holds `block` (None: the base), looking below `below`.
    fn source_of(&self, block: u64, below: usize) -> Option<usize> {
        self.layers[..below].iter().rposition(|l| l.has(block))
    }

    /// Reads `buf.len()` bytes at `offset`. Consecutive blocks that come
    /// from the same layer (or the base) are read with one pread: a layer's
    /// data area keeps blocks at their disk offsets.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), LayerError> {
        self.check(offset, buf.len() as u64)?;
        let all = self.layers.len();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / BLOCK_SIZE;
            let source = self.source_of(block, all);
            let mut end = (block + 1) * BLOCK_SIZE;
            let limit = offset + buf.len() as u64;
            while end < limit && self.source_of(end / BLOCK_SIZE, all) == source {
                end += BLOCK_SIZE;
            }
            let n = (end.min(limit) - pos) as usize;
            let chunk = &mut buf[done..done + n];
            match source {
                Some(i) => {
                    let layer = &self.layers[i];
                    layer.file.read_exact_at(chunk, layer.data_off + pos)?;
                }
                None => {
                    let avail = self.base_len.saturating_sub(pos).min(n as u64) as usize;
                    self.base.read_exact_at(&mut chunk[..avail], pos)?;
                    chunk[avail..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Reads `dst.len()` bytes at `offset` straight into guest memory
    /// (no bounce buffer): each run of blocks from one source is one seek
    /// and one read into the slice.
    pub fn read_to_guest(
        &self,
        offset: u64,
        dst: &VolatileSlice<'_, ()>,
    ) -> Result<(), LayerError> {
        let len = dst.len();
        self.check(offset, len as u64)?;
        let all = self.layers.len();
        let bad = |e: vm_memory::VolatileMemoryError| std::io::Error::other(e.to_string());
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let block = pos / BLOCK_SIZE;
            let source = self.source_of(block, all);
            let mut end = (block + 1) * BLOCK_SIZE;
            let limit = offset + len as u64;
            while end < limit && self.source_of(end / BLOCK_SIZE, all) == source {
                end += BLOCK_SIZE;
            }
            let n = (end.min(limit) - pos) as usize;
            let chunk = dst.subslice(done, n).map_err(bad)?;
            let (mut file, at, avail) = match source {
                Some(i) => {
                    let layer = &self.layers[i];
                    (&layer.file, layer.data_off + pos, n)
                }
                None => (
                    &self.base,
                    pos,
                    self.base_len.saturating_sub(pos).min(n as u64) as usize,
                ),
            };
            if avail > 0 {
                file.seek(SeekFrom::Start(at))?;
                let mut head = chunk.subslice(0, avail).map_err(bad)?;
                file.read_exact_volatile(&mut head)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            if avail < n {
                chunk
                    .subslice(avail, n - avail)
                    .map_err(bad)?
                    .copy_from(&vec![0u8; n - avail]);
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` into the top layer.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), LayerError> {
        if self.read_only {
            return Err(LayerError::ReadOnly);
        }
        self.check(offset, data.len() as u64)?;
        let top = self.layers.len() - 1;
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let block = pos / BLOCK_SIZE;
            let from = pos % BLOCK_SIZE;
            let n = ((BLOCK_SIZE - from) as usize).min(data.len() - done);
            let chunk = &data[done..done + n];
            let data_off = self.layers[top].data_off;
            if self.layers[top].has(block) {
                self.layers[top]
                    .file
                    .write_all_at(chunk, data_off + block * BLOCK_SIZE + from)?;
            } else {
                let mut whole = vec![0u8; BLOCK_SIZE as usize];
                if n as u64 != BLOCK_SIZE {
                    self.read_in_block(block, 0, &mut whole, top)?;
                }
                whole[from as usize..from as usize + n].copy_from_slice(chunk);
                self.layers[top]
                    .file
                    .write_all_at(&whole, data_off + block * BLOCK_SIZE)?;
                self.layers[top].mark(block)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Makes written data durable.
    pub fn flush(&self) -> Result<(), LayerError> {
        if let Some(top) = self.layers.last()
            && !self.read_only
        {
            top.file.sync_data()?;
        }
        Ok(())
    }

    /// Seals the top layer (it becomes shared and read-only) and stacks a
    /// new empty writable layer at `new_top`. Used by fork.
    pub fn seal_top_and_push(&mut self, new_top: &Path) -> Result<(), LayerError> {
        self.seal_top()?;
        self.push_layer(new_top)
    }

    /// Marks the top layer sealed; writes are refused until a new top is
    /// pushed. Fork seals once, then parent and child each push their own.
    pub fn seal_top(&mut self) -> Result<(), LayerError> {
        if self.read_only {
            return Err(LayerError::ReadOnly);
        }
        if let Some(top) = self.layers.last() {
            top.file.sync_all()?;
            top.file.write_all_at(&[1], SEALED_OFFSET)?;
            top.file.sync_data()?;
        }
        self.read_only = true;
        Ok(())
    }

    /// Stacks a new empty writable layer at `new_top` over sealed ones.
    pub fn push_layer(&mut self, new_top: &Path) -> Result<(), LayerError> {
        let layer = Layer::create(new_top, self.size)?;
        self.layers.push(layer);
        self.read_only = false;
        Ok(())
    }

    /// Number of blocks the top layer holds.
    pub fn top_block_count(&self) -> u64 {
        self.layers.last().map_or(0, |l| {
            l.index.iter().map(|w| u64::from(w.count_ones())).sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("layered-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    #[test]
    fn writes_land_in_top_layer_and_base_is_untouched() {
        let d = scratch("top");
        let base: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.join("base"), &base).expect("base");
        let layers = vec![d.join("l1")];
        let mut disk = LayeredDisk::open(&d.join("base"), &layers, false).expect("open");
        assert_eq!(disk.size(), 64 * 1024);
        // Unaligned write across a block boundary copies both blocks up.
        disk.write_at(4000, &[0xaa; 200]).expect("write");
        disk.flush().expect("flush");
        let mut got = vec![0u8; 8192];
        disk.read_at(0, &mut got).expect("read");
        let mut want = base[..8192].to_vec();
        want[4000..4200].fill(0xaa);
        assert_eq!(got, want);
        assert_eq!(disk.top_block_count(), 2);
        assert_eq!(std::fs::read(d.join("base")).expect("base"), base);
        drop(disk);

        // Reopen: the index persisted; then seal and stack a new layer.
        let mut disk = LayeredDisk::open(&d.join("base"), &layers, false).expect("reopen");
        disk.read_at(0, &mut got).expect("read");
        assert_eq!(got, want);
        disk.seal_top_and_push(&d.join("l2")).expect("seal");
        disk.write_at(0, &[0x55; 512]).expect("write l2");
        assert_eq!(disk.top_block_count(), 1);
        let mut first = [0u8; 512];
        disk.read_at(0, &mut first).expect("read");
        assert_eq!(first, [0x55; 512]);
        drop(disk);
        // The sealed layer cannot be the writable top again.
        assert!(LayeredDisk::open(&d.join("base"), &layers, false).is_err());
        // The full chain read-only sees both layers.
        let chain = vec![d.join("l1"), d.join("l2")];
        let ro = LayeredDisk::open(&d.join("base"), &chain, true).expect("ro");
        ro.read_at(0, &mut got).expect("read");
        assert_eq!(&got[..512], &[0x55; 512]);
        assert_eq!(&got[4000..4200], &[0xaa; 200]);
        assert!(matches!(
            LayeredDisk::open(&d.join("base"), &chain, true)
                .expect("ro")
                .write_at(0, &[1]),
            Err(LayerError::ReadOnly)
        ));
        assert!(matches!(
            ro.read_at(64 * 1024 - 1, &mut [0u8; 2]),
            Err(LayerError::OutOfRange { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn random_writes_across_sealed_layers_match_a_flat_model() {
        let d = scratch("model");
        let size = 256 * 1024;
        // The base ends with a partial sector, which the disk leaves out.
        let base: Vec<u8> = (0..size + 100).map(|i| (i % 253) as u8).collect();
        std::fs::write(d.join("base"), &base).expect("base");
        let mut model = base[..size].to_vec();
        let mut layers = vec![d.join("l0")];
        let mut disk = LayeredDisk::open(&d.join("base"), &layers, false).expect("open");
        assert_eq!(disk.size(), size as u64);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..300u64 {
            if round % 60 == 59 {
                let top = d.join(format!("l{}", layers.len()));
                disk.seal_top_and_push(&top).expect("seal");
                layers.push(top);
            }
            let off = next(size as u64 - 1) as usize;
            let len = (next(20_000) as usize + 1).min(size - off);
            let fill = (round % 251) as u8;
            disk.write_at(off as u64, &vec![fill; len]).expect("write");
            model[off..off + len].fill(fill);
            let roff = next(size as u64 - 1) as usize;
            let rlen = (next(40_000) as usize + 1).min(size - roff);
            let mut got = vec![0u8; rlen];
            disk.read_at(roff as u64, &mut got).expect("read");
            assert!(got == model[roff..roff + rlen], "round {round}");
        }
        drop(disk);
        let ro = LayeredDisk::open(&d.join("base"), &layers, true).expect("reopen");
        let mut all = vec![0u8; size];
        ro.read_at(0, &mut all).expect("read all");
        assert!(all == model, "reopened chain differs");
        // The zero-copy path into guest memory agrees, at odd offsets too.
        use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])
            .expect("guest memory");
        for (off, len) in [(0usize, size), (513, 70_001), (size - 4097, 4097)] {
            let slice = mem.get_slice(GuestAddress(4096), len).expect("slice");
            ro.read_to_guest(off as u64, &slice).expect("read to guest");
            let mut back = vec![0u8; len];
            mem.read_slice(&mut back, GuestAddress(4096))
                .expect("read back");
            assert!(
                back == model[off..off + len],
                "read_to_guest at {off}+{len}"
            );
        }
        assert_eq!(std::fs::read(d.join("base")).expect("base"), base);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn foreign_files_are_rejected_as_layers() {
        let d = scratch("bad");
        std::fs::write(d.join("base"), vec![0u8; 8192]).expect("base");
        std::fs::write(d.join("junk"), vec![7u8; 8192]).expect("junk");
        let r = LayeredDisk::open(&d.join("base"), &[d.join("junk")], false);
        assert!(matches!(r, Err(LayerError::Invalid { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }
}
