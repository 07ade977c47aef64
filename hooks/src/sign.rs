//! Signing and verifying webhook requests.
//!
//! Every request carries two signature schemes over the same body:
//!
//! - **Standard Webhooks**: `webhook-id: <delivery id>`, `webhook-timestamp:
//!   <unix seconds of this attempt>`, `webhook-signature: v1,<sig> [v1,<sig>]`
//!   where `<sig>` is base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
//!   For a secret `whsec_<base64>` the key is the decoded bytes; for any
//!   other secret, its UTF-8 bytes.
//! - **GitHub**: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`
//!   keyed with the secret string as given, as GitHub does.
//!
//! plus `X-Forge-Event: <type>` and `X-Forge-Delivery: <delivery id>`.
//!
//! **Rotation:** a subscription may have two valid secrets for a window
//! ([`SecretSet`]). Then `webhook-signature` lists both signatures (newest
//! first, space separated, as the spec allows) and `X-Hub-Signature-256` is
//! sent once per secret (newest first), so a receiver on either secret
//! verifies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::time::{Duration, SystemTime};

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
pub const HEADER_GITHUB: &str = "x-hub-signature-256";
pub const HEADER_EVENT: &str = "x-forge-event";
pub const HEADER_DELIVERY: &str = "x-forge-delivery";

/// Prefix of generated secrets (Standard Webhooks convention).
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret must be between 8 and 256 characters, got {len}")]
    Length { len: usize },
}

impl Secret {
    /// A new random secret: `whsec_` + base64 of 32 random bytes.
    pub fn generate() -> Secret {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret(format!("{SECRET_PREFIX}{}", BASE64.encode(bytes)))
    }

    /// A secret given by a user.
    pub fn new(value: impl Into<String>) -> Result<Secret, SecretError> {
        let value = value.into();
        let len = value.chars().count();
        if !(8..=256).contains(&len) {
            return Err(SecretError::Length { len });
        }
        Ok(Secret(value))
    }

    /// The secret text, to store it or show it once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn standard_key(&self) -> Vec<u8> {
        self.0
            .strip_prefix(SECRET_PREFIX)
            .and_then(|b64| BASE64.decode(b64).ok())
            .unwrap_or_else(|| self.0.as_bytes().to_vec())
    }

    fn mac(key: &[u8]) -> HmacSha256 {
        HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
    }

    fn standard_mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = Self::mac(&self.standard_key());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    fn github_mac(&self, body: &[u8]) -> HmacSha256 {
        let mut mac = Self::mac(self.0.as_bytes());
        mac.update(body);
        mac
    }

    /// `v1,<base64>` for this secret.
    pub fn standard_signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .standard_mac(id, timestamp, body)
            .finalize()
            .into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }

    /// `sha256=<hex>` for this secret.
    pub fn github_signature(&self, body: &[u8]) -> String {
        let tag = self.github_mac(body).finalize().into_bytes();
        format!("sha256={}", hex::encode(tag))
    }
}

/// The secrets of a subscription: the current one and, during a rotation
/// window, the previous one until it expires.
#[derive(Debug, Clone)]
pub struct SecretSet {
    pub current: Secret,
    pub previous: Option<(Secret, SystemTime)>,
}

impl SecretSet {
    pub fn single(current: Secret) -> SecretSet {
        SecretSet {
            current,
            previous: None,
        }
    }

    /// Replaces the current secret; the old one stays valid for `window`.
    pub fn rotate(&mut self, next: Secret, window: Duration, now: SystemTime) {
        let old = std::mem::replace(&mut self.current, next);
        self.previous = Some((old, now + window));
    }

    /// The secrets to sign with at `now`, newest first.
    pub fn valid_at(&self, now: SystemTime) -> Vec<Secret> {
        let mut secrets = vec![self.current.clone()];
        if let Some((previous, until)) = &self.previous
            && now < *until
        {
            secrets.push(previous.clone());
        }
        secrets
    }
}

