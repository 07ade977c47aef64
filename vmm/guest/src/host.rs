//! What the build needs from the host: root, tools (installed with apt-get
//! when missing), running commands with their output streamed as progress,
//! and verified downloads from the npm registry.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use sha2::{Digest, Sha512};

use crate::{BuildError, Progress};

/// Host tools the build runs, and the Debian package providing each.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("curl", "curl"),
    ("tar", "tar"),
];

pub fn require_root() -> Result<(), BuildError> {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| BuildError::io("/proc/self", e))?;
    if uid != 0 {
        return Err(BuildError::NotRoot);
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// Installs missing tools with apt-get, saying so.
pub fn ensure_tools(progress: &mut dyn FnMut(Progress)) -> Result<(), BuildError> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    progress(Progress::Detail(format!(
        "installing missing host packages with apt-get: {}",
        missing.join(" ")
    )));
    run(Command::new("apt-get").arg("update").arg("-q"), progress)?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        progress,
    )
}

/// Runs a command; its stderr and stdout lines become `Progress::Detail`.
/// On failure the last lines are part of the error.
pub fn run(cmd: &mut Command, progress: &mut dyn FnMut(Progress)) -> Result<(), BuildError> {
    let name = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Command {
            command: name.clone(),
            detail: e.to_string(),
        })?;
    let stdout = child.stdout.take();
    // Read stdout on a thread so neither pipe can fill up and block.
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut o) = stdout {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let mut tail: Vec<String> = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            progress(Progress::Detail(line.clone()));
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
    }
    let out = out_thread.join().unwrap_or_default();
    for line in out.lines() {
        progress(Progress::Detail(line.to_owned()));
    }
    let status = child.wait().map_err(|e| BuildError::Command {
        command: name.clone(),
        detail: e.to_string(),
    })?;
    if !status.success() {
        tail.extend(out.lines().rev().take(10).map(str::to_owned));
        return Err(BuildError::Command {
            command: name,
            detail: format!("{status}; last output:\n{}", tail.join("\n")),
        });
    }
    Ok(())
}

/// The npm registry to download from: `NPM_CONFIG_REGISTRY`, else npm's
/// default public registry.
pub fn npm_registry() -> String {
    std::env::var("NPM_CONFIG_REGISTRY")
        .or_else(|_| std::env::var("npm_config_registry"))
        .unwrap_or_else(|_| "https://registry.npmjs.org".to_owned())
}

/// Checks a file against an SRI `sha512-<base64>` string.
pub fn verify_integrity(path: &Path, integrity: &str) -> Result<bool, BuildError> {
    let want = integrity
        .strip_prefix("sha512-")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| BuildError::Recipe(format!("bad integrity {integrity:?}")))?;
    let mut f = std::fs::File::open(path).map_err(|e| BuildError::io(path, e))?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| BuildError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().as_slice() == want.as_slice())
}

/// Downloads `url` to `dest` unless a verified copy is there already.
pub fn fetch_verified(
    url: &str,
    integrity: &str,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), BuildError> {
    if dest.exists() && verify_integrity(dest, integrity)? {
        progress(Progress::Detail(format!("cached {url}")));
        return Ok(());
    }
    let part = dest.with_extension("part");
    progress(Progress::Detail(format!("downloading {url}")));
    run(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&part)
            .arg(url),
        progress,
    )?;
    if !verify_integrity(&part, integrity)? {
        let _ = std::fs::remove_file(&part);
        return Err(BuildError::Integrity {
            url: url.to_owned(),
            expected: integrity.to_owned(),
        });
    }
    std::fs::rename(&part, dest).map_err(|e| BuildError::io(dest, e))
}

/// Bytes allocated under `dir` (like `du -s`), not following symlinks.
pub fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}
