//! The members and the faults done to them: kill -9, SIGSTOP, a partition, and the disk's
//! faults (through the member's `--debug-disk-faults` file, or on its files while it is down).
//! Each fault ends with the member healthy again (restarted, rebuilt from its peers, or
//! resumed) so the next one starts from a whole cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, rngs::StdRng};

use super::record::Fault;
use super::workload::Ctx;
use crate::{Isolation, Node, etcdctl, free_udp_port, wait_for};

/// Every fault kind the scheduler knows.
pub const ALL: &[&str] = &[
    "kill",
    "stop",
    "stop-leader",
    "partition",
    "fsync-delay",
    "fsync-eio",
    "wal-enospc",
    "store-enospc",
    "torn-tail",
    "wal-bitflip",
    "store-corrupt",
];

/// One member: its process and what is needed to start it again.
struct Member {
    node: Node,
    name: String,
    peer_url: String,
    faults: PathBuf,
}

/// The cluster under test.
pub struct Members {
    members: Vec<Member>,
    dir: PathBuf,
    token: String,
    ctx: Option<Arc<Ctx>>,
    /// Durability rules a fault showed broken (a member that kept running after its fsync
    /// failed, a corruption that was not named...).
    pub broken_rules: Vec<String>,
}

/// Flags every member runs with: its fault file, small WAL segments so older segments exist
/// to damage, and the initial corruption check.
fn common_flags(faults: &Path) -> Vec<String> {
    vec![
        "--debug-disk-faults".into(),
        faults.display().to_string(),
        "--experimental-wal-segment-bytes".into(),
        "65536".into(),
        // etcd's check of a starting member's data against its peers' (HashKV): how a
        // corrupted store file that still opens is found.
        "--experimental-initial-corrupt-check".into(),
    ]
}

