//! The `forge` binary's command line, without a server. (Also makes
//! `cargo test` build the binary that the `e2e` tests start.)

use std::process::Command;

fn forge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .env_remove("FORGE_TOKEN")
        .output()
        .expect("the forge binary runs")
}

#[test]
fn help_lists_every_command() {
    let output = forge(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["serve", "repo", "token", "events", "vm", "run", "image"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}

#[test]
fn client_commands_without_a_token_say_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = forge(&[
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "repo",
        "list",
    ]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("FORGE_TOKEN"), "{message}");
}

#[test]
fn serve_refuses_an_address_it_cannot_bind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = forge(&[
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "serve",
        "--listen",
        "192.0.2.1:1",
    ]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("cannot listen on 192.0.2.1:1"),
        "{message}"
    );
}
