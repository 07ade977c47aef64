//! CRIU checkpoints of whole sandboxes: PID 1 and its tree, with memory, in
//! an images directory (in the sandbox's images subvolume, see `layers`),
//! for pause to disk and for forks that keep processes and memory.
//!
//! CRIU must be 4.0 or newer and pass `criu check` on this kernel (Debian
//! bookworm's 3.17 does not; `container/scripts/build-criu.sh` builds one).
//! Dump flags: `--network-lock skip` (a sandbox has only loopback, and the
//! lock needs iptables rules), `--empty-ns net` (the network namespace is
//! not saved: loopback is all there is, and the restore brings it up
//! afresh, see `launcher::restore`), `--external mnt[<path>]:<key>` for every
//! mount whose source is on the host (see `launcher::mounts::
//! external_mounts`); restore maps the same keys to the new sandbox's
//! sources (`launcher::restore`). For a fork, the v1 freezer holds the
//! parent still (`--freeze-cgroup`, `--leave-stopped`) while its disk is
//! snapshotted, so memory and disk are from the same instant.
//!
//! A checkpoint records the sandbox's user namespace with its id map. A
//! fork restores it as another sandbox with another id range, so
//! [`images_for`] gives each child a copy of the images made of hard links
//! (the memory images are never copied), with only the user namespace image
//! rewritten to the child's range. Wire layout of that image (CRIU's
//! `userns.proto` in its image framing): `magic: u32le × 2`, then one entry
//! `size: u32le, UsernsEntry` where `UsernsEntry { repeated Extent uid_map
//! = 1; repeated Extent gid_map = 2; }` and `Extent { uint32 first = 1;
//! uint32 lower_first = 2; uint32 count = 3; }` (protobuf, varints).
//!
//! Checkpoints are bounded ([`Budget`]): a dump is not even started when
//! the sandbox's memory plus its tmpfs mounts could pass the per-sandbox
//! cap (its `mem_mib` plus [`TMPFS_SLACK_BYTES`]), when all checkpoints on
//! the host together could pass the host-wide budget, or when it would
//! leave less than [`Budget::reserve_bytes`] free on the file system; a
//! dump that came out larger than the cap anyway is thrown away. Each case
//! falls back to keeping the disk only and says why.
//!
//! CRIU learns the kernel's features at every start (`kerndat`: dozens of
//! probes, `iptables -L` among them, ~40 ms here) unless it finds its cache
//! `/run/criu.kdat`, which it writes only where `/run` is a tmpfs (so that
//! a reboot drops it). Where `/run` is not, [`Criu::probe`] makes the cache
//! once per boot ([`ensure_kdat_cache`]): `criu check` in a private mount
//! namespace with a tmpfs `/run`, the file copied out, and the boot id it
//! belongs to recorded beside it, so a new boot makes it again.
//!
//! Known limits (reported as a fallback to fresh processes, never as a
//! failed operation): a connection from outside the sandbox (an open agent
//! client) cannot be dumped, and a process that runs a program from a host
//! bind mount must keep that mount external.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::launcher::mounts::external_mounts;
use crate::launcher::restore::external_key;
use crate::spec::{IdMap, LaunchSpec};

/// How long CRIU may take to seize a sandbox's tasks for a dump.
const SEIZE_TIMEOUT_SECS: &str = "30";

/// Failure of a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("Running criu failed")]
    Spawn(#[source] std::io::Error),
    #[error("criu dump failed: {reason} (log: {log})")]
    Dump { reason: String, log: PathBuf },
    #[error("Preparing the images directory {path} failed")]
    Images {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The user namespace image {path} is malformed: {reason}")]
    Userns { path: PathBuf, reason: String },
}

impl CheckpointError {
    /// CRIU gave up seizing the tasks within [`SEIZE_TIMEOUT_SECS`] (its
    /// alarm is armed only while it freezes and collects them).
    pub fn seize_timed_out(&self) -> bool {
        matches!(self, Self::Dump { reason, .. } if reason.contains("Timeout reached"))
    }
}

/// What happens to the sandbox's processes after the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDump {
    /// Killed (pause to disk).
    Kill,
    /// Left frozen in the v1 freezer cgroup (fork: the caller snapshots the
    /// disk, then thaws).
    Frozen,
}

