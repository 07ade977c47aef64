//! The SSRF guard: which network addresses a webhook may reach.
//!
//! A webhook URL is user input, so by default the forge only connects to
//! public unicast addresses. Refused unless a [`NetworkPolicy`] allows them:
//! loopback (`allow_loopback`), private ranges (RFC 1918, CGNAT 100.64/10,
//! IPv6 ULA and site-local; `allow_private`) and link-local (169.254/16,
//! where cloud metadata lives, and fe80::/10; `allow_link_local`). Always
//! refused: unspecified, multicast, broadcast, reserved and documentation
//! ranges. IPv6 forms that embed an IPv4 address (mapped `::ffff:a.b.c.d`,
//! compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged
//! by the embedded address.
//!
//! Pinning: host names are resolved by [`GuardedResolver`], which the HTTP
//! client calls once per new connection; it returns only addresses that
//! passed the check, so the client connects to exactly what was checked (no
//! second lookup an attacker's DNS could answer differently). IP-literal
//! URLs are checked by [`check_url`] before sending. Redirects are never
//! followed (the sender's client has redirects disabled).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Which non-public ranges webhooks may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
    pub allow_link_local: bool,
}

impl NetworkPolicy {
    /// Public addresses plus loopback (tests, single-host setups).
    pub fn allow_loopback() -> NetworkPolicy {
        NetworkPolicy {
            allow_loopback: true,
            ..NetworkPolicy::default()
        }
    }

    /// Whether `ip` may be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), SsrfError> {
        let range = match classify(ip) {
            None => return Ok(()),
            Some(range) => range,
        };
        let allowed = match range {
            Range::Loopback => self.allow_loopback,
            Range::Private => self.allow_private,
            Range::LinkLocal => self.allow_link_local,
            Range::Unspecified | Range::Multicast | Range::Reserved => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(SsrfError::Blocked { ip, range })
        }
    }
}

/// A non-public address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Loopback,
    Private,
    LinkLocal,
    Unspecified,
    Multicast,
    Reserved,
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Range::Loopback => "loopback",
            Range::Private => "private",
            Range::LinkLocal => "link-local",
            Range::Unspecified => "unspecified",
            Range::Multicast => "multicast",
            Range::Reserved => "reserved",
        })
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SsrfError {
    #[error("Address {ip} is in a {range} range, which webhooks may not reach")]
    Blocked { ip: IpAddr, range: Range },
    #[error("Host `{host}` resolved to no address webhooks may reach ({reason})")]
    NoAllowedAddress { host: String, reason: String },
    #[error("Could not resolve host `{host}`: {reason}")]
    Resolve { host: String, reason: String },
    #[error("URL `{url}` is not a valid http(s) URL: {reason}")]
    BadUrl { url: String, reason: String },
}

/// The range `ip` lies in, or `None` for a public unicast address.
pub fn classify(ip: IpAddr) -> Option<Range> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Range> {
    let [a, b, c, _] = ip.octets();
    if a == 0 {
        return Some(Range::Unspecified);
    }
    if a == 127 {
        return Some(Range::Loopback);
    }
    if a == 10
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..128).contains(&b))
    {
        return Some(Range::Private);
    }
    if a == 169 && b == 254 {
        return Some(Range::LinkLocal);
    }
    if (224..240).contains(&a) {
        return Some(Range::Multicast);
    }
    let reserved = a >= 240
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || (a == 192 && b == 88 && c == 99);
    reserved.then_some(Range::Reserved)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Range> {
    if ip.is_unspecified() {
        return Some(Range::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Range::Loopback);
    }
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d).
    if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return classify_v4(embedded_v4(s[1], s[2]));
    }
    if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        return Some(Range::Private);
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Some(Range::LinkLocal);
    }
    if s[0] & 0xff00 == 0xff00 {
        return Some(Range::Multicast);
    }
    // Documentation, Teredo, ORCHID and other special-purpose blocks.
    if (s[0] == 0x2001 && (s[1] == 0xdb8 || s[1] == 0 || s[1] < 0x200)) || s[0] & 0xe000 != 0x2000 {
        return Some(Range::Reserved);
    }
    None
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// Parses a webhook URL: http(s) only, with a host; an IP-literal host must
/// pass `policy`. Host names are checked at connect time by
/// [`GuardedResolver`].
pub fn check_url(url: &str, policy: &NetworkPolicy) -> Result<reqwest::Url, SsrfError> {
    let bad = |reason: &str| SsrfError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("it has no host"))?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        policy.check(ip)?;
    }
    Ok(parsed)
}

