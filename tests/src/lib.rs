//! Harness for black-box tests: real `etch` processes on 127.0.0.1, driven through `etchctl`,
//! `etch-bench` and the native client library.
//!
//! Every node listens on port 0 and the harness reads the bound port from its log, so tests
//! never race for ports. Every wait is a condition polled until a deadline. Nodes are killed
//! when dropped.

pub mod history;
pub mod sim;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to start serving.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// Path of a binary built by this workspace (`etch`, `etchctl`, `etch-bench`): the test
/// executable lives in `target/<profile>/deps/`, the binaries one level up.
///
/// # Panics
/// When the binary is missing: build it first (`cargo build --bins`, which the README's test
/// command does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // `$ETCH_BIN_DIR`, else beside this executable (a binary such as `etch-history`), else one
    // level up (a test executable in `deps/`).
    let beside = exe.parent().expect("target dir").to_owned();
    let p = match std::env::var_os("ETCH_BIN_DIR") {
        Some(d) => PathBuf::from(d).join(name),
        None if beside.join(name).exists() => beside.join(name),
        None => beside.parent().expect("target dir").join(name),
    };
    assert!(
        p.exists(),
        "{} not found: run `cargo build --bins` first",
        p.display()
    );
    p
}

/// The WAL segment files of the member with data in `data`, oldest first.
pub fn wal_segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("member/wal"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "wal"));
    v.sort();
    v
}

/// Polls `f` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(deadline: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    try_wait_for(deadline, f)
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Polls `f` every 20 ms until it returns `Some`; `None` once `deadline` has passed.
pub fn try_wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `etch` process.
pub struct Node {
    child: Option<Child>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// `127.0.0.1:port` of the native protocol.
    pub native: String,
    /// `127.0.0.1:port` of the etcd gRPC API.
    pub grpc: String,
    log: PathBuf,
    args: Vec<String>,
    runs: usize,
    /// etchctl's TLS flags for this member's native port (from its client TLS flags).
    pub ctl_tls: Vec<String>,
}

/// etchctl flags that reach a member started with `args`: with `--cert-file`/`--key-file`/
/// `--trusted-ca-file` (test PKIs sign server and client certificates with one CA), the same
/// files; with `--auto-tls`, `--insecure-skip-tls-verify`.
fn ctl_tls_for(args: &[String]) -> Vec<String> {
    let val = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match (
        val("--cert-file"),
        val("--key-file"),
        val("--trusted-ca-file"),
    ) {
        (Some(c), Some(k), Some(ca)) => {
            vec!["--cacert".into(), ca, "--cert".into(), c, "--key".into(), k]
        }
        (Some(_), Some(_), None) => vec!["--insecure-skip-tls-verify".into()],
        _ if args.iter().any(|a| a == "--auto-tls") => vec!["--insecure-skip-tls-verify".into()],
        _ => Vec::new(),
    }
}

impl Node {
    /// Starts `etch` with its data in `dir/data` and waits until it serves.
    pub fn start(dir: &Path, extra: &[&str]) -> Node {
        let n = Node::launch(dir.join("data"), extra);
        n.wait_leader();
        n
    }

