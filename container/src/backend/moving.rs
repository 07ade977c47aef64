//! Moving a sandbox paused to disk to another host: [`ContainerBackend::export`]
//! writes it as one stream, [`ContainerBackend::import`] makes it again from
//! that stream on another backend, paused to disk, under the same id.
//!
//! The stream: `FRGMOVE1`, then sections, each a tag byte and chunks (a
//! big-endian `u32` length, then that many bytes) ended by an empty chunk:
//! - `R`: the sandbox's record (JSON), at most [`MAX_RECORD_BYTES`];
//! - `L`: `btrfs send` of its top layer (its disk and run directory);
//! - `I`: `btrfs send` of its images subvolume, when the pause left a CRIU
//!   checkpoint there (its memory and processes);
//! - `X`: the exporter failed midway, and why (the importer stops there);
//! - `E`: the end, followed by the SHA-256 of every byte before it.
//!
//! The importer bounds each section (the record's size; a layer by the
//! sandbox's disk quota, the images by its checkpoint cap, each with room
//! for the send stream's own overhead; the limits are the caller's, never
//! the stream's), receives the btrfs streams chrooted
//! into staging directories (`layers`), and writes the record last, only
//! once the checksum matched: until then a restart's reconcile and garbage
//! collection remove what a half-done import left. The record's host-bound
//! parts are this host's: its image root (the same image, checked by its
//! directory's name, which is the image's hash), binds, limits (the
//! caller's) and an id range of this host's (the checkpoint's own range is
//! kept for the restore to map from, as a saved copy's is).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{BackendError, ContainerBackend, SandboxInfo};
use crate::sendstream::Checked;
use crate::spec::{Bind, Limits};
use crate::state::{SandboxRecord, Status};

const MAGIC: &[u8; 8] = b"FRGMOVE1";
const RECORD: u8 = b'R';
const LAYER: u8 = b'L';
const IMAGES: u8 = b'I';
const FAILED: u8 = b'X';
const END: u8 = b'E';

/// The largest record (and failure text) an import reads.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Room beyond a section's data for the send stream's own framing.
const SEND_OVERHEAD_BYTES: u64 = 64 << 20;
/// The longest hostname taken from a stream (Linux's limit).
const MAX_HOSTNAME: usize = 64;
/// Bytes per chunk written.
const CHUNK_BYTES: usize = 256 << 10;

/// What the importing host makes of a record from another: nothing
/// host-bound or resource-bound in it is taken from the stream.
#[derive(Debug, Clone)]
pub struct Landing {
    /// This host's root of the same image.
    pub image_root: PathBuf,
    /// This host's binds (its agent binary, shared directories).
    pub binds: Vec<Bind>,
    /// The sandbox's limits, as its caller (the control plane) knows
    /// them, not as the stream says; its disk quota is the stream's
    /// within this one's.
    pub limits: Limits,
}

fn failed(what: impl Into<String>) -> BackendError {
    BackendError::Move(what.into())
}

/// Writes sections, hashing every byte.
struct Framer<'a> {
    out: &'a mut dyn Write,
    hash: Sha256,
}

impl Framer<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    /// Section `tag` with everything `from` reads; returns its bytes.
    fn section(&mut self, tag: u8, from: &mut dyn Read) -> std::io::Result<u64> {
        self.put(&[tag])?;
        let mut buffer = vec![0; CHUNK_BYTES];
        let mut total = 0;
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            self.put(&(n as u32).to_be_bytes())?;
            self.put(&buffer[..n])?;
            total += n as u64;
        }
        self.put(&0u32.to_be_bytes())?;
        Ok(total)
    }

    fn end(mut self) -> std::io::Result<()> {
        self.put(&[END])?;
        let digest = self.hash.finalize();
        self.out.write_all(&digest)?;
        self.out.flush()
    }
}

/// Reads sections, hashing every byte.
struct Unframer<'a> {
    input: &'a mut dyn Read,
    hash: Sha256,
}