/// A working CRIU binary.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
}

impl Criu {
    /// Use `path` if it is CRIU ≥ 4 and `criu check` passes.
    pub fn probe(path: &Path) -> Option<Self> {
        let version = Command::new(path).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&version.stdout);
        let major: u32 = text
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.trim().parse().ok())?;
        if major < 4 {
            return None;
        }
        let check = Command::new(path).arg("check").output().ok()?;
        if !check.status.success() {
            return None;
        }
        ensure_kdat_cache(path, Path::new(KDAT_DIR));
        Some(Self {
            path: path.to_path_buf(),
        })
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Dump the process tree of PID 1 (`pid1` on the host) into `images`,
    /// logging to `log` (outside `images`: a dump that fills its quota must
    /// still be able to say why).
    pub fn dump(
        &self,
        spec: &LaunchSpec,
        pid1: u32,
        images: &Path,
        log: &Path,
        freezer_v1: Option<&Path>,
        after: AfterDump,
    ) -> Result<(), CheckpointError> {
        if images.exists() {
            std::fs::remove_dir_all(images).map_err(|source| CheckpointError::Images {
                path: images.to_path_buf(),
                source,
            })?;
        }
        private_dir(images)?;
        let mut command = Command::new(&self.path);
        command
            .arg("dump")
            .arg("-t")
            .arg(pid1.to_string())
            .arg("-D")
            .arg(images)
            .args(["--network-lock", "skip", "--empty-ns", "net", "-v2", "-o"])
            .arg(log)
            // Seizing every task of a busy sandbox on a loaded host can
            // take longer than CRIU's default 10 s; the dump then fails
            // and a fork or pause keeps the disk only.
            .args(["--timeout", SEIZE_TIMEOUT_SECS]);
        if after == AfterDump::Frozen {
            command.arg("--leave-stopped");
            if let Some(freezer) = freezer_v1 {
                command.arg("--freeze-cgroup").arg(freezer);
            }
        }
        for (guest, _) in external_mounts(spec) {
            command.arg("--external").arg(format!(
                "mnt[{}]:{}",
                guest.display(),
                external_key(&guest)
            ));
        }
        let out = command.output().map_err(CheckpointError::Spawn)?;
        if out.status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let reason = text
            .lines()
            .filter(|l| l.contains("Error ("))
            .find(|l| !l.contains("RLIMIT_NOFILE"))
            .unwrap_or("unknown error")
            .trim()
            .to_owned();
        Err(CheckpointError::Dump {
            reason,
            log: log.to_path_buf(),
        })
    }
}

/// Where CRIU looks for its kerndat cache (`KDAT_RUNDIR`).
const KDAT_DIR: &str = "/run";
const KDAT_FILE: &str = "criu.kdat";
/// Beside the cache: the boot id (and CRIU binary) it was made for.
const KDAT_MARK: &str = "criu.kdat.forge-boot";

