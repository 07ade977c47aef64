//! The control socket against a running counter guest.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{TestVm, last_count, stays, wait_timeout};

#[test]
fn pause_stops_the_counter_and_resume_continues_it() {
    let vm = TestVm::new("counter");
    let mut child = vm.spawn();
    vm.wait_serial("COUNT 3\n", Duration::from_secs(30));
    let mut ctl = vm.control();
    let st = ctl.cmd("status");
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["state"], "running");
    assert_eq!(st["pid"], child.id());

    let r = ctl.cmd("pause");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(ctl.cmd("status")["state"], "paused");
    // Running, the guest prints a count every few milliseconds: half a
    // second is many counts it would have printed.
    let paused_at = stays(
        Duration::from_millis(500),
        "the count of a paused VM",
        || last_count(&vm.serial()),
    );

    let r = ctl.cmd("resume");
    assert_eq!(r["ok"], true, "{r}");
    vm.wait_serial(
        &format!("COUNT {}\n", paused_at + 3),
        Duration::from_secs(30),
    );

    let r = ctl.cmd("shutdown");
    assert_eq!(r["ok"], true, "{r}");
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(status.success(), "shutdown exit {status:?}");
}

#[test]
fn malformed_requests_get_json_errors_and_the_vm_keeps_running() {
    let vm = TestVm::new("counter");
    let mut child = vm.spawn();
    let mut ctl = vm.control();
    for bad in [
        "not json",
        r#"{"cmd":"explode"}"#,
        r#"{"cmd":"status","x":1}"#,
        "[]",
    ] {
        let r = ctl.raw(bad);
        assert_eq!(r["ok"], false, "{bad} -> {r}");
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(ctl.cmd("status")["state"], "running");
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn kill_9_leaves_no_socket_that_blocks_a_new_vm() {
    let vm = TestVm::new("counter");
    let mut first = vm.spawn();
    vm.wait_serial("COUNT 1\n", Duration::from_secs(30));
    // A second VM on the same paths while the first lives is refused.
    let mut clash = vm.spawn();
    let status = wait_timeout(&mut clash, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(1),
        "second VM on a live socket must fail"
    );

    first.kill().expect("SIGKILL");
    let status = first.wait().expect("wait");
    assert_eq!(status.signal(), Some(9));
    assert!(
        vm.dir.path("ctl.sock").exists(),
        "SIGKILL leaves the socket file"
    );

    let mut second = vm.spawn();
    let mut ctl = vm.control();
    assert_eq!(ctl.cmd("status")["pid"], second.id());
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut second, Duration::from_secs(10)).success());
}