    /// Starts `etch` with data in `data_dir` and waits until it listens (not for a leader:
    /// cluster members need each other for that).
    pub fn launch(data_dir: PathBuf, extra: &[&str]) -> Node {
        if let Some(parent) = data_dir.parent() {
            std::fs::create_dir_all(parent).expect("test dir");
        }
        let mut n = Node {
            child: None,
            data_dir,
            native: String::new(),
            grpc: String::new(),
            log: PathBuf::new(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            runs: 0,
            ctl_tls: Vec::new(),
        };
        n.ctl_tls = ctl_tls_for(&n.args);
        n.spawn_listening();
        n
    }

    fn spawn(&mut self) {
        self.spawn_listening();
        self.wait_leader();
    }

    /// Waits until this member knows a leader and serves writes.
    pub fn wait_leader(&self) {
        wait_for(START_DEADLINE, "etch to know a leader", || {
            let o = self.etchctl(&["endpoint", "status", "-w", "json"]);
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            (o.status.success() && !text.contains("\"leader\":0")).then_some(())
        });
    }

    /// The member status as JSON (`etchctl endpoint status -w json`, first row's `Status`).
    pub fn status(&self) -> Option<serde_json::Value> {
        let o = self.etchctl(&["endpoint", "status", "-w", "json"]);
        if !o.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        Some(v[0]["Status"].clone())
    }

    /// Number of keys in this member's local copy (serializable read); 0 while it cannot answer.
    pub fn local_count(&self) -> u64 {
        let o = self.etchctl(&[
            "get",
            "",
            "--from-key",
            "--count-only",
            "--consistency",
            "s",
        ]);
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// This member's local revision (serializable read), or 0 while it cannot answer: a member
    /// catching up may fail linearizable reads until it has applied the leader's commit index.
    pub fn local_revision(&self) -> i64 {
        let o = self.etchctl(&["get", "probe", "-w", "json", "--consistency", "s"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .ok()
            .and_then(|v| v["header"]["revision"].as_i64())
            .unwrap_or(0)
    }

    /// Asserts that every key in `acked` (hex, one per line, as `etch-bench --ack-log` writes)
    /// is in `kvs` (etcdctl JSON key-values); returns how many were checked.
    pub fn assert_all_acked_present(acked_log: &Path, kvs: &serde_json::Value) -> usize {
        use base64::Engine;
        let present: std::collections::HashSet<String> = kvs
            .as_array()
            .expect("kvs array")
            .iter()
            .map(|kv| {
                let k = base64::engine::general_purpose::STANDARD
                    .decode(kv["key"].as_str().expect("key"))
                    .expect("base64 key");
                k.iter().map(|b| format!("{b:02x}")).collect()
            })
            .collect();
        let acked = std::fs::read_to_string(acked_log).expect("ack log");
        let missing: Vec<&str> = acked.lines().filter(|k| !present.contains(*k)).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged keys lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        );
        acked.lines().count()
    }

    /// Launches a process that is not a member of this cluster but names `member_peer_url` as a
    /// peer, with its own token and `extra` flags: it knocks on that member's peer port.
    pub fn launch_outsider(dir: &Path, member_peer_url: &str, token: &str, extra: &[&str]) -> Node {
        let own = format!("http://127.0.0.1:{}", free_udp_port());
        let initial = format!("m0={member_peer_url},outsider={own}");
        let mut args: Vec<&str> = vec![
            "--name",
            "outsider",
            "--listen-peer-urls",
            &own,
            "--initial-advertise-peer-urls",
            &own,
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            token,
        ];
        args.extend_from_slice(extra);
        Node::launch(dir.join("outsider"), &args)
    }

    /// Sends `signal` (a name such as `STOP`, `CONT`, `TERM`) to the running process.
    ///
    /// # Panics
    /// When the process is not running or `kill` fails.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running").to_string();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill -{signal} failed");
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn_listening(&mut self) {
        self.runs += 1;
        self.log = self.log_path();
        let log = std::fs::File::create(&self.log).expect("log file");
        // A test may choose its own client URL (https, for client TLS).
        let client_url: &[&str] = if self.args.iter().any(|a| a == "--listen-client-urls") {
            &[]
        } else {
            &["--listen-client-urls", "http://127.0.0.1:0"]
        };
        let child = Command::new(bin("etch"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-native-urls", "tcp://127.0.0.1:0"])
            .args(client_url)
            .args(
                ["--log-level", "info"]
                    .iter()
                    .filter(|_| !self.args.iter().any(|a| a == "--log-level")),
            )
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etch");
        self.child = Some(child);
        let log_path = self.log.clone();
        let child = self.child.as_mut().expect("child");
        self.native = wait_for(START_DEADLINE, "etch to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "etch exited with {status} during start:\n{}",
                    read(&log_path)
                );
            }
            let text = read(&log_path);
            let addr_of = |what: &str| -> Option<String> {
                let line = text.lines().find(|l| l.contains(what))?;
                Some(
                    line.split("addr=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .to_owned(),
                )
            };
            Some((
                addr_of("serving the native protocol")?,
                addr_of("serving the etcd gRPC API")?,
            ))
        })
        .0;
        self.grpc = read(&self.log)
            .lines()
            .find(|l| l.contains("serving the etcd gRPC API"))
            .and_then(|l| {
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
    }

    /// `<data dir>.<run>.log`, beside the data directory: one file per member and run.
    fn log_path(&self) -> PathBuf {
        let name = self
            .data_dir
            .file_name()
            .map_or("etch".into(), |n| n.to_string_lossy().to_string());
        self.data_dir
            .with_file_name(format!("{name}.{}.log", self.runs))
    }

    /// The log of the current run.
    pub fn log(&self) -> String {
        read(&self.log)
    }

    /// Runs `etchctl --endpoints <this node> args...`.
    pub fn etchctl(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = self.ctl_tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etchctl_at(&self.native, &all)
    }

    /// Runs `etchctl` and returns stdout, asserting success.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.etchctl(args);
        assert!(
            o.status.success(),
            "etchctl {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8 output")
    }

    /// Runs `etchctl`, asserts failure, and returns stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let o = self.etchctl(args);
        assert!(!o.status.success(), "etchctl {args:?} should fail");
        String::from_utf8(o.stderr).expect("utf-8 output")
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        wait_for(Duration::from_secs(30), "etch to exit", || {
            c.try_wait().ok().flatten()
        })
    }

    /// Waits (up to `deadline`) for the process to exit on its own; returns its status.
    ///
    /// # Panics
    /// When it is not running, or still runs at the deadline (it is then killed by drop).
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let c = self.child.as_mut().expect("running");
        let status = wait_for(deadline, "etch to exit by itself", || {
            c.try_wait().ok().flatten()
        });
        self.child = None;
        status
    }

    /// Starts the process again on the same data directory (a new port) and waits for a leader.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the process again and waits only until it listens.
    pub fn relaunch(&mut self) {
        self.kill9();
        self.spawn_listening();
    }

    /// Starts `etch` on the same data dir and expects it to exit within the start deadline
    /// (killed and a panic if it does not); returns (status, stderr+log).
    pub fn start_expecting_failure(&mut self) -> (ExitStatus, String) {
        self.kill9();
        self.runs += 1;
        let log = self.log_path();
        let child = Command::new(bin("etch"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-native-urls", "tcp://127.0.0.1:0"])
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn etch");
        // Held by the node, so a start that never fails is killed when the test panics.
        self.log = log.clone();
        let child = self.child.insert(child);
        let status = wait_for(START_DEADLINE, "etch to exit", || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        (status, read(&log))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what each node logged (the temp dir is gone afterwards).
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- log of etch at {} (last {} lines) ----",
                self.native,
                tail.len()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn read(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Runs `etchctl --endpoints addr args...`.
pub fn etchctl_at(addr: &str, args: &[&str]) -> Output {
    Command::new(bin("etchctl"))
        .args(["--endpoints", addr])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etchctl")
}

/// Runs `etchctl` with `stdin` as standard input.
pub fn etchctl_stdin(addr: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin("etchctl"))
        .args(["--endpoints", addr])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etchctl");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    c.wait_with_output().expect("etchctl output")
}

/// The longest an etch-bench run may take in a test before it is killed (its status then
/// says it failed): a client that never gets an answer must not hold the suite.
pub const BENCH_DEADLINE: Duration = Duration::from_secs(300);

/// Runs `etch-bench --endpoints addr args...`, killed after [`BENCH_DEADLINE`].
pub fn bench(addr: &str, args: &[&str]) -> Output {
    use std::io::Read;
    let mut child = Command::new(bin("etch-bench"))
        .args(["--endpoints", addr])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etch-bench");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let end = Instant::now() + BENCH_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("etch-bench status") {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            break child.wait().expect("etch-bench status");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `etch-bench --endpoints addr --json args...`, asserts it ran without errors and returns
/// its report.
pub fn bench_ok(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = bench(addr, &all);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "etch-bench {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["errors"], 0, "etch-bench {args:?}: {report}");
    report
}

/// Writes `total` puts over `key_space` keys through `endpoints` with etch-bench (10 clients
/// on 2 connections), asserting none fails; returns the report.
pub fn put_load(endpoints: &str, total: u32, key_space: u32) -> serde_json::Value {
    let (total, keys) = (total.to_string(), key_space.to_string());
    bench_ok(
        endpoints,
        &[
            "--clients",
            "10",
            "--conns",
            "2",
            "put",
            "--total",
            &total,
            "--key-space-size",
            &keys,
        ],
    )
}

/// A single-threaded tokio runtime for tests that use the client library.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A free UDP port on 127.0.0.1 (bound and released; members bind it right after), chosen
/// below the kernel's ephemeral range: a port the kernel handed out (`bind(0)`) may be handed
/// out again, to another member's QUIC client endpoint, before the member it was picked for
/// binds it ("Address already in use"). A port is handed out once per test process: tests run
/// in parallel threads, and two of them drawing the same free port before either member bound
/// it made one member fail to start.
pub fn free_udp_port() -> u16 {
    free_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// A free TCP port on 127.0.0.1, chosen as [`free_udp_port`] chooses: below the ephemeral
/// range, so no outgoing connection (an etcdctl call, a member's client) takes it between the
/// pick and the server's bind, and once per test process.
pub fn free_tcp_port() -> u16 {
    free_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A port below the ephemeral range that `bindable` accepts and no earlier call returned.
fn free_port(bindable: impl Fn(u16) -> bool) -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_start.max(10_100));
    let mut rng = rand::rng();
    let port = (0..1000)
        .map(|_| rng.random_range(lo..hi))
        .find(|p| !handed_out.contains(p) && bindable(*p))
        .expect("a free port below the ephemeral range");
    handed_out.push(port);
    port
}

/// The flags of member `i` (name `m<i>`) of a cluster whose members listen for peers on
/// `peer_urls`, then `extra`.
fn member_args(peer_urls: &[String], i: usize, extra: &[&str]) -> Vec<String> {
    let initial = peer_urls
        .iter()
        .enumerate()
        .map(|(j, u)| format!("m{j}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut a: Vec<String> = vec![
        "--name".into(),
        format!("m{i}"),
        "--listen-peer-urls".into(),
        peer_urls[i].clone(),
        "--initial-advertise-peer-urls".into(),
        peer_urls[i].clone(),
        "--initial-cluster".into(),
        initial,
        "--initial-cluster-token".into(),
        "etch-test".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A cluster of `etch` members on loopback.
pub struct Cluster {
    /// The members, in `--initial-cluster` order (names m0, m1, ...).
    pub nodes: Vec<Node>,
    /// Peer URLs by member index.
    pub peer_urls: Vec<String>,
}

impl Cluster {
    /// Starts `size` members in `dir` (each with `extra` flags) and waits until every one knows
    /// the leader.
    pub fn start(dir: &Path, size: usize, extra: &[&str]) -> Cluster {
        let peer_urls: Vec<String> = (0..size)
            .map(|_| format!("http://127.0.0.1:{}", free_udp_port()))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..size {
            let args = member_args(&peer_urls, i, extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Node::launch(dir.join(format!("m{i}")), &args));
        }
        for n in &nodes {
            n.wait_leader();
        }
        Cluster { nodes, peer_urls }
    }

    /// The flags member `i` was started with, `extra` in place of the cluster's own extra
    /// flags (to start it again differently on its data directory).
    pub fn member_args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        member_args(&self.peer_urls, i, extra)
    }

    /// Comma-separated native endpoints of the running members.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| n.native.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Index of the member every running member agrees is the leader, once they agree.
    pub fn leader(&self) -> usize {
        wait_for(Duration::from_secs(30), "an agreed leader", || {
            let mut leader = None;
            for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
                let s = n.status()?;
                let l = s["leader"].as_u64().filter(|l| *l != 0)?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            self.nodes.iter().position(|n| {
                n.pid().is_some()
                    && n.status()
                        .is_some_and(|s| s["header"]["member_id"].as_u64() == Some(l))
            })
        })
    }
}

/// Drops every UDP packet to or from one port on this machine while alive (iptables; needs
/// root, which CI has). Used to cut one member off from its peers: QUIC uses one socket, the
/// member's peer port, for everything it sends and receives.
pub struct Isolation {
    port: u16,
}

impl Isolation {
    /// Starts dropping traffic of `port`.
    ///
    /// # Panics
    /// When iptables is missing or refuses (the test cannot run as intended).
    pub fn udp_port(port: u16) -> Isolation {
        for args in Self::rules(port, "-I") {
            let ok = Command::new("iptables")
                .args(&args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "iptables {args:?} failed: the isolation tests need iptables and root"
            );
        }
        Isolation { port }
    }

    fn rules(port: u16, op: &str) -> Vec<Vec<String>> {
        let p = port.to_string();
        [
            ("INPUT", "--dport"),
            ("INPUT", "--sport"),
            ("OUTPUT", "--dport"),
            ("OUTPUT", "--sport"),
        ]
        .iter()
        .map(|(chain, dir)| {
            [op, chain, "-p", "udp", dir, &p, "-j", "DROP"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
        .collect()
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        for args in Self::rules(self.port, "-D") {
            let _ = Command::new("iptables").args(&args).status();
        }
    }
}

/// A native-protocol connection driven frame by frame (blocking), for clients that misbehave:
/// one that never reads, one that reads late.
pub struct RawConn {
    stream: std::net::TcpStream,
}

impl RawConn {
    /// Connects and completes the Hello handshake.
    pub fn connect(addr: &str) -> RawConn {
        use etch_protocol::etchpb::{Frame, Hello, frame::Body};
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut c = RawConn { stream };
        c.send(&Frame {
            id: 0,
            body: Some(Body::Hello(Hello {
                protocol_version: etch_protocol::PROTOCOL_VERSION,
                client: "raw".into(),
            })),
        });
        let r = c.read().expect("hello response");
        assert!(matches!(r.body, Some(Body::HelloResponse(_))), "{r:?}");
        c
    }

    /// Writes one frame.
    pub fn send(&mut self, f: &etch_protocol::etchpb::Frame) {
        use std::io::Write;
        self.stream
            .write_all(&etch_protocol::frame::encode(f))
            .expect("write");
    }

    /// Creates a watch on stream `stream` (frame id).
    pub fn create_watch(
        &mut self,
        stream: u64,
        req: etch_protocol::etcdserverpb::WatchCreateRequest,
    ) {
        use etch_protocol::etcdserverpb::{WatchRequest, watch_request::RequestUnion};
        use etch_protocol::etchpb::{Frame, frame::Body};
        self.send(&Frame {
            id: stream,
            body: Some(Body::Watch(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(req)),
            })),
        });
    }

    /// Reads one frame; `None` when the connection closed.
    pub fn read(&mut self) -> Option<etch_protocol::etchpb::Frame> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).ok()?;
        Some(etch_protocol::frame::decode(&buf).expect("server frames decode"))
    }
}

/// Resident memory of a process, bytes (from /proc).
pub fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs Debian's `etcdctl` (v3 API) against `endpoints`, with `stdin` as input.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--command-timeout", "10s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl (Debian etcd-client) must be installed: ./tests/run.sh installs it");
    let _ = c.stdin.take().expect("stdin").write_all(stdin.as_bytes());
    c.wait_with_output().expect("etcdctl output")
}

/// A real etcd 3.4 member (Debian etcd-server) on loopback, killed when dropped: the reference
/// the compatibility tests compare etch with.
pub struct Etcd {
    child: Child,
    /// `127.0.0.1:port` of its client URL.
    pub endpoint: String,
}

impl Etcd {
    /// Starts a single-member etcd with its data in `dir/etcd` and its log in `dir/etcd.log`,
    /// and waits until it is healthy; panics with the log if it exits or stays unhealthy for
    /// [`START_DEADLINE`].
    pub fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_tcp_port(), free_tcp_port());
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let log_path = dir.join("etcd.log");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args([
                "--initial-cluster",
                &format!("default={p}"),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("etcd log file"))
            .spawn()
            .expect("etcd (Debian etcd-server) must be installed: ./tests/run.sh installs it");
        let endpoint = format!("127.0.0.1:{client}");
        let mut etcd = Etcd { child, endpoint };
        let healthy = try_wait_for(START_DEADLINE, || {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Some(Err(format!("etcd exited with {status} during start")));
            }
            let o = etcdctl(&etcd.endpoint, &["endpoint", "health"], "");
            o.status.success().then_some(Ok(()))
        })
        .unwrap_or_else(|| Err(format!("etcd not healthy after {START_DEADLINE:?}")));
        if let Err(why) = healthy {
            panic!("{why}; its log:\n{}", read(&log_path));
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response from [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: String,
}

/// One HTTP/1.1 request on a fresh connection to `addr` (`127.0.0.1:port`), body sent as is
/// (the gateway takes JSON); waits up to 20 s for the whole answer. A tiny client so the
/// gateway tests speak plain HTTP with nothing in between.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> HttpResponse {
    http_with(addr, method, path, &[], body)
}

/// [`http`] with extra headers (e.g. `Authorization`).
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut s = HttpStream::open_with(addr, method, path, headers, body);
    let mut out = Vec::new();
    while let Some(chunk) = s.chunk() {
        out.extend_from_slice(&chunk);
    }
    HttpResponse {
        status: s.status,
        body: String::from_utf8_lossy(&out).into_owned(),
    }
}

/// A streamed HTTP/1.1 answer (the gateway's watch and keep-alive streams), read line by line.
pub struct HttpStream {
    reader: std::io::BufReader<std::net::TcpStream>,
    /// HTTP status code.
    pub status: u16,
    chunked: bool,
    remaining: Option<usize>,
    pending: Vec<u8>,
    done: bool,
}

impl HttpStream {
    /// Sends the request and reads the status line and headers.
    pub fn open(addr: &str, method: &str, path: &str, body: &str) -> HttpStream {
        HttpStream::open_with(addr, method, path, &[], body)
    }

    /// [`HttpStream::open`] with extra headers (`name`, `value`).
    pub fn open_with(
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpStream {
        use std::io::{BufRead, Write};
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            sock,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send request");
        let mut reader = std::io::BufReader::new(sock);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut chunked, mut remaining) = (false, None);
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if l == "transfer-encoding: chunked" {
                chunked = true;
            }
            if let Some(n) = l.strip_prefix("content-length:") {
                remaining = n.trim().parse().ok();
            }
        }
        HttpStream {
            reader,
            status,
            chunked,
            remaining,
            pending: Vec::new(),
            done: false,
        }
    }

    /// The next piece of the body; `None` at its end.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        use std::io::BufRead;
        if self.done {
            return None;
        }
        if self.chunked {
            let mut size = String::new();
            self.reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut buf = vec![0; n + 2];
            self.reader.read_exact(&mut buf).ok()?;
            buf.truncate(n);
            if n == 0 {
                self.done = true;
                return None;
            }
            return Some(buf);
        }
        let mut buf = Vec::new();
        match self.remaining {
            Some(n) => {
                buf.resize(n, 0);
                self.reader.read_exact(&mut buf).ok()?;
            }
            None => {
                self.reader.read_to_end(&mut buf).ok()?;
            }
        }
        self.done = true;
        Some(buf)
    }

    /// The next newline-terminated line of the body (without the newline); `None` at the end
    /// or after 20 s without one.
    pub fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let rest = self.pending.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let c = self.chunk()?;
            self.pending.extend_from_slice(&c);
        }
    }
}

/// Flags for client TLS as etcd takes them: an `https://` client URL serving `cert`/`key`, client
/// certificates required and checked against `ca` (`--client-cert-auth`). The native port
/// speaks the same TLS.
pub fn client_tls_args<'a>(ca: &'a str, cert: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "--listen-client-urls",
        "https://127.0.0.1:0",
        "--cert-file",
        cert,
        "--key-file",
        key,
        "--trusted-ca-file",
        ca,
        "--client-cert-auth",
    ]
}

/// Writes a CA, and a certificate for 127.0.0.1/localhost signed by it, into `dir`; returns
/// (ca, cert, key) paths.
pub fn make_pki(dir: &std::path::Path, name: &str) -> (String, String, String) {
    make_pki_with_clients(dir, name, &[])
}

/// [`make_pki`], plus one client certificate per entry of `clients`, with that Common Name
/// (the etcd user name it stands for), written as `{name}-{cn}-cert.pem` / `-key.pem`.
pub fn make_pki_with_clients(
    dir: &std::path::Path,
    name: &str,
    clients: &[&str],
) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let p = |f: &str| {
        dir.join(format!("{name}-{f}"))
            .to_string_lossy()
            .to_string()
    };
    for cn in clients {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        let k = KeyPair::generate().unwrap();
        let c = params.signed_by(&k, &issuer).unwrap();
        std::fs::write(p(&format!("{cn}-cert.pem")), c.pem()).unwrap();
        std::fs::write(p(&format!("{cn}-key.pem")), k.serialize_pem()).unwrap();
    }
    std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(p("cert.pem"), cert.pem()).unwrap();
    std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}
