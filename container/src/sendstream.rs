//! A check of a `btrfs send` stream from another host before `btrfs
//! receive` (which runs as root) sees it: [`Checked`] passes the stream
//! through command by command and fails on the first one outside what a
//! full send of one sandbox's subvolume holds.
//!
//! `btrfs receive` trusts its stream: it snapshots and clones from any
//! subvolume of the file system named by UUID, makes device nodes and
//! writes to them, and sets any extended attribute. A node that exports a
//! sandbox sends version 1 of the format, in full (no parent), so this
//! allows exactly that: the stream's own subvolume first (a plain name),
//! then files, directories, links, FIFOs, sockets, character devices 0:0
//! (overlayfs whiteouts), writes, truncations, owners, modes and times,
//! clones within the stream's own subvolume, and extended attributes in
//! the `user.`, `trusted.overlay.` namespaces, file capabilities and ACLs.
//! Every path is relative, without `..`. Refused: snapshots, clones from
//! elsewhere, block devices and other device numbers, `update_extent`,
//! every version 2 command (fallocate, encoded writes), other attributes.
//!
//! The format (btrfs-progs `send.h`): `btrfs-stream\0`, a little-endian
//! `u32` version; then commands, each a `u32` payload length, a `u16`
//! command and a `u32` CRC, then the payload: attributes, each a `u16`
//! type, a `u16` length and its bytes.

use std::io::Read;

const MAGIC: &[u8; 13] = b"btrfs-stream\0";
/// The longest command taken (version 1 sends at most 64 KiB of data each).
const MAX_COMMAND_BYTES: u32 = 1 << 20;

// Commands.
const SUBVOL: u16 = 1;
const MKFILE: u16 = 3;
const MKDIR: u16 = 4;
const MKNOD: u16 = 5;
const MKFIFO: u16 = 6;
const MKSOCK: u16 = 7;
const SYMLINK: u16 = 8;
const RENAME: u16 = 9;
const LINK: u16 = 10;
const UNLINK: u16 = 11;
const RMDIR: u16 = 12;
const SET_XATTR: u16 = 13;
const REMOVE_XATTR: u16 = 14;
const WRITE: u16 = 15;
const CLONE: u16 = 16;
const TRUNCATE: u16 = 17;
const CHMOD: u16 = 18;
const CHOWN: u16 = 19;
const UTIMES: u16 = 20;
const END: u16 = 21;

// Attributes.
const A_UUID: u16 = 1;
const A_MODE: u16 = 5;
const A_RDEV: u16 = 8;
const A_XATTR_NAME: u16 = 13;
const A_PATH: u16 = 15;
const A_PATH_TO: u16 = 16;
const A_PATH_LINK: u16 = 17;
const A_CLONE_UUID: u16 = 20;
const A_CLONE_PATH: u16 = 22;

/// Extended attribute names a sandbox's layer may carry (prefixes).
const XATTRS: [&str; 5] = [
    "user.",
    "trusted.overlay.",
    "security.capability",
    "system.posix_acl_access",
    "system.posix_acl_default",
];

fn refused(reason: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the btrfs stream is refused: {reason}"),
    )
}

/// A `btrfs send` stream read through the checks of the module docs.
pub struct Checked<R> {
    input: R,
    /// What was read and checked, not yet handed on.
    ready: Vec<u8>,
    handed: usize,
    started: bool,
    /// The UUID of the stream's subvolume, once its command came.
    subvolume: Option<Vec<u8>>,
    ended: bool,
}

