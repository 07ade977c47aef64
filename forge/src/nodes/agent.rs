//! `forge node run`: a host's sandboxes served to a control plane.
//!
//! Opens the host's sandbox backend as `forge serve` would (the same
//! probe, image and options), serves it on `--listen` with the node
//! protocol under a key made now (in TLS with a certificate made now,
//! unless it listens on loopback and `--tls` is not given), and reports to
//! the control plane (`POST /v1/nodes/report` with the node's token) every
//! [`super::REPORT_EVERY`]: where it serves, the key, the certificate's
//! SHA-256, its backend, labels,
//! memory, vCPUs and disk. A refused token stops the node; an unreachable
//! control plane is retried (sandboxes keep running meanwhile, and the
//! control plane sees the node lost until it reports again). Several
//! control planes on one database may be named (`--control A,B`): the node
//! reports to the one that answered last, and to the next when it does
//! not.
//!
//! A report carries the node's token and the key that commands its
//! sandboxes, so it goes over https (a private CA given by `--control-ca`),
//! or plain http only to a loopback control plane or with
//! `--insecure-control`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use api_types::nodes::{NodeReport, NodeReportAnswer};
use tokio::net::TcpListener;

use crate::server::{SandboxChoice, open_sandboxes};

/// What `forge node run` needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The control planes' URLs (`https://host:port`; `http://` on
    /// loopback, or with `insecure_control`), any of which takes reports.
    pub control: Vec<String>,
    /// PEM certificates of a private CA the control plane's certificate
    /// may chain to.
    pub control_ca: Option<PathBuf>,
    /// Allow `http://` beyond loopback.
    pub insecure_control: bool,
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
    // Before anything starts: a refused URL or CA is the operator's to fix.
    anyhow::ensure!(!config.control.is_empty(), "no control plane is named");
    let urls = config
        .control
        .iter()
        .map(|control| report_url(control, config.insecure_control))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let http = client(config.control_ca.as_deref())?;
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

    // The control plane that took the last report (`None`: none yet).
    let mut reporting_to: Option<usize> = None;
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
        let first = reporting_to.unwrap_or(0);
        let mut wait = super::REPORT_EVERY;
        for index in (first..urls.len()).chain(0..first) {
            match send(&http, &urls[index], &config.token, &report).await {
                Ok(answer) => {
                    if reporting_to != Some(index) {
                        tracing::info!(node = %answer.node, control = %config.control[index], "reporting to the control plane");
                        reporting_to = Some(index);
                    }
                    wait = Duration::from_secs(answer.report_every_secs.clamp(1, 60));
                    break;
                }
                Err(Refusal::Token) => {
                    bail!(
                        "the control plane at {} refused this node's token",
                        config.control[index]
                    )
                }
                Err(Refusal::Other(error)) => {
                    tracing::warn!(control = %config.control[index], error = %error, "the report did not reach the control plane");
                }
            }
        }
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

/// The report's URL under the control plane's `control`. Plain `http` is
/// refused beyond loopback unless `insecure`: each report carries the
/// node's token and the key that commands its sandboxes.
fn report_url(control: &str, insecure: bool) -> anyhow::Result<reqwest::Url> {
    let url = format!("{}/v1/nodes/report", control.trim_end_matches('/'));
    let parsed = reqwest::Url::parse(&url)
        .with_context(|| format!("the control plane's URL {control:?} is not a URL"))?;
    let Some(host) = parsed.host_str() else {
        bail!("the control plane's URL {control:?} names no host");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback || insecure => Ok(parsed),
        "http" => bail!(
            "the control plane's URL {control} is plain http beyond loopback: the node's \
             token and key would cross the network in clear. Serve the control plane over \
             https (--control-ca for a private CA), or pass --insecure-control on a network \
             no one else can read"
        ),
        other => bail!("the control plane's URL {control:?} is {other}:, not http(s):"),
    }
}

/// The client that reports, trusting the CA certificates in `ca` (PEM)
/// beside the public roots.
fn client(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read the control plane's CA {}", ca.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
        if certificates.is_empty() {
            bail!("{} holds no PEM certificate", ca.display());
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder.build()?)
}

enum Refusal {
    Token,
    Other(String),
}

async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    token: &str,
    report: &NodeReport,
) -> Result<NodeReportAnswer, Refusal> {
    let response = http
        .post(url.clone())
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
    fn a_report_goes_in_clear_only_to_loopback_or_when_told() {
        for url in [
            "http://127.0.0.1:7000",
            "http://localhost:7000/",
            "http://[::1]:7000",
            "https://forge.example.com",
            "https://10.0.0.1:8443/",
        ] {
            let parsed = report_url(url, false).expect(url);
            assert!(parsed.path().ends_with("/v1/nodes/report"), "{parsed}");
        }
        let behind = report_url("https://example.com/forge/", false).expect("a prefix");
        assert_eq!(behind.as_str(), "https://example.com/forge/v1/nodes/report");
        for url in ["http://10.0.0.1:7000", "http://forge.example.com"] {
            let refused = report_url(url, false).expect_err(url).to_string();
            assert!(refused.contains("in clear"), "{refused}");
            report_url(url, true).expect("allowed when told");
        }
        for url in ["ftp://127.0.0.1", "not a url", "file:///etc/passwd"] {
            assert!(report_url(url, true).is_err(), "{url}");
        }
    }

    /// A control plane on `127.0.0.1` serving https with a certificate
    /// signed by a CA of its own, answering every report as node `n1`;
    /// its URL and the CA's PEM.
    async fn https_control_plane() -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;

        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("the CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("the server's certificate");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // The head and the (small) body; then answer.
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() >= length {
                                break;
                            }
                        }
                    }
                    let answer = r#"{"node":"n1","report_every_secs":2}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(ca.der());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        (url, pem)
    }

    #[tokio::test]
    async fn a_report_over_https_trusts_the_given_ca_and_no_other() {
        let (control, ca_pem) = https_control_plane().await;
        let url = report_url(&control, false).expect("https");
        let report = measure(&std::env::temp_dir(), Some(64));
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &ca_pem).expect("write the CA");

        let trusting = client(Some(&ca)).expect("a client trusting the CA");
        match send(&trusting, &url, "token", &report).await {
            Ok(answer) => assert_eq!(answer.node, "n1"),
            Err(Refusal::Token) => panic!("refused the token"),
            Err(Refusal::Other(error)) => panic!("the report failed: {error}"),
        }
        // Without the CA, the certificate is not trusted: nothing is sent.
        let public_only = client(None).expect("a client");
        match send(&public_only, &url, "token", &report).await {
            Err(Refusal::Other(error)) => assert!(!error.is_empty()),
            _ => panic!("a certificate of an unknown CA was trusted"),
        }
        // A CA file that holds no certificate is refused at start.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let refused = client(Some(&empty))
            .expect_err("no certificate")
            .to_string();
        assert!(refused.contains("no PEM certificate"), "{refused}");
        let missing = client(Some(&dir.path().join("absent.pem")));
        assert!(missing.is_err());
    }

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