impl<'a> Unframer<'a> {
    fn take(&mut self, bytes: &mut [u8]) -> Result<(), BackendError> {
        self.input
            .read_exact(bytes)
            .map_err(|err| failed(format!("the stream ended early or broke: {err}")))?;
        self.hash.update(&*bytes);
        Ok(())
    }

    fn tag(&mut self) -> Result<u8, BackendError> {
        let mut tag = [0];
        self.take(&mut tag)?;
        Ok(tag[0])
    }

    /// The current section as a reader of at most `limit` bytes: past it,
    /// or on a malformed chunk, reads fail.
    fn section(&mut self, limit: u64, what: &'static str) -> Section<'_, 'a> {
        Section {
            from: self,
            left_in_chunk: 0,
            total: 0,
            limit,
            what,
            done: false,
        }
    }

    /// A whole section of at most `limit` bytes.
    fn section_bytes(&mut self, limit: u64, what: &'static str) -> Result<Vec<u8>, BackendError> {
        let mut bytes = Vec::new();
        self.section(limit, what)
            .read_to_end(&mut bytes)
            .map_err(|err| failed(err.to_string()))?;
        Ok(bytes)
    }

    /// Checks the digest after `E` against every byte read before it.
    fn verify(self) -> Result<(), BackendError> {
        let computed = self.hash.finalize();
        let mut sent = [0u8; 32];
        self.input
            .read_exact(&mut sent)
            .map_err(|err| failed(format!("the stream ended before its checksum: {err}")))?;
        if computed[..] != sent[..] {
            return Err(failed(
                "the stream's SHA-256 does not match what arrived: it was damaged on the way",
            ));
        }
        // Its end is the stream's: a sender still sending (a relay that
        // has not checked what it forwards yet) is not done.
        let mut more = [0u8; 1];
        match self.input.read(&mut more) {
            Ok(0) => Ok(()),
            Ok(_) => Err(failed("the stream goes on after its checksum: refused")),
            Err(err) => Err(failed(format!(
                "the stream broke after its checksum: {err}"
            ))),
        }
    }
}

/// One section being read ([`Unframer::section`]).
struct Section<'u, 'a> {
    from: &'u mut Unframer<'a>,
    left_in_chunk: u32,
    total: u64,
    limit: u64,
    what: &'static str,
    done: bool,
}

impl Read for Section<'_, '_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let broken =
            |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
        if self.done || buffer.is_empty() {
            return Ok(0);
        }
        if self.left_in_chunk == 0 {
            let mut length = [0u8; 4];
            self.from
                .take(&mut length)
                .map_err(|err| broken(err.to_string()))?;
            self.left_in_chunk = u32::from_be_bytes(length);
            if self.left_in_chunk == 0 {
                self.done = true;
                return Ok(0);
            }
            self.total += u64::from(self.left_in_chunk);
            if self.total > self.limit {
                return Err(broken(format!(
                    "the {} is larger than the {} MiB it may be",
                    self.what,
                    self.limit >> 20
                )));
            }
        }
        let n = buffer.len().min(self.left_in_chunk as usize);
        self.from
            .take(&mut buffer[..n])
            .map_err(|err| broken(err.to_string()))?;
        self.left_in_chunk -= n as u32;
        Ok(n)
    }
}