/// The headers that sign one attempt (name, value), in sending order.
pub fn signature_headers(
    delivery_id: &str,
    event_type: &str,
    timestamp: i64,
    body: &[u8],
    secrets: &[Secret],
) -> Vec<(&'static str, String)> {
    let standard: Vec<String> = secrets
        .iter()
        .map(|s| s.standard_signature(delivery_id, timestamp, body))
        .collect();
    let mut headers = vec![
        (HEADER_ID, delivery_id.to_owned()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, standard.join(" ")),
    ];
    headers.extend(
        secrets
            .iter()
            .map(|s| (HEADER_GITHUB, s.github_signature(body))),
    );
    headers.push((HEADER_EVENT, event_type.to_owned()));
    headers.push((HEADER_DELIVERY, delivery_id.to_owned()));
    headers
}

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("Timestamp `{0}` is not a number")]
    BadTimestamp(String),
    #[error("Timestamp is {skew_secs} s away from now, more than the tolerance")]
    Stale { skew_secs: i64 },
    #[error("Signature header is malformed")]
    Malformed,
    #[error("No signature matches")]
    Mismatch,
}

/// Verifies a Standard Webhooks request (as a receiver does). Succeeds when
/// any `v1` signature in `signature_header` matches; comparison is constant
/// time.
pub fn verify_standard(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(timestamp.to_owned()))?;
    let skew = unix_secs(now) - ts;
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::Stale { skew_secs: skew });
    }
    let mut any = false;
    for part in signature_header.split_whitespace() {
        let Some(encoded) = part.strip_prefix("v1,") else {
            continue;
        };
        any = true;
        let Ok(tag) = BASE64.decode(encoded) else {
            continue;
        };
        if secret.standard_mac(id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(if any {
        VerifyError::Mismatch
    } else {
        VerifyError::Malformed
    })
}

/// Verifies a GitHub `X-Hub-Signature-256` value; constant-time comparison.
pub fn verify_github(secret: &Secret, header: &str, body: &[u8]) -> Result<(), VerifyError> {
    let encoded = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(VerifyError::Malformed)?;
    let tag = hex::decode(encoded).map_err(|_| VerifyError::Malformed)?;
    secret
        .github_mac(body)
        .verify_slice(&tag)
        .map_err(|_| VerifyError::Mismatch)
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_secs(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn generated_secrets_are_random_and_prefixed() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert!(a.expose().starts_with(SECRET_PREFIX));
        assert_ne!(a, b);
        assert_eq!(BASE64.decode(&a.expose()[6..]).expect("base64").len(), 32);
        assert!(!format!("{a:?}").contains(&a.expose()[6..]));
        assert!(Secret::new("short").is_err());
    }

    #[test]
    fn standard_signature_matches_the_spec_example() {
        // Test vector from the Standard Webhooks specification.
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        let sig = secret.standard_signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verification_accepts_either_rotated_secret_and_rejects_tampering() {
        let now = SystemTime::now();
        let old = Secret::generate();
        let mut set = SecretSet::single(old.clone());
        set.rotate(Secret::generate(), Duration::from_secs(3600), now);
        let secrets = set.valid_at(now);
        assert_eq!(secrets.len(), 2);
        let ts = unix_secs(now);
        let body = b"{\"a\":1}";
        let headers = signature_headers("msg_1", "push", ts, body, &secrets);
        let get = |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
                .expect(name)
        };
        let sig = get(HEADER_SIGNATURE);
        for secret in [&old, &set.current] {
            verify_standard(secret, "msg_1", &ts.to_string(), sig, body, now, TOLERANCE)
                .expect("valid");
        }
        let github: Vec<_> = headers
            .iter()
            .filter(|(n, _)| *n == HEADER_GITHUB)
            .collect();
        assert_eq!(github.len(), 2);
        assert!(verify_github(&old, &github[1].1, body).is_ok());
        assert_eq!(
            verify_github(&old, &github[0].1, body),
            Err(VerifyError::Mismatch)
        );

        let tampered = b"{\"a\":2}";
        assert_eq!(
            verify_standard(
                &old,
                "msg_1",
                &ts.to_string(),
                sig,
                tampered,
                now,
                TOLERANCE
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_standard(&old, "msg_2", &ts.to_string(), sig, body, now, TOLERANCE),
            Err(VerifyError::Mismatch)
        );
        assert!(matches!(
            verify_standard(
                &old,
                "msg_1",
                &(ts - 3600).to_string(),
                sig,
                body,
                now,
                TOLERANCE
            ),
            Err(VerifyError::Stale { .. })
        ));
        // After the window only the new secret signs.
        assert_eq!(set.valid_at(now + Duration::from_secs(3601)).len(), 1);
    }
}
