//! Git's pkt-line framing, as far as the forge needs to read it.
//!
//! A pkt-line is four hex digits giving the length of the line including
//! those four bytes, then the payload; `0000` is a flush. A push request
//! (`git-receive-pack`) starts with optional `shallow <oid>` lines, then one
//! command per ref, `<old-oid> <new-oid> <ref>` (the first carries
//! `\0<capabilities>`), then a flush; push options and the pack follow. The
//! reply carries the report (`unpack ok|<error>`, then `ok <ref>` or
//! `ng <ref> <reason>` per command), inside side-band channel 1 when the
//! client asked for `side-band-64k`.

use std::fmt;

/// An object id as 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub type Oid = String;

/// One ref update requested by a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: Oid,
    pub new: Oid,
    pub refname: String,
}

impl Command {
    pub fn is_create(&self) -> bool {
        is_zero(&self.old)
    }

    pub fn is_delete(&self) -> bool {
        is_zero(&self.new)
    }
}

pub fn is_zero(oid: &str) -> bool {
    oid.bytes().all(|b| b == b'0')
}

/// The command section of a push request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushRequest {
    pub commands: Vec<Command>,
    pub capabilities: Vec<String>,
    /// `git push -o` options, when the client asked for `push-options`.
    pub options: Vec<String>,
}

impl PushRequest {
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|cap| cap == name)
    }

    /// Whether the client asked for a report (`report-status`, or its v2).
    pub fn wants_report(&self) -> bool {
        self.has_capability("report-status") || self.has_capability("report-status-v2")
    }

    /// The largest side-band packet the client takes, when it asked for
    /// side-band: 65520 bytes with `side-band-64k`, 1000 with `side-band`.
    pub fn side_band(&self) -> Option<usize> {
        if self.has_capability("side-band-64k") {
            Some(65520)
        } else if self.has_capability("side-band") {
            Some(1000)
        } else {
            None
        }
    }
}

/// Why a request's pkt-lines were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PktError {
    #[error("The pkt-line length {0:?} is not four hex digits")]
    BadLength(String),
    #[error("A pkt-line of length {0} is too short")]
    TooShort(usize),
    #[error("The push command {0:?} is not `<old> <new> <ref>`")]
    BadCommand(String),
    #[error("The push request's command section is longer than {0} bytes")]
    TooLong(usize),
    #[error(
        "A push may carry at most {MAX_PUSH_OPTIONS} push options of {MAX_PUSH_OPTION_BYTES} bytes each"
    )]
    TooManyOptions,
}

/// The result of feeding bytes to [`CommandReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    NeedMore,
    /// The command section ended after this many bytes of the input so far.
    Done(PushRequest, usize),
}

/// Reads the command section of a push incrementally, from a stream whose
/// chunks arrive in any sizes. The bytes themselves are passed on untouched
/// by the caller; this only watches them. Each line is parsed once, when
/// it is complete: a sender dribbling bytes costs time linear in what it
/// sends, not quadratic.
#[derive(Debug, Default)]
pub struct CommandReader {
    /// The bytes from the first incomplete line on.
    pending: Vec<u8>,
    /// How many bytes before `pending` were complete lines.
    done: usize,
    /// The commands of those lines.
    request: PushRequest,
    /// Bytes parsed so far, counting a byte each time it is looked at.
    examined: usize,
    /// The commands ended; push options are being read.
    in_options: bool,
}

/// A command section larger than this is refused (about 40,000 refs).
pub const MAX_COMMAND_SECTION: usize = 8 << 20;

/// Push options one push may carry, and the longest one: a push is
/// refused beyond them before anything is kept (git sends one line per
/// `-o`).
pub const MAX_PUSH_OPTIONS: usize = 100;
pub const MAX_PUSH_OPTION_BYTES: usize = 8192;

