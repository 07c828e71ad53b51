//! Observability end to end: a real Prometheus (Debian's `prometheus`) scrapes a 3-member etch
//! cluster under load; every PromQL expression of `grafana/*.json` and every metric etcd's
//! official dashboard and alert rules use returns data through Prometheus's HTTP API, and every
//! metric the dashboards name is exported (histograms with their `_bucket` series).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etch_tests::{Cluster, bench_ok, etcdctl, free_tcp_port, http, wait_for};
use serde_json::Value;

/// The metrics etcd's official Grafana dashboard and alert rules use.
const ETCD_METRICS: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_server_quota_backend_bytes",
    "etcd_server_id",
    "etcd_server_version",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_range_total",
    "etcd_mvcc_txn_total",
    "etcd_debugging_mvcc_keys_total",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_network_peer_round_trip_time_seconds_bucket",
    "etcd_network_peer_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_client_grpc_received_bytes_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "grpc_server_handling_seconds_bucket",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
];

struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[String]) -> Prometheus {
        let port = free_tcp_port();
        let config = dir.join("prometheus.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: etch\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package) must be installed: ./tests/run.sh installs it");
        Prometheus {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// The result vector of an instant query (empty when Prometheus is not up yet).
    fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let Ok(r) = std::panic::catch_unwind(|| http(&self.addr, "GET", &path, "")) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        assert_ne!(v["status"], "error", "{expr}: {}", r.body);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of every dashboard in `grafana/`.
fn dashboard_exprs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let d: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            for panel in d["panels"].as_array().unwrap() {
                for t in panel["targets"].as_array().unwrap() {
                    out.push(t["expr"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(out.len() > 20, "dashboards have {} expressions", out.len());
    out
}

/// The metric names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            ["etcd_", "etch_", "grpc_server_", "process_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn prometheus_sees_every_dashboard_and_etcd_metric() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(&dir.path().join("etch"), 3, &[]);
    let targets: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let prom = Prometheus::start(dir.path(), &targets);

    // Load: native puts and ranges (etch-bench), gRPC traffic of every kind (etcdctl).
    bench_ok(
        &c.endpoints(),
        &["--clients", "20", "put", "--total", "3000"],
    );
    bench_ok(
        &c.endpoints(),
        &["--clients", "20", "range", "k", "--total", "2000"],
    );
    for t in &targets {
        for (args, stdin) in [
            (vec!["put", "a", "1"], ""),
            (vec!["get", "a"], ""),
            (vec!["del", "a"], ""),
            (vec!["txn"], "\nput t 1\n\n\n"),
            (vec!["lease", "grant", "60"], ""),
            (vec!["get", "a", "--rev", "999999"], ""),
        ] {
            etcdctl(t, &args, stdin);
        }
    }
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &targets[0], "watch", "w"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Every metric the dashboards name is exported by every member.
    let exprs = dashboard_exprs();
    for t in &targets {
        let page = wait_for(Duration::from_secs(30), "a watcher in /metrics", || {
            let page = http(t, "GET", "/metrics", "").body;
            page.contains("etcd_network_peer_round_trip_time_seconds_bucket")
                .then_some(page)
        });
        for e in &exprs {
            for name in metric_names(e) {
                assert!(
                    page.lines().any(|l| l.starts_with(&name)),
                    "{t}: {name} (from {e}) is not exported"
                );
            }
        }
        for name in ETCD_METRICS {
            assert!(
                page.lines().any(|l| l.starts_with(name)),
                "{t}: {name} is not exported"
            );
        }
    }
    // Through Prometheus: each expression and each etcd metric returns data.
    let queries: Vec<String> = exprs
        .into_iter()
        .chain(ETCD_METRICS.iter().map(|m| (*m).to_owned()))
        .collect();
    for q in &queries {
        wait_for(Duration::from_secs(60), q, || {
            (!prom.query(q).is_empty()).then_some(())
        });
    }
    // Scraped from all three members.
    let up = prom.query("count(etcd_server_has_leader == 1)");
    assert_eq!(up[0]["value"][1], "3", "{up:?}");
    let _ = watch.kill();
    let _ = watch.wait();
}
