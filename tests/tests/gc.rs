//! Start-up garbage collection: a sandbox no VM records (the forge died
//! between creating and recording it) and a half-created sandbox directory
//! are removed when the forge starts; recorded VMs are untouched.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use api_types::vms::{CreateVm, ExecOutput, ExecRequest, VmView};
use e2e::TestForge;

#[test]
fn leftovers_of_destroyed_sandboxes_are_collected_at_start_up() {
    if !e2e::require_sandboxes() {
        return;
    }
    let mut forge = TestForge::builder().with_sandboxes(10).start();
    let kept = forge
        .send::<_, VmView>("POST", "/v1/vms", &CreateVm::default())
        .id;
    let stray = forge
        .send::<_, VmView>("POST", "/v1/vms", &CreateVm::default())
        .id;
    let sandboxes = forge.sandbox_dir().unwrap().join("sandboxes");
    assert!(sandboxes.join(&stray).is_dir());
    assert!(forge.stop(), "the forge stops cleanly");

    // Forget the stray VM as a crash between create and record would, and
    // leave a half-created sandbox directory.
    assert!(
        stray
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    forge.execute_sql(&format!("DELETE FROM vms WHERE id = '{stray}'"));
    let half = sandboxes.join("sbhalfcreated");
    std::fs::create_dir_all(&half).unwrap();

    let forge = forge.crash_and_restart(); // Already stopped: this only starts it.
    assert!(
        !sandboxes.join(&stray).exists(),
        "the stray sandbox was removed"
    );
    assert!(!half.exists(), "the half-created directory was removed");
    let log = forge.log();
    assert!(
        log.contains(&format!("sandbox {stray} that no VM records")),
        "{log}"
    );
    assert!(log.contains("half-created sandbox sbhalfcreated"), "{log}");
    let out: ExecOutput = forge.send(
        "POST",
        &format!("/v1/vms/{kept}/exec"),
        &ExecRequest {
            command: Some("echo still here".into()),
            ..ExecRequest::default()
        },
    );
    assert_eq!(out.stdout, "still here\n", "{out:?}");
}