/// Makes CRIU's kerndat cache in `dir` (CRIU reads `/run`'s; tests give
/// another) when `dir` is not a tmpfs (where it is, CRIU keeps its own)
/// and the cache there was not made in this boot by this CRIU; best
/// effort: without it CRIU only starts slower.
pub fn ensure_kdat_cache(criu: &Path, dir: &Path) {
    if nix::sys::statfs::statfs(dir)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    {
        return;
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let mark = format!("{} {}\n", boot.trim(), criu.display());
    let (file, mark_path) = (dir.join(KDAT_FILE), dir.join(KDAT_MARK));
    if file.is_file() && std::fs::read_to_string(&mark_path).is_ok_and(|m| m == mark) {
        return;
    }
    // `criu check` writes the cache on a private tmpfs over `/run` (where
    // CRIU always looks); `cat` hands it out. The binary's path is an
    // argument, never shell text.
    let made = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=1m,mode=0700 tmpfs /run && \"$1\" check >/dev/null 2>&1; cat /run/criu.kdat",
        )
        .arg("sh")
        .arg(criu)
        .output();
    let cache = match made {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => out.stdout,
        _ => return,
    };
    let tmp = dir.join(format!("criu.kdat.forge-{}", std::process::id()));
    let written = std::fs::write(&tmp, &cache)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        })
        .and_then(|()| std::fs::rename(&tmp, &file))
        .and_then(|()| std::fs::write(&mark_path, &mark));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// What a dump may take beyond the sandbox's memory: its tmpfs mounts
/// (`/dev/shm`, `/run`) and CRIU's own images of everything else.
pub const TMPFS_SLACK_BYTES: u64 = 128 << 20;

/// Bounds on checkpoint images (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// All images on the host together; `None`: half the file system.
    pub host_bytes: Option<u64>,
    /// Free space a dump must leave on the file system.
    pub reserve_bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            host_bytes: None,
            reserve_bytes: 1 << 30,
        }
    }
}

/// Bytes the files directly in `dir` take on disk.
pub fn images_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

impl Budget {
    /// Why a dump of `expected` bytes may not start, if it may not: `cap`
    /// is the sandbox's own bound, `in_use` what all images on the host
    /// take now, `fs` the file system the images go to.
    pub fn refuse(&self, expected: u64, cap: u64, in_use: u64, fs: &Path) -> Option<String> {
        if expected > cap {
            return Some(format!(
                "the sandbox holds {} MiB, more than its checkpoint cap of {} MiB",
                expected >> 20,
                cap >> 20
            ));
        }
        let stat = nix::sys::statvfs::statvfs(fs).ok()?;
        let block = stat.fragment_size();
        let (total, free) = (stat.blocks() * block, stat.blocks_available() * block);
        let host = self.host_bytes.unwrap_or(total / 2);
        if in_use + expected > host {
            return Some(format!(
                "checkpoints on this host take {} MiB; {} MiB more would pass the budget of {} MiB",
                in_use >> 20,
                expected >> 20,
                host >> 20
            ));
        }
        if free < expected + self.reserve_bytes {
            return Some(format!(
                "{} MiB free on {}: a {} MiB checkpoint would leave less than {} MiB",
                free >> 20,
                fs.display(),
                expected >> 20,
                self.reserve_bytes >> 20
            ));
        }
        None
    }
}

/// A new directory only root can enter: images hold a sandbox's memory.
fn private_dir(path: &Path) -> Result<(), CheckpointError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| CheckpointError::Images {
            path: path.to_path_buf(),
            source,
        })
}

/// One id map extent of a user namespace image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    first: u32,
    lower_first: u32,
    count: u32,
}

/// The uid and gid maps of a `UsernsEntry`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UsernsEntry {
    uid_map: Vec<Extent>,
    gid_map: Vec<Extent>,
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The next `(field, wire type)` key and, for length-delimited fields, the
/// payload; varint fields return their value as the second element.
fn get_field<'a>(bytes: &mut &'a [u8]) -> Option<(u64, Result<u64, &'a [u8]>)> {
    let key = get_varint(bytes)?;
    match key & 7 {
        0 => Some((key >> 3, Ok(get_varint(bytes)?))),
        2 => {
            let len = usize::try_from(get_varint(bytes)?).ok()?;
            let (payload, rest) = (bytes.get(..len)?, bytes.get(len..)?);
            *bytes = rest;
            Some((key >> 3, Err(payload)))
        }
        _ => None,
    }
}