impl CommandReader {
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Progress, PktError> {
        self.pending.extend_from_slice(chunk);
        let mut at = 0;
        let ended = loop {
            let Some(head) = self.pending.get(at..at + 4) else {
                break false;
            };
            let length = parse_length(head)?;
            if length == 0 {
                at += 4;
                // The flush ends the commands (straight away: git's probe
                // before a large push has none); push options, when the
                // client announced them, follow up to a second flush.
                let options_follow = !self.in_options
                    && !self.request.commands.is_empty()
                    && self.request.has_capability("push-options");
                if options_follow {
                    self.in_options = true;
                    continue;
                }
                break true;
            }
            if length < 4 {
                return Err(PktError::TooShort(length));
            }
            let Some(payload) = self.pending.get(at + 4..at + length) else {
                break false;
            };
            if self.in_options {
                if self.request.options.len() >= MAX_PUSH_OPTIONS
                    || payload.len() > MAX_PUSH_OPTION_BYTES
                {
                    return Err(PktError::TooManyOptions);
                }
                let option = String::from_utf8_lossy(payload);
                self.request
                    .options
                    .push(option.trim_end_matches('\n').to_owned());
            } else {
                parse_command_line(payload, &mut self.request)?;
            }
            self.examined += length;
            at += length;
        };
        self.pending.drain(..at);
        self.done += at;
        if ended {
            Ok(Progress::Done(std::mem::take(&mut self.request), self.done))
        } else if self.done + self.pending.len() > MAX_COMMAND_SECTION {
            Err(PktError::TooLong(MAX_COMMAND_SECTION))
        } else {
            Ok(Progress::NeedMore)
        }
    }
}

fn parse_length(head: &[u8]) -> Result<usize, PktError> {
    let text = std::str::from_utf8(head)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()));
    let text =
        text.ok_or_else(|| PktError::BadLength(String::from_utf8_lossy(head).into_owned()))?;
    usize::from_str_radix(text, 16).map_err(|_| PktError::BadLength(text.to_owned()))
}

