//! Client TLS on the gRPC/HTTP port with etcd's flags (`--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`, `https://` client URLs): Debian's etcdctl 3.4
//! works against a 3-member cluster with the CA and a client certificate; a client without a
//! certificate, with one from another CA, or speaking plain TCP is refused cleanly and the
//! members keep serving.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use etch_tests::{Cluster, bench, make_pki};

fn etcdctl_tls(endpoints: &str, tls: &[&str], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoints,
            "--command-timeout",
            "5s",
            "--dial-timeout",
            "3s",
        ])
        .args(tls)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl")
}

#[test]
fn client_tls_with_client_cert_auth_on_three_members() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (ca, cert, key) = make_pki(&pki, "cluster");
    let (_, other_cert, other_key) = make_pki(&pki, "intruder");
    let c = Cluster::start(
        &dir.path().join("etch"),
        3,
        &etch_tests::client_tls_args(&ca, &cert, &key),
    );
    let eps: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("https://{}", n.grpc))
        .collect();
    let tls = [
        "--cacert",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    // Through every member, over TLS.
    for (i, ep) in eps.iter().enumerate() {
        let o = etcdctl_tls(ep, &tls, &["put", &format!("k{i}"), "v"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = etcdctl_tls(
        &eps.join(","),
        &tls,
        &["get", "k", "--prefix", "--keys-only"],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "k0\n\nk1\n\nk2\n\n");
    let o = etcdctl_tls(&eps.join(","), &tls, &["endpoint", "health"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // No client certificate, or one from another CA: refused.
    let o = etcdctl_tls(&eps[0], &["--cacert", &ca], &["get", "k0"]);
    assert!(!o.status.success(), "served a client without a certificate");
    let o = etcdctl_tls(
        &eps[0],
        &["--cacert", &ca, "--cert", &other_cert, "--key", &other_key],
        &["get", "k0"],
    );
    assert!(
        !o.status.success(),
        "served a client certificate from an untrusted CA"
    );
    // Plain TCP to the TLS port: no HTTP answer, the connection just ends.
    let mut s = std::net::TcpStream::connect(&c.nodes[0].grpc).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // etch-bench with the same files; the members still serve after the refusals.
    let out = bench(
        &c.nodes[1].grpc,
        &[
            "--protocol",
            "grpc",
            "--json",
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "put",
            "--total",
            "100",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = etcdctl_tls(&eps[2], &tls, &["get", "k1", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "v\n");
}

/// `--auto-tls`: a generated certificate on an `https://` client URL; clients that skip
/// verification (etcdctl `--insecure-transport=false --insecure-skip-tls-verify`) talk to it over
/// TLS, plain ones cannot.
#[test]
fn auto_tls_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let n = etch_tests::Node::start(
        dir.path(),
        &["--listen-client-urls", "https://127.0.0.1:0", "--auto-tls"],
    );
    let ep = format!("https://{}", n.grpc);
    let o = etcdctl_tls(
        &ep,
        &["--insecure-transport=false", "--insecure-skip-tls-verify"],
        &["put", "a", "1"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = etcdctl_tls(
        &ep,
        &["--insecure-transport=false", "--insecure-skip-tls-verify"],
        &["get", "a", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1\n");
    let o = etcdctl_tls(&format!("http://{}", n.grpc), &[], &["get", "a"]);
    assert!(!o.status.success(), "plain gRPC served on a TLS port");
}

/// The native port speaks TLS with the client URLs' flags: etchctl and etch-bench with the
/// files work; plain frames, no client certificate, or one from another CA are refused in the
/// handshake and the member keeps serving.
#[test]
fn native_port_speaks_tls_with_client_cert_auth() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (ca, cert, key) = make_pki(&pki, "cluster");
    let (_, other_cert, other_key) = make_pki(&pki, "intruder");
    let n = etch_tests::Node::start(dir.path(), &etch_tests::client_tls_args(&ca, &cert, &key));
    n.ctl_ok(&["put", "k", "v"]);
    let plain = etch_tests::etchctl_at(&n.native, &["--command-timeout", "5s", "get", "k"]);
    assert!(!plain.status.success(), "plain frames served on a TLS port");
    let no_cert = etch_tests::etchctl_at(&n.native, &["--cacert", &ca, "get", "k"]);
    assert!(
        !no_cert.status.success(),
        "served a client without a certificate"
    );
    let intruder = etch_tests::etchctl_at(
        &n.native,
        &[
            "--cacert",
            &ca,
            "--cert",
            &other_cert,
            "--key",
            &other_key,
            "get",
            "k",
        ],
    );
    assert!(
        !intruder.status.success(),
        "served an untrusted client certificate"
    );
    // A Hello frame in the clear gets no frame back: at most a TLS alert, then the close.
    let hello = prost::Message::encode_to_vec(&etch_protocol::etchpb::Frame {
        id: 0,
        body: Some(etch_protocol::etchpb::frame::Body::Hello(
            etch_protocol::etchpb::Hello {
                protocol_version: etch_protocol::PROTOCOL_VERSION,
                client: "plain".into(),
            },
        )),
    });
    let mut s = std::net::TcpStream::connect(&n.native).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&hello).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.is_empty() || buf[0] == 0x15,
        "a plain Hello was answered: {buf:?}"
    );
    let out = bench(
        &n.native,
        &[
            "--json", "--cacert", &ca, "--cert", &cert, "--key", &key, "put", "--total", "200",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(n.ctl_ok(&["get", "k", "--print-value-only"]), "v\n");
}

/// Replacing the certificate files rotates the server certificate without a restart: new
/// connections (native and gRPC) get the new one, a connection opened before keeps working.
#[test]
fn server_certificate_rotates_when_its_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (ca_a, cert_a, key_a) = make_pki(&pki, "a");
    let (ca_b, cert_b, key_b) = make_pki(&pki, "b");
    let (cert, key) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let (cert_s, key_s) = (
        cert.to_string_lossy().to_string(),
        key.to_string_lossy().to_string(),
    );
    let n = etch_tests::Node::start(
        dir.path(),
        &[
            "--listen-client-urls",
            "https://127.0.0.1:0",
            "--cert-file",
            &cert_s,
            "--key-file",
            &key_s,
        ],
    );
    let with_ca = |ca: &str, args: &[&str]| {
        let mut all = vec!["--cacert", ca, "--dial-timeout", "3s"];
        all.extend_from_slice(args);
        etch_tests::etchctl_at(&n.native, &all)
    };
    assert!(with_ca(&ca_a, &["put", "k", "1"]).status.success());
    assert!(
        !with_ca(&ca_b, &["get", "k"]).status.success(),
        "B trusted before rotation"
    );
    let rt = etch_tests::rt();
    let old = rt.block_on(async {
        etch_tools::Client::connect_with(
            &n.native,
            &etch_tools::ConnectOptions {
                tls: etch_tools::TlsFiles {
                    ca: Some(ca_a.clone().into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("connect with CA A")
    });
    // Rotate: write the new files beside, then rename over (what cert managers do).
    for (from, to) in [(&cert_b, &cert), (&key_b, &key)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    etch_tests::wait_for(
        Duration::from_secs(10),
        "new connections to get certificate B",
        || {
            with_ca(&ca_b, &["put", "k", "2"])
                .status
                .success()
                .then_some(())
        },
    );
    assert!(
        !with_ca(&ca_a, &["get", "k"]).status.success(),
        "A still served after rotation"
    );
    let o = etcdctl_tls(
        &format!("https://{}", n.grpc),
        &["--cacert", &ca_b],
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "2\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The connection opened with certificate A still works.
    rt.block_on(async {
        old.put(etch_tools::pb::PutRequest {
            key: "k".into(),
            value: "3".into(),
            ..Default::default()
        })
        .await
        .expect("old connection still serves");
    });
    // A broken file is not used: the previous certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(
        with_ca(&ca_b, &["get", "k"]).status.success(),
        "a broken file replaced the certificate"
    );
    assert!(
        n.log()
            .contains("certificate files changed but do not load")
    );
}

/// `--cipher-suites`, `--tls-min-version` and `--tls-max-version` as etcd names them: a client
/// outside them is refused in the handshake; names rustls does not implement stop the start
/// with exit code 2.
#[test]
fn cipher_suites_and_tls_versions_are_enforced() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_pki(&dir.path().join("pki"), "s");
    let n = etch_tests::Node::start(
        dir.path(),
        &[
            "--listen-client-urls",
            "https://127.0.0.1:0",
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--tls-max-version",
            "TLS1.2",
            "--cipher-suites",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ],
    );
    // A handshake with one TLS 1.2 suite offered; true when it completes.
    let handshake = |suite: rustls::CipherSuite,
                     version: &'static rustls::SupportedProtocolVersion| {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut sock = std::net::TcpStream::connect(&n.native).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while conn.is_handshaking() {
            if conn.complete_io(&mut sock).is_err() {
                return false;
            }
        }
        true
    };
    assert!(handshake(
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        &rustls::version::TLS12
    ));
    assert!(!handshake(
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        &rustls::version::TLS12
    ));
    assert!(!handshake(
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        &rustls::version::TLS13
    ));
    for bad in [
        vec!["--cipher-suites", "TLS_RSA_WITH_RC4_128_SHA"],
        vec!["--tls-min-version", "TLS1.0"],
        vec![
            "--tls-min-version",
            "TLS1.3",
            "--cipher-suites",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ],
    ] {
        let out = Command::new(etch_tests::bin("etch"))
            .args(["--data-dir", &dir.path().join("never").to_string_lossy()])
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

/// `--trusted-ca-file` is re-read when it changes: adding a second CA to the bundle lets its
/// clients in without a restart.
#[test]
fn trusted_ca_bundle_reloads_when_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (ca_a, cert_a, key_a) = make_pki(&pki, "a");
    let (ca_b, cert_b, key_b) = make_pki(&pki, "b");
    let bundle = dir.path().join("trusted.pem");
    std::fs::copy(&ca_a, &bundle).unwrap();
    let bundle_s = bundle.to_string_lossy().to_string();
    let n = etch_tests::Node::start(
        dir.path(),
        &etch_tests::client_tls_args(&bundle_s, &cert_a, &key_a),
    );
    // The server's certificate is from CA A; client certificates from A or B.
    let as_client = |cert: &str, key: &str| {
        etch_tests::etchctl_at(
            &n.native,
            &[
                "--cacert", &ca_a, "--cert", cert, "--key", key, "put", "k", "v",
            ],
        )
    };
    assert!(as_client(&cert_a, &key_a).status.success());
    assert!(
        !as_client(&cert_b, &key_b).status.success(),
        "B trusted before the change"
    );
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&ca_a).unwrap(),
        std::fs::read_to_string(&ca_b).unwrap()
    );
    let tmp = dir.path().join("trusted.new");
    std::fs::write(&tmp, both).unwrap();
    std::fs::rename(&tmp, &bundle).unwrap();
    etch_tests::wait_for(Duration::from_secs(10), "B's clients to be let in", || {
        as_client(&cert_b, &key_b).status.success().then_some(())
    });
    assert!(as_client(&cert_a, &key_a).status.success());
    assert!(n.log().contains("trusted CA reloaded"));
}
