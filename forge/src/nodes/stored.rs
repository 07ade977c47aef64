//! The snapshot store: where the control plane keeps a copy of each
//! sandbox a node paused to disk (`forge serve --snapshot-store
//! s3://BUCKET/PREFIX`), so that the sandbox resumes on another node when
//! its own dies.
//!
//! - **What is kept.** Once a pause to disk returns, the control plane
//!   reads the node's export of the sandbox (the same checksummed stream a
//!   move carries between nodes: record, disk layer and, where memory was
//!   kept, its checkpoint) and uploads it as one object,
//!   `PREFIX/<sandbox>/<token>.frgmove`, in parts. The pause itself does
//!   not wait for it.
//! - **Which copy counts.** `stored_snapshots` names each sandbox's object
//!   once its upload is done, and only for the pause it was made of: any
//!   change of the VM's state out of `paused_to_disk` deletes the record,
//!   a resume, destroy or move removes the object too, and an upload that
//!   finishes after that (or after a new pause) records nothing and
//!   removes what it wrote. A resume on the sandbox's own node claims the
//!   record while it runs, so that no server brings the copy up elsewhere
//!   meanwhile.
//! - **Who reads it.** A resume (or a move, or a fork) of a sandbox whose
//!   node is lost imports the object on the up node of the same backend
//!   with the most memory free; while its node is up, the node sends it
//!   instead. The node checks the stream as it checks a move's (its
//!   checksum, every section bounded by the sandbox's own sizes, nothing
//!   after its end).
//! - **Trust.** The record keeps the object's size and SHA-256 as
//!   uploaded. A copy read back that differs (changed in the bucket, cut
//!   short, longer) is refused before the node receives its last bytes,
//!   and a landing counts only once the copy was read to its checked end.
//! - **Bounds.** At most [`UPLOADS_AT_ONCE`] uploads per control plane;
//!   each object at most twice the sandbox's memory and the largest disk;
//!   an export silent for [`EXPORT_SILENCE`] fails its upload.
//! - **Leftovers.** Objects that are the forge's by name
//!   (`<sandbox>/<32 hex>.frgmove` under the prefix) and that no record
//!   or upload in flight names, older than [`ORPHAN_GRACE`], are removed
//!   with the control plane's stray collection, every [`ORPHANS_EVERY`]. Multipart uploads a
//!   killed process left behind are the bucket's lifecycle rule's.
//!
//! Credentials and the endpoint come from the usual AWS variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` for an S3-compatible service, `AWS_ALLOW_HTTP=true`
//! for one without TLS).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sandbox::{Carrier, Error};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::store::StoredSnapshot;

/// How old an object no record names must be before it is removed: far
/// longer than the moment between an upload's last part and its record.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// How often the store is listed for orphans: nothing younger than
/// [`ORPHAN_GRACE`] is one, so a pass every time strays are looked for
/// would list the whole prefix for nothing.
const ORPHANS_EVERY: Duration = Duration::from_secs(900);

/// Parts uploaded at once, per upload.
const PARTS_IN_FLIGHT: usize = 4;

/// Uploads at once, per control plane; more wait their turn (each holds
/// up to `PARTS_IN_FLIGHT + 1` parts in memory).
const UPLOADS_AT_ONCE: usize = 4;

/// The smallest part S3 takes (but the last).
const MIN_PART: u64 = 5 << 20;

/// Parts an upload may have: S3 takes 10,000.
const MAX_PARTS: u64 = 9_000;

/// How long the node's export may send nothing before the upload fails.
pub const EXPORT_SILENCE: Duration = Duration::from_secs(60);

/// An S3 (or S3-compatible) bucket and a prefix in it.
pub struct SnapshotStore {
    objects: Arc<AmazonS3>,
    prefix: Path,
    url: String,
    uploads: tokio::sync::Semaphore,
    /// When the last pass for orphans began ([`ORPHANS_EVERY`]).
    orphans_looked: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("url", &self.url)
            .finish()
    }
}

fn store_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("the snapshot store failed to {what}: {error}"))
}