fn parse_command_line(payload: &[u8], request: &mut PushRequest) -> Result<(), PktError> {
    let (line, caps) = match payload.iter().position(|b| *b == 0) {
        Some(nul) => (&payload[..nul], Some(&payload[nul + 1..])),
        None => (payload, None),
    };
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\n');
    if line.starts_with("shallow ") {
        return Ok(());
    }
    let bad = || PktError::BadCommand(line.chars().take(200).collect());
    let mut parts = line.splitn(3, ' ');
    let (Some(old), Some(new), Some(refname)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !is_oid(old) || !is_oid(new) || old.len() != new.len() || !refname.starts_with("refs/") {
        return Err(bad());
    }
    if let Some(caps) = caps {
        request.capabilities = String::from_utf8_lossy(caps)
            .trim_end_matches('\n')
            .split(' ')
            .filter(|cap| !cap.is_empty())
            .map(str::to_owned)
            .collect();
    }
    request.commands.push(Command {
        old: old.to_owned(),
        new: new.to_owned(),
        refname: refname.to_owned(),
    });
    Ok(())
}

fn is_oid(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What receive-pack reported for one ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefStatus {
    Ok,
    Rejected(String),
}

/// The parsed report of a push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `None` when unpacking succeeded, else git's reason.
    pub unpack_error: Option<String>,
    pub refs: Vec<(String, RefStatus)>,
}

impl fmt::Display for RefStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefStatus::Ok => f.write_str("ok"),
            RefStatus::Rejected(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

/// Parses receive-pack's reply. With `side_band`, the report is the
/// concatenation of channel-1 payloads; other channels are progress.
/// Returns `None` when no report is found (the client did not ask for one,
/// or the process died before writing it).
pub fn parse_report(reply: &[u8], side_band: bool) -> Option<Report> {
    let lines = split_pkt_lines(reply)?;
    let report_bytes = if side_band {
        let mut data = Vec::new();
        for line in lines {
            if let Some((1, payload)) = line.split_first() {
                data.extend_from_slice(payload);
            }
        }
        data
    } else {
        let mut data = Vec::new();
        for line in lines {
            data.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
            data.extend_from_slice(line);
        }
        data
    };
    let mut report = Report::default();
    let mut saw_unpack = false;
    for line in split_pkt_lines(&report_bytes)? {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\n');
        if let Some(status) = line.strip_prefix("unpack ") {
            saw_unpack = true;
            if status != "ok" {
                report.unpack_error = Some(status.to_owned());
            }
        } else if let Some(refname) = line.strip_prefix("ok ") {
            report.refs.push((refname.to_owned(), RefStatus::Ok));
        } else if let Some(rest) = line.strip_prefix("ng ") {
            let (refname, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            // A reason is one line (as `encode_report` writes it), even
            // when a pkt-line carried more.
            report.refs.push((
                refname.to_owned(),
                RefStatus::Rejected(reason.replace('\n', " ")),
            ));
        }
    }
    saw_unpack.then_some(report)
}

/// Writes a report as receive-pack does: `unpack …`, then `ok <ref>` or
/// `ng <ref> <reason>` per ref, then a flush; inside side-band channel 1,
/// in packets of at most `side_band` bytes, when the client asked for it
/// (see [`PushRequest::side_band`]). Reasons hold no newline.
pub fn encode_report(report: &Report, side_band: Option<usize>) -> Vec<u8> {
    let mut inner = pkt_line(&format!(
        "unpack {}\n",
        report.unpack_error.as_deref().unwrap_or("ok")
    ));
    for (refname, status) in &report.refs {
        inner.push_str(&pkt_line(&match status {
            RefStatus::Ok => format!("ok {refname}\n"),
            RefStatus::Rejected(reason) => format!("ng {refname} {}\n", reason.replace('\n', " ")),
        }));
    }
    inner.push_str("0000");
    let Some(packet) = side_band else {
        return inner.into_bytes();
    };
    let mut framed = Vec::with_capacity(inner.len() + 16);
    push_band(&mut framed, 1, inner.as_bytes(), packet);
    framed.extend_from_slice(b"0000");
    framed
}

/// Appends `data` on side-band `channel` in packets of at most `packet`
/// bytes: four of length and one of channel, then the data.
fn push_band(out: &mut Vec<u8>, channel: u8, data: &[u8], packet: usize) {
    for chunk in data.chunks(packet - 5) {
        out.extend_from_slice(format!("{:04x}", chunk.len() + 5).as_bytes());
        out.push(channel);
        out.extend_from_slice(chunk);
    }
}

/// Adds `lines` to a side-band reply as progress (channel 2), which `git
/// push` prints as `remote: <line>`, before the reply's final flush. A
/// reply that does not end with a flush is returned as it is.
pub fn with_progress(mut reply: Vec<u8>, lines: &[String], side_band: usize) -> Vec<u8> {
    if !reply.ends_with(b"0000") || lines.is_empty() {
        return reply;
    }
    reply.truncate(reply.len() - 4);
    for line in lines {
        let text = format!("{}\n", line.replace(['\n', '\r'], " "));
        push_band(&mut reply, 2, text.as_bytes(), side_band);
    }
    reply.extend_from_slice(b"0000");
    reply
}

/// Splits complete pkt-lines (flushes dropped); `None` on malformed framing.
fn split_pkt_lines(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut lines = Vec::new();
    while bytes.len() >= 4 {
        let length = parse_length(&bytes[..4]).ok()?;
        if length < 4 {
            // 0000 flush, 0001 delim, 0002 response-end.
            bytes = &bytes[4..];
            continue;
        }
        lines.push(bytes.get(4..length)?);
        bytes = &bytes[length..];
    }
    Some(lines)
}

/// Frames `payload` as one pkt-line.
pub fn pkt_line(payload: &str) -> String {
    format!("{:04x}{payload}", payload.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_goes_on_channel_two_before_the_final_flush() {
        let report = Report {
            unpack_error: None,
            refs: vec![("refs/heads/main".into(), RefStatus::Ok)],
        };
        let reply = encode_report(&report, Some(65520));
        let with = with_progress(reply.clone(), &["Run #3: http://f/-/runs/3".into()], 65520);
        assert!(with.starts_with(&reply[..reply.len() - 4]));
        let line = "Run #3: http://f/-/runs/3\n";
        let packet = format!("{:04x}\x02{line}0000", line.len() + 5);
        assert!(
            with.ends_with(packet.as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&with)
        );
        // The report still parses; a reply without a final flush is left alone.
        assert_eq!(parse_report(&with, true), parse_report(&reply, true));
        assert_eq!(
            with_progress(b"0008abc".to_vec(), &["x".into()], 65520),
            b"0008abc"
        );
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn request() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(
            pkt_line(&format!(
                "{Z} {A} refs/heads/main\0report-status side-band-64k\n"
            ))
            .bytes(),
        );
        bytes.extend(pkt_line(&format!("{A} {Z} refs/heads/old\n")).bytes());
        bytes.extend(b"0000PACK...");
        bytes
    }

    #[test]
    fn reads_commands_in_any_chunking() {
        let bytes = request();
        for split in [1, 3, 7, 50, bytes.len()] {
            let mut reader = CommandReader::default();
            let mut result = None;
            for chunk in bytes.chunks(split) {
                if let Progress::Done(request, end) = reader.feed(chunk).expect("valid") {
                    result = Some((request, end));
                    break;
                }
            }
            let (request, end) = result.expect("section ends");
            assert_eq!(&bytes[end..], b"PACK...");
            assert_eq!(request.commands.len(), 2);
            assert!(request.commands[0].is_create());
            assert!(request.commands[1].is_delete());
            assert!(request.has_capability("side-band-64k"));
        }
    }

    #[test]
    fn push_options_follow_the_commands_when_announced() {
        let mut bytes = Vec::new();
        bytes.extend(
            pkt_line(&format!(
                "{Z} {A} refs/heads/main\0report-status push-options\n"
            ))
            .bytes(),
        );
        bytes.extend(b"0000");
        bytes.extend(pkt_line("ci.skip\n").bytes());
        bytes.extend(pkt_line("ci.variable=MODE=fast").bytes());
        bytes.extend(b"0000PACK...");
        for split in [1, 5, bytes.len()] {
            let mut reader = CommandReader::default();
            let done =
                bytes
                    .chunks(split)
                    .find_map(|chunk| match reader.feed(chunk).expect("valid") {
                        Progress::Done(request, end) => Some((request, end)),
                        Progress::NeedMore => None,
                    });
            let (request, end) = done.expect("the section ends");
            assert_eq!(&bytes[end..], b"PACK...", "split {split}");
            assert_eq!(request.options, ["ci.skip", "ci.variable=MODE=fast"]);
        }
        // Without the capability the pack follows the first flush.
        let (request, end) = match CommandReader::default().feed(&request()).expect("valid") {
            Progress::Done(request, end) => (request, end),
            Progress::NeedMore => panic!("the section ends"),
        };
        assert!(request.options.is_empty());
        assert_eq!(&request_bytes_after(end), b"PACK...");
    }

    #[test]
    fn push_options_are_bounded() {
        let mut bytes = Vec::new();
        bytes.extend(pkt_line(&format!("{Z} {A} refs/heads/main\0push-options\n")).bytes());
        bytes.extend(b"0000");
        for _ in 0..=MAX_PUSH_OPTIONS {
            bytes.extend(b"0005x");
        }
        let mut reader = CommandReader::default();
        assert_eq!(reader.feed(&bytes), Err(PktError::TooManyOptions));
        let mut long = Vec::new();
        long.extend(pkt_line(&format!("{Z} {A} refs/heads/main\0push-options\n")).bytes());
        long.extend(b"0000");
        long.extend(pkt_line(&"x".repeat(MAX_PUSH_OPTION_BYTES + 1)).bytes());
        assert_eq!(
            CommandReader::default().feed(&long),
            Err(PktError::TooManyOptions)
        );
    }

    fn request_bytes_after(end: usize) -> Vec<u8> {
        request()[end..].to_vec()
    }

    #[test]
    fn a_dribbled_section_is_parsed_once() {
        // 20,000 commands sent a byte at a time: each line is parsed once.
        let mut bytes = Vec::new();
        for i in 0..20_000 {
            bytes.extend(pkt_line(&format!("{Z} {A} refs/heads/b{i}\n")).bytes());
        }
        let section = bytes.len();
        bytes.extend(b"0000PACK");
        let mut reader = CommandReader::default();
        let mut done = None;
        for byte in bytes.chunks(1) {
            if let Progress::Done(request, end) = reader.feed(byte).expect("valid") {
                done = Some((request, end));
                break;
            }
        }
        let (request, end) = done.expect("the section ends");
        assert_eq!((request.commands.len(), end), (20_000, section + 4));
        assert_eq!(reader.examined, section, "bytes parsed more than once");
    }

    #[test]
    fn refuses_malformed_lines() {
        let mut reader = CommandReader::default();
        assert!(matches!(reader.feed(b"zz12"), Err(PktError::BadLength(_))));
        let mut reader = CommandReader::default();
        assert_eq!(
            reader.feed(b"0000"),
            Ok(Progress::Done(PushRequest::default(), 4))
        );
        let mut reader = CommandReader::default();
        let line = pkt_line(&format!("{A} {A} not-a-ref\n"));
        assert!(matches!(
            reader.feed(line.as_bytes()),
            Err(PktError::BadCommand(_))
        ));
        let mut reader = CommandReader::default();
        assert_eq!(reader.feed(b"0002"), Err(PktError::TooShort(2)));
    }

    #[test]
    fn parses_side_band_report() {
        let inner = format!(
            "{}{}{}0000",
            pkt_line("unpack ok\n"),
            pkt_line("ok refs/heads/main\n"),
            pkt_line("ng refs/heads/dev non-fast-forward\n")
        );
        let mut reply = String::new();
        reply.push_str(&pkt_line("\u{2}progress...\n"));
        reply.push_str(&pkt_line(&format!("\u{1}{inner}")));
        reply.push_str("0000");
        let report = parse_report(reply.as_bytes(), true).expect("report");
        assert_eq!(report.unpack_error, None);
        assert_eq!(report.refs[0], ("refs/heads/main".into(), RefStatus::Ok));
        assert_eq!(
            report.refs[1],
            (
                "refs/heads/dev".into(),
                RefStatus::Rejected("non-fast-forward".into())
            )
        );
        let report = plain_report(&[
            "unpack index-pack abnormal exit\n",
            "ng refs/heads/main unpacker error\n",
        ])
        .expect("report");
        assert_eq!(
            report.unpack_error.as_deref(),
            Some("index-pack abnormal exit")
        );
    }

    /// A report without side-band: `lines` as pkt-lines, then a flush.
    fn plain_report(lines: &[&str]) -> Option<Report> {
        let mut reply: String = lines.iter().map(|l| pkt_line(l)).collect();
        reply.push_str("0000");
        parse_report(reply.as_bytes(), false)
    }

    #[test]
    fn a_reason_spanning_lines_parses_as_one_line_and_round_trips() {
        // One pkt-line whose `ng` reason holds a newline (found by the
        // pktline_report fuzz target): parsed as encode_report writes it.
        let report =
            plain_report(&["unpack ok\n", "ng refs/heads/x hook\ndeclined\n"]).expect("a report");
        assert_eq!(
            report.refs,
            vec![(
                "refs/heads/x".to_owned(),
                RefStatus::Rejected("hook declined".into())
            )]
        );
        assert_eq!(
            parse_report(&encode_report(&report, None), false),
            Some(report)
        );
    }

    #[test]
    fn an_encoded_report_parses_back_in_every_framing() {
        let report = Report {
            unpack_error: None,
            refs: vec![
                (
                    "refs/heads/main".into(),
                    RefStatus::Rejected("x".repeat(2500)),
                ),
                ("refs/heads/dev".into(), RefStatus::Ok),
            ],
        };
        let mut request = PushRequest::default();
        assert_eq!(request.side_band(), None);
        assert!(!request.wants_report());
        let plain = encode_report(&report, request.side_band());
        assert_eq!(parse_report(&plain, false), Some(report.clone()));
        for (capability, packet) in [("side-band", 1000), ("side-band-64k", 65520)] {
            request.capabilities = vec![capability.into(), "report-status-v2".into()];
            assert!(request.wants_report());
            assert_eq!(request.side_band(), Some(packet));
            let framed = encode_report(&report, request.side_band());
            assert!(
                split_pkt_lines(&framed)
                    .expect("framed")
                    .iter()
                    .all(|line| line.len() + 4 <= packet && line[0] == 1),
                "{capability}"
            );
            assert_eq!(
                parse_report(&framed, true),
                Some(report.clone()),
                "{capability}"
            );
        }
    }
}