/// A DNS resolver for the HTTP client that drops addresses the policy
/// refuses (see the module docs).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: NetworkPolicy,
}

impl GuardedResolver {
    pub fn new(policy: NetworkPolicy) -> GuardedResolver {
        GuardedResolver { policy }
    }

    /// Resolves `host` and keeps the allowed addresses (port 0: the client
    /// uses the URL's port).
    pub async fn resolve_checked(&self, host: &str) -> Result<Vec<SocketAddr>, SsrfError> {
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| SsrfError::Resolve {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        let mut allowed = Vec::new();
        let mut refused = None;
        for addr in found {
            match self.policy.check(addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(e) => refused = Some(e),
            }
        }
        if allowed.is_empty() {
            let reason = refused.map_or_else(|| "no addresses".to_owned(), |e| e.to_string());
            return Err(SsrfError::NoAllowedAddress {
                host: host.to_owned(),
                reason,
            });
        }
        Ok(allowed)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve_checked(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The resolver as the client builder wants it.
pub fn resolver(policy: NetworkPolicy) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver::new(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip literal")
    }

    #[test]
    fn ranges_are_classified() {
        let cases = [
            ("127.0.0.1", Some(Range::Loopback)),
            ("10.1.2.3", Some(Range::Private)),
            ("172.31.0.1", Some(Range::Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Range::Private)),
            ("100.64.0.1", Some(Range::Private)),
            ("169.254.169.254", Some(Range::LinkLocal)),
            ("224.0.0.1", Some(Range::Multicast)),
            ("0.0.0.0", Some(Range::Unspecified)),
            ("255.255.255.255", Some(Range::Reserved)),
            ("93.184.216.34", None),
            ("::1", Some(Range::Loopback)),
            ("::", Some(Range::Unspecified)),
            ("::ffff:127.0.0.1", Some(Range::Loopback)),
            ("::ffff:169.254.169.254", Some(Range::LinkLocal)),
            ("::10.0.0.1", Some(Range::Private)),
            ("64:ff9b::a00:1", Some(Range::Private)),
            ("2002:7f00:1::", Some(Range::Loopback)),
            ("fd00::1", Some(Range::Private)),
            ("fe80::1", Some(Range::LinkLocal)),
            ("ff02::1", Some(Range::Multicast)),
            ("2001:db8::1", Some(Range::Reserved)),
            ("2606:4700::1111", None),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn policy_allows_only_what_it_says() {
        let strict = NetworkPolicy::default();
        assert!(strict.check(ip("127.0.0.1")).is_err());
        assert!(strict.check(ip("8.8.8.8")).is_ok());
        let loopback = NetworkPolicy::allow_loopback();
        assert!(loopback.check(ip("127.0.0.1")).is_ok());
        assert!(loopback.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(loopback.check(ip("10.0.0.1")).is_err());
        assert!(loopback.check(ip("0.0.0.0")).is_err());
    }

    #[test]
    fn urls_must_be_http_and_literals_are_checked() {
        let strict = NetworkPolicy::default();
        for url in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "not a url",
            "http://",
        ] {
            assert!(
                matches!(check_url(url, &strict), Err(SsrfError::BadUrl { .. })),
                "{url}"
            );
        }
        assert!(matches!(
            check_url("http://127.0.0.1:9/x", &strict),
            Err(SsrfError::Blocked { .. })
        ));
        assert!(matches!(
            check_url("http://[::1]:9/x", &strict),
            Err(SsrfError::Blocked { .. })
        ));
        assert!(check_url("https://example.com/hook", &strict).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_unless_allowed() {
        let strict = GuardedResolver::new(NetworkPolicy::default());
        let err = strict
            .resolve_checked("localhost")
            .await
            .expect_err("refused");
        assert!(matches!(err, SsrfError::NoAllowedAddress { .. }), "{err}");
        let open = GuardedResolver::new(NetworkPolicy::allow_loopback());
        let addrs = open.resolve_checked("localhost").await.expect("allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
