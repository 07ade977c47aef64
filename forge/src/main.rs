//! The `forge` command line.
//!
//! Today it manages the guest images every sandbox boots from:
//! `forge image build` builds (or finds in the cache) the Debian root
//! filesystem with git, Node.js, Bun and the sandbox agent as init, and
//! `forge image list` shows what the data directory holds.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "forge",
    version,
    about = "A git forge where every branch is a sandbox"
)]
struct Cli {
    /// Where the forge keeps its state (images, later repositories and snapshots).
    #[arg(long, env = "FORGE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Guest images: the root filesystem every sandbox starts from.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the guest image, or reuse the cached one when its inputs are unchanged.
    Build {
        /// The `sandbox-agent` binary installed as init (default: next to this `forge`).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// List the images in the data directory, newest first.
    List,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("forge: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    match cli.command {
        Command::Image(ImageCommand::Build { agent }) => build_image(data_dir, agent),
        Command::Image(ImageCommand::List) => list_images(data_dir),
    }
}

/// `$XDG_DATA_HOME/forge`, else `~/.local/share/forge`.
fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("forge"));
    }
    let home = std::env::var_os("HOME")
        .context("neither FORGE_DATA_DIR, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/forge"))
}

fn build_image(data_dir: PathBuf, agent: Option<PathBuf>) -> anyhow::Result<()> {
    let agent = match agent {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot locate the forge binary")?
            .with_file_name("sandbox-agent"),
    };
    if !agent.is_file() {
        bail!(
            "the sandbox agent binary {} does not exist; build it with `cargo build --release -p sandbox-agent` or pass --agent",
            agent.display()
        );
    }
    let options = guest_image::BuildOptions::new(&data_dir, agent);
    let image = guest_image::build(&options, |progress| eprintln!("{progress}"))
        .context("building the guest image failed")?;
    let how = if image.cached { "cached" } else { "built" };
    println!(
        "image {} {how} in {:.1} s: root {} MiB, ext4 {} MiB ({} MiB allocated); node {}, bun {}",
        image.id,
        image.build_secs,
        image.rootfs_bytes >> 20,
        image.ext4_bytes >> 20,
        image.ext4_allocated_bytes >> 20,
        image.node_version,
        image.bun_version
    );
    println!(
        "  rootfs: {}\n  ext4:   {}",
        image.rootfs.display(),
        image.ext4.display()
    );
    Ok(())
}

fn list_images(data_dir: PathBuf) -> anyhow::Result<()> {
    let images = guest_image::list(&data_dir).context("reading the image cache failed")?;
    if images.is_empty() {
        println!(
            "no images in {}; run `forge image build`",
            data_dir.display()
        );
        return Ok(());
    }
    println!(
        "{:<18} {:>9} {:>9} {:<10} {:<8}",
        "ID", "ROOT MiB", "EXT4 MiB", "NODE", "BUN"
    );
    for image in images {
        println!(
            "{:<18} {:>9} {:>9} {:<10} {:<8}",
            image.id,
            image.rootfs_bytes >> 20,
            image.ext4_allocated_bytes >> 20,
            image.node_version,
            image.bun_version
        );
    }
    Ok(())
}
