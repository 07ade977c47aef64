//! The layer store: writable top layers of sandboxes as btrfs subvolumes, so
//! a disk fork is a snapshot (milliseconds, shared extents), never a copy,
//! and a disk quota is a qgroup limit on the subvolume.
//!
//! Where layers live: `<data_dir>/layers/`. If the data directory is already
//! on btrfs, that is a plain directory; otherwise the store creates a sparse
//! image `<data_dir>/layers.img` on first use, formats it with
//! `mkfs.btrfs` and loop-mounts it there (`mount -o loop`, which sets
//! autoclear: unmounting frees the loop device). Requires `btrfs-progs`.
//!
//! A layer is a subvolume `<id>/` holding `upper/` and `work/` (overlayfs
//! needs both on one file system) and `run/`, the sandbox's run directory
//! (bound at `/run/sandbox` inside: its agent socket and console log), so
//! what the sandbox writes there counts against the layer's quota and a
//! fork's snapshot carries it along. On disk, files keep the image's own
//! ids: sandboxes see layers through idmapped mounts. A loop-mounted store
//! is mounted `nosuid,nodev`, and `layers/` is mode 0700: a setuid file a
//! sandbox made is root's on disk and must never run on the host. The base image root directory is the
//! bottom lower layer and is never written. A fork snapshots the parent's
//! top subvolume into the child's new top (writable), so layer chains never
//! grow: there is nothing to squash. Layers no sandbox references are
//! removed by [`LayerStore::gc`].
//!
//! CRIU images live here too, in one subvolume per sandbox,
//! `.images-<id>/` ([`LayerStore::images`]), whose qgroup limit is the
//! sandbox's checkpoint cap: a dump that would pass it fails on a full
//! disk, whatever the sandbox put in its memory or open files, instead of
//! filling the host. Dumps, forks' images and the hard-linked copies a
//! restore reads all sit in that one subvolume (hard links cannot cross
//! subvolumes).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::statfs::{BTRFS_SUPER_MAGIC, statfs};

