//! TLS for the node protocol, without a certificate authority: each start
//! of a node makes a key and a self-signed certificate ([`NodeIdentity`]),
//! the node tells its control plane the certificate's SHA-256 over the
//! control plane's own authenticated channel (its report, with its token),
//! and the caller accepts exactly that certificate ([`Pinned`]): the
//! handshake proves the node holds the key, the pin that it is the node
//! that reported. Only TLS 1.2 and 1.3 with ring's algorithms.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};

/// The name in every node's certificate (the pin, not the name, says which
/// node it is).
pub const NODE_NAME: &str = "forge-node";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 of a certificate, in hex.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// A node's key and certificate for one run of it.
#[derive(Clone)]
pub struct NodeIdentity {
    config: Arc<rustls::ServerConfig>,
    fingerprint: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// A new P-256 key and a certificate for it, signed by itself.
    pub fn generate() -> Result<Self> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Error::Invalid(format!(
                "making the node's TLS identity failed: {what}: {e}"
            ))
        };
        let key = rcgen::KeyPair::generate().map_err(|e| failed("key", &e))?;
        let cert = rcgen::CertificateParams::new(vec![NODE_NAME.to_owned()])
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| failed("certificate", &e))?;
        let der: CertificateDer<'static> = cert.der().clone();
        let fingerprint = fingerprint(&der);
        let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("protocol versions", &e))?
            .with_no_client_auth()
            .with_single_cert(vec![der], key_der.into())
            .map_err(|e| failed("server configuration", &e))?;
        Ok(Self {
            config: Arc::new(config),
            fingerprint,
        })
    }

    /// What the node reports: its certificate's SHA-256, in hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// A connector that accepts only the certificate whose SHA-256 (hex) is
/// `pin`.
pub(crate) fn connector(pin: &str) -> Result<TlsConnector> {
    let expected = hex::decode(pin)
        .ok()
        .filter(|bytes| bytes.len() == 32)
        .ok_or_else(|| Error::Invalid(format!("{pin:?} is not a SHA-256 in hex")))?;
    let provider = provider();
    let verifier = Pinned {
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name a caller asks for (every node's certificate carries it).
pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(NODE_NAME)
            .expect("the node name is a DNS name")
            .to_owned(),
    )
}

/// Accepts one certificate, by its SHA-256; the handshake's signatures are
/// checked as usual, so only the holder of its key gets through.
#[derive(Debug)]
struct Pinned {
    expected: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.expected.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node's certificate is not the one it reported".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