impl UsernsEntry {
    fn decode(mut bytes: &[u8]) -> Option<Self> {
        let mut entry = Self::default();
        while !bytes.is_empty() {
            let (field, Err(mut payload)) = get_field(&mut bytes)? else {
                return None;
            };
            let mut extent = Extent {
                first: 0,
                lower_first: 0,
                count: 0,
            };
            while !payload.is_empty() {
                let (number, Ok(value)) = get_field(&mut payload)? else {
                    return None;
                };
                let value = u32::try_from(value).ok()?;
                match number {
                    1 => extent.first = value,
                    2 => extent.lower_first = value,
                    3 => extent.count = value,
                    _ => return None,
                }
            }
            match field {
                1 => entry.uid_map.push(extent),
                2 => entry.gid_map.push(extent),
                _ => return None,
            }
        }
        Some(entry)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, map) in [(1u64, &self.uid_map), (2, &self.gid_map)] {
            for extent in map {
                let mut inner = Vec::new();
                for (number, value) in [
                    (1u64, extent.first),
                    (2, extent.lower_first),
                    (3, extent.count),
                ] {
                    put_varint(&mut inner, number << 3);
                    put_varint(&mut inner, u64::from(value));
                }
                put_varint(&mut out, (field << 3) | 2);
                put_varint(&mut out, inner.len() as u64);
                out.extend_from_slice(&inner);
            }
        }
        out
    }

    /// Moves every extent from its place inside `from` to the same place
    /// inside `to`; `None` when one is not wholly inside `from` or would
    /// not fit in `to`: the images would map host ids the sandbox has no
    /// right to (images from another host are not to be believed).
    fn retarget(&mut self, from: IdMap, to: IdMap) -> Option<()> {
        for extent in self.uid_map.iter_mut().chain(self.gid_map.iter_mut()) {
            let offset = extent.lower_first.checked_sub(from.host_base)?;
            let end = offset.checked_add(extent.count)?;
            if end > from.count || end > to.count {
                return None;
            }
            extent.lower_first = to.host_base.checked_add(offset)?;
        }
        Some(())
    }
}

/// CRIU's own statistics of the dump or restore whose images are in
/// `images` (`stats-dump`, `stats-restore`: `StatsEntry { DumpStatsEntry
/// dump = 1; RestoreStatsEntry restore = 2; }` in the image framing, times
/// in microseconds), recorded as phases when someone collects them (see
/// [`crate::timing`]): for a dump `criu-freezing`, `criu-frozen` (how long
/// the tasks stood still), `criu-memdump` and `criu-memwrite`; for a restore
/// `criu-forking` and `criu-restore`. Missing or malformed files record
/// nothing.
pub fn record_stats(images: &Path) {
    if !crate::timing::active() {
        return;
    }
    const DUMP: [(u64, &str); 4] = [
        (1, "criu-freezing"),
        (2, "criu-frozen"),
        (3, "criu-memdump"),
        (4, "criu-memwrite"),
    ];
    const RESTORE: [(u64, &str); 2] = [(3, "criu-forking"), (4, "criu-restore")];
    for (file, entry, names) in [
        ("stats-dump", 1, &DUMP[..]),
        ("stats-restore", 2, &RESTORE[..]),
    ] {
        let Ok(bytes) = std::fs::read(images.join(file)) else {
            continue;
        };
        for (name, micros) in stats_times(&bytes, entry, names) {
            crate::timing::add(name, std::time::Duration::from_micros(micros));
        }
    }
}

