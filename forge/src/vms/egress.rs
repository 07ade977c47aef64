//! The egress proxy: how a sandbox, which has no network device of its own,
//! reaches the outside world, and the policy that bounds where.
//!
//! Inside the sandbox the agent listens on `127.0.0.1:`[`EGRESS_PORT`] and
//! every exec gets `HTTP_PROXY`/`HTTPS_PROXY` pointing there (see
//! `network.rs`); each connection a sandbox process makes to it is carried
//! to the host over the agent connection and served here, one request head
//! per connection:
//!
//! 1. Read the request head (at most [`MAX_HEAD_BYTES`]).
//! 2. `CONNECT host:port` (TLS) or an absolute-URI request
//!    (`GET http://host[:port]/path`); anything else is `400`.
//! 3. [`Policy::check`]: the host must be on the allow-list (exact, or
//!    `*.domain`/`.domain` for its subdomains); it is resolved once and
//!    every address must be public (the webhooks' SSRF ranges: loopback,
//!    private, link-local, unspecified, multicast and reserved are refused)
//!    and must not be the forge itself (its listen address, or a connection
//!    whose local and peer addresses are the same host). The connection
//!    goes to exactly the addresses checked, so DNS cannot answer twice.
//! 4. A refusal answers `403` with a plain-text body naming the reason,
//!    which `curl`, `git` or `bun` show the sandbox user.
//! 5. Otherwise: `200 Connection established` and a byte tunnel (CONNECT),
//!    or the head rewritten to origin form (`Proxy-*` headers dropped) and
//!    the rest piped (plain HTTP; later requests on that connection reach
//!    the same, already checked, host).
//!
//! Bytes and connections are counted per sandbox ([`Counters`]) and each
//! connection is logged with its host, outcome and byte counts.
//!
//! Bounds, so one sandbox cannot exhaust the forge: at most
//! [`MAX_CONNECTIONS_PER_VM`] proxied connections per sandbox at once
//! (more are closed at once and counted as refused), the request head must
//! arrive within [`HEAD_TIMEOUT`], and a connection that carried no byte
//! either way for [`IDLE_TIMEOUT`] is closed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The port the egress proxy listens on inside every sandbox.
pub const EGRESS_PORT: u16 = 3128;
/// Largest request head the proxy reads.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Proxied connections one sandbox may hold open at once.
pub const MAX_CONNECTIONS_PER_VM: usize = 64;
/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay silent in both directions.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Hosts a sandbox may reach when the operator names none: the package
/// registries and git hosts a build needs.
pub const DEFAULT_ALLOW: &[&str] = &[
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "pypi.org",
    "files.pythonhosted.org",
    "crates.io",
    "index.crates.io",
    "static.crates.io",
    "deb.debian.org",
    "security.debian.org",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "raw.githubusercontent.com",
];

/// Where sandboxes may connect.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Host names or patterns (`*.example.com`); `*` allows every host.
    pub allow: Vec<String>,
    /// Non-public networks the operator vouches for (e.g. a registry
    /// mirror on a private or reserved address); public ones need none.
    pub allow_nets: Vec<Net>,
    /// The forge's own listen address, never reachable from a sandbox.
    pub forge: Option<SocketAddr>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow: DEFAULT_ALLOW.iter().map(|s| (*s).to_owned()).collect(),
            allow_nets: Vec::new(),
            forge: None,
        }
    }
}

/// An address range in CIDR form (`203.0.113.0/24`, `fd00::/8`, or one
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub base: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.trim().split_once('/').unwrap_or((text.trim(), ""));
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR range"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has a bad prefix length"))?
        };
        Ok(Net { base, prefix })
    }
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u32) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let ((base, width), (ip, ip_width)) = (bits(self.base), bits(ip));
        if width != ip_width {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        shift >= width || (base >> shift) == (ip >> shift)
    }
}

