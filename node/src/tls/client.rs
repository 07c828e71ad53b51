//! TLS on the client listeners (gRPC/HTTP port and native port), with rustls: etcd's
//! `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, `--auto-tls`,
//! `--cipher-suites`, `--tls-min-version`, `--tls-max-version`.
//!
//! Certificates are reloaded when their files change (rotation without restart): every
//! handshake compares the files' modification time, size and inode with those loaded, and
//! reloads on a change (etcd reads its certificate files on each handshake too). A change that
//! does not load (a half-written file, a key that does not match) keeps the previous
//! certificate and is logged; connections already open keep the certificate they started with.
//! The trusted CA file (`--trusted-ca-file`) is reloaded the same way, at the next client
//! handshake after it changes.
//!
//! Handshakes run in their own tasks, so a slow or silent client never holds up the accept
//! loop; a failed handshake (plain TCP, an untrusted client certificate) closes that connection
//! and is logged at debug.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::ClientTls;

/// A client's handshake must finish within this, or the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a TLS connection: its address, and the Common Name of its
/// verified client certificate (the user name with auth enabled, as in etcd). Inserted into
/// every gRPC/HTTP request's extensions.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The client's address.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// Common Name of the verified client certificate, if one was presented.
    pub common_name: Option<String>,
}

/// Files' identity: (modification time, size, inode) of the certificate and the key.
type Stamp = Vec<(Option<std::time::SystemTime>, u64, u64)>;

fn stamp(files: &[&Path]) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    files
        .iter()
        .map(|f| match std::fs::metadata(f) {
            Ok(m) => (m.modified().ok(), m.len(), m.ino()),
            Err(_) => (None, 0, 0),
        })
        .collect()
}

/// A certificate and key loaded from PEM files, reloaded when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: Option<(PathBuf, PathBuf)>,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    /// Loads `cert` and `key` (PEM).
    ///
    /// # Errors
    /// Unreadable files (named in the error), no certificate, a key rustls cannot use.
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> std::io::Result<ReloadingCert> {
        let st = stamp(&[cert, key]);
        let ck = load_certified(cert, key, &provider)?;
        Ok(ReloadingCert {
            files: Some((cert.to_owned(), key.to_owned())),
            provider,
            current: Mutex::new((st, Arc::new(ck))),
        })
    }

    /// A fixed, generated self-signed certificate for `localhost` and 127.0.0.1 (auto TLS).
    ///
    /// # Errors
    /// Certificate generation failures.
    pub fn self_signed(provider: Arc<CryptoProvider>) -> std::io::Result<ReloadingCert> {
        let (cert, key) = crate::tls::peer::self_signed(vec!["127.0.0.1".to_owned()])
            .map_err(std::io::Error::other)?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(std::io::Error::other)?;
        Ok(ReloadingCert {
            files: None,
            provider,
            current: Mutex::new((Vec::new(), Arc::new(CertifiedKey::new(vec![cert], signer)))),
        })
    }

    /// The certificate to present now, reloading it first if its files changed.
    pub fn get(&self) -> Arc<CertifiedKey> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cert, key)) = &self.files {
            let now = stamp(&[cert, key]);
            if now != cur.0 {
                // Try once per change: a file that does not load is not retried until it
                // changes again.
                cur.0 = now;
                match load_certified(cert, key, &self.provider) {
                    Ok(ck) => {
                        tracing::info!(cert = %cert.display(), "certificate reloaded");
                        cur.1 = Arc::new(ck);
                    }
                    Err(e) => tracing::warn!(
                        cert = %cert.display(),
                        error = %e,
                        "certificate files changed but do not load; keeping the previous one"
                    ),
                }
            }
        }
        cur.1.clone()
    }
}

fn load_certified(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> std::io::Result<CertifiedKey> {
    let (chain, key_der) = crate::tls::peer::load_identity(cert, key)?;
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", key.display())))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| std::io::Error::other(format!("{}: {e}", cert.display())))?;
    Ok(ck)
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client certificates against `--trusted-ca-file`, re-reading the file when it
/// changes (a CA bundle that does not load keeps the previous one, logged). Sends no CA hints
/// (clients with one certificate, as etcdctl, do not need them).
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    ca: PathBuf,
    crl: Option<PathBuf>,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Arc<Verifier>)>,
}

/// The webpki verifier of one CA bundle, and the bundle's certificates.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    anchors: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Verifier {
    /// webpki's verdict; except that a client certificate that is itself one of the trusted
    /// CA certificates (a self-signed CA used as a client certificate, as etcd's e2e fixture
    /// `CommonName-root.crt`) is accepted within its validity period, as Go's verifier (and so
    /// etcd) accepts it. Holding its key already lets the holder issue any client certificate
    /// the CA trusts, so accepting it grants nothing more; the handshake still proves the key.
    fn verify(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => Ok(v),
            Err(e) => {
                let is_anchor = self
                    .anchors
                    .iter()
                    .any(|a| a.as_ref() == end_entity.as_ref());
                let now = now.as_secs() as i64;
                let in_validity = x509_parser::parse_x509_certificate(end_entity.as_ref())
                    .is_ok_and(|(_, c)| {
                        c.validity().not_before.timestamp() <= now
                            && now <= c.validity().not_after.timestamp()
                    });
                if is_anchor && in_validity {
                    Ok(rustls::server::danger::ClientCertVerified::assertion())
                } else {
                    Err(e)
                }
            }
        }
    }
}

