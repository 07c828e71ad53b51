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

/// Reads certificate revocation lists (PEM `-----BEGIN X509 CRL-----` blocks, or one DER CRL), for
/// `--client-crl-file` and `--peer-crl-file`.
///
/// # Errors
/// Unreadable file, no CRL in it.
pub(crate) fn load_crls(
    path: &std::path::Path,
) -> std::io::Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", path.display()));
    let crls = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if !crls.is_empty() {
        return Ok(crls);
    }
    // Not PEM: one DER-encoded CRL (Go's x509.ParseCRL takes both; etcd's fixtures are DER).
    let der = std::fs::read(path).map_err(|e| bad(&e))?;
    if der.first() != Some(&0x30) {
        return Err(bad(&"no certificate revocation list in file (PEM or DER)"));
    }
    Ok(vec![rustls::pki_types::CertificateRevocationListDer::from(
        der,
    )])
}

/// A client-certificate verifier that, after `inner` accepted the chain, also requires the
/// certificate's Common Name to be `allowed_cn` and/or the certificate to be valid for
/// `allowed_hostname` (a DNS or IP subject alternative name), as etcd's
/// `--peer-cert-allowed-cn` and `--peer-cert-allowed-hostname` do. A refused peer gets a
/// `bad_certificate` alert (Go prints "remote error: tls: bad certificate").
#[derive(Debug)]
pub(crate) struct AllowedPeers {
    /// The CA (and CRL) verifier.
    pub(crate) inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// Required Common Name.
    pub(crate) allowed_cn: Option<String>,
    /// Required host name.
    pub(crate) allowed_hostname: Option<String>,
}

impl rustls::server::danger::ClientCertVerifier for AllowedPeers {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let refuse = |why: String| {
            tracing::warn!(reason = %why, "client certificate authentication failed");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        };
        if let Some(cn) = &self.allowed_cn {
            let got = crate::tls::common_name(end_entity.as_ref());
            if got.as_deref() != Some(cn.as_str()) {
                return refuse(format!("peer certificate CN {got:?} is not {cn:?}"));
            }
        }
        if let Some(host) = &self.allowed_hostname {
            let name = ServerName::try_from(host.as_str())
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            if rustls::client::verify_server_name(&parsed, &name).is_err() {
                return refuse(format!("peer certificate is not valid for {host:?}"));
            }
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// etcd's (Go's) text for a TLS alert a peer sent while refusing our handshake, so operators
/// (and etcd's tests) see the words they know; `None` for other connection errors.
pub(crate) fn remote_tls_error(e: &quinn::ConnectionError) -> Option<String> {
    let code = match e {
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        _ => return None,
    };
    // QUIC carries TLS alerts as transport error 0x100 + alert (RFC 9001 section 4.8).
    let alert = code.checked_sub(0x100).filter(|a| *a < 0x100)?;
    let text = match alert {
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "revoked certificate",
        45 => "expired certificate",
        46 => "unknown certificate",
        48 => "unknown certificate authority",
        49 => "access denied",
        116 => "certificate required",
        other => return Some(format!("remote error: tls: alert({other})")),
    };
    Some(format!("remote error: tls: {text}"))
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
