//! Lifecycle of real sandboxes: create, exec, pause/resume, fork, destroy,
//! reconcile. Needs root, btrfs-progs, busybox-static and gcc.

mod common;

use common::TestBackend;

#[test]
fn create_then_exec_runs_inside_the_sandbox() {
    let t = TestBackend::start("create");
    let sandbox = t.create();
    let out = t.sh_ok(&sandbox.id, "echo hi; hostname; echo $$; id -u");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_eq!(lines[1], sandbox.id, "hostname is the sandbox id");
    let pid: u32 = lines[2].parse().expect("pid");
    assert!(
        pid < 50,
        "shell runs in the sandbox's PID namespace (pid {pid})"
    );
    assert_eq!(lines[3], "0");
}
