//! The main job on real input: the bundled load generator against a running node.

use std::time::Duration;

use etch_tests::{Node, bench};

#[test]
fn bench_put_100k_with_100_clients_then_count() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    let out = bench(
        &n.native,
        &[
            "--clients",
            "100",
            "--conns",
            "10",
            "--json",
            "put",
            "--total",
            "100000",
            "--sequential-keys",
            "--key-space-size",
            "100000",
            "--val-size",
            "64",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(report["errors"], 0);
    assert_eq!(report["ok"], 100_000);
    assert!(report["qps"].as_f64().unwrap() > 0.0);
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap()
            >= report["latency_ms"]["p50"].as_f64().unwrap()
    );
    assert_eq!(
        n.ctl_ok(&["get", "", "--from-key", "--count-only"]),
        "100000\n"
    );
    // Ranges against the loaded node, linearizable and serializable.
    for c in ["l", "s"] {
        let out = bench(
            &n.native,
            &[
                "--clients",
                "10",
                "--json",
                "range",
                "k",
                "--total",
                "2000",
                "--consistency",
                c,
            ],
        );
        let r: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        assert_eq!(r["errors"], 0, "{r}");
    }
}

/// Every workload, over both protocols against etch and over gRPC against a real etcd 3.4:
/// the same tool measures both servers. Checks the effects, not only the absence of errors.
#[test]
fn every_workload_over_both_protocols_and_against_etcd() {
    use etch_tests::{Etcd, bench_ok, etcdctl};
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(&dir.path().join("etch"), &[]);
    let etcd = Etcd::start(dir.path());
    let targets = [
        ("native", n.native.clone()),
        ("grpc", n.grpc.clone()),
        ("grpc", etcd.endpoint.clone()),
    ];
    for (protocol, ep) in &targets {
        let run = |args: &[&str]| {
            let mut all = vec!["--protocol", protocol, "--clients", "8", "--conns", "2"];
            all.extend_from_slice(args);
            bench_ok(ep, &all)
        };
        let put = run(&[
            "put",
            "--total",
            "500",
            "--sequential-keys",
            "--key-space-size",
            "500",
            "--compact-interval",
            "50ms",
            "--compact-index-delta",
            "100",
        ]);
        assert_eq!(
            (put["ok"].as_u64(), put["protocol"].as_str()),
            (Some(500), Some(*protocol))
        );
        let r = run(&["range", "\u{1}", "\u{7f}", "--total", "50", "--count-only"]);
        assert_eq!(r["reads"], 50, "{ep}: {r}");
        let r = run(&[
            "range",
            "\u{1}",
            "\u{7f}",
            "--total",
            "50",
            "--limit",
            "3",
            "--consistency",
            "s",
        ]);
        assert_eq!(r["ok"], 50, "{ep}: {r}");
        let t = run(&[
            "txn-put",
            "--total",
            "100",
            "--txn-ops",
            "4",
            "--key-space-size",
            "1000",
        ]);
        assert_eq!(t["writes"], 100, "{ep}: {t}");
        let m = run(&["txn-mixed", "--total", "200", "--rw-ratio", "3"]);
        assert_eq!(
            m["reads"].as_u64().unwrap() + m["writes"].as_u64().unwrap(),
            200
        );
        assert!(
            m["reads"].as_u64().unwrap() > m["writes"].as_u64().unwrap(),
            "{m}"
        );
        let k = run(&["lease-keepalive", "--total", "200"]);
        assert_eq!(k["ok"], 200, "{ep}: {k}");
        let w = run(&[
            "watch-latency",
            "--streams",
            "2",
            "--watchers-per-stream",
            "5",
            "--put-total",
            "10",
        ]);
        assert_eq!(w["events_delivered"], 100, "{ep}: {w}");
    }
    // The compactions reached both servers: history below the compaction point is gone.
    let etch_gone = n.ctl_err(&["get", "x", "--rev", "2"]);
    assert!(etch_gone.contains("compacted"), "{etch_gone}");
    let etcd_gone = etcdctl(&etcd.endpoint, &["get", "x", "--rev", "2"], "");
    assert!(String::from_utf8_lossy(&etcd_gone.stderr).contains("compacted"));
}

/// etch-bench's TLS flags against an etcd 3.4 that requires client certificates: with the CA
/// and a client certificate it runs; without the client certificate, or trusting another CA,
/// it fails cleanly with an error.
#[test]
fn tls_flags_against_etcd_with_client_cert_auth() {
    use etch_tests::{free_tcp_port, make_pki, wait_for};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_pki(&dir.path().join("pki"), "etcd");
    let (other_ca, _, _) = make_pki(&dir.path().join("pki"), "other");
    let (client, peer) = (free_tcp_port(), free_tcp_port());
    let url = format!("https://127.0.0.1:{client}");
    let mut etcd = std::process::Command::new("etcd")
        .args(["--data-dir", &dir.path().join("etcd").display().to_string()])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .args([
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
        ])
        .arg("--client-cert-auth")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ep = format!("127.0.0.1:{client}");
    let with = |tls: &[&str]| {
        let mut args = vec!["--protocol", "grpc", "--json"];
        args.extend_from_slice(tls);
        args.extend_from_slice(&["put", "--total", "50"]);
        bench(&ep, &args)
    };
    let full = [
        "--cacert",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    let out = wait_for(Duration::from_secs(30), "etcd over TLS", || {
        let out = with(&full);
        out.status.success().then_some(out)
    });
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["ok"].as_u64(), r["errors"].as_u64()),
        (Some(50), Some(0))
    );
    // No client certificate: the server refuses the handshake or the calls.
    let no_cert = with(&["--cacert", &ca]);
    assert!(!no_cert.status.success());
    // A server certificate from a CA the client does not trust: refused.
    let untrusted = with(&["--cacert", &other_ca, "--cert", &cert, "--key", &key]);
    assert!(!untrusted.status.success());
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(err.contains("Error"), "{err}");
    let _ = etcd.kill();
    let _ = etcd.wait();
}

/// A server that stops answering ends the run with errors within the request timeout, instead
/// of holding every client forever; the same server answers again once resumed.
#[test]
fn a_stalled_server_ends_the_run_with_deadline_errors() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    n.signal("STOP");
    // Over gRPC the connection is made by the kernel's listen backlog; every request then waits.
    let out = bench(
        &n.grpc,
        &[
            "--protocol",
            "grpc",
            "--json",
            "--request-timeout",
            "300ms",
            "put",
            "--total",
            "3",
        ],
    );
    n.signal("CONT");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["errors"], 3, "{report}");
    assert_eq!(report["ok"], 0, "{report}");
    assert_eq!(
        report["first_errors"][0], "context deadline exceeded",
        "{report}"
    );
    let report = etch_tests::bench_ok(&n.grpc, &["--protocol", "grpc", "put", "--total", "3"]);
    assert_eq!(report["ok"], 3, "{report}");
}
