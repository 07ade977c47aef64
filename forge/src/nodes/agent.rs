//! `forge node run`: a host's sandboxes served to a control plane.
//!
//! Opens the host's sandbox backend as `forge serve` would (the same
//! probe, image and options), serves it on `--listen` with the node
//! protocol under a key made now (in TLS with a certificate made now,
//! unless it listens on loopback and `--tls` is not given), and reports to the control plane
//! (`POST /v1/nodes/report` with the node's token) every
//! [`super::REPORT_EVERY`]: where it serves, the key, the certificate's
//! SHA-256, its backend, labels,
//! memory, vCPUs and disk. A refused token stops the node; an unreachable
//! control plane is retried (sandboxes keep running meanwhile, and the
//! control plane sees the node lost until it reports again).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use api_types::nodes::{NodeReport, NodeReportAnswer};
use tokio::net::TcpListener;

use crate::server::{SandboxChoice, open_sandboxes};

/// What `forge node run` needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The control plane's URL (`http://host:port`).
    pub control: String,
    /// The node's token, from `forge node add`.
    pub token: String,
    /// Where to serve sandboxes.
    pub listen: SocketAddr,
    /// Where the control plane reaches `listen`, when not the same.
    pub advertise: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Memory this node offers, in MiB (default: the host's).
    pub memory_mib: Option<u64>,
    /// Serve TLS on a loopback address too (beyond loopback it always
    /// does).
    pub tls: bool,
    pub sandboxes: SandboxChoice,
}

/// Runs the node until the control plane refuses it, serving fails, or
/// the process is told to stop.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let (backend, image, reason) = match open_sandboxes(&config.sandboxes).await {
        crate::vms::Availability::Ready {
            backend,
            image,
            reason,
        } => (backend, image, reason),
        crate::vms::Availability::Unavailable(why) => {
            bail!("this host cannot run sandboxes: {why}")
        }
    };
    tracing::info!(backend = %backend.kind(), %reason, "sandbox backend");
    match backend.collect_garbage().await {
        Ok(removed) => {
            for what in removed {
                tracing::info!(%what, "garbage collected at start-up");
            }
        }
        Err(error) => tracing::warn!(error = %error, "start-up garbage collection failed"),
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listening = listener.local_addr()?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| listening.to_string());
    let key = crate::auth::new_secret();
    let kind = backend.kind();
    // In clear only on loopback: beyond it the key would cross a network.
    let identity = if config.tls || !listening.ip().is_loopback() {
        Some(::sandbox::remote::NodeIdentity::generate()?)
    } else {
        None
    };
    let tls_sha256 = identity.as_ref().map(|id| id.fingerprint().to_owned());
    let served_key = key.clone();
    let mut serving = tokio::spawn(async move {
        match identity {
            Some(identity) => {
                ::sandbox::remote::serve_tls(backend, image, served_key, listener, &identity).await
            }
            None => ::sandbox::remote::serve(backend, image, served_key, listener).await,
        }
    });
    tracing::info!(%listening, %address, tls = tls_sha256.as_deref().unwrap_or("none"), "serving sandboxes");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("{}/v1/nodes/report", config.control.trim_end_matches('/'));
    let mut registered = false;
    let stop = crate::server::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let report = NodeReport {
            address: address.clone(),
            key: key.clone(),
            tls_sha256: tls_sha256.clone(),
            backend: kind.to_string(),
            labels: config.labels.clone(),
            ..measure(&config.sandboxes.data_dir, config.memory_mib)
        };
        let wait = match send(&http, &url, &config.token, &report).await {
            Ok(answer) => {
                if !registered {
                    tracing::info!(node = %answer.node, control = %config.control, "reporting to the control plane");
                    registered = true;
                }
                Duration::from_secs(answer.report_every_secs.clamp(1, 60))
            }
            Err(Refusal::Token) => {
                bail!(
                    "the control plane at {} refused this node's token",
                    config.control
                )
            }
            Err(Refusal::Other(error)) => {
                tracing::warn!(error = %error, "the report did not reach the control plane");
                super::REPORT_EVERY
            }
        };
        tokio::select! {
            ended = &mut serving => {
                return match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error).context("serving sandboxes failed"),
                    Err(error) => Err(error).context("the serving task failed"),
                };
            }
            _ = tokio::time::sleep(wait) => {}
            () = &mut stop => return Ok(()),
        }
    }
}

enum Refusal {
    Token,
    Other(String),
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    report: &NodeReport,
) -> Result<NodeReportAnswer, Refusal> {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(report)
        .send()
        .await
        .map_err(|e| Refusal::Other(e.to_string()))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(Refusal::Token);
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(Refusal::Other(format!("{status}: {body}")));
    }
    response
        .json()
        .await
        .map_err(|e| Refusal::Other(format!("a malformed answer: {e}")))
}

/// The host's capacity: memory (at most `memory_mib` when given), vCPUs,
/// and the disk under `data_dir`.
fn measure(data_dir: &Path, memory_mib: Option<u64>) -> NodeReport {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib << 10)
    };
    let total = field("MemTotal");
    let memory_bytes = memory_mib.map_or(total, |mib| (mib << 20).min(total));
    let free_memory_bytes = field("MemAvailable").min(memory_bytes);
    let (disk_bytes, free_disk_bytes) = rustix::fs::statvfs(data_dir)
        .map(|fs| {
            (
                fs.f_blocks.saturating_mul(fs.f_frsize),
                fs.f_bavail.saturating_mul(fs.f_frsize),
            )
        })
        .unwrap_or((0, 0));
    NodeReport {
        address: String::new(),
        key: String::new(),
        tls_sha256: None,
        backend: String::new(),
        labels: BTreeMap::new(),
        memory_bytes,
        free_memory_bytes,
        vcpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        disk_bytes,
        free_disk_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_measured_and_an_offer_caps_memory() {
        let dir = std::env::temp_dir();
        let whole = measure(&dir, None);
        assert!(whole.memory_bytes > 0 && whole.free_memory_bytes <= whole.memory_bytes);
        assert!(whole.vcpus >= 1);
        assert!(whole.disk_bytes >= whole.free_disk_bytes && whole.disk_bytes > 0);
        let offered = measure(&dir, Some(64));
        assert_eq!(offered.memory_bytes, 64 << 20);
        assert!(offered.free_memory_bytes <= 64 << 20);
    }
}
