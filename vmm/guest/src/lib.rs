//! The guest image: a Debian bookworm root filesystem with git, Node.js,
//! npm and Bun, and `sandbox-agent` as `/sbin/init`; built from the recipe
//! in `vmm/guest/rootfs/` and cached by the hash of its inputs.
//!
//! Build steps, in order ([`build`]):
//! 1. check root, install missing host tools (mmdebstrap, e2fsprogs, curl);
//! 2. read the host's apt sources; hash the inputs; return the cached
//!    image if `<data_dir>/images/<id>/image.json` exists;
//! 3. Debian base with `mmdebstrap --variant=minbase`, cached under
//!    `images/base/<base hash>/` (shared by images that differ only in the
//!    agent or the npm pins);
//! 4. copy the base into a build directory; add Node.js, npm and Bun from
//!    verified npm registry tarballs (downloads cached in `images/downloads/`);
//! 5. add the agent as `/sbin/init`, `/workspace`, `/etc/hosts`,
//!    `/etc/hostname`, `/etc/sandbox-image-version`;
//! 6. `mkfs.ext4 -d` the tree into `rootfs.ext4` (sparse, with free space
//!    for the sandbox's own writes);
//! 7. write `image.json` and rename the build directory into place, so a
//!    crashed build never looks like a cached image.
//!
//! A lock file (`images/.lock`) serialises concurrent builds.

#![forbid(unsafe_code)]

mod host;
mod recipe;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use recipe::{NpmPin, Role};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Building the guest image needs root (mmdebstrap, mkfs.ext4 -d with ownership)")]
    NotRoot,
    #[error("Recipe problem: {0}")]
    Recipe(String),
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Command {command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("Download {url} does not match its integrity {expected}")]
    Integrity { url: String, expected: String },
    #[error("Manifest {path} is invalid")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl BuildError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.into(),
            source,
        }
    }
}

/// What a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The forge's data directory; images live in `<data_dir>/images/`.
    pub data_dir: PathBuf,
    /// The `sandbox-agent` binary to install as init (dynamically linked
    /// against the host's glibc, which is bookworm's on this project's hosts).
    pub agent_binary: PathBuf,
    /// Directory holding the host's apt configuration (normally `/etc/apt`).
    pub apt_dir: PathBuf,
}

impl BuildOptions {
    pub fn new(data_dir: impl Into<PathBuf>, agent_binary: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            agent_binary: agent_binary.into(),
            apt_dir: PathBuf::from("/etc/apt"),
        }
    }
}

/// Progress of a build, for the caller to show (e.g. on stderr).
#[derive(Debug, Clone)]
pub enum Progress {
    /// A numbered step started.
    Step {
        index: u32,
        total: u32,
        name: &'static str,
    },
    /// Output of a tool or a note within the current step.
    Detail(String),
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Step { index, total, name } => write!(f, "[{index}/{total}] {name}"),
            Progress::Detail(s) => write!(f, "      {s}"),
        }
    }
}

/// A built image, as recorded in its `image.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Hash of the recipe's inputs; also the directory name.
    pub id: String,
    pub dir: PathBuf,
    /// Root directory for container sandboxes.
    pub rootfs: PathBuf,
    /// ext4 disk image for microVMs.
    pub ext4: PathBuf,
    pub rootfs_bytes: u64,
    /// Apparent size of the ext4 file (it is sparse).
    pub ext4_bytes: u64,
    /// Blocks the ext4 file occupies on the host.
    pub ext4_allocated_bytes: u64,
    pub node_version: String,
    pub npm_version: String,
    pub bun_version: String,
    pub debian_suite: String,
    pub built_unix_secs: u64,
    pub build_secs: f64,
    /// False when this call built it, true when it was found in the cache.
    #[serde(skip)]
    pub cached: bool,
}

const MANIFEST: &str = "image.json";
const TOTAL_STEPS: u32 = 6;

fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

fn read_manifest(dir: &Path) -> Result<Image, BuildError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| BuildError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|source| BuildError::Manifest { path, source })
}

/// Every built image in the data directory, newest first.
pub fn list(data_dir: &Path) -> Result<Vec<Image>, BuildError> {
    let dir = images_dir(data_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BuildError::io(&dir, e)),
    };
    let mut out: Vec<Image> = rd
        .flatten()
        .filter(|e| e.path().join(MANIFEST).is_file())
        .filter_map(|e| read_manifest(&e.path()).ok())
        .collect();
    out.sort_by_key(|i| std::cmp::Reverse(i.built_unix_secs));
    Ok(out)
}

/// Deletes a built image (its directory under `images/`).
pub fn remove(data_dir: &Path, id: &str) -> Result<(), BuildError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(BuildError::Recipe(format!("{id:?} is not an image id")));
    }
    let dir = images_dir(data_dir).join(id);
    std::fs::remove_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))
}

