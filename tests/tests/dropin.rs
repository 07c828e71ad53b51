//! etch as a drop-in `etcd` binary: members configured the ways etcd deployments configure
//! them (etcd's flags only, `ETCD_*` variables only, an etcd YAML `--config-file` only) form one
//! cluster that etcdctl uses; `--version` speaks etcd's lines; watches opened with
//! `hasleader` (kube-apiserver's `WithRequireLeader`) end with "etcdserver: no leader" on a
//! member cut off from its peers; automatic compaction compacts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etch_tests::{Cluster, Isolation, bin, etcdctl, free_tcp_port, free_udp_port, rt, wait_for};

const T: Duration = Duration::from_secs(30);

/// An `etch` started as a user would start `etcd`, killed when dropped.
struct Member {
    child: Child,
    log: std::path::PathBuf,
}

impl Member {
    fn spawn(dir: &Path, name: &str, args: &[String], env: &[(String, String)]) -> Member {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin("etch"))
            .args(args)
            .envs(env.iter().cloned())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn etch");
        Member { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn members_configured_by_etcd_flags_variables_and_config_file_form_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_tcp_port()))
        .collect();
    let peer: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_udp_port()))
        .collect();
    let initial = (0..3)
        .map(|i| format!("m{i}={}", peer[i]))
        .collect::<Vec<_>>()
        .join(",");

    // m0: etcd's flags only, with etcd flags etch has no use for and Go-style booleans.
    let m0 = Member::spawn(
        d,
        "m0",
        &[
            "--name=m0".into(),
            format!("--data-dir={}", d.join("m0.etcd").display()),
            format!("--listen-client-urls={}", client[0]),
            format!("--advertise-client-urls={}", client[0]),
            format!("--listen-peer-urls={}", peer[0]),
            format!("--initial-advertise-peer-urls={}", peer[0]),
            format!("--initial-cluster={initial}"),
            "--initial-cluster-token=dropin".into(),
            "--initial-cluster-state=new".into(),
            "--enable-v2".into(),
            "--enable-pprof".into(),
            "--strict-reconfig-check=false".into(),
            "--experimental-initial-corrupt-check".into(),
            "--max-concurrent-streams=100".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
            "--max-wals".into(),
            "5".into(),
            "--auto-compaction-mode=revision".into(),
            "--auto-compaction-retention=1000".into(),
            format!("--wal-dir={}", d.join("m0.wal").display()),
        ],
        &[],
    );
    // m1: ETCD_* variables only.
    let env = [
        ("ETCD_NAME", "m1".to_owned()),
        ("ETCD_DATA_DIR", d.join("m1.etcd").display().to_string()),
        ("ETCD_LISTEN_CLIENT_URLS", client[1].clone()),
        ("ETCD_ADVERTISE_CLIENT_URLS", client[1].clone()),
        ("ETCD_LISTEN_PEER_URLS", peer[1].clone()),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer[1].clone()),
        ("ETCD_INITIAL_CLUSTER", initial.clone()),
        ("ETCD_INITIAL_CLUSTER_TOKEN", "dropin".to_owned()),
        ("ETCD_HEARTBEAT_INTERVAL", "100".to_owned()),
        ("ETCD_ELECTION_TIMEOUT", "1000".to_owned()),
        ("ETCD_ENABLE_PPROF", "true".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let m1 = Member::spawn(d, "m1", &[], &env);
    // m2: an etcd YAML configuration file only (etcd's keys and sections).
    let yaml = format!(
        "name: 'm2'\ndata-dir: {}\nwal-dir:\nsnapshot-count: 10000\nheartbeat-interval: 100\n\
         election-timeout: 1000\nquota-backend-bytes: 0\nlisten-peer-urls: {}\n\
         listen-client-urls: {}\nmax-snapshots: 5\nmax-wals: 5\ncors:\n\
         initial-advertise-peer-urls: {}\nadvertise-client-urls: {}\ndiscovery:\n\
         initial-cluster: {initial}\ninitial-cluster-token: 'dropin'\n\
         initial-cluster-state: 'new'\nstrict-reconfig-check: false\nenable-v2: true\n\
         enable-pprof: true\nproxy: 'off'\nclient-transport-security:\n  cert-file:\n  \
         key-file:\n  client-cert-auth: false\n  trusted-ca-file:\n  auto-tls: false\n\
         peer-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  \
         trusted-ca-file:\n  auto-tls: false\ndebug: false\nlogger: zap\n\
         log-outputs: [stderr]\nforce-new-cluster: false\nauto-compaction-mode: periodic\n\
         auto-compaction-retention: \"1\"\n",
        d.join("m2.etcd").display(),
        peer[2],
        client[2],
        peer[2],
        client[2],
    );
    let file = d.join("etcd.conf.yml");
    std::fs::write(&file, yaml).unwrap();
    // The other flags and variables are ignored with a config file, as in etcd.
    let m2 = Member::spawn(
        d,
        "m2",
        &[
            "--config-file".into(),
            file.display().to_string(),
            "--name=ignored".into(),
        ],
        &[("ETCD_NAME".to_owned(), "ignored-too".to_owned())],
    );

    for m in [&m0, &m1, &m2] {
        wait_for(T, "etcd's readiness lines", || {
            let log = m.log();
            (log.contains("ready to serve client requests")
                && log.contains("enabled capabilities for version")
                && log.contains("published"))
            .then_some(())
        });
    }
    let endpoints = client.join(",");
    let o = etcdctl(&endpoints, &["endpoint", "health"], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = etcdctl(&client[0], &["put", "k", "v"], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for c in &client {
        let o = etcdctl(c, &["get", "k", "--print-value-only"], "");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "v");
    }
    let o = etcdctl(&client[1], &["member", "list"], "");
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    for name in ["m0", "m1", "m2"] {
        assert!(list.contains(&format!(", {name}, ")), "{list}");
    }
    // MoveLeader to the member that already leads is a successful no-op (etcd v3.5).
    let o = etcdctl(&endpoints, &["endpoint", "status", "-w", "json"], "");
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let leader = status[0]["Status"]["leader"].as_u64().unwrap();
    let leader_ep = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
        .and_then(|s| s["Endpoint"].as_str())
        .unwrap()
        .to_owned();
    let o = etcdctl(&leader_ep, &["move-leader", &format!("{leader:x}")], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // --wal-dir moved m0's WAL; the native protocol is not served without being asked for.
    assert!(
        std::fs::read_dir(d.join("m0.wal")).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "wal"))
    );
    assert!(!d.join("m0.etcd/member/wal").exists());
    assert!(!m0.log().contains("serving the native protocol"));
    assert!(m0.log().contains("--enable-pprof is accepted and ignored"));
    assert!(m1.log().contains("ETCD_ENABLE_PPROF is ignored"));
    assert!(
        m2.log()
            .contains("the other command-line flags are ignored")
    );
}

