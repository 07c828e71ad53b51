//! TLS, one room for both sides of a member: [`client`] for the client URLs (etcd's
//! `--cert-file`, `--trusted-ca-file`, `--client-cert-auth`, CRLs, certificate reload) and
//! [`peer`] for the peer QUIC connections (mutual TLS, `--peer-cert-allowed-cn`, auto TLS).
//! Used by the front ends and the peer transport; imports only `config`.

pub mod client;
pub mod peer;

/// The Common Name of a DER certificate's subject (the user name a client certificate
/// carries), or `None` when it has none.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}
