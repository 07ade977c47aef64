//! The forge end to end on the microVM backend: every sandbox is a Linux
//! microVM under `forge-vmm`, booted from the guest image's ext4 with the
//! project's guest kernel.
//!
//! Needs a /dev/kvm that runs a standard kernel (VMX/SVM),
//! `FORGE_GUEST_KERNEL` and a guest image, so it is ignored in the ordinary
//! run: `scripts/nested-kvm.sh` runs it (in a nested test host where
//! /dev/kvm is PVM). Asked for without them, it fails, saying what is
//! missing.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::time::{Duration, Instant};

use api_types::runs::RunView;
use api_types::vms::{
    CreateVm, ExecOutput, ExecRequest, ForkRequest, Forks, System, VmDetail, VmView,
};
use api_types::{RunState, StepState, VmState};
use e2e::{TestForge, git_ok, work_repo};

/// A shell loop that counts into /tmp/count, started in the background.
const COUNTER: &str = "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; \
     mv /tmp/count.new /tmp/count; sleep 0.1; done' >/dev/null 2>&1 &";

fn exec(forge: &TestForge, vm: &str, command: &str) -> ExecOutput {
    forge.send(
        "POST",
        &format!("/v1/vms/{vm}/exec"),
        &ExecRequest {
            command: Some(command.into()),
            timeout_secs: Some(120),
            ..ExecRequest::default()
        },
    )
}

fn stdout(forge: &TestForge, vm: &str, command: &str) -> String {
    let out = exec(forge, vm, command);
    assert_eq!(out.exit.exit_code, 0, "{command}: {out:?}");
    out.stdout
}

/// The counter's value in `vm` (0 before its first write).
fn count(forge: &TestForge, vm: &str) -> u64 {
    stdout(forge, vm, "cat /tmp/count 2>/dev/null || echo 0")
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the counter in `vm` passes `above`; returns its value.
fn counts_past(forge: &TestForge, vm: &str, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    loop {
        let now = count(forge, vm);
        assert!(
            now >= last,
            "the counter in {vm} went back from {last} to {now}"
        );
        last = now;
        if now > above {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the counter in {vm} stays at {now}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn step_status(run: &RunView, name: &str) -> StepState {
    run.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}: {run:?}"))
        .status
}

#[test]
#[ignore = "boots Linux microVMs: scripts/nested-kvm.sh runs it"]
fn pipelines_forks_and_idle_pauses_run_in_microvms() {
    let forge = TestForge::builder().with_microvm_sandboxes(10).start();
    let system: System = forge.get("/v1/system");
    assert_eq!(
        system.sandboxes.backend.as_deref(),
        Some("microvm"),
        "{system:?}"
    );

    // A push runs the branch's lint and test in a microVM.
    forge.create_repo("acme/bun");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/bun", &forge.admin_token);
    let work = work_repo(tmp.path(), "work", e2e::BUN_PROJECT);
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    let started = Instant::now();
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    let run = forge.finished_run("acme/bun", &first);
    println!(
        "push → pipeline passed in a fresh microVM: {:?}",
        started.elapsed()
    );
    assert_eq!(run.state, RunState::Passed, "{run:?}");
    for step in ["checkout", "lint", "test"] {
        assert_eq!(
            step_status(&run, step),
            StepState::Passed,
            "{step}: {run:?}"
        );
    }
    let main_vm = run.vm_id.clone().unwrap();
    let vm: VmDetail = forge.get(&format!("/v1/vms/{main_vm}"));
    assert_eq!(vm.vm.backend, "microvm", "{vm:?}");
    // It is a VM of its own: its own kernel, not the host's.
    let kernel = stdout(&forge, &main_vm, "uname -r");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        kernel.trim(),
        host_kernel.trim(),
        "the sandbox runs the host's kernel"
    );

    // A new branch runs in a fork of the default branch's VM.
    git_ok(&work, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(
        work.join("math.ts"),
        "export const add = (a: number, b: number) => b + a;\n",
    )
    .unwrap();
    git_ok(&work, &["commit", "-qam", "commute"]);
    let second = git_ok(&work, &["rev-parse", "HEAD"]);
    let started = Instant::now();
    git_ok(&work, &["push", "--quiet", &url, "feature"]);
    let run = forge.finished_run("acme/bun", &second);
    println!(
        "push of a new branch → pipeline passed in a fork: {:?}",
        started.elapsed()
    );
    assert_eq!(run.state, RunState::Passed, "{run:?}");
    let feature_vm = run.vm_id.clone().unwrap();
    let vm: VmDetail = forge.get(&format!("/v1/vms/{feature_vm}"));
    assert_eq!(vm.vm.parent.as_deref(), Some(main_vm.as_str()), "{vm:?}");
    assert_eq!(vm.vm.branch.as_deref(), Some("feature"), "{vm:?}");

    // Fork ×3 carries a running process into every copy, memory and all.
    stdout(&forge, &main_vm, COUNTER);
    let before = counts_past(&forge, &main_vm, 2);
    let started = Instant::now();
    let forks: Forks = forge.send(
        "POST",
        &format!("/v1/vms/{main_vm}/fork"),
        &ForkRequest {
            count: Some(3),
            ..ForkRequest::default()
        },
    );
    println!("fork ×3 of a running microVM: {:?}", started.elapsed());
    let forks: Vec<String> = forks.forks.into_iter().map(|f| f.vm.id).collect();
    assert_eq!(forks.len(), 3);
    for fork in &forks {
        let at_start = count(&forge, fork);
        assert!(
            at_start >= before,
            "fork {fork} did not carry the counter: {at_start} < {before}"
        );
        counts_past(&forge, fork, at_start);
        // Each copy has a disk of its own.
        stdout(&forge, fork, &format!("echo {fork} > /tmp/whoami"));
    }
    for fork in &forks {
        assert_eq!(stdout(&forge, fork, "cat /tmp/whoami").trim(), fork);
    }
    let parent_sees = exec(&forge, &main_vm, "cat /tmp/whoami");
    assert_ne!(
        parent_sees.exit.exit_code, 0,
        "the parent sees a fork's file: {parent_sees:?}"
    );
    for fork in &forks {
        forge.admin("DELETE", &format!("/v1/vms/{fork}"), None);
    }

    // Idle past its timeout, a VM pauses to disk by itself; the next exec
    // resumes it where it stopped.
    let idle: VmView = forge.send(
        "POST",
        "/v1/vms",
        &CreateVm {
            idle_timeout_secs: Some(5),
            ..CreateVm::default()
        },
    );
    let idle = idle.id;
    stdout(&forge, &idle, COUNTER);
    let before = counts_past(&forge, &idle, 2);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = forge.get::<VmDetail>(&format!("/v1/vms/{idle}")).vm.state;
        if state == VmState::PausedToDisk {
            break;
        }
        assert!(Instant::now() < deadline, "never paused when idle: {state}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    let resumed_at = count(&forge, &idle);
    println!(
        "exec on a VM paused to disk (resume + exec): {:?}",
        started.elapsed()
    );
    assert!(
        resumed_at >= before,
        "the counter restarted: {resumed_at} < {before}"
    );
    counts_past(&forge, &idle, resumed_at);
    assert_eq!(
        forge.get::<VmDetail>(&format!("/v1/vms/{idle}")).vm.state,
        VmState::Running
    );

    for vm in [&idle, &feature_vm] {
        forge.admin("DELETE", &format!("/v1/vms/{vm}"), None);
    }
}
