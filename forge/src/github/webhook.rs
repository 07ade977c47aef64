//! Inbound GitHub webhooks: verified, stored, then processed from the store.
//!
//! Steps, in order:
//! 1. `X-Hub-Signature-256: sha256=<hex>` is checked against HMAC-SHA256
//!    of the raw body with the webhook secret, in constant time, before
//!    the body is parsed; a missing or wrong signature is refused (401)
//!    and nothing is stored;
//! 2. the delivery is stored under its `X-GitHub-Delivery` id and the
//!    SHA-256 of its body; an id or a body seen before is acknowledged and
//!    dropped (GitHub redelivers; the id is not signed, so a captured
//!    delivery replayed under a new id is known by its body);
//! 3. the processor reads unprocessed deliveries oldest first and marks
//!    each processed with its error, if any. A crash between 2 and 3
//!    loses nothing: start-up processes what is pending.
//!
//! Events: `ping`; `installation` and `installation_repositories` (the
//! installation is recorded); `push`, `create`, `delete` (a sync pass of
//! the linked repository); `pull_request` (`opened`, `reopened`,
//! `synchronize` record the head and the base branch and ask the review
//! bot; `closed` closes).

use api_types::PullState;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::Github;
use crate::store::GithubPull;

/// Whether `header` (`sha256=<hex>`) signs `body` with `secret`.
pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some(hex_digest) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

impl Github {
    /// Processes every pending delivery; returns how many were processed.
    pub(super) async fn process_pending(&self) -> anyhow::Result<usize> {
        let pending = self.store.pending_github_deliveries(50).await?;
        for delivery in &pending {
            let payload: Value = serde_json::from_str(&delivery.payload).unwrap_or(Value::Null);
            let outcome = self.process(&delivery.event, &payload).await;
            if let Err(error) = &outcome {
                tracing::warn!(delivery = %delivery.id, event = %delivery.event, error = format!("{error:#}"), "processing a GitHub webhook failed");
            }
            let error = outcome
                .err()
                .map(|e| crate::git::redact_credentials(&format!("{e:#}")));
            self.store
                .finish_github_delivery(&delivery.id, error.as_deref())
                .await?;
        }
        Ok(pending.len())
    }

    async fn process(&self, event: &str, payload: &Value) -> anyhow::Result<()> {
        match event {
            "installation" | "installation_repositories" => {
                let installation = &payload["installation"];
                let id = installation["id"]
                    .as_i64()
                    .ok_or_else(|| anyhow::anyhow!("no installation id"))?;
                let account = installation["account"]["login"].as_str().unwrap_or("");
                let removed = event == "installation" && payload["action"] == "deleted";
                self.store
                    .upsert_github_installation(id, account, removed)
                    .await?;
                Ok(())
            }
            "push" | "create" | "delete" => {
                let Some(link) = self.link_of(payload).await? else {
                    return Ok(());
                };
                self.syncer.sync(&link).await?;
                Ok(())
            }
            "pull_request" => {
                let Some(link) = self.link_of(payload).await? else {
                    return Ok(());
                };
                let pull = &payload["pull_request"];
                let number = payload["number"]
                    .as_i64()
                    .or_else(|| pull["number"].as_i64());
                let (Some(number), Some(head_ref), Some(head_sha)) = (
                    number,
                    pull["head"]["ref"].as_str(),
                    pull["head"]["sha"].as_str(),
                ) else {
                    anyhow::bail!("the pull request has no number or head");
                };
                let action = payload["action"].as_str().unwrap_or("");
                let open = match action {
                    "opened" | "reopened" | "synchronize" => true,
                    "closed" => false,
                    _ => return Ok(()),
                };
                let row = GithubPull {
                    repo_id: link.repo_id.clone(),
                    number,
                    head_ref: head_ref.to_owned(),
                    head_sha: head_sha.to_owned(),
                    state: if open {
                        PullState::Open
                    } else {
                        PullState::Closed
                    },
                    base_ref: pull["base"]["ref"].as_str().map(str::to_owned),
                };
                self.store.upsert_github_pull(&row).await?;
                if open {
                    // The head commit must be in the forge before it can run.
                    self.syncer.sync(&link).await?;
                    self.reviewer.on_pull(&link, &row).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn link_of(&self, payload: &Value) -> anyhow::Result<Option<crate::store::GithubLink>> {
        let Some(full_name) = payload["repository"]["full_name"].as_str() else {
            return Ok(None);
        };
        Ok(self.store.github_link_by_github_repo(full_name).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = sign(b"s3cret", body);
        assert!(verify(b"s3cret", Some(&good), body));
        assert!(!verify(b"other", Some(&good), body));
        assert!(!verify(b"s3cret", Some(&good), b"{}"));
        assert!(!verify(b"s3cret", None, body));
        assert!(!verify(b"s3cret", Some("sha1=abc"), body));
        assert!(!verify(b"s3cret", Some("sha256=zz"), body));
    }
}