impl SnapshotStore {
    /// The store at `url` (`s3://BUCKET` or `s3://BUCKET/PREFIX`), with
    /// credentials and endpoint from the environment.
    pub fn open(url: &str) -> Result<Self, String> {
        if url.contains('@') {
            // Not echoed: it may hold a secret.
            return Err(
                "the snapshot store's URL must not hold credentials: give them in \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .into(),
            );
        }
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("the snapshot store {url:?} is not s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(format!(
                "the snapshot store's bucket {bucket:?} is not an S3 bucket name"
            ));
        }
        // Plain characters only: a key is the same whichever way it is
        // spelled, so the orphan collection lists what uploads wrote.
        let plain = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !plain {
            return Err(format!(
                "the snapshot store's prefix {prefix:?} may hold only letters, digits, '.', '_', '-' and '/'"
            ));
        }
        let prefix = Path::parse(prefix.trim_end_matches('/'))
            .map_err(|error| format!("the snapshot store's prefix {prefix:?}: {error}"))?;
        let objects = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|error| format!("the snapshot store {url}: {error}"))?;
        Ok(Self {
            objects: Arc::new(objects),
            prefix,
            url: url.to_owned(),
            uploads: tokio::sync::Semaphore::new(UPLOADS_AT_ONCE),
            orphans_looked: std::sync::Mutex::default(),
        })
    }

    /// Writes, reads back and removes a small object, so that a store the
    /// forge cannot use stops it at start rather than at the first pause.
    pub async fn check(&self) -> Result<(), String> {
        // A name of its own: control planes starting at once on one
        // prefix must not remove each other's probe.
        let probe = self
            .prefix
            .clone()
            .join(format!(".forge-check-{}", hex::encode(rand::random::<[u8; 8]>())).as_str());
        let wrote = b"forge snapshot store check".to_vec();
        let fail = |what: &str, error: object_store::Error| {
            format!("the snapshot store {} failed to {what}: {error}", self.url)
        };
        self.objects
            .put(&probe, wrote.clone().into())
            .await
            .map_err(|e| fail("write", e))?;
        let read = self
            .objects
            .get(&probe)
            .await
            .map_err(|e| fail("read", e))?
            .bytes()
            .await
            .map_err(|e| fail("read", e))?;
        if read.as_ref() != wrote.as_slice() {
            return Err(format!(
                "the snapshot store {} gave back other bytes than it was given",
                self.url
            ));
        }
        self.objects
            .delete(&probe)
            .await
            .map_err(|e| fail("remove", e))
    }

    /// The object for sandbox `id`'s upload under `token`.
    pub fn key(&self, id: &str, token: &str) -> String {
        self.prefix
            .clone()
            .join(id)
            .join(format!("{token}.frgmove").as_str())
            .to_string()
    }

    /// Waits for a turn to upload (at most [`UPLOADS_AT_ONCE`] at once);
    /// `None` when `stop` is cancelled first.
    pub async fn turn(&self, stop: &CancellationToken) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::select! {
            permit = self.uploads.acquire() => permit.ok(),
            () = stop.cancelled() => None,
        }
    }

    /// Whether `key` is one [`SnapshotStore::key`] makes: under the
    /// prefix, a sandbox id, then 32 hex digits and `.frgmove`. Nothing
    /// else under the prefix is the forge's to remove.
    fn is_upload(&self, key: &str) -> bool {
        let prefix = self.prefix.to_string();
        let rest = match prefix.as_str() {
            "" => key,
            prefix => match key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
                Some(rest) => rest,
                None => return false,
            },
        };
        let Some((id, name)) = rest.split_once('/') else {
            return false;
        };
        let token = name.strip_suffix(".frgmove").unwrap_or("");
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && token.len() == 32
            && token.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// Uploads `stream` as object `key`, at most `limit` bytes of it;
    /// returns what it stored. Fails when the stream sends nothing for
    /// [`EXPORT_SILENCE`]; stops (and abandons the upload, leaving
    /// nothing) when `stop` is cancelled.
    pub async fn upload(
        &self,
        key: &str,
        mut stream: Carrier<'static>,
        limit: u64,
        stop: &CancellationToken,
    ) -> Result<StoredSnapshot, Error> {
        let location = Path::from(key);
        let upload = self
            .objects
            .put_multipart(&location)
            .await
            .map_err(|e| store_error("start an upload", e))?;
        // Parts large enough that the largest object allowed fits S3's
        // count of them.
        let part = MIN_PART.max(limit.div_ceil(MAX_PARTS));
        let mut writer = WriteMultipart::new_with_chunk_size(
            upload,
            usize::try_from(part).unwrap_or(usize::MAX),
        );
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut buffer = vec![0u8; 1 << 20];
        let outcome: Result<(), Error> = async {
            loop {
                let read = tokio::select! {
                    read = tokio::time::timeout(EXPORT_SILENCE, stream.read(&mut buffer)) => match read {
                        Ok(read) => read.map_err(|e| Error::Invalid(format!(
                            "the node's export broke off after {total} bytes: {e}"
                        )))?,
                        Err(_) => return Err(Error::Invalid(format!(
                            "the node's export sent nothing for {EXPORT_SILENCE:?} after {total} bytes"
                        ))),
                    },
                    () = stop.cancelled() => {
                        return Err(Error::Invalid("the upload was stopped".into()));
                    }
                };
                if read == 0 {
                    return Ok(());
                }
                total += read as u64;
                if total > limit {
                    return Err(Error::Invalid(format!(
                        "the node's export is larger than the {limit} bytes a snapshot of \
                         this sandbox may have"
                    )));
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| store_error("upload a part", e))?;
                hasher.update(&buffer[..read]);
                writer.write(&buffer[..read]);
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| store_error("finish an upload", e))?;
                Ok(StoredSnapshot {
                    object_key: key.to_owned(),
                    bytes: i64::try_from(total).unwrap_or(i64::MAX),
                    sha256: hex::encode(hasher.finalize()),
                })
            }
            Err(error) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "an abandoned upload could not be aborted");
                }
                Err(error)
            }
        }
    }

    /// The object `stored` names, as a stream that fails (before giving
    /// out its last bytes) unless it is what was uploaded; the flag is set
    /// once it was read to its end and found so.
    pub async fn download(
        &self,
        stored: &StoredSnapshot,
    ) -> Result<(Carrier<'static>, Arc<AtomicBool>), Error> {
        let got = self
            .objects
            .get(&Path::from(stored.object_key.as_str()))
            .await
            .map_err(|e| store_error("read a snapshot", e))?;
        let bytes = got
            .into_stream()
            .map(|part| part.map_err(std::io::Error::other));
        let verified = Verified::new(
            Box::pin(tokio_util::io::StreamReader::new(bytes)),
            stored.clone(),
        );
        let checked = verified.checked.clone();
        Ok((Box::pin(verified), checked))
    }

    /// Removes object `key`; a failure is logged (the orphan collection
    /// tries again).
    pub async fn remove(&self, key: &str) {
        if let Err(error) = self.objects.delete(&Path::from(key)).await {
            tracing::warn!(key, %error, "a snapshot object could not be removed");
        }
    }

    /// Whether a pass for orphans is due; if so, it counts as begun.
    pub fn orphans_due(&self) -> bool {
        let mut looked = self
            .orphans_looked
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if looked.is_some_and(|at| at.elapsed() < ORPHANS_EVERY) {
            return false;
        }
        *looked = Some(std::time::Instant::now());
        true
    }

    /// Removes the objects under the prefix that `named` does not name and
    /// that are older than [`ORPHAN_GRACE`]; returns a line per object.
    pub async fn collect_orphans(&self, named: &HashSet<String>) -> Result<Vec<String>, Error> {
        let cutoff = orphan_cutoff();
        let mut listed = self.objects.list(Some(&self.prefix));
        let mut removed = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| store_error("list its objects", e))?;
            let key = meta.location.to_string();
            if named.contains(&key)
                || !self.is_upload(&key)
                || meta.last_modified.timestamp() > cutoff
            {
                continue;
            }
            self.remove(&key).await;
            removed.push(format!("snapshot object {key} that no sandbox records"));
        }
        Ok(removed)
    }
}

