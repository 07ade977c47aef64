//! A WebSocket client of a VM's terminal (`/v1/vms/{id}/terminal`), for
//! the tests that type into one.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::TestForge;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

pub type Socket = WebSocket<TcpStream>;

/// Opens the terminal at `path` of `forge`, with a bearer `token` and,
/// as a browser on the page `origin` would, an `Origin` header.
pub fn connect_from(
    forge: &TestForge,
    path: &str,
    token: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, String> {
    let url = format!("{}{path}", forge.url.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    let host = forge.url.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(format!("HTTP {}", response.status().as_u16()))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Reads terminal output until it contains `needle`; returns all of it.
pub fn read_until(socket: &mut Socket, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    while Instant::now() < deadline {
        match socket.read() {
            Ok(Message::Binary(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Message::Close(frame)) => panic!("terminal closed: {frame:?}; output: {seen}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(error) => panic!("reading the terminal failed: {error}; output: {seen}"),
        }
        if seen.contains(needle) {
            return seen;
        }
    }
    panic!("{needle:?} did not appear within {within:?}; output: {seen:?}");
}

/// Types `command` into VM `vm`'s terminal through `forge` (as the admin)
/// and returns the lines of output until the `done` echoed after it (the
/// word is split where typed, so the echoed command line cannot match).
#[allow(dead_code)] // Not every test including this file types a command.
pub fn run_in_shell(forge: &TestForge, vm: &str, command: &str) -> Vec<String> {
    let mut shell = connect_from(
        forge,
        &format!("/v1/vms/{vm}/terminal"),
        Some(&forge.admin_token),
        None,
    )
    .expect("a terminal");
    shell
        .send(Message::Binary(
            format!("{command}; echo do\"\"ne\r").into_bytes().into(),
        ))
        .expect("typed");
    read_until(&mut shell, "done", Duration::from_secs(20))
        .split(['\r', '\n'])
        .map(str::to_owned)
        .collect()
}