/// Why a connection was refused; the text is what the sandbox user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Host {host} is not on this forge's egress allow-list")]
    NotAllowed { host: String },
    #[error("Host {host} resolves to {ip}, a {range} address, which sandboxes may not reach")]
    Blocked {
        host: String,
        ip: IpAddr,
        range: String,
    },
    #[error("Host {host} is the forge itself, which sandboxes may not reach through the proxy")]
    Forge { host: String },
    #[error("Host {host} could not be resolved: {reason}")]
    Resolve { host: String, reason: String },
    #[error("Could not connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("The proxy understands CONNECT and absolute http:// requests only: {reason}")]
    BadRequest { reason: String },
}

impl Refusal {
    fn status(&self) -> &'static str {
        match self {
            Refusal::BadRequest { .. } => "400 Bad Request",
            Refusal::Resolve { .. } | Refusal::Connect { .. } => "502 Bad Gateway",
            _ => "403 Forbidden",
        }
    }
}

/// Lower-cases, drops a trailing dot and IPv6 brackets.
fn normalise(host: &str) -> String {
    host.trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl Policy {
    /// Whether `host` is on the allow-list (no lookup).
    pub fn allows_name(&self, host: &str) -> bool {
        let host = normalise(host);
        self.allow.iter().any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            if entry == "*" {
                return true;
            }
            match entry.strip_prefix("*.").or_else(|| entry.strip_prefix('.')) {
                Some(domain) => host.len() > domain.len() && host.ends_with(&format!(".{domain}")),
                None => host == entry,
            }
        })
    }

    /// Whether `addr` (one answer for `host`) may be connected to.
    pub fn check_address(&self, host: &str, addr: SocketAddr) -> Result<(), Refusal> {
        if let Some(forge) = self.forge {
            let same_ip = forge.ip() == addr.ip() || forge.ip().is_unspecified();
            if same_ip && forge.port() == addr.port() {
                return Err(Refusal::Forge {
                    host: host.to_owned(),
                });
            }
        }
        if self.allow_nets.iter().any(|net| net.contains(addr.ip())) {
            return Ok(());
        }
        match hooks::ssrf::classify(addr.ip()) {
            None => Ok(()),
            Some(range) => Err(Refusal::Blocked {
                host: host.to_owned(),
                ip: addr.ip(),
                range: range.to_string(),
            }),
        }
    }

    /// The checked addresses of `host:port`, or why it is refused.
    pub async fn check(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let name = normalise(host);
        if !self.allows_name(&name) {
            return Err(Refusal::NotAllowed { host: name });
        }
        let found: Vec<SocketAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| Refusal::Resolve {
                    host: name.clone(),
                    reason: e.to_string(),
                })?
                .collect(),
        };
        if found.is_empty() {
            return Err(Refusal::Resolve {
                host: name,
                reason: "no addresses".into(),
            });
        }
        // One bad answer refuses the host: a name that also points inward is
        // not trusted for its other answers either.
        for addr in &found {
            self.check_address(&name, *addr)?;
        }
        Ok(found)
    }
}

/// What one sandbox did through the proxy.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
}

/// A copy of [`Counters`] for the API.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub connections: u64,
    pub refused: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl Counters {
    pub fn usage(&self) -> Usage {
        Usage {
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    connect: bool,
    host: String,
    port: u16,
    /// The head to send upstream (plain HTTP only), in origin form.
    upstream: Vec<u8>,
}

fn bad(reason: &str) -> Refusal {
    Refusal::BadRequest {
        reason: reason.to_owned(),
    }
}

/// Splits `host[:port]`, IPv6 literals in brackets.
fn host_port(authority: &str, default_port: u16) -> Result<(String, u16), Refusal> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("bad IPv6 host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None => default_port,
        };
        return Ok((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), port.parse().map_err(|_| bad("bad port"))?)),
        None => Ok((authority.to_owned(), default_port)),
    }
}

