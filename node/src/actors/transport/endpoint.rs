//! The member's QUIC endpoint: server and client TLS from the peer flags (mutual TLS, CRLs,
//! allowed CN/hostname, auto TLS) over the bound UDP socket.

use super::*;

/// Builds the QUIC endpoint on `socket`. With `tls`, the member presents its certificate as
/// server and client, verifies peers against the trusted CA when one is given, and requires
/// client certificates with `client_cert_auth` (etcd's `--peer-*` flags). Without, it uses an
/// auto-generated certificate and accepts peers' (etcd `--peer-auto-tls`).
///
/// # Errors
/// Unreadable or invalid certificate files, socket errors.
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: Option<&PeerTls>,
) -> std::io::Result<quinn::Endpoint> {
    let other = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // With peer certificate files, the certificate is reloaded when they change (rotation
    // without restart), for both directions; a generated one never changes.
    let cert = Arc::new(match tls {
        Some(t) => {
            crate::tls::client::ReloadingCert::load(&t.cert_file, &t.key_file, provider.clone())?
        }
        None => crate::tls::client::ReloadingCert::self_signed(provider.clone())?,
    });
    let roots = match tls.and_then(|t| t.trusted_ca_file.as_ref()) {
        Some(ca) => Some(Arc::new(tls::load_roots(ca)?)),
        None => None,
    };
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?;
    let crls = match tls.and_then(|t| t.crl_file.as_ref()) {
        Some(f) => tls::load_crls(f)?,
        None => Vec::new(),
    };
    let server = match (&roots, tls.filter(|t| t.client_cert_auth)) {
        (Some(roots), Some(t)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .with_crls(crls.clone())
            // Go checks the leaf's serial against the CRL; a CRL of another issuer says
            // nothing about it.
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| other(&e))?;
            server.with_client_cert_verifier(Arc::new(tls::AllowedPeers {
                inner: verifier,
                allowed_cn: t.allowed_cn.clone(),
                allowed_hostname: t.allowed_hostname.clone(),
            }))
        }
        _ => server.with_no_client_auth(),
    };
    let mut server = server.with_cert_resolver(cert.clone());
    server.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?;
    let client = match &roots {
        Some(roots) if !crls.is_empty() => client.with_webpki_verifier(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| other(&e))?,
        ),
        Some(roots) => client.with_root_certificates(roots.clone()),
        None => client
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::AutoTlsVerifier::new())),
    };
    let mut client = if tls.is_some() {
        client.with_client_cert_resolver(cert)
    } else {
        client.with_no_client_auth()
    };
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(5_000).into()));
    let transport = Arc::new(transport);
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| other(&e))?,
    ));
    server_cfg.transport_config(transport.clone());
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| other(&e))?,
    ));
    client_cfg.transport_config(transport);
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(client_cfg);
    Ok(ep)
}