impl ReloadingClientVerifier {
    /// Loads `ca` and the revocation lists in `crl` (`--client-crl-file`; reloaded the same
    /// way); `mandatory` refuses clients without a certificate (`--client-cert-auth`).
    ///
    /// # Errors
    /// An unreadable or empty CA or CRL file.
    pub fn load(
        ca: &Path,
        crl: Option<&Path>,
        mandatory: bool,
        provider: Arc<CryptoProvider>,
    ) -> std::io::Result<ReloadingClientVerifier> {
        let st = stamp(&Self::files(ca, crl));
        let v = Self::build(ca, crl, mandatory, &provider)?;
        Ok(ReloadingClientVerifier {
            ca: ca.to_owned(),
            crl: crl.map(Path::to_owned),
            mandatory,
            provider,
            current: Mutex::new((st, v)),
        })
    }

    fn files<'a>(ca: &'a Path, crl: Option<&'a Path>) -> Vec<&'a Path> {
        std::iter::once(ca).chain(crl).collect()
    }

    fn build(
        ca: &Path,
        crl: Option<&Path>,
        mandatory: bool,
        provider: &Arc<CryptoProvider>,
    ) -> std::io::Result<Arc<Verifier>> {
        use rustls::pki_types::pem::PemObject;
        let roots = Arc::new(crate::tls::peer::load_roots(ca)?);
        let anchors = rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", ca.display())))?
            .filter_map(Result::ok)
            .collect();
        let crls = match crl {
            Some(f) => crate::tls::peer::load_crls(f)?,
            None => Vec::new(),
        };
        // Go checks the leaf's serial against the CRL; a CRL of another issuer says nothing
        // about it.
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        let v = if mandatory {
            v
        } else {
            v.allow_unauthenticated()
        };
        let webpki = v
            .build()
            .map_err(|e| std::io::Error::other(format!("{}: {e}", ca.display())))?;
        Ok(Arc::new(Verifier { webpki, anchors }))
    }

    fn get(&self) -> Arc<Verifier> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&Self::files(&self.ca, self.crl.as_deref()));
        if now != cur.0 {
            cur.0 = now;
            match Self::build(
                &self.ca,
                self.crl.as_deref(),
                self.mandatory,
                &self.provider,
            ) {
                Ok(v) => {
                    tracing::info!(ca = %self.ca.display(), "trusted CA reloaded");
                    cur.1 = v;
                }
                Err(e) => tracing::warn!(
                    ca = %self.ca.display(),
                    error = %e,
                    "trusted CA file changed but does not load; keeping the previous one"
                ),
            }
        }
        cur.1.clone()
    }
}

impl rustls::server::danger::ClientCertVerifier for ReloadingClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.get().verify(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub use crate::config::tls::{provider, versions};

/// The rustls server configuration of the client URLs: the (reloading) certificate, client
/// certificates verified against `--trusted-ca-file` (required with `--client-cert-auth`,
/// else optional), ALPN `alpn`.
///
/// # Errors
/// Unreadable or unusable files, bad cipher suites or versions.
pub fn server_config(t: &ClientTls, alpn: &[&[u8]]) -> std::io::Result<rustls::ServerConfig> {
    let other = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let provider = Arc::new(provider(&t.cipher_suites).map_err(|e| other(&e))?);
    let versions =
        versions(&t.min_version, &t.max_version, &t.cipher_suites).map_err(|e| other(&e))?;
    let cert = match &t.cert_and_key {
        Some((c, k)) => ReloadingCert::load(c, k, provider.clone())?,
        None => ReloadingCert::self_signed(provider.clone())?,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| other(&e))?;
    let builder = match &t.trusted_ca_file {
        Some(ca) => builder.with_client_cert_verifier(Arc::new(ReloadingClientVerifier::load(
            ca,
            t.crl_file.as_deref(),
            t.client_cert_auth,
            provider,
        )?)),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(cert));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A TLS connection with the identity of its client, for tonic (`Connected`) and the native
/// protocol.
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<crate::listener::Stream>,
    identity: PeerIdentity,
}

impl TlsConn {
    /// The client's identity.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

/// Accepts connections on `listener` (TCP or a unix socket) and completes TLS handshakes
/// concurrently; the receiver yields finished connections (`TCP_NODELAY` set on TCP). Ends
/// when the receiver is dropped.
pub fn accept(
    listener: crate::listener::Listener,
    config: Arc<rustls::ServerConfig>,
) -> tokio::sync::mpsc::Receiver<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let common_name = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::tls::common_name(c.as_ref()));
                        let conn = TlsConn {
                            inner: tls,
                            identity: PeerIdentity {
                                remote_addr: addr,
                                common_name,
                            },
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?addr, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_and_versions_follow_etcds_flags() {
        let p = provider(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()]).expect("known");
        let names: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert!(names.contains(&rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
        assert!(names.contains(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert!(!names.contains(&rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384));
        let err = provider(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()]).expect_err("CBC");
        assert!(err.contains("not supported"), "{err}");
        assert_eq!(versions("TLS1.2", "", &[]).expect("ok").len(), 2);
        assert_eq!(versions("TLS1.3", "", &[]).expect("ok").len(), 1);
        assert!(versions("TLS1.1", "", &[]).is_err());
        assert!(versions("TLS1.3", "TLS1.2", &[]).is_err());
        assert!(versions("TLS1.3", "", &["x".into()]).is_err());
    }
}