/// Deletes every built image except `keep`; returns the removed ids. The
/// Debian base and the download cache stay.
pub fn prune(data_dir: &Path, keep: &[&str]) -> Result<Vec<String>, BuildError> {
    let mut removed = Vec::new();
    for image in list(data_dir)? {
        if !keep.contains(&image.id.as_str()) {
            remove(data_dir, &image.id)?;
            removed.push(image.id);
        }
    }
    Ok(removed)
}

/// Builds the image for these inputs, or returns the cached one.
pub fn build(opts: &BuildOptions, mut progress: impl FnMut(Progress)) -> Result<Image, BuildError> {
    let progress: &mut dyn FnMut(Progress) = &mut progress;
    let started = Instant::now();
    let step = |index: u32, name: &'static str, p: &mut dyn FnMut(Progress)| {
        p(Progress::Step {
            index,
            total: TOTAL_STEPS,
            name,
        })
    };

    step(1, "checking the host", progress);
    host::require_root()?;
    host::ensure_tools(progress)?;
    let sources = recipe::host_apt_sources(&opts.apt_dir)?;
    let pins = recipe::npm_pins()?;
    let agent =
        std::fs::read(&opts.agent_binary).map_err(|e| BuildError::io(&opts.agent_binary, e))?;
    let base_id = recipe::base_hash(&sources);
    let id = recipe::image_hash(&base_id, &agent);
    let images = images_dir(&opts.data_dir);
    std::fs::create_dir_all(&images).map_err(|e| BuildError::io(&images, e))?;
    let lock_path = images.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| BuildError::io(&lock_path, e))?;
    lock.lock().map_err(|e| BuildError::io(&lock_path, e))?;

    let final_dir = images.join(&id);
    if final_dir.join(MANIFEST).is_file() {
        let mut image = read_manifest(&final_dir)?;
        image.cached = true;
        progress(Progress::Detail(format!("image {id} is cached")));
        return Ok(image);
    }

    step(2, "Debian bookworm minbase (mmdebstrap)", progress);
    let base = build_base(&images, &base_id, &sources, progress)?;

    step(3, "Node.js, npm and Bun from the npm registry", progress);
    let work = images.join(format!(".build-{id}"));
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| BuildError::io(&work, e))?;
    }
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&work).map_err(|e| BuildError::io(&work, e))?;
    host::run(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&base)
            .arg(&rootfs),
        progress,
    )?;
    let downloads = images.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| BuildError::io(&downloads, e))?;
    for pin in &pins {
        install_pin(pin, &downloads, &rootfs, &work, progress)?;
    }

    step(4, "agent as /sbin/init, /workspace, /etc", progress);
    install_agent(&rootfs, &opts.agent_binary, &id)?;

    step(5, "ext4 image (mkfs.ext4 -d)", progress);
    let rootfs_bytes = host::allocated_bytes(&rootfs);
    // Room for the sandbox's own files; the file is sparse, so unused space
    // costs nothing on the host.
    let ext4_bytes = (rootfs_bytes * 5 / 4 + (2 << 30)).div_ceil(1 << 20) << 20;
    let ext4 = work.join("rootfs.ext4");
    host::run(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "sandbox-root",
                "-m",
                "0",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&rootfs)
            .arg(&ext4)
            .arg(format!("{}M", ext4_bytes >> 20)),
        progress,
    )?;

    step(6, "recording the image", progress);
    let version = |role| {
        pins.iter()
            .find(|p| p.role == role)
            .map(|p| p.version.clone())
            .unwrap_or_default()
    };
    let ext4_meta = std::fs::metadata(&ext4).map_err(|e| BuildError::io(&ext4, e))?;
    let image = Image {
        id: id.clone(),
        dir: final_dir.clone(),
        rootfs: final_dir.join("rootfs"),
        ext4: final_dir.join("rootfs.ext4"),
        rootfs_bytes,
        ext4_bytes: ext4_meta.len(),
        ext4_allocated_bytes: std::os::unix::fs::MetadataExt::blocks(&ext4_meta) * 512,
        node_version: version(Role::Node),
        npm_version: version(Role::Npm),
        bun_version: version(Role::Bun),
        debian_suite: recipe::SUITE.to_owned(),
        built_unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_secs: started.elapsed().as_secs_f64(),
        cached: false,
    };
    let manifest = serde_json::to_string_pretty(&image).map_err(|source| BuildError::Manifest {
        path: work.join(MANIFEST),
        source,
    })?;
    std::fs::write(work.join(MANIFEST), manifest).map_err(|e| BuildError::io(&work, e))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| BuildError::io(&final_dir, e))?;
    }
    std::fs::rename(&work, &final_dir).map_err(|e| BuildError::io(&final_dir, e))?;
    progress(Progress::Detail(format!(
        "image {id}: rootfs {} MiB, ext4 {} MiB ({} MiB allocated), built in {:.1} s",
        image.rootfs_bytes >> 20,
        image.ext4_bytes >> 20,
        image.ext4_allocated_bytes >> 20,
        image.build_secs
    )));
    Ok(image)
}