impl<R: Read> Checked<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            ready: Vec::new(),
            handed: 0,
            started: false,
            subvolume: None,
            ended: false,
        }
    }

    /// Reads exactly `n` bytes onto `ready`; `false` at a clean end of the
    /// input before the first of them.
    fn take(&mut self, n: usize) -> std::io::Result<bool> {
        let start = self.ready.len();
        self.ready.resize(start + n, 0);
        let mut filled = 0;
        while filled < n {
            match self.input.read(&mut self.ready[start + filled..]) {
                Ok(0) if filled == 0 => {
                    self.ready.truncate(start);
                    return Ok(false);
                }
                Ok(0) => return Err(refused("it ends inside a command".into())),
                Ok(read) => filled += read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// Reads and checks the next unit (the header, or one command) into
    /// `ready`; `false` at the end of the stream.
    fn next_unit(&mut self) -> std::io::Result<bool> {
        self.ready.clear();
        self.handed = 0;
        if !self.started {
            if !self.take(MAGIC.len() + 4)? {
                return Err(refused("it is empty".into()));
            }
            if &self.ready[..MAGIC.len()] != MAGIC {
                return Err(refused("it is not a btrfs send stream".into()));
            }
            let version = u32::from_le_bytes(self.ready[13..17].try_into().expect("4 bytes"));
            if version != 1 {
                return Err(refused(format!("version {version}, not 1")));
            }
            self.started = true;
            return Ok(true);
        }
        if !self.take(10)? {
            if !self.ended {
                return Err(refused("it ends before its end command".into()));
            }
            return Ok(false);
        }
        if self.ended {
            return Err(refused("it goes on after its end command".into()));
        }
        let length = u32::from_le_bytes(self.ready[..4].try_into().expect("4 bytes"));
        let command = u16::from_le_bytes(self.ready[4..6].try_into().expect("2 bytes"));
        if length > MAX_COMMAND_BYTES {
            return Err(refused(format!("a command of {length} bytes")));
        }
        if !self.take(length as usize)? {
            return Err(refused("it ends inside a command".into()));
        }
        let payload = self.ready[10..].to_vec();
        self.check(command, &payload)?;
        Ok(true)
    }

    fn check(&mut self, command: u16, payload: &[u8]) -> std::io::Result<()> {
        let attributes = attributes(payload)?;
        let get = |wanted: u16| {
            attributes
                .iter()
                .find(|(kind, _)| *kind == wanted)
                .map(|(_, value)| *value)
        };
        if self.subvolume.is_none() && command != SUBVOL {
            return Err(refused(format!(
                "command {command} comes before its subvolume"
            )));
        }
        match command {
            SUBVOL => {
                if self.subvolume.is_some() {
                    return Err(refused("a second subvolume".into()));
                }
                let name = get(A_PATH).unwrap_or_default();
                if name.is_empty() || name.contains(&b'/') || name == b".." || name == b"." {
                    return Err(refused("its subvolume's name is not a plain name".into()));
                }
                self.subvolume = Some(get(A_UUID).unwrap_or_default().to_vec());
            }
            MKFILE | MKDIR | MKFIFO | MKSOCK | SYMLINK | RENAME | UNLINK | RMDIR | WRITE
            | TRUNCATE | CHMOD | CHOWN | UTIMES => {}
            MKNOD => {
                let mode = number(get(A_MODE));
                let rdev = number(get(A_RDEV));
                if mode & 0o170000 != 0o020000 || rdev != 0 {
                    return Err(refused(
                        "a device node other than a character device 0:0".into(),
                    ));
                }
            }
            LINK => check_path(get(A_PATH_LINK).unwrap_or_default())?,
            SET_XATTR | REMOVE_XATTR => {
                let name = String::from_utf8_lossy(get(A_XATTR_NAME).unwrap_or_default());
                if !XATTRS.iter().any(|allowed| name.starts_with(allowed)) {
                    return Err(refused(format!("the extended attribute {name:?}")));
                }
            }
            CLONE => {
                if get(A_CLONE_UUID) != self.subvolume.as_deref() {
                    return Err(refused("a clone from another subvolume".into()));
                }
            }
            END => self.ended = true,
            other => return Err(refused(format!("command {other}"))),
        }
        for (kind, value) in &attributes {
            if matches!(*kind, A_PATH | A_PATH_TO | A_CLONE_PATH) && command != SUBVOL {
                check_path(value)?;
            }
        }
        Ok(())
    }
}

/// The attributes of a command's payload, in order.
fn attributes(mut payload: &[u8]) -> std::io::Result<Vec<(u16, &[u8])>> {
    let mut found = Vec::new();
    while !payload.is_empty() {
        let (Some(kind), Some(length)) = (payload.get(..2), payload.get(2..4)) else {
            return Err(refused("a cut attribute".into()));
        };
        let kind = u16::from_le_bytes(kind.try_into().expect("2 bytes"));
        let length = usize::from(u16::from_le_bytes(length.try_into().expect("2 bytes")));
        let Some(value) = payload.get(4..4 + length) else {
            return Err(refused("an attribute longer than its command".into()));
        };
        found.push((kind, value));
        payload = &payload[4 + length..];
    }
    Ok(found)
}

/// A little-endian number attribute (0 when absent or malformed).
fn number(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map_or(0, u64::from_le_bytes)
}

/// A path inside the stream's subvolume: relative, without `..`.
fn check_path(path: &[u8]) -> std::io::Result<()> {
    if path.first() == Some(&b'/') || path.split(|b| *b == b'/').any(|part| part == b"..") {
        return Err(refused(format!(
            "the path {:?} leaves its subvolume",
            String::from_utf8_lossy(path)
        )));
    }
    Ok(())
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        if self.handed == self.ready.len() && !self.next_unit()? {
            return Ok(0);
        }
        let n = buffer.len().min(self.ready.len() - self.handed);
        buffer[..n].copy_from_slice(&self.ready[self.handed..self.handed + n]);
        self.handed += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: u16, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (attribute, value) in attributes {
            payload.extend_from_slice(&attribute.to_le_bytes());
            payload.extend_from_slice(&(value.len() as u16).to_le_bytes());
            payload.extend_from_slice(value);
        }
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    const UUID: &[u8] = &[7; 16];

    /// A stream of the subvolume, `commands`, and the end.
    fn stream(version: u32, commands: &[Vec<u8>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend(command(SUBVOL, &[(A_PATH, b"layer"), (A_UUID, UUID)]));
        for c in commands {
            out.extend_from_slice(c);
        }
        out.extend(command(END, &[]));
        out
    }

    fn through(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Checked::new(bytes).read_to_end(&mut out)?;
        Ok(out)
    }

    fn refusal(bytes: &[u8]) -> String {
        through(bytes).expect_err("refused").to_string()
    }

    #[test]
    fn what_a_sandbox_layer_holds_passes_unchanged() {
        let whiteout = 0o020000u64.to_le_bytes();
        let bytes = stream(
            1,
            &[
                command(MKDIR, &[(A_PATH, b"upper")]),
                command(MKFILE, &[(A_PATH, b"upper/a")]),
                command(WRITE, &[(A_PATH, b"upper/a"), (19, b"data")]),
                command(
                    MKNOD,
                    &[
                        (A_PATH, b"upper/gone"),
                        (A_MODE, &whiteout),
                        (A_RDEV, &[0; 8]),
                    ],
                ),
                command(
                    SET_XATTR,
                    &[
                        (A_PATH, b"upper"),
                        (A_XATTR_NAME, b"trusted.overlay.opaque"),
                    ],
                ),
                command(
                    SYMLINK,
                    &[(A_PATH, b"upper/l"), (A_PATH_LINK, b"/etc/passwd")],
                ),
                command(
                    CLONE,
                    &[
                        (A_PATH, b"upper/b"),
                        (A_CLONE_UUID, UUID),
                        (A_CLONE_PATH, b"upper/a"),
                    ],
                ),
            ],
        );
        assert_eq!(through(&bytes).expect("passes"), bytes);
    }

    #[test]
    fn what_reaches_beyond_the_subvolume_is_refused() {
        let block = 0o060000u64.to_le_bytes();
        let chr = 0o020000u64.to_le_bytes();
        let cases: [(Vec<u8>, &str); 9] = [
            (stream(2, &[]), "version 2"),
            (stream(1, &[command(2, &[(A_PATH, b"s")])]), "command 2"),
            (stream(1, &[command(23, &[(A_PATH, b"f")])]), "command 23"),
            (
                stream(1, &[command(MKNOD, &[(A_PATH, b"sda"), (A_MODE, &block)])]),
                "device node",
            ),
            (
                stream(
                    1,
                    &[command(
                        MKNOD,
                        &[
                            (A_PATH, b"mem"),
                            (A_MODE, &chr),
                            (A_RDEV, &[1, 1, 0, 0, 0, 0, 0, 0]),
                        ],
                    )],
                ),
                "device node",
            ),
            (
                stream(1, &[command(MKFILE, &[(A_PATH, b"../../etc/x")])]),
                "leaves its subvolume",
            ),
            (
                stream(
                    1,
                    &[command(
                        LINK,
                        &[(A_PATH, b"l"), (A_PATH_LINK, b"/etc/shadow")],
                    )],
                ),
                "leaves its subvolume",
            ),
            (
                stream(
                    1,
                    &[command(
                        CLONE,
                        &[
                            (A_PATH, b"b"),
                            (A_CLONE_UUID, &[9; 16]),
                            (A_CLONE_PATH, b"a"),
                        ],
                    )],
                ),
                "another subvolume",
            ),
            (
                stream(
                    1,
                    &[command(
                        SET_XATTR,
                        &[(A_PATH, b"f"), (A_XATTR_NAME, b"security.selinux")],
                    )],
                ),
                "extended attribute",
            ),
        ];
        for (bytes, why) in cases {
            let refusal = refusal(&bytes);
            assert!(refusal.contains(why), "{why}: {refusal}");
        }
        let mut cut = stream(1, &[]);
        cut.truncate(cut.len() - 3);
        assert!(refusal(&cut).contains("ends inside"));
        let mut more = stream(1, &[]);
        more.extend(command(MKFILE, &[(A_PATH, b"late")]));
        assert!(refusal(&more).contains("after its end"));
    }
}
