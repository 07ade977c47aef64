//! The WebSocket terminal end to end: a shell on a pseudo-terminal in a
//! container sandbox, reached with a bearer token and with a one-time
//! ticket; typing `echo hi` shows `hi`; resizing reaches the terminal.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

#[path = "common/terminal.rs"]
mod common;

use std::time::{Duration, Instant};

use api_types::vms::{CreateVm, TerminalTicket, VmView};
use common::{Socket, connect_from, read_until};
use e2e::TestForge;
use tungstenite::Message;

fn connect(forge: &TestForge, path: &str, token: Option<&str>) -> Result<Socket, String> {
    connect_from(forge, path, token, None)
}

fn forge() -> Option<TestForge> {
    if !e2e::require_sandboxes() {
        return None;
    }
    Some(TestForge::builder().with_sandboxes(5).start())
}

#[test]
fn typing_echo_hi_shows_hi() {
    let Some(forge) = forge() else { return };
    let vm: VmView = forge.send("POST", "/v1/vms", &CreateVm::default());
    let id = vm.id.as_str();
    let mut socket = connect(
        &forge,
        &format!("/v1/vms/{id}/terminal?cols=100&rows=30"),
        Some(&forge.admin_token),
    )
    .unwrap();
    socket
        .send(Message::Text(r#"{"resize":{"cols":123,"rows":45}}"#.into()))
        .unwrap();
    // The marker is split so the echoed command line cannot match it.
    socket
        .send(Message::Binary(
            b"echo h\"\"i; stty size; echo do\"\"ne\r".to_vec().into(),
        ))
        .unwrap();
    let output = read_until(&mut socket, "done", Duration::from_secs(20));
    assert!(
        output.split(['\r', '\n']).any(|line| line == "hi"),
        "no line `hi` in {output:?}"
    );
    assert!(
        output.contains("45 123"),
        "the resize did not reach the terminal: {output:?}"
    );
    // Exiting the shell closes the socket with its exit code.
    socket.send(Message::Text("exit 7\r".into())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        assert!(
            Instant::now() < deadline,
            "the socket did not close after exit"
        );
        match socket.read() {
            Ok(Message::Close(Some(frame))) => break frame.reason.to_string(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(_)) => {}
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(reason, "exited with code 7");
}

#[test]
fn tickets_are_single_use_and_bound_to_their_vm() {
    let Some(forge) = forge() else { return };
    let a: VmView = forge.send("POST", "/v1/vms", &CreateVm::default());
    let a = a.id.as_str();
    // No credentials at all, and a made-up ticket: refused before upgrade.
    assert_eq!(
        connect(&forge, &format!("/v1/vms/{a}/terminal"), None).unwrap_err(),
        "HTTP 401"
    );
    assert_eq!(
        connect(
            &forge,
            &format!("/v1/vms/{a}/terminal?ticket=forge_nope"),
            None
        )
        .unwrap_err(),
        "HTTP 401"
    );
    // Another token cannot get a ticket for the admin's VM.
    let other = forge.create_token("other", &["repo:write"], None);
    let (status, _) = forge.call(
        Some(&other),
        "POST",
        &format!("/v1/vms/{a}/terminal/tickets"),
        None,
    );
    assert_eq!(status, 404);

    let ticket: TerminalTicket = forge.send_empty("POST", &format!("/v1/vms/{a}/terminal/tickets"));
    let ticket = ticket.ticket;
    let path = format!("/v1/vms/{a}/terminal?ticket={ticket}");
    let mut socket = connect(&forge, &path, None).unwrap();
    socket
        .send(Message::Binary(b"echo ti\"\"cket-ok\r".to_vec().into()))
        .unwrap();
    read_until(&mut socket, "ticket-ok", Duration::from_secs(20));
    // Used once: the same ticket is refused now.
    assert_eq!(connect(&forge, &path, None).unwrap_err(), "HTTP 401");
    drop(socket);

    // A ticket for VM a does not open VM b.
    let b: VmView = forge.send("POST", "/v1/vms", &CreateVm::default());
    let b = b.id.as_str();
    let ticket: TerminalTicket = forge.send_empty("POST", &format!("/v1/vms/{a}/terminal/tickets"));
    let ticket = ticket.ticket.as_str();
    assert_eq!(
        connect(
            &forge,
            &format!("/v1/vms/{b}/terminal?ticket={ticket}"),
            None
        )
        .unwrap_err(),
        "HTTP 401"
    );
    // A page on another site cannot open a terminal with the browser's
    // credentials (cross-site WebSocket hijacking); the forge's own pages
    // can.
    let ticket: TerminalTicket = forge.send_empty("POST", &format!("/v1/vms/{a}/terminal/tickets"));
    let path = format!("/v1/vms/{a}/terminal?ticket={}", ticket.ticket);
    for credentials in [
        (path.as_str(), None),
        (
            &*format!("/v1/vms/{a}/terminal"),
            Some(forge.admin_token.as_str()),
        ),
    ] {
        assert_eq!(
            connect_from(
                &forge,
                credentials.0,
                credentials.1,
                Some("http://evil.example")
            )
            .unwrap_err(),
            "HTTP 403"
        );
    }
    let mut socket = connect_from(&forge, &path, None, Some(&forge.url)).unwrap();
    socket
        .send(Message::Binary(b"echo sa\"\"me-origin\r".to_vec().into()))
        .unwrap();
    read_until(&mut socket, "same-origin", Duration::from_secs(20));
    drop(socket);

    // An unknown VM is a 404, not a socket that closes at once.
    assert_eq!(
        connect(&forge, "/v1/vms/nope/terminal", Some(&forge.admin_token)).unwrap_err(),
        "HTTP 404"
    );
}