#[test]
fn version_prints_etcds_lines_then_etchs() {
    let o = Command::new(bin("etch")).arg("--version").output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("etcd Version: 3.5."), "{text}");
    assert!(text.contains("etch Version: "), "{text}");
}

#[test]
fn a_bad_flag_value_names_the_flag() {
    let o = Command::new(bin("etch"))
        .args([
            "--auto-compaction-mode",
            "daily",
            "--auto-compaction-retention",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("auto-compaction"), "{err}");
}

#[test]
fn watches_requiring_a_leader_end_when_the_member_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    // Short election timeouts keep the test quick: etcd cancels after 3 of them.
    let c = Cluster::start(
        dir.path(),
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    );
    let leader = c.leader();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let ep = format!("http://{}", c.nodes[follower].grpc);
    let port: u16 = c.peer_urls[follower]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    rt().block_on(async {
        let opts = etcd_client::ConnectOptions::new().with_require_leader(true);
        let mut strict = etcd_client::Client::connect([ep.clone()], Some(opts))
            .await
            .unwrap();
        let mut plain = etcd_client::Client::connect([ep.clone()], None)
            .await
            .unwrap();
        let mut s1 = strict.watch("k", None).await.unwrap();
        let mut s2 = plain.watch("k", None).await.unwrap();
        for s in [&mut s1, &mut s2] {
            let created = tokio::time::timeout(T, s.message()).await.unwrap().unwrap();
            assert!(created.is_some_and(|r| r.created()));
        }
        let cut = Isolation::udp_port(port);
        let ended = tokio::time::timeout(T, async {
            loop {
                match s1.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the hasleader watch ends within the deadline");
        match ended {
            Err(etcd_client::Error::GRpcStatus(s)) => {
                assert_eq!(s.code(), tonic::Code::Unavailable);
                assert_eq!(s.message(), "etcdserver: no leader");
            }
            other => panic!("expected etcdserver: no leader, got {other:?}"),
        }
        // The plain watch stays open: nothing arrives, and it has not ended.
        let quiet = tokio::time::timeout(Duration::from_millis(500), s2.message()).await;
        assert!(quiet.is_err(), "the plain watch ended: {quiet:?}");
        // A new hasleader watch is refused at once while there is no leader.
        let refused = match tokio::time::timeout(T, strict.watch("k", None))
            .await
            .unwrap()
        {
            Err(e) => e.to_string(),
            Ok(mut s3) => match tokio::time::timeout(T, s3.message()).await.unwrap() {
                Err(e) => e.to_string(),
                Ok(m) => panic!("a hasleader watch without a leader was served: {m:?}"),
            },
        };
        assert!(refused.contains("etcdserver: no leader"), "{refused}");
        drop(cut);
    });
}

#[test]
fn periodic_auto_compaction_compacts_old_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let n = etch_tests::Node::start(
        dir.path(),
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    );
    let ep = n.grpc.clone();
    for i in 0..5 {
        let o = etcdctl(&ep, &["put", "k", &i.to_string()], "");
        assert!(o.status.success());
    }
    // Revision 2 is the first put: once compacted, reading it fails with etcd's error.
    wait_for(T, "revision 2 to be compacted", || {
        let o = etcdctl(&ep, &["get", "k", "--rev=2"], "");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        err.contains("required revision has been compacted")
            .then_some(())
    });
    assert!(n.log().contains("automatic compaction finished"));
}

/// `unix://` client URLs, as etcd serves them: `unix://localhost:<port>` is a socket file of
/// that name in the working directory; etcdctl reaches the member through it.
#[test]
fn a_unix_client_url_serves_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = format!("localhost:{}", free_tcp_port());
    let url = format!("unix://{name}");
    let m = Member::spawn(
        d,
        "m0",
        &[
            format!("--data-dir={}", d.join("m0.etcd").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
        ],
        &[],
    );
    let ctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .current_dir(d)
            .args(["--endpoints", &url, "--command-timeout", "5s"])
            .args(args)
            .output()
            .expect("etcdctl")
    };
    wait_for(T, "the member to serve on its unix socket", || {
        ctl(&["put", "via", "unix"]).status.success().then_some(())
    });
    let o = ctl(&["get", "via", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "unix", "{o:?}");
    assert!(
        std::fs::symlink_metadata(d.join(&name)).is_ok(),
        "{}",
        m.log()
    );
    // A graceful stop removes the socket file, as etcd does.
    let pid = m.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(T, "the socket file to go", || {
        std::fs::symlink_metadata(d.join(&name))
            .is_err()
            .then_some(())
    });
}
