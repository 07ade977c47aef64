//! Fuzz targets for the parsers and devices a hostile peer reaches, one
//! function per target over arbitrary bytes. `fuzz/` runs them under cargo-fuzz
//! (`scripts/fuzz.sh [SECONDS]`); `tests/corpora.rs` replays every input in
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through the same
//! functions in the normal test suite, so a crash once found stays fixed.
//!
//! A target panics when an input breaks a property the parser promises
//! beyond not crashing (a round trip, chunking not mattering, a header
//! that must never be forwarded); that is how libFuzzer sees it.

use forge::git::pktline::{self, CommandReader, Progress};

/// A target: any bytes in, a panic when a property breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name cargo-fuzz and the corpus directories use.
pub const TARGETS: &[(&str, Target)] = &[
    ("pktline_push", pktline_push),
    ("pktline_report", pktline_report),
    ("egress_head", egress_head),
    ("agent_frames", agent_frames),
    ("webhook_filter", webhook_filter),
    ("vsock_muxer", vsock_muxer),
    ("snapshot_state", snapshot_state),
    ("layered_disk", layered_disk),
    ("virtio_mmio", virtio_mmio),
];

/// A push's command section (`git-receive-pack`, from any client):
/// fed whole or in pieces (the first byte picks the piece size), the
/// reader must come to the same answer.
pub fn pktline_push(data: &[u8]) {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let whole = CommandReader::default().feed(input);
    let mut reader = CommandReader::default();
    let mut pieces = Ok(Progress::NeedMore);
    for chunk in input.chunks(usize::from(piece).max(1)) {
        pieces = reader.feed(chunk);
        if !matches!(pieces, Ok(Progress::NeedMore)) {
            break;
        }
    }
    if input.is_empty() {
        return;
    }
    assert_eq!(
        format!("{whole:?}"),
        format!("{pieces:?}"),
        "fed whole and in pieces of {piece}"
    );
}

/// A push report (from `git-receive-pack`'s reply, git's side): what
/// parses encodes and parses back to the same report, with and without
/// side-band.
pub fn pktline_report(data: &[u8]) {
    let Some((&flags, reply)) = data.split_first() else {
        return;
    };
    let side_band = flags & 1 == 1;
    let Some(report) = pktline::parse_report(reply, side_band) else {
        return;
    };
    let band = side_band.then_some(1000);
    let again = pktline::parse_report(&pktline::encode_report(&report, band), side_band);
    assert_eq!(again.as_ref(), Some(&report), "the report round-trips");
}

/// The egress proxy's request head (from a sandbox): never a panic, and
/// what goes upstream is one head with no `Proxy-*` header.
pub fn egress_head(data: &[u8]) {
    forge::fuzzing::egress_head(data);
}

/// Agent protocol frames as either side reads them (the agent reads the
/// host's, the host reads a possibly hostile agent's): decode a stream of
/// frames until it fails; every frame decoded encodes and decodes back to
/// itself.
pub fn agent_frames(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (mut input, mut buf) = (data, Vec::new());
        while let Ok(Some(frame)) = agent_proto::frame::read_frame(&mut input, &mut buf).await {
            let mut bytes = Vec::new();
            agent_proto::frame::encode_into(&frame, &mut bytes).expect("a decoded frame encodes");
            let again = agent_proto::frame::read_frame(&mut bytes.as_slice(), &mut buf)
                .await
                .expect("an encoded frame decodes");
            assert_eq!(again, Some(frame), "the frame round-trips");
        }
    });
}

/// Webhook filters (from any repository admin): globs and event names,
/// one per line, compiled, then matched against candidates; never a panic.
/// The first line is the candidate, the rest patterns; a line starting
/// with `e:` is an event name.
pub fn webhook_filter(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let candidate = lines.next().unwrap_or_default();
    let (events, globs): (Vec<&str>, Vec<&str>) = lines.partition(|l| l.starts_with("e:"));
    let events: Vec<&str> = events.iter().map(|e| &e[2..]).collect();
    if let Ok(filter) = hooks::filter::EventFilter::new(&events) {
        let _ = filter;
    }
    if let Ok(filter) = hooks::filter::GlobFilter::new("branches", &globs) {
        let _ = filter.matches(candidate);
        let _ = filter.is_empty();
    }
}

/// The VMM's vsock muxer driven by a guest (any packet, in any order, read
/// or never read): what it holds stays within its bounds.
pub fn vsock_muxer(data: &[u8]) {
    vmm::fuzzing::vsock_muxer(data);
}

/// A guest driving a virtio-mmio device's registers and queues from
/// arbitrary guest memory (`vmm::fuzzing::virtio_mmio`): block, rng and
/// vsock, the transport's state machine, descriptor chains.
pub fn virtio_mmio(data: &[u8]) {
    vmm::fuzzing::virtio_mmio(data);
}

/// A VMM snapshot's state file (`vmm::snapshot::decode`). Inputs starting
/// with `R` are read as a whole file; others are a payload the target
/// frames with a valid header and checksum, so that the JSON is reached.
/// What decodes encodes to bytes that decode and encode to the same bytes.
pub fn snapshot_state(data: &[u8]) {
    let path = std::path::Path::new("state");
    let bytes = match data.split_first() {
        Some((b'R', raw)) => raw.to_vec(),
        _ => {
            let mut framed = vmm::snapshot::MAGIC.to_vec();
            framed.extend_from_slice(&vmm::snapshot::VERSION.to_le_bytes());
            framed.extend_from_slice(&(data.len() as u64).to_le_bytes());
            framed.extend_from_slice(&vmm::snapshot::crc32(data).to_le_bytes());
            framed.extend_from_slice(data);
            framed
        }
    };
    let Ok(snapshot) = vmm::snapshot::decode(path, &bytes) else {
        return;
    };
    let once = vmm::snapshot::encode(&snapshot).expect("a decoded snapshot encodes");
    let again = vmm::snapshot::decode(path, &once).expect("an encoded snapshot decodes");
    let twice = vmm::snapshot::encode(&again).expect("encodes again");
    assert_eq!(once, twice, "the state file round-trips");
}

/// A disk layer file (`vmm::disk::LayeredDisk`), as a VM's own earlier run
/// left it: the first byte sizes the base (in 512-byte sectors), the rest
/// is the layer. Opened read-only, every block reads; opened as the
/// writable top, a block written reads back as written.
pub fn layered_disk(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUN: AtomicU64 = AtomicU64::new(0);
    let Some((&sectors, layer)) = data.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "fuzz-layered-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let (base, top) = (dir.join("base"), dir.join("layer"));
    std::fs::write(&base, vec![0xa5; usize::from(sectors) * 512]).expect("the base");
    std::fs::write(&top, layer).expect("the layer");
    let layers = [top];
    if let Ok(disk) = vmm::disk::LayeredDisk::open(&base, &layers, true) {
        let mut block = vec![0u8; 4096];
        let mut offset = 0;
        while offset < disk.size() {
            let len = (disk.size() - offset).min(4096) as usize;
            let _ = disk.read_at(offset, &mut block[..len]);
            offset += len as u64;
        }
    }
    if let Ok(mut disk) = vmm::disk::LayeredDisk::open(&base, &layers, false)
        && disk.size() >= 512
    {
        let written = vec![0x3c; 512];
        if disk.write_at(0, &written).is_ok() {
            let mut back = vec![0u8; 512];
            disk.read_at(0, &mut back).expect("a written block reads");
            assert_eq!(back, written, "a write reads back");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