/// The Debian base tree, built once per base hash.
fn build_base(
    images: &Path,
    base_id: &str,
    sources: &[recipe::AptSource],
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, BuildError> {
    let base = images.join("base").join(base_id);
    let done = base.join(".complete");
    let tree = base.join("rootfs");
    if done.exists() {
        progress(Progress::Detail(format!("Debian base {base_id} is cached")));
        return Ok(tree);
    }
    if base.exists() {
        std::fs::remove_dir_all(&base).map_err(|e| BuildError::io(&base, e))?;
    }
    std::fs::create_dir_all(&base).map_err(|e| BuildError::io(&base, e))?;
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--aptopt=Acquire::Retries \"3\"",
        // Documentation is dead weight in a sandbox; copyright files stay.
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
    ]);
    cmd.arg(format!("--include={}", recipe::packages().join(",")));
    cmd.arg(recipe::SUITE).arg(&tree);
    for s in sources {
        cmd.arg(s.line());
    }
    host::run(&mut cmd, progress)?;
    std::fs::write(&done, b"").map_err(|e| BuildError::io(&done, e))?;
    Ok(tree)
}

fn install_pin(
    pin: &NpmPin,
    downloads: &Path,
    rootfs: &Path,
    work: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), BuildError> {
    let url = pin.tarball_url(&host::npm_registry());
    let file = downloads.join(format!(
        "{}-{}.tgz",
        pin.package.replace('/', "_"),
        pin.version
    ));
    host::fetch_verified(&url, &pin.integrity, &file, progress)?;
    let unpack = work.join(format!("unpack-{}", pin.package.replace('/', "_")));
    std::fs::create_dir_all(&unpack).map_err(|e| BuildError::io(&unpack, e))?;
    host::run(
        Command::new("tar")
            .args(["-xzf"])
            .arg(&file)
            .arg("-C")
            .arg(&unpack)
            .args(["--no-same-owner"]),
        progress,
    )?;
    let pkg = unpack.join("package");
    let bin = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&bin).map_err(|e| BuildError::io(&bin, e))?;
    let copy_exe = |from: &Path, to: &Path| -> Result<(), BuildError> {
        std::fs::copy(from, to).map_err(|e| BuildError::io(from, e))?;
        set_mode(to, 0o755)
    };
    match pin.role {
        Role::Node => copy_exe(&pkg.join("bin/node"), &bin.join("node"))?,
        Role::Bun => {
            copy_exe(&pkg.join("bin/bun"), &bin.join("bun"))?;
            symlink("bun", &bin.join("bunx"))?;
        }
        Role::Npm => {
            let lib = rootfs.join("usr/local/lib/node_modules");
            std::fs::create_dir_all(&lib).map_err(|e| BuildError::io(&lib, e))?;
            let dest = lib.join("npm");
            std::fs::rename(&pkg, &dest).map_err(|e| BuildError::io(&dest, e))?;
            symlink("../lib/node_modules/npm/bin/npm-cli.js", &bin.join("npm"))?;
            symlink("../lib/node_modules/npm/bin/npx-cli.js", &bin.join("npx"))?;
        }
    }
    std::fs::remove_dir_all(&unpack).map_err(|e| BuildError::io(&unpack, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| BuildError::io(path, e))
}

fn symlink(target: &str, link: &Path) -> Result<(), BuildError> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(|e| BuildError::io(link, e))
}

fn write(path: &Path, content: &str) -> Result<(), BuildError> {
    std::fs::write(path, content).map_err(|e| BuildError::io(path, e))
}

fn install_agent(rootfs: &Path, agent: &Path, id: &str) -> Result<(), BuildError> {
    // bookworm is merged-/usr: /sbin is a link to usr/sbin.
    let sbin = rootfs.join("usr/sbin");
    std::fs::copy(agent, sbin.join("sandbox-agent")).map_err(|e| BuildError::io(agent, e))?;
    set_mode(&sbin.join("sandbox-agent"), 0o755)?;
    symlink("sandbox-agent", &sbin.join("init"))?;
    for dir in ["workspace", "run/sandbox"] {
        let d = rootfs.join(dir);
        std::fs::create_dir_all(&d).map_err(|e| BuildError::io(&d, e))?;
    }
    let etc = rootfs.join("etc");
    write(&etc.join("hosts"), recipe::HOSTS)?;
    write(&etc.join("hostname"), "sandbox\n")?;
    // No network device: name resolution happens on the host side of the
    // agent's proxy.
    write(&etc.join("resolv.conf"), "")?;
    write(&etc.join("sandbox-image-version"), &format!("{id}\n"))?;
    for junk in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let d = rootfs.join(junk);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(())
}