/// The varint fields `names` of entry `entry` of a CRIU stats image.
fn stats_times(
    bytes: &[u8],
    entry: u64,
    names: &[(u64, &'static str)],
) -> Vec<(&'static str, u64)> {
    let mut found = Vec::new();
    let Some(size) = bytes.get(8..12).and_then(|b| b.try_into().ok()) else {
        return found;
    };
    let Some(mut body) = bytes.get(12..12 + u32::from_le_bytes(size) as usize) else {
        return found;
    };
    while let Some((field, value)) = get_field(&mut body) {
        let (true, Err(mut inner)) = (field == entry, value) else {
            continue;
        };
        while let Some((number, value)) = get_field(&mut inner) {
            if let (Ok(micros), Some((_, name))) = (value, names.iter().find(|(n, _)| *n == number))
            {
                found.push((*name, micros));
            }
        }
    }
    found
}

/// The user namespace image `bytes` with its maps moved from `from` to `to`.
fn retarget_image(bytes: &[u8], from: IdMap, to: IdMap) -> Option<Vec<u8>> {
    let head = bytes.get(..8)?;
    let size = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    let body = bytes.get(12..12 + size)?;
    if bytes.len() != 12 + size {
        return None;
    }
    let mut entry = UsernsEntry::decode(body)?;
    entry.retarget(from, to)?;
    let encoded = entry.encode();
    let mut out = head.to_vec();
    out.extend_from_slice(&u32::try_from(encoded.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&encoded);
    Some(out)
}

/// Images that restore the checkpoint in `images` (taken of a sandbox with
/// ids `from`) as a sandbox with ids `to`: `scratch`, filled with hard
/// links to every image and, when the ranges differ, a rewritten user
/// namespace image (see the module docs).
///
/// CRIU reads some images from inside the restored user namespace before
/// it has mapped its ids (a race in CRIU: the time namespace image is read
/// before the id maps are written), when the reader counts as no one: the
/// images dir must be searchable by anyone (`scratch` is 0711, not
/// listable), while the directory above it keeps everyone else out (the
/// sandbox's own directory is 0700, and CRIU holds `scratch` open as a
/// descriptor, so it never passes above). The images themselves are world
/// readable as CRIU writes them, and dump directories are 0700.
pub fn images_for(
    images: &Path,
    from: IdMap,
    to: IdMap,
    scratch: &Path,
) -> Result<PathBuf, CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Images { path, source }
    };
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).map_err(io(scratch))?;
    }
    private_dir(scratch)?;
    for entry in std::fs::read_dir(images).map_err(io(images))? {
        let entry = entry.map_err(io(images))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        // CRIU's own logs and statistics are written, not read, by a restore.
        if !name_str.ends_with(".img") {
            continue;
        }
        let target = scratch.join(&name);
        // Rewritten even onto the same range: checked to map only it.
        if name_str.starts_with("userns-") {
            let bytes = std::fs::read(entry.path()).map_err(io(&entry.path()))?;
            let rewritten =
                retarget_image(&bytes, from, to).ok_or_else(|| CheckpointError::Userns {
                    path: entry.path(),
                    reason: "not a single UsernsEntry mapping only the sandbox's ids".into(),
                })?;
            std::fs::write(&target, rewritten).map_err(io(&target))?;
        } else {
            std::fs::hard_link(entry.path(), &target).map_err(io(&target))?;
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o711))
            .map_err(io(scratch))?;
    }
    Ok(scratch.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_timed_out_seize_is_tried_again() {
        let failed = |reason: &str| CheckpointError::Dump {
            reason: reason.to_owned(),
            log: PathBuf::from("dump.log"),
        };
        assert!(
            failed("Error (criu/cr-dump.c:1655): Timeout reached. Try to interrupt: 0")
                .seize_timed_out()
        );
        assert!(
            !failed("Error (criu/proc_parse.c:2722): invalid cgroup configuration")
                .seize_timed_out()
        );
        assert!(!CheckpointError::Spawn(std::io::Error::other("no criu")).seize_timed_out());
    }

    /// `userns-14.img` as CRIU 4.2 wrote it for ids 0..65536 → 200000.
    const CRIU_USERNS_IMAGE: [u8; 36] = [
        0x19, 0x43, 0x56, 0x54, 0x06, 0x49, 0x47, 0x55, 0x18, 0x00, 0x00, 0x00, 0x0a, 0x0a, 0x08,
        0x00, 0x10, 0xc0, 0x9a, 0x0c, 0x18, 0x80, 0x80, 0x04, 0x12, 0x0a, 0x08, 0x00, 0x10, 0xc0,
        0x9a, 0x0c, 0x18, 0x80, 0x80, 0x04,
    ];

    fn map(host_base: u32) -> IdMap {
        IdMap {
            host_base,
            count: 65_536,
        }
    }

    #[test]
    fn a_criu_userns_image_decodes_and_encodes_back_byte_for_byte() {
        let entry = UsernsEntry::decode(&CRIU_USERNS_IMAGE[12..]).expect("decodes");
        let extent = Extent {
            first: 0,
            lower_first: 200_000,
            count: 65_536,
        };
        assert_eq!(entry.uid_map, vec![extent]);
        assert_eq!(entry.gid_map, vec![extent]);
        assert_eq!(entry.encode(), CRIU_USERNS_IMAGE[12..].to_vec());
    }

    #[test]
    fn retargeting_moves_both_maps_to_the_new_range() {
        let out =
            retarget_image(&CRIU_USERNS_IMAGE, map(200_000), map(300_000)).expect("retargets");
        assert_eq!(&out[..8], &CRIU_USERNS_IMAGE[..8], "magic kept");
        let entry = UsernsEntry::decode(&out[12..]).expect("decodes");
        assert!(
            entry
                .uid_map
                .iter()
                .chain(&entry.gid_map)
                .all(|e| e.lower_first == 300_000)
        );
        let back = retarget_image(&out, map(300_000), map(200_000)).expect("and back");
        assert_eq!(back, CRIU_USERNS_IMAGE.to_vec());
    }

    #[test]
    fn a_dump_must_fit_the_sandbox_cap_the_host_budget_and_the_free_space() {
        let tmp = std::env::temp_dir();
        let roomy = Budget {
            host_bytes: Some(u64::MAX / 4),
            reserve_bytes: 0,
        };
        assert_eq!(roomy.refuse(1 << 20, 2 << 20, 0, &tmp), None);
        let over_cap = roomy
            .refuse(3 << 20, 2 << 20, 0, &tmp)
            .expect("over the cap");
        assert!(over_cap.contains("cap"), "{over_cap}");
        let tight = Budget {
            host_bytes: Some(10 << 20),
            reserve_bytes: 0,
        };
        let over_budget = tight.refuse(4 << 20, 8 << 20, 8 << 20, &tmp).expect("over");
        assert!(over_budget.contains("budget"), "{over_budget}");
        let no_room = Budget {
            host_bytes: Some(u64::MAX / 4),
            reserve_bytes: u64::MAX / 4,
        };
        let full = no_room
            .refuse(1 << 20, 2 << 20, 0, &tmp)
            .expect("no free space");
        assert!(full.contains("free"), "{full}");
    }

    /// Images that map ids outside the range they say they were dumped
    /// with, or more than the new range holds, are refused, even onto the
    /// same range: restored, they would run with host ids (root's, another
    /// sandbox's) the sandbox has no right to.
    #[test]
    fn images_mapping_ids_beyond_their_range_are_refused() {
        // Dumped with 200 000 + 65 536, said to be another range.
        assert!(retarget_image(&CRIU_USERNS_IMAGE, map(300_000), map(300_000)).is_none());
        assert!(retarget_image(&CRIU_USERNS_IMAGE, map(0), map(400_000)).is_none());
        // A range too small for what the images map.
        let small = IdMap {
            host_base: 400_000,
            count: 1000,
        };
        assert!(retarget_image(&CRIU_USERNS_IMAGE, map(200_000), small).is_none());
        // Its own range, onto itself: kept as it is.
        assert_eq!(
            retarget_image(&CRIU_USERNS_IMAGE, map(200_000), map(200_000)),
            Some(CRIU_USERNS_IMAGE.to_vec())
        );
    }

    #[test]
    fn malformed_images_are_refused() {
        assert!(retarget_image(&CRIU_USERNS_IMAGE[..20], map(200_000), map(0)).is_none());
        let mut trailing = CRIU_USERNS_IMAGE.to_vec();
        trailing.push(0);
        assert!(retarget_image(&trailing, map(200_000), map(0)).is_none());
        let mut bad_field = CRIU_USERNS_IMAGE.to_vec();
        bad_field[12] = 0x1a;
        assert!(retarget_image(&bad_field, map(200_000), map(0)).is_none());
    }

    #[test]
    fn criu_stats_images_give_their_times() {
        // Written by CRIU 4.2: a dump of one `sleep`, then its restore.
        let dump = [
            0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x22, 0, 0, 0, 0x0a, 0x20, 0x08, 0x8f,
            0x01, 0x10, 0xaa, 0xa4, 0x01, 0x18, 0xcd, 0x01, 0x20, 0x50, 0x28, 0x39, 0x30, 0x00,
            0x38, 0x1e, 0x40, 0x00, 0x48, 0x00, 0x50, 0x06, 0x58, 0x06, 0x60, 0x00, 0x68, 0x00,
            0x70, 0x00,
        ];
        let restore = [
            0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x0d, 0, 0, 0, 0x12, 0x0b, 0x08, 0x00,
            0x10, 0x00, 0x18, 0x00, 0x20, 0x92, 0x0b, 0x28, 0x1e,
        ];
        let dir = std::env::temp_dir().join(format!("criu-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("stats-dump"), dump).expect("dump stats");
        std::fs::write(dir.join("stats-restore"), restore).expect("restore stats");
        let ((), phases) = crate::timing::collect(|| record_stats(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        let micros: Vec<_> = phases
            .iter()
            .map(|p| (p.name, p.duration.as_micros()))
            .collect();
        assert_eq!(
            micros,
            [
                ("criu-freezing", 143),
                ("criu-frozen", 21034),
                ("criu-memdump", 205),
                ("criu-memwrite", 80),
                ("criu-forking", 0),
                ("criu-restore", 1426),
            ]
        );
        // Cut short or of another entry: nothing, and no panic.
        assert!(stats_times(&dump[..20], 1, &[(2, "x")]).is_empty());
        assert!(stats_times(&restore, 1, &[(4, "x")]).is_empty());
        assert!(stats_times(&[], 1, &[(2, "x")]).is_empty());
    }

    #[test]
    fn a_fork_gets_hard_links_and_its_own_userns_image() {
        let base = std::env::temp_dir().join(format!("images-for-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let images = base.join("fork");
        std::fs::create_dir_all(&images).expect("images");
        std::fs::write(images.join("pages-1.img"), b"memory").expect("pages");
        std::fs::write(images.join("userns-14.img"), CRIU_USERNS_IMAGE).expect("userns");
        std::fs::write(images.join("dump.log"), b"log").expect("log");
        let same = images_for(&images, map(200_000), map(200_000), &base.join("same"))
            .expect("same range");
        assert_eq!(
            std::fs::read(same.join("userns-14.img")).expect("linked"),
            CRIU_USERNS_IMAGE.to_vec()
        );
        let child = images_for(&images, map(200_000), map(300_000), &base.join("child"))
            .expect("retargeted");
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).expect("stat").ino();
        assert_eq!(
            ino(&child.join("pages-1.img")),
            ino(&images.join("pages-1.img"))
        );
        assert!(!child.join("dump.log").exists());
        let mode = std::fs::metadata(&child).expect("scratch").mode();
        assert_eq!(mode & 0o777, 0o711, "passable, not listable");
        let rewritten = std::fs::read(child.join("userns-14.img")).expect("userns");
        assert_ne!(rewritten, CRIU_USERNS_IMAGE.to_vec());
        assert_eq!(
            std::fs::read(images.join("userns-14.img")).expect("parent's"),
            CRIU_USERNS_IMAGE.to_vec(),
            "the parent's image is untouched"
        );
        let _ = std::fs::remove_dir_all(base);
    }
}