impl Members {
    /// Starts `size` members in `dir` and waits until each knows the leader.
    pub fn start(dir: &Path, size: usize) -> Members {
        let token = "etch-history".to_owned();
        let peer_urls: Vec<String> = (0..size)
            .map(|_| format!("http://127.0.0.1:{}", free_udp_port()))
            .collect();
        let initial = (0..size)
            .map(|i| format!("m{i}={}", peer_urls[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, peer_url) in peer_urls.iter().enumerate() {
            let name = format!("m{i}");
            let faults = dir.join(format!("{name}.faults"));
            let mut args = vec![
                "--name".to_owned(),
                name.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-token".into(),
                token.clone(),
            ];
            args.extend(common_flags(&faults));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            members.push(Member {
                node: Node::launch(dir.join(&name), &args),
                name,
                peer_url: peer_url.clone(),
                faults,
            });
        }
        for m in &members {
            m.node.wait_leader();
        }
        Members {
            members,
            dir: dir.to_owned(),
            token,
            ctx: None,
            broken_rules: Vec::new(),
        }
    }

    /// (native, gRPC) address of each member.
    pub fn endpoints(&self) -> Vec<(String, String)> {
        self.members
            .iter()
            .map(|m| (m.node.native.clone(), m.node.grpc.clone()))
            .collect()
    }

    /// The clients' context, told of every address change.
    pub fn attach(&mut self, ctx: Arc<Ctx>) {
        self.ctx = Some(ctx);
    }

    fn publish(&self, i: usize) {
        if let Some(ctx) = &self.ctx {
            let n = &self.members[i].node;
            if n.pid().is_some() {
                ctx.set_endpoint(i, n.native.clone(), n.grpc.clone());
            } else {
                ctx.set_endpoint(i, String::new(), String::new());
            }
        }
    }

    /// The gRPC endpoints of the running members, comma-separated (for etcdctl).
    pub fn grpc_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.node.pid().is_some())
            .map(|m| m.node.grpc.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The gRPC address of each member.
    pub fn grpc_of(&self, i: usize) -> String {
        self.members[i].node.grpc.clone()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The leader's index, if the running members agree on one within 10 s.
    fn leader(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ids: Vec<Option<(u64, u64)>> = self
                .members
                .iter()
                .map(|m| {
                    let s = m.node.status()?;
                    Some((s["header"]["member_id"].as_u64()?, s["leader"].as_u64()?))
                })
                .collect();
            if let Some(Some((_, l))) = ids.iter().find(|x| x.is_some())
                && let Some(i) = ids.iter().position(|x| x.is_some_and(|(me, _)| me == *l))
            {
                return Some(i);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        if rng.random_bool(0.5)
            && let Some(l) = self.leader()
        {
            return l;
        }
        rng.random_range(0..self.members.len())
    }

    fn set_faults(&self, i: usize, text: &str) {
        std::fs::write(&self.members[i].faults, text).expect("fault file");
    }

    fn restart(&mut self, i: usize) {
        self.members[i].node.restart();
        self.publish(i);
    }

    fn kill(&mut self, i: usize) {
        self.members[i].node.kill9();
        self.publish(i);
    }

    /// Waits for member `i` to stop by itself after a disk fault; returns the end of its log.
    fn expect_exit(&mut self, i: usize, why: &str) -> String {
        let node = &mut self.members[i].node;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exited = false;
        while Instant::now() < deadline {
            if node.pid().is_none() {
                exited = true;
                break;
            }
            if node.log().contains("fatal error, stopping") {
                let _ = node.wait_exit(Duration::from_secs(20));
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = node.log();
        let fatal = log
            .lines()
            .find(|l| l.contains("fatal error"))
            .unwrap_or("")
            .to_owned();
        if !exited {
            self.broken_rules
                .push(format!("m{i} kept running after {why}"));
            self.kill(i);
        }
        self.publish(i);
        fatal
    }

    fn nospace_raised(&self) -> bool {
        let o = etcdctl(&self.grpc_endpoints(), &["alarm", "list"], "");
        String::from_utf8_lossy(&o.stdout).contains("NOSPACE")
    }

    fn disarm(&self) {
        let _ = etcdctl(&self.grpc_endpoints(), &["alarm", "disarm"], "");
    }

    /// Injects one fault of `kind` and heals it; returns what happened.
    pub fn inject(&mut self, kind: &'static str, rng: &mut StdRng, now: impl Fn() -> u64) -> Fault {
        let i = match kind {
            // Longer than the election timeout (1 s): a new leader is elected meanwhile.
            "stop-leader" => self.leader().unwrap_or(0),
            _ => self.pick(rng),
        };
        let start = now();
        let mut note = String::new();
        match kind {
            "kill" => {
                self.kill(i);
                std::thread::sleep(Duration::from_millis(rng.random_range(300..3000)));
                self.restart(i);
            }
            "stop" | "stop-leader" => {
                self.members[i].node.signal("STOP");
                std::thread::sleep(Duration::from_millis(rng.random_range(1500..5000)));
                self.members[i].node.signal("CONT");
            }
            "partition" => {
                let port: u16 = self.members[i]
                    .peer_url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("peer port");
                let cut = Isolation::udp_port(port);
                std::thread::sleep(Duration::from_millis(rng.random_range(1500..5000)));
                drop(cut);
            }
            "fsync-delay" => {
                self.set_faults(i, "wal-fsync=delay=5s\n");
                std::thread::sleep(Duration::from_secs(6));
                self.set_faults(i, "");
                // The last delayed fsync ends at most 5 s later.
                std::thread::sleep(Duration::from_secs(5));
            }
            "fsync-eio" => {
                self.set_faults(i, "wal-fsync=eio\n");
                note = self.expect_exit(i, "an fsync failed with EIO");
                self.set_faults(i, "");
                self.restart(i);
            }
            "wal-enospc" | "store-enospc" => {
                let point = if kind == "wal-enospc" {
                    "wal-write"
                } else {
                    "store-write"
                };
                self.set_faults(i, &format!("{point}=enospc\n"));
                note = self.expect_exit(i, "a write failed with ENOSPC");
                let raised = wait_until(Duration::from_secs(10), || self.nospace_raised());
                if !raised {
                    self.broken_rules
                        .push(format!("m{i}: ENOSPC did not raise the NOSPACE alarm"));
                }
                note += &format!(" (NOSPACE alarm raised: {raised})");
                self.set_faults(i, "");
                self.restart(i);
                self.disarm();
            }
            "torn-tail" => {
                self.kill(i);
                let last = crate::wal_segments(&self.members[i].node.data_dir)
                    .pop()
                    .expect("segment");
                let data = std::fs::read(&last).expect("segment");
                let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                // A record header promising more bytes than were written, as a crash leaves.
                let torn = [0x40u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 2, 7, 7];
                etch_storage::wal::overwrite_at(&last, end as u64, &torn).expect("write");
                self.restart(i);
                let log = self.members[i].node.log();
                if !log.contains("torn tail") {
                    self.broken_rules
                        .push(format!("m{i}: torn tail not reported"));
                }
            }
            "wal-bitflip" | "store-corrupt" => {
                self.kill(i);
                let named = if kind == "wal-bitflip" {
                    flip_wal_bit(&self.members[i].node.data_dir, rng)
                } else {
                    corrupt_store(&self.members[i].node.data_dir, rng)
                };
                let (refused, out) = self.start_refused(i);
                let refused = refused && named.iter().all(|n| out.contains(n.as_str()));
                note = out
                    .lines()
                    .find(|l| l.contains("corrupt") || l.contains("error"))
                    .unwrap_or("")
                    .to_owned();
                if !refused {
                    self.broken_rules
                        .push(format!("m{i}: {kind} not refused naming {named:?}: {note}"));
                }
                self.rebuild(i);
            }
            other => panic!("unknown fault {other}"),
        }
        Fault {
            kind,
            member: i,
            start,
            end: now(),
            note,
        }
    }

    /// Starts member `i` on its damaged data: whether it refused (exited during its start, or
    /// within 20 s of listening: the initial corruption check compares with its peers), and
    /// its log.
    fn start_refused(&mut self, i: usize) -> (bool, String) {
        let node = &mut self.members[i].node;
        let listened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.relaunch())).is_ok();
        if !listened {
            node.kill9();
            return (true, node.log());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if node.log().contains("stopped with an error") {
                let _ = node.wait_exit(Duration::from_secs(20));
                return (true, node.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        node.kill9();
        (false, node.log())
    }

    /// Replaces member `i` (its data is damaged) with a new member on an empty data dir, as an
    /// operator does: `member remove`, `member add`, start with `--initial-cluster-state
    /// existing`; it catches up from the leader.
    fn rebuild(&mut self, i: usize) {
        let eps = self.grpc_endpoints();
        let name = self.members[i].name.clone();
        let id = wait_for(Duration::from_secs(30), "member list", || {
            let o = etcdctl(&eps, &["member", "list"], "");
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.split(", ").nth(2) == Some(name.as_str()))
                .and_then(|l| l.split(", ").next())
                .map(str::to_owned)
        });
        // An operator retries a request that timed out.
        wait_for(Duration::from_secs(60), "member remove", || {
            let o = etcdctl(&eps, &["member", "remove", &id], "");
            let err = String::from_utf8_lossy(&o.stderr);
            (o.status.success() || err.contains("member not found")).then_some(())
        });
        let url = format!("http://127.0.0.1:{}", free_udp_port());
        let out = wait_for(Duration::from_secs(30), "member add", || {
            let o = etcdctl(
                &eps,
                &["member", "add", &name, &format!("--peer-urls={url}")],
                "",
            );
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).to_string())
        });
        let initial = out
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .expect("ETCD_INITIAL_CLUSTER")
            .trim_matches('"')
            .to_owned();
        let data = self.members[i].node.data_dir.clone();
        let _ = std::fs::remove_dir_all(&data);
        let mut args = vec![
            "--name".to_owned(),
            name.clone(),
            "--listen-peer-urls".into(),
            url.clone(),
            "--initial-advertise-peer-urls".into(),
            url.clone(),
            "--initial-cluster".into(),
            initial,
            "--initial-cluster-state".into(),
            "existing".into(),
            "--initial-cluster-token".into(),
            self.token.clone(),
        ];
        args.extend(common_flags(&self.members[i].faults));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Node::launch(data, &args);
        node.wait_leader();
        self.members[i].node = node;
        self.members[i].peer_url = url;
        self.publish(i);
    }

    /// Where the members keep their data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Flips one bit inside the written part of a WAL segment (an older one when there is one),
/// at least one record before its end; returns the file name the refusal must name.
fn flip_wal_bit(data: &Path, rng: &mut StdRng) -> Vec<String> {
    let segs = crate::wal_segments(data);
    let victim = if segs.len() > 1 {
        &segs[0]
    } else {
        &segs[segs.len() - 1]
    };
    let bytes = std::fs::read(victim).expect("segment");
    let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    // Past the seed record, and away from the end so valid records follow in a last segment.
    let at = rng.random_range(64..(written / 2).max(65)) as u64;
    etch_storage::wal::overwrite_at(victim, at, &[bytes[at as usize] ^ 0x04]).expect("write");
    vec![
        victim.file_name().unwrap().to_string_lossy().to_string(),
        "at offset".into(),
    ]
}

/// Overwrites 64 bytes in the middle of the MVCC store's largest table file (fjall's sorted
/// tables; its journal when no table exists yet), or truncates it to half its length; returns
/// what the refusal must say.
fn corrupt_store(data: &Path, rng: &mut StdRng) -> Vec<String> {
    let mut tables = Vec::new();
    let mut journals = Vec::new();
    // The store's directory is named in `member/db.current` (a new one after each snapshot
    // install); the others are gone or about to be.
    let current = std::fs::read_to_string(data.join("member/db.current"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "db".into());
    let mut stack = vec![data.join("member").join(current)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = p.metadata() {
                let in_tables = p.parent().is_some_and(|d| d.ends_with("tables"));
                let journal = p.extension().is_some_and(|x| x == "jnl");
                if in_tables {
                    tables.push((m.len(), p));
                } else if journal {
                    journals.push((m.len(), p));
                }
            }
        }
    }
    tables.sort();
    journals.sort();
    let (len, victim) = tables.pop().or(journals.pop()).expect("a store file");
    if rng.random_bool(0.5) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&victim)
            .expect("open");
        f.set_len(len / 2).expect("truncate");
    } else {
        etch_storage::wal::overwrite_at(&victim, len / 2, &[0xA5; 64]).expect("write");
    }
    Vec::new()
}
