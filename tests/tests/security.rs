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
        &[
            "--listen-client-urls",
            "https://127.0.0.1:0",
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--client-cert-auth",
        ],
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