/// A stream read back from the store, checked against its record: it
/// holds back its last bytes until the object has ended with the size and
/// SHA-256 recorded, and fails instead of giving them out if not.
struct Verified {
    inner: Carrier<'static>,
    expected: StoredSnapshot,
    hasher: Sha256,
    read: u64,
    /// Bytes read from `inner` and not given out yet, from `at`.
    held: Vec<u8>,
    at: usize,
    /// `inner` ended, and was the object recorded.
    checked: Arc<AtomicBool>,
}

/// Bytes held back until the object's end is checked: more than an
/// export's end (its tag and 32-byte SHA-256), without which no node lands
/// it.
const HELD_BACK: usize = 64;

impl Verified {
    fn new(inner: Carrier<'static>, expected: StoredSnapshot) -> Self {
        Self {
            inner,
            expected,
            hasher: Sha256::new(),
            read: 0,
            held: Vec::new(),
            at: 0,
            checked: Arc::default(),
        }
    }

    fn mismatch(&self, what: String) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the snapshot store's object {} is not the one uploaded: {what}; refused",
                self.expected.object_key
            ),
        )
    }
}

impl AsyncRead for Verified {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            let checked = this.checked.load(Ordering::Acquire);
            let free = this.held.len() - this.at;
            let giveable = if checked {
                free
            } else {
                free.saturating_sub(HELD_BACK)
            };
            if giveable > 0 {
                let n = giveable.min(buf.remaining());
                buf.put_slice(&this.held[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            if checked {
                return Poll::Ready(Ok(()));
            }
            // Room to read more: what was given out goes.
            this.held.drain(..this.at);
            this.at = 0;
            let mut chunk = [0u8; 64 * 1024];
            let mut into = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut into) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            let filled = into.filled();
            if filled.is_empty() {
                let sha256 = hex::encode(std::mem::take(&mut this.hasher).finalize());
                let bytes = u64::try_from(this.expected.bytes).unwrap_or(0);
                if this.read != bytes {
                    let what = format!("{} bytes, not {bytes}", this.read);
                    return Poll::Ready(Err(this.mismatch(what)));
                }
                if sha256 != this.expected.sha256 {
                    let what = format!("its SHA-256 is {sha256}, not {}", this.expected.sha256);
                    return Poll::Ready(Err(this.mismatch(what)));
                }
                this.checked.store(true, Ordering::Release);
                continue;
            }
            this.read += filled.len() as u64;
            if this.read > u64::try_from(this.expected.bytes).unwrap_or(0) {
                let what = format!(
                    "it is longer than the {} bytes uploaded",
                    this.expected.bytes
                );
                return Poll::Ready(Err(this.mismatch(what)));
            }
            this.hasher.update(filled);
            this.held.extend_from_slice(filled);
        }
    }
}

