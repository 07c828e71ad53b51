//! A Jepsen-style history suite over real etch processes: clients (gRPC and native, several
//! per member) put, get, compare-and-swap and delete a small set of keys with values unique in
//! the run, lease holders grant, renew and revoke leases, watchers follow the whole keyspace;
//! meanwhile a seeded scheduler injects a fault every few seconds (see [`faults::ALL`]). At
//! the end the checkers ([`check`]) compare what everyone saw with the final history, and
//! every member's HashKV is compared at one revision.
//!
//! The short mode runs in `cargo test -p etch-tests --test history`; the long mode is
//! `cargo run --release -p etch-tests --bin etch-history -- --duration 30m` (see
//! `docs/durability.md`).

pub mod check;
pub mod faults;
pub mod record;
pub mod workload;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use etch_tools::GrpcClient;

use record::{Event, Fault, Lease, Op, Watched, events_of};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds the workload and the fault schedule.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Pause between two faults: uniformly within this range.
    pub pause: (Duration, Duration),
    /// Fault kinds to draw from (names in [`faults::ALL`]).
    pub faults: Vec<&'static str>,
    /// Key-value clients per member (alternately gRPC and native).
    pub clients_per_member: usize,
    /// Clients per member that only read (they keep reading while writers wait on a slow
    /// member).
    pub readers_per_member: usize,
    /// Lease holders.
    pub lease_clients: usize,
    /// Where the members keep their data and logs.
    pub dir: PathBuf,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Key-value operations recorded, and how many of them were acknowledged.
    pub ops: usize,
    /// See `ops`.
    pub acknowledged: usize,
    /// Acknowledged writes.
    pub acknowledged_writes: usize,
    /// Leases granted, and watch events received by all watchers.
    pub leases: usize,
    /// See `leases`.
    pub watch_events: usize,
    /// The final revision.
    pub revision: i64,
    /// The faults, in order.
    pub faults: Vec<Fault>,
    /// The checkers' verdict.
    pub verdict: check::Verdict,
    /// Members' HashKV at `revision` (member index, hash) for those that answered; every
    /// member must answer, with the same hash.
    pub hashes: Vec<(usize, u32)>,
    /// How many members.
    pub members: usize,
    /// Durability rules a fault showed broken.
    pub broken_rules: Vec<String>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.verdict.ok()
            && self.broken_rules.is_empty()
            && self.hashes.windows(2).all(|w| w[0].1 == w[1].1)
            && self.hashes.len() == self.members
    }

    /// A human summary: counts, faults by kind with their unavailability, the verdict.
    pub fn summary(&self, ops: &[Op]) -> String {
        let mut s = format!(
            "operations: {} ({} acknowledged, {} acknowledged writes); leases: {}; watch \
             events: {}; final revision {}\n",
            self.ops,
            self.acknowledged,
            self.acknowledged_writes,
            self.leases,
            self.watch_events,
            self.revision
        );
        let mut kinds: Vec<&str> = self.faults.iter().map(|f| f.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        s += "faults (kind: count, longest write unavailability, median):\n";
        for k in kinds {
            let mut gaps: Vec<u64> = self
                .faults
                .iter()
                .filter(|f| f.kind == k)
                .map(|f| unavailability(f, ops))
                .collect();
            gaps.sort_unstable();
            s += &format!(
                "  {k}: {}, {:.2} s, {:.2} s\n",
                gaps.len(),
                gaps.last().copied().unwrap_or(0) as f64 / 1e6,
                gaps[gaps.len() / 2] as f64 / 1e6
            );
        }
        s += &self.verdict.summary();
        s += &format!("hashes at revision {}: {:?}\n", self.revision, self.hashes);
        s += &format!("broken durability rules: {:?}\n", self.broken_rules);
        s
    }
}

/// The longest time without an acknowledged write from `f`'s start to 2 s after its end, µs
/// (from the start to the first acknowledgement, between two, and from the last to the end of
/// that window).
fn unavailability(f: &Fault, ops: &[Op]) -> u64 {
    let until = f.end + 2_000_000;
    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|o| o.wrote())
        .filter_map(|o| o.end)
        .filter(|&e| e >= f.start && e <= until)
        .collect();
    acks.sort_unstable();
    let mut prev = f.start;
    let mut longest = 0;
    for a in acks.into_iter().chain([until]) {
        longest = longest.max(a - prev);
        prev = a;
    }
    longest
}

/// The register keys (put and get only) and the other keys.
pub const REGISTERS: &[&str] = &["r0", "r1", "r2"];
/// Keys that are also compared-and-swapped and deleted.
pub const KEYS: &[&str] = &["k0", "k1", "k2"];
/// Lease TTL, s (etch's minimum with the default election timeout is 2 s).
const LEASE_TTL: i64 = 3;