fn parse_head(head: &[u8]) -> Result<Head, Refusal> {
    let text = std::str::from_utf8(head).map_err(|_| bad("the request head is not UTF-8"))?;
    // Lines end with CRLF. A bare CR or LF inside one would pass a header
    // this proxy never saw (a `Proxy-*` one among them) to a server that
    // ends lines at LF; RFC 9112 lets a proxy refuse it.
    let body = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    if body.split("\r\n").any(|line| line.contains(['\r', '\n'])) {
        return Err(bad("a bare CR or LF in the request head"));
    }
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = host_port(target, 443)?;
        return Ok(Head {
            connect: true,
            host,
            port,
            upstream: Vec::new(),
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| bad("use an absolute http:// URL, or CONNECT for https"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = host_port(authority, 80)?;
    let mut upstream = format!("{method} {path} {version}\r\n").into_bytes();
    for line in lines {
        let name = line.split(':').next().unwrap_or_default().trim();
        if line.is_empty() || name.to_ascii_lowercase().starts_with("proxy-") {
            continue;
        }
        upstream.extend_from_slice(line.as_bytes());
        upstream.extend_from_slice(b"\r\n");
    }
    upstream.extend_from_slice(b"\r\n");
    Ok(Head {
        connect: false,
        host,
        port,
        upstream,
    })
}

/// The fuzz target's properties of [`parse_head`] (`forge::fuzzing`): a
/// CONNECT sends nothing upstream; a plain-HTTP head goes upstream as one
/// head ending in its empty line, starting with the request line's method,
/// and no line of it, split at any line feed, is a `Proxy-*` header.
pub(crate) fn check_parse_head(head: &[u8]) {
    let Ok(parsed) = parse_head(head) else {
        return;
    };
    if parsed.connect {
        assert!(parsed.upstream.is_empty(), "a CONNECT forwards no head");
        return;
    }
    let text = String::from_utf8(parsed.upstream).expect("the upstream head is UTF-8");
    let body = text
        .strip_suffix("\r\n\r\n")
        .expect("the upstream head ends with its empty line");
    let method = head.split(|b| *b == b' ').next().unwrap_or_default();
    assert!(text.as_bytes().starts_with(method), "the method leads");
    for line in body.split('\n').skip(1) {
        let name = line.split(':').next().unwrap_or_default().trim();
        assert!(
            !name.to_ascii_lowercase().starts_with("proxy-"),
            "{line:?} forwarded upstream"
        );
    }
}

/// Reads up to the end of the head; returns it and any bytes after it.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(bad("the request head is too large"));
        }
        let n = io.read(&mut chunk).await.map_err(|e| bad(&e.to_string()))?;
        if n == 0 {
            return Err(bad("the connection closed before the request head ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, refusal: &Refusal) {
    let body = format!("forge egress proxy: {refusal}\n");
    let response = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.status(),
        body.len()
    );
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// Connects to the first checked address that answers; refuses a
/// connection that turns out to loop back to this host.
async fn connect(host: &str, addrs: &[SocketAddr]) -> Result<TcpStream, Refusal> {
    let mut last = String::from("no addresses");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let local = stream.local_addr().map(|a| a.ip()).ok();
                if local == Some(addr.ip()) {
                    return Err(Refusal::Forge {
                        host: host.to_owned(),
                    });
                }
                return Ok(stream);
            }
            Ok(Err(error)) => last = error.to_string(),
            Err(_) => last = format!("no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(Refusal::Connect {
        host: host.to_owned(),
        reason: last,
    })
}

/// Copies both ways between `a` and `b` until both ends closed, or until
/// neither sent a byte for `idle`; returns the bytes `a` → `b` and back.
pub async fn pipe<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let (mut a_buf, mut b_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    let (mut forth, mut back) = (0u64, 0u64);
    while a_open || b_open {
        tokio::select! {
            read = a_read.read(&mut a_buf), if a_open => {
                let n = read?;
                if n == 0 {
                    a_open = false;
                    b_write.shutdown().await?;
                } else {
                    b_write.write_all(&a_buf[..n]).await?;
                    forth += n as u64;
                }
            }
            read = b_read.read(&mut b_buf), if b_open => {
                let n = read?;
                if n == 0 {
                    b_open = false;
                    a_write.shutdown().await?;
                } else {
                    a_write.write_all(&b_buf[..n]).await?;
                    back += n as u64;
                }
            }
            () = tokio::time::sleep(idle) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no traffic for {} s", idle.as_secs()),
                ));
            }
        }
    }
    Ok((forth, back))
}

