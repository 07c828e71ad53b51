//! TLS for the peer transport (QUIC always runs TLS 1.3).
//!
//! Without peer TLS flags a member uses a self-signed certificate generated at start and does
//! not verify its peers' certificates, as etcd's `--peer-auto-tls` does: the link is encrypted
//! but peers are identified only by the cluster ID in their Hello. With `--peer-cert-file`,
//! `--peer-key-file`, `--peer-trusted-ca-file` and `--peer-client-cert-auth` both directions
//! are verified against the CA (mutual TLS), as in etcd.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// ALPN protocol id of the peer transport.
pub const PEER_ALPN: &[u8] = b"etch-peer/1";

/// Reads a certificate chain and private key (PEM files).
///
/// # Errors
/// Unreadable files, no certificate, no key.
pub(crate) fn load_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    use rustls::pki_types::pem::PemObject;
    let bad = |p: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{}: {e}", p.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if chain.is_empty() {
        return Err(bad(cert, &"no certificate in file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    Ok((chain, key_der))
}

/// Reads trusted CA certificates (PEM).
///
/// # Errors
/// Unreadable file, no usable certificate.
pub(crate) fn load_roots(ca: &std::path::Path) -> std::io::Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no CA certificate in file"));
    }
    Ok(roots)
}

/// A self-signed certificate and its key, for `localhost` and the given host names/IPs.
///
/// # Errors
/// rcgen failures (none expected for valid names).
pub fn self_signed(
    names: Vec<String>,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let mut all = vec!["localhost".to_owned()];
    all.extend(names);
    let ck = rcgen::generate_simple_self_signed(all)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    Ok((ck.cert.der().clone(), key))
}

/// Accepts any server certificate (auto TLS): signatures are still checked, so the handshake
/// proves the peer holds the key of the certificate it showed.
#[derive(Debug)]
pub(crate) struct AutoTlsVerifier(Arc<rustls::crypto::CryptoProvider>);

impl AutoTlsVerifier {
    pub(crate) fn new() -> AutoTlsVerifier {
        AutoTlsVerifier(Arc::new(rustls::crypto::ring::default_provider()))
    }
}

impl ServerCertVerifier for AutoTlsVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
