//! Operators' view of one member and of a cluster: `/metrics`, `/livez`, `/readyz` on
//! `--listen-metrics-urls`, counters that follow real requests, `/health` turning false when a
//! member is cut off from its peers (iptables) and true again once healed, and JSON logs.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use etch_tests::{Cluster, Isolation, Node, bench_ok, bin, etcdctl, free_tcp_port, http, wait_for};

/// The value of an unlabelled sample in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the sample `name{labels}` in a Prometheus text page, 0 when the page has none.
fn labelled(page: &str, name: &str, labels: &str) -> f64 {
    sample(page, &format!("{name}{{{labels}}}")).unwrap_or(0.0)
}

#[test]
fn metrics_listener_counters_and_probes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let url = format!("http://127.0.0.1:{port}");
    let n = Node::start(dir.path(), &["--listen-metrics-urls", &url]);
    let m = format!("127.0.0.1:{port}");
    wait_for(Duration::from_secs(20), "a leader", || {
        let page = http(&m, "GET", "/metrics", "").body;
        (sample(&page, "etcd_server_has_leader") == Some(1.0)).then_some(())
    });
    assert_eq!(http(&m, "GET", "/livez", "").body, "ok\n");
    assert_eq!(http(&m, "GET", "/readyz", "").body, "ok\n");
    let before = http(&m, "GET", "/metrics", "").body;
    let puts = sample(&before, "etcd_mvcc_put_total").unwrap();
    // Over gRPC (etcdctl), so that go-grpc's per-method counters see them too.
    for k in ["a", "b"] {
        assert!(etcdctl(&n.grpc, &["put", k, "1"], "").status.success());
    }
    let e = etcdctl(&n.grpc, &["get", "a", "--rev", "99"], "");
    assert!(!e.status.success());
    let after = http(&m, "GET", "/metrics", "").body;
    assert_eq!(sample(&after, "etcd_mvcc_put_total"), Some(puts + 2.0));
    assert_eq!(sample(&after, "etcd_debugging_mvcc_keys_total"), Some(2.0));
    assert!(
        after.contains(r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Range",grpc_code="OutOfRange"} 1"#),
        "{after}"
    );
    // go-grpc-prometheus's per-method counters follow the two puts: one request message and
    // one response message each, answered OK; etcd's client byte counters grow.
    let put = r#"grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put""#;
    for name in [
        "grpc_server_started_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
    ] {
        assert_eq!(
            labelled(&after, name, put) - labelled(&before, name, put),
            2.0,
            "{name}"
        );
    }
    let ok = format!(r#"{put},grpc_code="OK""#);
    let handled = "grpc_server_handled_total";
    assert_eq!(
        labelled(&after, handled, &ok) - labelled(&before, handled, &ok),
        2.0
    );
    for name in [
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
    ] {
        assert!(sample(&after, name) > sample(&before, name), "{name}");
    }
    assert!(after.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}"));
    assert!(after.contains(&format!(
        "etcd_server_id{{server_id=\"{}\"}} 1",
        "8e9e05c52164694d"
    )));
    // The client port serves the same page.
    assert!(
        http(&n.grpc, "GET", "/metrics", "")
            .body
            .contains("etcd_server_has_leader 1")
    );
}

#[test]
fn health_turns_false_when_isolated_and_back_when_healed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let victim = (leader + 1) % 3;
    let ep = c.nodes[victim].grpc.clone();
    assert_eq!(http(&ep, "GET", "/health", "").status, 200);
    let port: u16 = c.peer_urls[victim]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cut = Isolation::udp_port(port);
    let h = wait_for(
        Duration::from_secs(30),
        "/health false on the isolated member",
        || {
            let h = http(&ep, "GET", "/health", "");
            (h.status == 503).then_some(h)
        },
    );
    assert!(h.body.contains(r#""health":"false""#), "{}", h.body);
    assert_eq!(http(&ep, "GET", "/readyz", "").status, 503);
    drop(cut);
    wait_for(
        Duration::from_secs(30),
        "/health true after healing",
        || {
            let h = http(&ep, "GET", "/health", "");
            (h.status == 200 && h.body == r#"{"health":"true","reason":""}"#).then_some(())
        },
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("etch"))
        .args(["--data-dir", &dir.path().display().to_string()])
        .args(["--listen-native-urls", "tcp://127.0.0.1:0"])
        .args(["--listen-client-urls", "http://127.0.0.1:0"])
        .args(["--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = 0;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        seen += 1;
        if v["message"] == "serving the etcd gRPC API" {
            assert!(
                v["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{line}"
            );
            break;
        }
    }
    assert!(seen >= 2);
    let _ = child.kill();
    let _ = child.wait();
}

/// etch turns transparent huge pages off for its process, whatever the host's setting
/// (`docs/performance.md`: with `always`, the kernel's 2 MiB pages cost about a quarter of the
/// write rate); the kernel reports the process's flag in `/proc/PID/status`.
#[cfg(target_os = "linux")]
#[test]
fn the_process_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", n.pid().unwrap())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    // Kernels before 5.0 do not report the flag.
    if let Some(thp) = thp {
        assert_eq!(thp, "0", "{status}");
    }
}

/// A leader lingers before a flush only under load: one writer with one request in flight
/// never makes it wait (each flush holds one proposal), and many writers do
/// (`etch_proposal_lingers_total` on the leader's `/metrics`).
#[test]
fn a_lone_writer_never_lingers_and_many_writers_do() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = &c.nodes[c.leader()];
    let lingers = || {
        let page = http(&leader.grpc, "GET", "/metrics", "").body;
        sample(&page, "etch_proposal_lingers_total").unwrap_or(0.0)
    };
    let before = lingers();
    let one = ["--clients", "1", "--conns", "1", "put", "--total", "300"];
    bench_ok(&leader.native, &one);
    assert_eq!(lingers(), before, "a lone writer's puts never linger");
    wait_for(Duration::from_secs(120), "a linger under load", || {
        let many = ["--clients", "200", "--conns", "4", "put", "--total", "4000"];
        bench_ok(&leader.native, &many);
        (lingers() > before).then_some(())
    });
    // Once the load is gone, a lone writer's flushes hold one proposal again: at most the
    // first flush after the load lingers.
    let after_load = lingers();
    bench_ok(&leader.native, &one);
    assert!(
        lingers() <= after_load + 1.0,
        "a lone writer after the load"
    );
}
