//! `forge-vmm`: runs one microVM.
//!
//! ```text
//! forge-vmm run --config vm.json [--jail jail.json]
//! forge-vmm restore --from DIR [--control-socket P] [--vsock P] [--serial-log P] [--jail jail.json]
//! forge-vmm bench [fork] [--guests DIR]
//! ```
//!
//! Exit status: 0 when the guest reset or powered off or a `shutdown` came
//! over the control socket; 1 for a bad config or a failure to build the VM;
//! 2 when the guest triple-faulted; 3 when a vCPU failed. Jailed
//! (`--jail`, see `vmm::jail`), a VMM killed by a signal exits 128 + the
//! signal (159 for SIGSYS: a system call off its seccomp list).

mod bench;
mod bench_fork;

use std::path::PathBuf;
use std::process::ExitCode;

use vmm::builder::Vmm;

fn usage() -> ExitCode {
    eprintln!(
        "usage: forge-vmm run --config <vm.json> [--jail <jail.json>]\n       forge-vmm restore --from <dir> [--control-socket <path>] [--vsock <path>] [--serial-log <path>] [--jail <jail.json>]\n       forge-vmm bench [fork] [--guests <dir>]"
    );
    ExitCode::from(1)
}

fn report(e: &dyn std::error::Error) {
    let mut msg = format!("forge-vmm: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    eprintln!("{msg}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => {}
        Some("restore") => return restore(&args[1..]),
        Some("bench") => {
            let fork = args.get(1).is_some_and(|a| a == "fork");
            let rest = if fork { &args[2..] } else { &args[1..] };
            let guests = match rest.get(0..2) {
                Some([flag, dir]) if flag == "--guests" => PathBuf::from(dir),
                _ => PathBuf::from(env!("FORGE_TESTGUEST_DIR")),
            };
            // A jail binds the guests at their own, absolute path.
            let guests = std::fs::canonicalize(&guests).unwrap_or(guests);
            bench::watchdog(std::time::Duration::from_secs(if fork {
                1200
            } else {
                300
            }));
            let sizes: Vec<u64> = std::env::var("FORGE_BENCH_SIZES_MIB")
                .ok()
                .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![256, 1024, 4096]);
            let result = if fork {
                bench_fork::run(&guests, &sizes)
            } else {
                bench::run(&guests)
            };
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("forge-vmm bench: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => return usage(),
    }
    let mut config_path = None;
    let mut jail = None;
    for pair in args[1..].chunks(2) {
        match pair {
            [flag, value] if flag == "--config" => config_path = Some(PathBuf::from(value)),
            [flag, value] if flag == "--jail" => jail = Some(PathBuf::from(value)),
            _ => return usage(),
        }
    }
    let Some(config_path) = config_path else {
        return usage();
    };
    let config = match vmm::config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::from(1);
        }
    };
    if jail.is_some() {
        vmm::vstate::memory::prepare(config.mem_mib);
    }
    if let Err(code) = confine(jail, Some(&config)) {
        return code;
    }
    match Vmm::build(&config) {
        Ok(v) => run(v),
        Err(e) => {
            report(&e);
            ExitCode::from(1)
        }
    }
}

/// Enters the jail of `--jail <file>`, if given (`vmm::jail`).
fn confine(jail: Option<PathBuf>, config: Option<&vmm::config::VmConfig>) -> Result<(), ExitCode> {
    let Some(jail) = jail else {
        return Ok(());
    };
    vmm::jail::load(&jail)
        .and_then(|j| vmm::jail::enter(&j, config))
        .map_err(|e| {
            report(&e);
            ExitCode::from(1)
        })
}

fn restore(args: &[String]) -> ExitCode {
    let mut from = None;
    let mut control = None;
    let mut vsock = None;
    let mut serial = None;
    let mut jail = None;
    for pair in args.chunks(2) {
        match pair {
            [flag, value] if flag == "--from" => from = Some(PathBuf::from(value)),
            [flag, value] if flag == "--control-socket" => control = Some(PathBuf::from(value)),
            [flag, value] if flag == "--vsock" => vsock = Some(PathBuf::from(value)),
            [flag, value] if flag == "--serial-log" => serial = Some(PathBuf::from(value)),
            [flag, value] if flag == "--jail" => jail = Some(PathBuf::from(value)),
            _ => return usage(),
        }
    }
    let Some(from) = from else {
        return usage();
    };
    let overrides = vmm::restore::Overrides {
        control_socket: control,
        vsock_uds: vsock,
        serial_log: serial,
    };
    if let Err(code) = confine(jail, None) {
        return code;
    }
    match vmm::restore::from_dir(&from, &overrides) {
        Ok(v) => run(v),
        Err(e) => {
            report(&e);
            ExitCode::from(1)
        }
    }
}

fn run(vmm: Vmm) -> ExitCode {
    match vmm.run() {
        Ok((reason, mut timings)) => {
            // `run` consumed the VM: everything it held is freed by now.
            timings.freed_us = timings.stopped_at.map(|at| at.elapsed().as_micros() as u64);
            if std::env::var_os("FORGE_VMM_TIMINGS").is_some() {
                eprintln!(
                    "{}",
                    serde_json::json!({ "exit": format!("{reason:?}"), "timings": timings })
                );
            }
            if reason.exit_code() != 0 {
                eprintln!("forge-vmm: VM ended: {reason:?}");
            }
            ExitCode::from(reason.exit_code() as u8)
        }
        Err(e) => {
            report(&e);
            ExitCode::from(1)
        }
    }
}
