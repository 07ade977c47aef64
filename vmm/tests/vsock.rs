//! virtio-vsock against the vsock test guest: 1 MiB echoed byte-exact in
//! both directions, over Firecracker's Unix-socket convention.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::{TestVm, wait_timeout};
use serde_json::json;

const MIB: usize = 1 << 20;

fn guest_pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|o| (o.wrapping_mul(131).wrapping_add(o >> 12)) as u8)
        .collect()
}

fn host_pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn vsock_echoes_one_mib_byte_exact_both_ways() {
    let vm = TestVm::new("vsock");
    let uds = vm.dir.path("v.sock");
    let vm = vm.set("vsock", json!({ "guest_cid": 3, "uds_path": uds }));

    // Guest -> host: the guest connects to port 5000 = "<uds>_5000".
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).expect("bind _5000");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("guest connection");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    s.write_all(&buf[..n]).expect("echo back");
                }
                Err(e) => panic!("echo read: {e}"),
            }
        }
        got
    });
    let mut child = vm.spawn();
    let got = echo.join().expect("echo thread");
    assert_eq!(got.len(), MIB, "guest sent 1 MiB");
    assert!(got == guest_pattern(MIB), "guest->host bytes differ");
    vm.wait_serial("VSOCK GUEST->HOST OK 1048576", Duration::from_secs(30));

    // Host -> guest: CONNECT 1234, guest echoes.
    vm.wait_serial("VSOCK LISTENING 1234", Duration::from_secs(30));
    let mut bad = UnixStream::connect(&uds).expect("connect vsock uds");
    bad.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    bad.write_all(b"HELLO 1234\n").expect("bad handshake");
    let mut reply = String::new();
    bad.read_to_string(&mut reply).expect("reply then close");
    assert!(reply.starts_with("ERR"), "bad handshake reply {reply:?}");
    let stream = UnixStream::connect(&uds).expect("connect vsock uds");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    writer.write_all(b"CONNECT 1234\n").expect("CONNECT");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("OK line");
    let port: u32 = line
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("bad handshake reply {line:?}"));
    assert!(port >= 1 << 30, "host port {port}");
    let data = host_pattern(MIB);
    let send = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&send).expect("send 1 MiB");
        writer
    });
    let mut back = vec![0u8; MIB];
    reader.read_exact(&mut back).expect("read echo");
    assert!(back == data, "host->guest->host bytes differ");
    let writer = w.join().expect("writer");
    writer
        .shutdown(std::net::Shutdown::Both)
        .expect("close stream");
    drop(reader);

    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}, serial: {}", vm.serial());
    assert!(vm.serial().contains("VSOCK HOST->GUEST OK 1048576"));
    assert!(!uds.exists(), "vsock socket removed at exit");
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_is_refused() {
    let vm = TestVm::new("vsock");
    let uds = vm.dir.path("v.sock");
    let vm = vm.set("vsock", json!({ "guest_cid": 3, "uds_path": uds }));
    // No listener on "<uds>_5000": the guest's connect is refused.
    let (status, serial, _) = vm.run(Duration::from_secs(30));
    assert!(status.success());
    assert!(
        serial.contains("FAIL: connect to host port 5000 refused"),
        "serial: {serial}"
    );
}
