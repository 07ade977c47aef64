//! Builds the freestanding test guests in `testguest/` with the host's gcc
//! into `$OUT_DIR/testguest/<name>.elf`, and tells the crate where they are
//! (`FORGE_TESTGUEST_DIR`). Without gcc the directory stays empty and the
//! tests that need a guest fail saying so.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[&str] = &[
    "hello",
    "memtest",
    "counter",
    "smp",
    "blk",
    "rng",
    "vsock",
    "badvirtio",
    "pio",
    "blkread",
    "forkmem",
    "touch",
    "pagecheck",
    "flood",
];

fn main() {
    let src = PathBuf::from("testguest");
    println!("cargo:rerun-if-changed=testguest");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("testguest");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/testguest");
    println!("cargo:rustc-env=FORGE_TESTGUEST_DIR={}", out.display());
    for guest in GUESTS {
        let main_c = src.join(format!("{guest}.c"));
        if !main_c.exists() {
            continue;
        }
        let elf = out.join(format!("{guest}.elf"));
        let status = Command::new("gcc")
            .args([
                "-ffreestanding",
                "-nostdlib",
                "-static",
                "-fno-pie",
                "-no-pie",
                "-mno-red-zone",
                "-mgeneral-regs-only",
                "-fno-stack-protector",
                "-fno-asynchronous-unwind-tables",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-Wl,--build-id=none",
                "-Wl,-z,noexecstack",
                "-Wl,--no-warn-rwx-segments",
            ])
            .arg(format!("-Wl,-T,{}", src.join("link.ld").display()))
            .arg("-o")
            .arg(&elf)
            .arg(src.join("start.S"))
            .arg(src.join("rt.c"))
            .arg(&main_c)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("gcc failed building test guest {guest}: {s}"),
            Err(e) => {
                println!("cargo:warning=test guests not built (gcc: {e})");
                return;
            }
        }
    }
}
