//! The main job on real input: the bundled load generator against a running node.

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
