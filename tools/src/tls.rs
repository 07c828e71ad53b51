//! Client TLS files (etcdctl's `--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`)
//! for both clients: a rustls configuration for the native protocol, a tonic one for gRPC.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use crate::ClientError;

/// Client TLS from PEM files.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA bundle that signs the server's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate (with `key`), for servers with client-certificate auth.
    pub cert: Option<PathBuf>,
    /// Client private key.
    pub key: Option<PathBuf>,
    /// Accept any server certificate (etcdctl `--insecure-skip-tls-verify`; native protocol
    /// only). The connection is still encrypted, but not authenticated.
    pub insecure_skip_verify: bool,
}

fn io(e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(std::io::Error::other(e.to_string()))
}

fn read(p: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(p).map_err(|e| {
        ClientError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", p.display()),
        ))
    })
}

impl TlsFiles {
    /// Whether TLS is asked for (then the connection uses TLS).
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some() || self.insecure_skip_verify
    }

    fn pair(&self) -> Result<Option<(&Path, &Path)>, ClientError> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            _ => Err(io("--cert and --key go together")),
        }
    }

    /// The tonic TLS configuration for server name `host`.
    ///
    /// # Errors
    /// Unreadable files; `--cert` without `--key`; `insecure_skip_verify` (not offered over
    /// gRPC).
    pub(crate) fn tonic(
        &self,
        host: &str,
    ) -> Result<tonic::transport::ClientTlsConfig, ClientError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if self.insecure_skip_verify {
            return Err(io(
                "--insecure-skip-tls-verify is supported over the native protocol only",
            ));
        }
        let mut c = ClientTlsConfig::new().domain_name(host.to_owned());
        if let Some(ca) = &self.ca {
            c = c.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = self.pair()? {
            c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(c)
    }

    /// The rustls configuration for the native protocol (ALPN `etch`): the server verified
    /// against `ca` (else the system's... none: etch has no built-in roots, so `ca` or
    /// `insecure_skip_verify` is needed), the client certificate when given.
    ///
    /// # Errors
    /// Unreadable or unusable files; neither a CA nor `insecure_skip_verify`.
    pub fn rustls(&self) -> Result<rustls::ClientConfig, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io)?;
        let b = if self.insecure_skip_verify {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        } else {
            let ca = self
                .ca
                .as_ref()
                .ok_or_else(|| io("TLS needs --cacert (or --insecure-skip-tls-verify)"))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| io(format!("{}: {e}", ca.display())))?
            {
                roots
                    .add(c.map_err(|e| io(format!("{}: {e}", ca.display())))?)
                    .map_err(|e| io(format!("{}: {e}", ca.display())))?;
            }
            b.with_root_certificates(roots)
        };
        let mut cfg = match self.pair()? {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| io(format!("{}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| io(format!("{}: {e}", key.display())))?;
                b.with_client_auth_cert(chain, key).map_err(io)?
            }
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"etch".to_vec()];
        Ok(cfg)
    }
}

/// `--insecure-skip-tls-verify`: any server certificate (signatures still checked).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