impl ContainerBackend {
    /// Checks that sandbox `id` can be exported: paused to disk, on one
    /// layer of its own, writing to nothing of this host's.
    pub fn check_export(&self, id: &str) -> Result<(), BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.exportable(id).map(drop)
    }

    /// [`Self::check_export`] with the operation lock held.
    fn exportable(&self, id: &str) -> Result<SandboxRecord, BackendError> {
        let record = self.refresh(id)?;
        if record.status != Status::PausedToDisk {
            return Err(BackendError::WrongState {
                id: id.to_owned(),
                status: record.status,
                needed: "paused to disk",
            });
        }
        if !record.lower_layers.is_empty() || record.top_layer != record.id {
            return Err(failed(format!(
                "sandbox {id} stands on layers of other sandboxes and cannot move alone"
            )));
        }
        if let Some(bind) = record.binds.iter().find(|bind| !bind.read_only) {
            return Err(failed(format!(
                "sandbox {id} writes to this host's {}, which stays here",
                bind.source.display()
            )));
        }
        Ok(record)
    }

    /// Writes sandbox `id` (paused to disk) to `out` as the module docs
    /// describe; the sandbox stays as it is. A failure midway is written
    /// into the stream (`X`) when the stream still takes it.
    pub fn export(&self, id: &str, out: &mut dyn Write) -> Result<(), BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(MAGIC)
            .map_err(Self::io(Path::new("the stream")))?;
        let mut framer = Framer {
            out,
            hash: Sha256::new(),
        };
        match self.write_sections(id, &mut framer) {
            Ok(()) => framer.end().map_err(Self::io(Path::new("the stream"))),
            Err(err) => {
                let text = err.to_string();
                let _ = framer.section(FAILED, &mut text.as_bytes());
                Err(err)
            }
        }
    }

    fn write_sections(&self, id: &str, framer: &mut Framer<'_>) -> Result<(), BackendError> {
        let record = self.exportable(id)?;
        let stream = Path::new("the stream");
        let json = serde_json::to_vec(&record).map_err(|err| failed(err.to_string()))?;
        framer
            .section(RECORD, &mut json.as_slice())
            .map_err(Self::io(stream))?;
        let layer = self.layers.layer(id).dir;
        let mut sending = self.layers.send(&layer)?;
        framer
            .section(LAYER, sending.stream())
            .map_err(Self::io(stream))?;
        sending.finish()?;
        // The images subvolume matters only for the checkpoint in it.
        let images = self.layers.images(id);
        if record.checkpoint && images.exists() {
            let mut sending = self.layers.send(&images)?;
            framer
                .section(IMAGES, sending.stream())
                .map_err(Self::io(stream))?;
            sending.finish()?;
        }
        Ok(())
    }

    /// Makes sandbox `id` from `input` (what [`Self::export`] wrote on
    /// another host), paused to disk, landing on this host as `landing`
    /// says. Refused when this host has a sandbox `id` already; on any
    /// failure nothing of it is left.
    pub fn import(
        &self,
        id: &str,
        input: &mut dyn Read,
        landing: Landing,
    ) -> Result<SandboxInfo, BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.sandbox_dir(id).exists()
            || self.layers.layer(id).dir.exists()
            || self.layers.images(id).exists()
        {
            return Err(failed(format!("this host already has a sandbox {id}")));
        }
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|err| failed(format!("the stream is empty or broken: {err}")))?;
        if &magic != MAGIC {
            return Err(failed("the stream is not a moved sandbox"));
        }
        let mut from = Unframer {
            input,
            hash: Sha256::new(),
        };
        let result = self.land(id, &mut from, landing).and_then(|record| {
            from.verify()?;
            record.save(&self.sandbox_dir(id))?;
            Ok(self.info(&record))
        });
        if result.is_err() {
            self.discard(id);
        }
        result
    }

    /// Reads the sections and makes the sandbox's directory, layer and
    /// images; returns the record to save once the checksum matched.
    fn land(
        &self,
        id: &str,
        from: &mut Unframer<'_>,
        landing: Landing,
    ) -> Result<SandboxRecord, BackendError> {
        let mut record: SandboxRecord = match from.tag()? {
            RECORD => {
                let json = from.section_bytes(MAX_RECORD_BYTES, "record")?;
                serde_json::from_slice(&json)
                    .map_err(|err| failed(format!("the record is malformed: {err}")))?
            }
            tag => return Err(unexpected(from, tag)),
        };
        if record.id != id || record.top_layer != id || !record.lower_layers.is_empty() {
            return Err(failed(format!(
                "the stream holds sandbox {}, not {id} on a layer of its own",
                record.id
            )));
        }
        if record.status != Status::PausedToDisk {
            return Err(failed(format!(
                "the stream's sandbox is {:?}, not paused to disk",
                record.status
            )));
        }
        let image_of = |root: &Path| {
            root.parent()
                .and_then(Path::file_name)
                .map(|name| name.to_string_lossy().into_owned())
        };
        if image_of(&record.image_root) != image_of(&landing.image_root) {
            return Err(failed(format!(
                "the sandbox was made from image {}, and this host runs {}",
                record.image_root.display(),
                landing.image_root.display()
            )));
        }
        // The disk quota the sandbox had, within the caller's bound.
        let disk_mib = match record.limits.disk_mib {
            0 => landing.limits.disk_mib,
            had => had.min(landing.limits.disk_mib),
        };
        record.limits = Limits {
            disk_mib,
            ..landing.limits
        };
        self.prepare_dir(id)?;
        let disk = record.limits.disk_mib.saturating_mul(1 << 20);
        match from.tag()? {
            LAYER => {
                let section = from.section(disk + SEND_OVERHEAD_BYTES, "disk layer");
                let layer = self.layers.layer(id);
                self.layers
                    .receive(&mut Checked::new(section), &layer.dir)?;
                // Its layout is the host's to rely on: real directories,
                // never links the stream planted, and a fresh work dir.
                for dir in [&layer.upper, &layer.work, &layer.run] {
                    real_dir(dir)?;
                }
                std::fs::remove_dir_all(&layer.work).map_err(Self::io(&layer.work))?;
                std::fs::create_dir(&layer.work).map_err(Self::io(&layer.work))?;
            }
            tag => return Err(unexpected(from, tag)),
        }
        match from.tag()? {
            IMAGES => {
                let cap = Self::checkpoint_cap(&record);
                let section = from.section(cap + SEND_OVERHEAD_BYTES, "checkpoint");
                let images = self.layers.images(id);
                self.layers.receive(&mut Checked::new(section), &images)?;
                real_dir(&images.join("checkpoint"))?;
                self.layers.ensure_images(id, cap)?;
                match from.tag()? {
                    END => {}
                    tag => return Err(unexpected(from, tag)),
                }
            }
            END => {
                // Without images there is no checkpoint to restore.
                record.checkpoint = false;
            }
            tag => return Err(unexpected(from, tag)),
        }
        if record.hostname.len() > MAX_HOSTNAME || record.hostname.contains('/') {
            record.hostname = id.to_owned();
        }
        record.checkpoint_error = None;
        record.restore_only = record.checkpoint;
        record.image_root = landing.image_root;
        record.binds = landing.binds;
        record.pid1 = None;
        record.supervisor = None;
        // The checkpoint's processes keep the range they were dumped with
        // (the restore maps them onto this host's); the sandbox takes a
        // range of this host's.
        record.checkpoint_ids = record.checkpoint_ids.or(record.ids.take());
        record.ids = Some(self.take_ids(id)?);
        Ok(record)
    }
}

/// Refuses `path` unless it is a directory itself (not a link to one).
fn real_dir(path: &Path) -> Result<(), BackendError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => Ok(()),
        _ => Err(failed(format!(
            "the stream's {} is not a directory of its own",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ))),
    }
}

/// The error for section `tag` where another was due (the exporter's
/// failure, when it says so).
fn unexpected(from: &mut Unframer<'_>, tag: u8) -> BackendError {
    if tag == FAILED {
        let text = from
            .section_bytes(MAX_RECORD_BYTES, "failure")
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        return failed(format!("the exporting host failed: {text}"));
    }
    failed(format!("the stream has a section {tag:#04x} out of place"))
}