/// Serves one proxied connection of sandbox `vm` on `io`.
pub async fn serve<S>(policy: &Policy, counters: &Counters, vm: &str, mut io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let outcome = async {
        let (head, rest) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut io))
            .await
            .map_err(|_| bad("no request head within 30 s"))??;
        let head = parse_head(&head)?;
        let addrs = policy.check(&head.host, head.port).await?;
        let upstream = connect(&head.host, &addrs).await?;
        Ok::<_, Refusal>((head, rest, upstream))
    }
    .await;
    let (head, rest, mut upstream) = match outcome {
        Ok(ready) => ready,
        Err(refusal) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(vm, reason = %refusal, "egress refused");
            refuse(&mut io, &refusal).await;
            return;
        }
    };
    let mut sent = rest.len() as u64;
    let piped = async {
        if head.connect {
            io.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
        } else {
            upstream.write_all(&head.upstream).await?;
            sent += head.upstream.len() as u64;
        }
        upstream.write_all(&rest).await?;
        pipe(&mut io, &mut upstream, IDLE_TIMEOUT).await
    }
    .await;
    let (out, back) = piped.as_ref().map_or((0, 0), |&(o, b)| (o, b));
    let out = out + sent;
    counters.bytes_out.fetch_add(out, Ordering::Relaxed);
    counters.bytes_in.fetch_add(back, Ordering::Relaxed);
    crate::metrics::metrics().egress(out, back);
    tracing::info!(
        vm,
        host = %head.host,
        port = head.port,
        tunnel = head.connect,
        bytes_out = out,
        bytes_in = back,
        ms = started.elapsed().as_millis() as u64,
        error = piped.err().map(|e| e.to_string()),
        "egress connection"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Policy {
        Policy {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            allow_nets: Vec::new(),
            forge: Some("127.0.0.1:8080".parse().expect("addr")),
        }
    }

    #[test]
    fn nets_parse_and_contain() {
        let net: Net = "203.0.113.0/24".parse().expect("net");
        assert!(net.contains("203.0.113.80".parse().expect("ip")));
        assert!(!net.contains("203.0.114.1".parse().expect("ip")));
        let one: Net = "10.1.2.3".parse().expect("one");
        assert!(one.contains("10.1.2.3".parse().expect("ip")));
        assert!(!one.contains("10.1.2.4".parse().expect("ip")));
        let all: Net = "::/0".parse().expect("all v6");
        assert!(all.contains("::1".parse().expect("ip")));
        assert!(!all.contains("127.0.0.1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("nonsense".parse::<Net>().is_err());
    }

    #[test]
    fn allow_list_matches_names_and_subdomains() {
        let p = policy(&["registry.npmjs.org", "*.example.com", ".crates.io"]);
        assert!(p.allows_name("registry.npmjs.org"));
        assert!(p.allows_name("Registry.NPMJS.org."));
        assert!(p.allows_name("a.example.com"));
        assert!(!p.allows_name("example.com"));
        assert!(!p.allows_name("evilexample.com"));
        assert!(p.allows_name("static.crates.io"));
        assert!(!p.allows_name("npmjs.org"));
        assert!(!p.allows_name("registry.npmjs.org.evil.net"));
        assert!(policy(&["*"]).allows_name("anything.at.all"));
    }

    #[tokio::test]
    async fn inward_addresses_and_the_forge_are_refused() {
        let p = policy(&[
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "localhost",
        ]);
        for (host, port) in [
            ("10.1.2.3", 80),
            ("169.254.169.254", 80),
            ("0.0.0.0", 80),
            ("localhost", 443),
        ] {
            assert!(
                matches!(p.check(host, port).await, Err(Refusal::Blocked { .. })),
                "{host} passed"
            );
        }
        assert!(matches!(
            p.check("127.0.0.1", 8080).await,
            Err(Refusal::Forge { .. })
        ));
        assert!(matches!(
            p.check("example.org", 443).await,
            Err(Refusal::NotAllowed { .. })
        ));
    }

    #[test]
    fn heads_parse_to_connect_or_origin_form() {
        let head = parse_head(b"CONNECT registry.npmjs.org:443 HTTP/1.1\r\nHost: x").expect("ok");
        assert!(head.connect);
        assert_eq!((head.host.as_str(), head.port), ("registry.npmjs.org", 443));
        let head = parse_head(
            b"GET http://example.com:8080/a?b HTTP/1.1\r\nHost: example.com\r\nProxy-Connection: keep-alive",
        )
        .expect("ok");
        assert!(!head.connect);
        assert_eq!((head.host.as_str(), head.port), ("example.com", 8080));
        assert_eq!(
            String::from_utf8(head.upstream).expect("utf8"),
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\n\r\n"
        );
        let v6 = parse_head(b"CONNECT [::1]:22 HTTP/1.1").expect("ok");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 22));
        assert!(parse_head(b"GET /relative HTTP/1.1").is_err());
        assert!(parse_head(b"garbage").is_err());
        // A bare LF or CR would carry a header past the Proxy-* filter to
        // an upstream that ends lines at LF (found by the egress_head
        // fuzz target).
        for smuggled in [
            &b"GET http://example.com/ HTTP/1.1\r\nAccept: */*\nProxy-Authorization: Basic eA=="[..],
            b"GET http://example.com/ HTTP/1.1\r\nAccept: */*\rProxy-Authorization: Basic eA==",
            b"GET http://example.com/ HTTP/1.1\nProxy-Authorization: Basic eA==",
        ] {
            assert!(parse_head(smuggled).is_err(), "{smuggled:?}");
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_but_traffic_keeps_it_open() {
        let idle = Duration::from_millis(200);
        let (mut a, _a_peer) = tokio::io::duplex(1024);
        let (mut b, _b_peer) = tokio::io::duplex(1024);
        let started = Instant::now();
        let err = pipe(&mut a, &mut b, idle).await.expect_err("times out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));

        let (mut a, mut a_peer) = tokio::io::duplex(1024);
        let (mut b, mut b_peer) = tokio::io::duplex(1024);
        let talker = tokio::spawn(async move {
            // A byte every 100 ms for a second, then a clean close.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                a_peer.write_all(b"x").await.expect("write");
            }
            a_peer.shutdown().await.expect("close");
            let mut sink = Vec::new();
            b_peer.read_to_end(&mut sink).await.expect("read");
            b_peer.shutdown().await.expect("close");
            sink
        });
        let (forth, back) = pipe(&mut a, &mut b, idle).await.expect("kept open");
        assert_eq!((forth, back), (10, 0));
        assert_eq!(talker.await.expect("talker"), b"xxxxxxxxxx");
    }

    #[tokio::test]
    async fn a_refusal_is_a_403_with_a_readable_body() {
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let p = policy(&[]);
        let counters = Counters::default();
        let server = tokio::spawn(async move {
            serve(&p, &counters, "vm-test", theirs).await;
            counters.usage()
        });
        ours.write_all(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        ours.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 403 Forbidden"), "{response}");
        assert!(
            response.contains("example.org is not on this forge's egress allow-list"),
            "{response}"
        );
        let usage = server.await.expect("join");
        assert_eq!((usage.connections, usage.refused), (1, 1));
    }
}