/// Failure of a layer operation.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("Layer file system operation on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Running {tool} failed (is btrfs-progs installed?)")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Tool { tool: String, stderr: String },
    #[error("Layer directory {0} is not on btrfs after mounting")]
    NotBtrfs(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), LayerError> {
    let tool = format!("{program} {}", args.first().copied().unwrap_or_default());
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LayerError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LayerError::Tool {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Only root may enter `dir`.
fn private(dir: &Path) -> Result<(), LayerError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Name prefix of the images subvolumes (never a layer id: ids have none).
const IMAGES_PREFIX: &str = ".images-";

/// Name prefixes of the read-only snapshots a send reads and the staging
/// directories a receive writes (never layer ids, which have no dot).
const SEND_PREFIX: &str = ".send-";
const RECEIVE_PREFIX: &str = ".receive-";

/// A name no other send or receive of this process uses at once.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `btrfs send` under way ([`LayerStore::send`]).
pub struct Sending {
    snapshot: PathBuf,
    child: std::process::Child,
    stdout: std::process::ChildStdout,
}

impl Sending {
    /// The stream.
    pub fn stream(&mut self) -> &mut std::process::ChildStdout {
        &mut self.stdout
    }

    /// Waits for `btrfs send` and says whether it succeeded.
    pub fn finish(mut self) -> Result<(), LayerError> {
        let status = self.child.wait().map_err(|source| LayerError::Spawn {
            tool: "btrfs send".into(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        let mut stderr = String::new();
        if let Some(err) = self.child.stderr.as_mut() {
            use std::io::Read;
            let _ = err.take(4096).read_to_string(&mut stderr);
        }
        Err(LayerError::Tool {
            tool: "btrfs send".into(),
            stderr: stderr.trim().to_owned(),
        })
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = run(
            "btrfs",
            &["subvolume", "delete", &self.snapshot.to_string_lossy()],
        );
    }
}

fn is_btrfs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// The store of layers under one data directory.
#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

/// Paths of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub dir: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The sandbox's run directory (sandbox-writable).
    pub run: PathBuf,
}

impl LayerStore {
    /// Open the store, creating and mounting the btrfs image if needed.
    pub fn open(data_dir: &Path, image_size_gib: u64) -> Result<Self, LayerError> {
        let root = data_dir.join("layers");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        private(&root)?;
        if !is_btrfs(&root) {
            let image = data_dir.join("layers.img");
            if !image.exists() {
                let file = fs::File::create(&image).map_err(io_err(&image))?;
                file.set_len(image_size_gib * 1024 * 1024 * 1024)
                    .map_err(io_err(&image))?;
                drop(file);
                let image_str = image.to_string_lossy();
                run("mkfs.btrfs", &["-q", "-f", &image_str])?;
            }
            let (image_str, root_str) = (image.to_string_lossy(), root.to_string_lossy());
            run("mount", &["-o", "loop,nosuid,nodev", &image_str, &root_str])?;
            if !is_btrfs(&root) {
                return Err(LayerError::NotBtrfs(root));
            }
            private(&root)?;
        }
        let store = Self { root };
        // Quotas: idempotent, and needed for per-layer disk limits.
        run("btrfs", &["quota", "enable", &store.root.to_string_lossy()])?;
        Ok(store)
    }

    /// Where layers live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The paths of layer `id` (whether or not it exists).
    pub fn layer(&self, id: &str) -> Layer {
        let dir = self.root.join(id);
        Layer {
            upper: dir.join("upper"),
            work: dir.join("work"),
            run: dir.join(crate::spec::RUN_DIR),
            dir,
        }
    }

    /// Create an empty layer.
    pub fn create(&self, id: &str) -> Result<Layer, LayerError> {
        let layer = self.layer(id);
        run(
            "btrfs",
            &["subvolume", "create", &layer.dir.to_string_lossy()],
        )?;
        for dir in [&layer.upper, &layer.work, &layer.run] {
            fs::create_dir(dir).map_err(io_err(dir))?;
        }
        Ok(layer)
    }

    /// Writable snapshot of layer `source` as the new layer `id`, with a
    /// fresh overlayfs work directory.
    pub fn snapshot(&self, source: &str, id: &str) -> Result<Layer, LayerError> {
        let from = self.layer(source);
        let layer = self.layer(id);
        run(
            "btrfs",
            &[
                "subvolume",
                "snapshot",
                &from.dir.to_string_lossy(),
                &layer.dir.to_string_lossy(),
            ],
        )?;
        if layer.work.exists() {
            fs::remove_dir_all(&layer.work).map_err(io_err(&layer.work))?;
        }
        fs::create_dir(&layer.work).map_err(io_err(&layer.work))?;
        Ok(layer)
    }

    /// Limit how much the layer may reference (its disk quota).
    pub fn set_quota(&self, id: &str, bytes: u64) -> Result<(), LayerError> {
        let dir = self.layer(id).dir;
        run(
            "btrfs",
            &[
                "qgroup",
                "limit",
                &bytes.to_string(),
                &dir.to_string_lossy(),
            ],
        )
    }

    /// Delete a layer. A just-exited sandbox's mount namespace may hold the
    /// subvolume for a moment, so busy errors are retried briefly. Any
    /// subvolume nested in it goes first (the sandbox cannot make one, but
    /// one would otherwise block the delete for good).
    pub fn delete(&self, id: &str) -> Result<(), LayerError> {
        let dir = self.layer(id).dir;
        if !dir.exists() {
            return Ok(());
        }
        let path = dir.to_string_lossy();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut nested_removed = false;
        loop {
            match run("btrfs", &["subvolume", "delete", &path]) {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(LayerError::Tool { stderr, .. })
                    if !nested_removed && stderr.contains("not empty") =>
                {
                    nested_removed = true;
                    self.delete_nested(&dir)?;
                }
                Err(_) => sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Deletes the subvolumes below `dir`, deepest first, by id (their
    /// paths are the sandbox's doing; ids are the file system's).
    fn delete_nested(&self, dir: &Path) -> Result<(), LayerError> {
        let dir_str = dir.to_string_lossy();
        // No limit, or deleting at the limit fails for want of room.
        let _ = run("btrfs", &["qgroup", "limit", "none", &dir_str]);
        let out = Command::new("btrfs")
            .args(["subvolume", "list", "-o"])
            .arg(dir)
            .output()
            .map_err(|source| LayerError::Spawn {
                tool: "btrfs subvolume list".into(),
                source,
            })?;
        // Lines: "ID <id> gen <gen> top level <parent> path <path>".
        let mut nested: Vec<(usize, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let id = line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
                let depth = line.split_once(" path ")?.1.matches('/').count();
                Some((depth, id.to_string()))
            })
            .collect();
        nested.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
        let root = self.root.to_string_lossy();
        for (_, id) in nested {
            run("btrfs", &["subvolume", "delete", "--subvolid", &id, &root])?;
        }
        Ok(())
    }

    /// Ids of every layer present (images subvolumes are not layers).
    pub fn list(&self) -> Result<Vec<String>, LayerError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|name| !name.starts_with('.'))
            .collect())
    }

    fn entries(&self) -> Result<Vec<String>, LayerError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            if entry.path().is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    /// The images subvolume of sandbox `id` (whether or not it exists).
    pub fn images(&self, id: &str) -> PathBuf {
        self.root.join(format!("{IMAGES_PREFIX}{id}"))
    }

    /// The images subvolume of sandbox `id`, created if missing, limited
    /// to `cap_bytes`.
    pub fn ensure_images(&self, id: &str, cap_bytes: u64) -> Result<PathBuf, LayerError> {
        let dir = self.images(id);
        let dir_str = dir.to_string_lossy();
        if !dir.exists() {
            run("btrfs", &["subvolume", "create", &dir_str])?;
        }
        run(
            "btrfs",
            &["qgroup", "limit", &cap_bytes.to_string(), &dir_str],
        )?;
        Ok(dir)
    }

    /// Deletes the images subvolume of sandbox `id`, if any.
    pub fn delete_images(&self, id: &str) -> Result<(), LayerError> {
        let dir = self.images(id);
        if !dir.exists() {
            return Ok(());
        }
        run("btrfs", &["subvolume", "delete", &dir.to_string_lossy()])
    }

    /// `btrfs send` of subvolume `source` (a layer or an images
    /// subvolume): a read-only snapshot of it is taken beside it and its
    /// stream comes on the returned child's stdout. [`Sending::finish`]
    /// waits for the child and removes the snapshot (dropping does too).
    pub fn send(&self, source: &Path) -> Result<Sending, LayerError> {
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let snapshot = self.root.join(format!("{SEND_PREFIX}{name}-{}", unique()));
        run(
            "btrfs",
            &[
                "subvolume",
                "snapshot",
                "-r",
                &source.to_string_lossy(),
                &snapshot.to_string_lossy(),
            ],
        )?;
        let child = Command::new("btrfs")
            .args(["send", "-q"])
            .arg(&snapshot)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(source) => {
                let _ = run(
                    "btrfs",
                    &["subvolume", "delete", &snapshot.to_string_lossy()],
                );
                return Err(LayerError::Spawn {
                    tool: "btrfs send".into(),
                    source,
                });
            }
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(Sending {
            snapshot,
            child,
            stdout,
        })
    }

    /// Receives one `btrfs send` stream read from `input` as the writable
    /// subvolume `target` (which must not exist). `btrfs receive` runs
    /// chrooted into a staging directory of its own (the stream names
    /// paths of its choosing); what it made there is snapshotted to
    /// `target` and removed. Nothing is left behind on failure. Returns
    /// the bytes read.
    pub fn receive(&self, input: &mut dyn std::io::Read, target: &Path) -> Result<u64, LayerError> {
        let staging = self.root.join(format!("{RECEIVE_PREFIX}{}", unique()));
        fs::create_dir(&staging).map_err(io_err(&staging))?;
        private(&staging)?;
        let received = self.receive_into(input, &staging, target);
        // Whatever the stream made in the staging directory goes.
        if let Ok(entries) = fs::read_dir(&staging) {
            for entry in entries.flatten() {
                let _ = run(
                    "btrfs",
                    &["subvolume", "delete", &entry.path().to_string_lossy()],
                );
            }
        }
        let _ = fs::remove_dir_all(&staging);
        if received.is_err() && target.exists() {
            let _ = run("btrfs", &["subvolume", "delete", &target.to_string_lossy()]);
        }
        received
    }

    fn receive_into(
        &self,
        input: &mut dyn std::io::Read,
        staging: &Path,
        target: &Path,
    ) -> Result<u64, LayerError> {
        use std::io::Write;
        let mut child = Command::new("btrfs")
            .args(["receive", "-q", "--chroot", "-e"])
            .arg(staging)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| LayerError::Spawn {
                tool: "btrfs receive".into(),
                source,
            })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let copied = std::io::copy(input, &mut stdin).and_then(|n| stdin.flush().map(|()| n));
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|source| LayerError::Spawn {
                tool: "btrfs receive".into(),
                source,
            })?;
        let copied = copied.map_err(io_err(staging))?;
        if !out.status.success() {
            return Err(LayerError::Tool {
                tool: "btrfs receive".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let made: Vec<PathBuf> = fs::read_dir(staging)
            .map_err(io_err(staging))?
            .flatten()
            .map(|entry| entry.path())
            .collect();
        let [made] = &made[..] else {
            return Err(LayerError::Tool {
                tool: "btrfs receive".into(),
                stderr: format!("the stream made {} subvolumes, not one", made.len()),
            });
        };
        run(
            "btrfs",
            &[
                "subvolume",
                "snapshot",
                &made.to_string_lossy(),
                &target.to_string_lossy(),
            ],
        )?;
        Ok(copied)
    }

    /// Sandbox ids that have an images subvolume.
    pub fn images_owners(&self) -> Result<Vec<String>, LayerError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|name| name.strip_prefix(IMAGES_PREFIX).map(str::to_owned))
            .collect())
    }

    /// Delete every layer whose id is not in `referenced`; returns their
    /// ids, and the ones that could not be deleted with why (one stuck layer
    /// does not stop the others).
    pub fn gc(&self, referenced: &[String]) -> Result<(Vec<String>, Vec<String>), LayerError> {
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        // Sends and receives a stopped process left half done.
        for name in self.entries()? {
            if !(name.starts_with(SEND_PREFIX) || name.starts_with(RECEIVE_PREFIX)) {
                continue;
            }
            let dir = self.root.join(&name);
            // A send's snapshot is a subvolume; a receive's staging is a
            // plain directory of what the stream made.
            let removed_it = if name.starts_with(SEND_PREFIX) {
                run("btrfs", &["subvolume", "delete", &dir.to_string_lossy()])
            } else {
                for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let _ = run(
                        "btrfs",
                        &["subvolume", "delete", &entry.path().to_string_lossy()],
                    );
                }
                fs::remove_dir_all(&dir).map_err(io_err(&dir))
            };
            match removed_it {
                Ok(()) => removed.push(name),
                Err(err) => failed.push(format!("{name}: {err}")),
            }
        }
        for id in self.list()? {
            if referenced.contains(&id) {
                continue;
            }
            match self.delete(&id) {
                Ok(()) => removed.push(id),
                Err(err) => failed.push(format!("layer {id}: {err}")),
            }
        }
        if !removed.is_empty() {
            // Deleted subvolumes leave empty qgroups behind.
            let _ = run(
                "btrfs",
                &["qgroup", "clear-stale", &self.root.to_string_lossy()],
            );
        }
        Ok((removed, failed))
    }

    /// Unmount the store's loop image (frees the loop device). Only for a
    /// store this module mounted; layers must no longer be in use.
    pub fn unmount(&self) -> Result<(), LayerError> {
        let image = self.root.with_file_name("layers.img");
        if image.exists() && is_btrfs(&self.root) {
            nix::mount::umount2(&self.root, nix::mount::MntFlags::empty()).map_err(|e| {
                LayerError::Io {
                    path: self.root.clone(),
                    source: e.into(),
                }
            })?;
        }
        Ok(())
    }

    /// Bytes the layer references (btrfs qgroup accounting), if known.
    pub fn usage_bytes(&self, id: &str) -> Option<u64> {
        let dir = self.layer(id).dir;
        let out = Command::new("btrfs")
            .args(["qgroup", "show", "-f", "--raw"])
            .arg(&dir)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| l.starts_with("0/"))
            .find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
    }
}