/// Runs the suite: starts 3 members in `cfg.dir`, the workload and the faults; stops both;
/// checks. Returns the report and the recorded operations.
pub fn run(cfg: &Config) -> (Report, Vec<Op>) {
    let mut members = faults::Members::start(&cfg.dir, 3);
    let ctx = workload::Ctx::new(members.endpoints());
    members.attach(ctx.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut kv = Vec::new();
    let n = members.len();
    let writers = cfg.clients_per_member * n;
    for c in 0..writers + cfg.readers_per_member * n {
        let registers = REGISTERS.iter().map(|s| s.to_string()).collect();
        let keys = KEYS.iter().map(|s| s.to_string()).collect();
        kv.push(rt.spawn(workload::kv_client(
            ctx.clone(),
            c,
            c % n,
            c % 2 == 0,
            c >= writers,
            registers,
            keys,
            rng.random(),
        )));
    }
    let mut lease_tasks = Vec::new();
    for c in 0..cfg.lease_clients {
        lease_tasks.push(rt.spawn(workload::lease_client(
            ctx.clone(),
            1000 + c,
            c % n,
            LEASE_TTL,
            rng.random(),
        )));
    }
    let mut watched = Vec::new();
    let mut watch_tasks = Vec::new();
    for w in 0..2 {
        let out = Arc::new(Mutex::new(Watched {
            watcher: w,
            from: 1,
            ..Watched::default()
        }));
        watch_tasks.push(rt.spawn(workload::watcher(
            ctx.clone(),
            (w + 1) % n,
            w == 0,
            1,
            out.clone(),
        )));
        watched.push(out);
    }

    // The faults.
    let mut fault_log = Vec::new();
    let end = Instant::now() + cfg.duration;
    while Instant::now() < end {
        let pause = rng.random_range(cfg.pause.0..=cfg.pause.1);
        std::thread::sleep(pause);
        if Instant::now() >= end || cfg.faults.is_empty() {
            break;
        }
        let kind = cfg.faults[rng.random_range(0..cfg.faults.len())];
        let f = members.inject(kind, &mut rng, || ctx.now());
        eprintln!(
            "[{:>7.1} s] {} on m{} for {:.1} s {}",
            f.start as f64 / 1e6,
            f.kind,
            f.member,
            (f.end - f.start) as f64 / 1e6,
            f.note
        );
        fault_log.push(f);
    }
    // Healed: a few seconds of load on the whole cluster, then stop the clients.
    std::thread::sleep(Duration::from_secs(3));
    ctx.stop();
    let mut ops: Vec<Op> = Vec::new();
    let mut leases: Vec<Lease> = Vec::new();
    rt.block_on(async {
        for t in kv {
            ops.extend(t.await.expect("client"));
        }
        for t in lease_tasks {
            leases.extend(t.await.expect("lease client"));
        }
    });
    // Leases nobody revoked expire within their TTL; then the revision stops moving.
    let grpc: Vec<String> = (0..n).map(|i| members.grpc_of(i)).collect();
    let revision = rt.block_on(settle(&grpc, LEASE_TTL));
    let history = rt.block_on(final_history(&grpc[0], revision));
    // Watchers catch up to the final revision, then stop.
    crate::wait_for(
        Duration::from_secs(60),
        "watchers to reach the final revision",
        || {
            watched
                .iter()
                .all(|w| {
                    w.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .events
                        .last()
                        .is_some_and(|e| e.rev >= revision)
                })
                .then_some(())
        },
    );
    for t in watch_tasks {
        t.abort();
    }
    let watched: Vec<Watched> = watched
        .iter()
        .map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    let hashes = rt.block_on(async {
        let mut v = Vec::new();
        for (i, ep) in grpc.iter().enumerate() {
            if let Ok(c) = GrpcClient::connect(ep).await
                && let Ok(h) = c.hash_kv(revision).await
            {
                v.push((i, h.hash));
            }
        }
        v
    });
    let verdict = check::check(&ops, &leases, &watched, &history, REGISTERS);
    let report = Report {
        ops: ops.len(),
        acknowledged: ops.iter().filter(|o| o.end.is_some()).count(),
        acknowledged_writes: ops.iter().filter(|o| o.wrote()).count(),
        leases: leases.len(),
        watch_events: watched.iter().map(|w| w.events.len()).sum(),
        revision,
        faults: fault_log,
        verdict,
        hashes,
        members: n,
        broken_rules: members.broken_rules.clone(),
    };
    (report, ops)
}

/// Waits until every member answers at the same revision for 2 s running (leases with `ttl`
/// left to expire first); returns it.
async fn settle(grpc: &[String], ttl: i64) -> i64 {
    tokio::time::sleep(Duration::from_secs(ttl as u64 + 2)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<(i64, Instant)> = None;
    loop {
        let mut revs = Vec::new();
        for ep in grpc {
            let r = match GrpcClient::connect(ep).await {
                Ok(c) => c
                    .status()
                    .await
                    .ok()
                    .and_then(|s| s.header)
                    .map(|h| h.revision),
                Err(_) => None,
            };
            revs.push(r);
        }
        let same = revs.windows(2).all(|w| w[0] == w[1]) && revs[0].is_some();
        match (same, last) {
            (true, Some((r, since))) if Some(r) == revs[0] => {
                if since.elapsed() >= Duration::from_secs(2) {
                    return r;
                }
            }
            (true, _) => last = Some((revs[0].unwrap_or(0), Instant::now())),
            (false, _) => last = None,
        }
        assert!(
            Instant::now() < deadline,
            "members did not settle on one revision: {revs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every event from revision 1 to `revision`, watched on `endpoint`.
async fn final_history(endpoint: &str, revision: i64) -> Vec<Event> {
    let c = GrpcClient::connect(endpoint).await.expect("connect");
    let mut s = c.watch_stream().await.expect("watch");
    s.create(etch_protocol::etcdserverpb::WatchCreateRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        start_revision: 1,
        ..Default::default()
    })
    .await
    .expect("watch");
    let mut events: Vec<Event> = Vec::new();
    while events.last().is_none_or(|e| e.rev < revision) && revision > 1 {
        let r = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .ok()
            .flatten()
            .expect("the final history's watch ended early");
        assert!(
            !r.canceled,
            "final history watch canceled: {}",
            r.cancel_reason
        );
        events.extend(events_of(&r));
    }
    events
}