/// The unix time before which an unnamed object is an orphan.
fn orphan_cutoff() -> i64 {
    let grace = i64::try_from(ORPHAN_GRACE.as_secs()).unwrap_or(i64::MAX);
    crate::store::unix_now().saturating_sub(grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(data: &[u8]) -> StoredSnapshot {
        StoredSnapshot {
            object_key: "p/s1/t.frgmove".into(),
            bytes: data.len() as i64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    /// Reads `served` through the check against `expected`; returns what
    /// came out before the end or the error.
    async fn read_back(served: Vec<u8>, expected: StoredSnapshot) -> (Vec<u8>, Option<String>) {
        let mut reader = Verified::new(Box::pin(std::io::Cursor::new(served)), expected);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(error) => return (out, Some(error.to_string())),
            }
        }
    }

    #[tokio::test]
    async fn the_object_as_uploaded_reads_back_whole() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (out, error) = read_back(data.clone(), recorded(&data)).await;
        assert_eq!(error, None);
        assert_eq!(out, data);
    }

    /// A changed, cut or lengthened object fails, and its last bytes never
    /// come out: a node never holds all of it.
    #[tokio::test]
    async fn a_changed_cut_or_longer_object_fails_before_its_last_bytes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = recorded(&data);

        let mut changed = data.clone();
        changed[150_000] ^= 0xff;
        let (out, error) = read_back(changed, expected.clone()).await;
        let error = error.expect("a changed object fails");
        assert!(error.contains("SHA-256"), "{error}");
        assert!(
            out.len() <= data.len() - HELD_BACK,
            "{} bytes came out",
            out.len()
        );

        let (out, error) = read_back(data[..data.len() - 10].to_vec(), expected.clone()).await;
        assert!(error.expect("a cut object fails").contains("bytes, not"));
        assert!(out.len() < data.len() - HELD_BACK);

        let mut longer = data.clone();
        longer.extend_from_slice(&[0u8; 100_000]);
        let (out, error) = read_back(longer, expected).await;
        assert!(error.expect("a longer object fails").contains("longer"));
        assert!(
            out.len() <= data.len() - HELD_BACK,
            "{} bytes came out",
            out.len()
        );
    }

    #[test]
    fn a_store_url_names_an_s3_bucket() {
        for bad in [
            "http://bucket/x",
            "s3://",
            "s3://UPPER/x",
            "s3://a/x",
            "bucket/x",
            "s3://bucket/a b",
            "s3://bucket/%41",
        ] {
            assert!(SnapshotStore::open(bad).is_err(), "{bad} is refused");
        }
        let secret = SnapshotStore::open("s3://AKIA:hunter2@bucket/x").expect_err("refused");
        assert!(!secret.contains("hunter2"), "not echoed: {secret}");
        let store = SnapshotStore::open("s3://forge-snapshots/some/prefix/").expect("opens");
        assert_eq!(
            store.key("s1", "t1"),
            "some/prefix/s1/t1.frgmove",
            "objects go under the prefix"
        );
        // Only what it writes is the orphan collection's to remove.
        let token = "0123456789abcdef0123456789abcdef";
        assert!(store.is_upload(&store.key("sb-1_x", token)));
        for other in [
            format!("some/prefix/sb1/{token}.tar"),
            "some/prefix/sb1/short.frgmove".to_owned(),
            format!("some/prefixed/sb1/{token}.frgmove"),
            format!("other/sb1/{token}.frgmove"),
            format!("some/prefix/a/b/{token}.frgmove"),
            "some/prefix/.forge-check".to_owned(),
        ] {
            assert!(!store.is_upload(&other), "{other} is not the forge's");
        }
    }
}
