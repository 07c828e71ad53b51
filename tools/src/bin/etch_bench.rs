//! `etch-bench`: the load generator, with the workloads and flags of etcd's `tools/benchmark`
//! (`put`, `range`, `txn-put`, `txn-mixed`, `watch`, `watch-latency`, `lease-keepalive`).
//!
//! `--clients` concurrent clients share `--conns` connections; together they send `--total`
//! requests as fast as the server answers (or at `--rate` per second). `--protocol native`
//! (default) speaks etch's native protocol; `--protocol grpc` speaks the etcd v3 gRPC API, so
//! the same tool measures etch and etcd. The report gives QPS and latency (average, standard
//! deviation, a response-time histogram and percentiles from an HDR histogram) in etcd
//! benchmark's text form, or as JSON (`--json`) or CSV (`--csv`) for scripts.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use etch_tools::grpc::{GrpcWatchStream, KeepAliveStream, TlsFiles};
use etch_tools::pb::{
    CompactionRequest, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchResponse, request_op,
};
use etch_tools::{Client, ClientError, GrpcClient, WatchStream};

#[derive(Parser)]
#[command(
    name = "etch-bench",
    version,
    about = "A load generator for etch (etcd benchmark's flags)"
)]
struct Cli {
    /// Comma-separated endpoints; connections are spread over them.
    #[arg(long, global = true, default_value = "127.0.0.1:2378")]
    endpoints: String,
    /// Total number of connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Total number of concurrent clients.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Print the report as one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Print the report as CSV (a header line and one row) instead of text.
    #[arg(long, global = true, conflicts_with = "json")]
    csv: bool,
    /// Wire protocol: etch's native protocol, or the etcd v3 gRPC API (etch and etcd).
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    /// TLS: CA bundle that signs the server's certificate (either protocol; connects with TLS).
    #[arg(long, global = true)]
    cacert: Option<std::path::PathBuf>,
    /// TLS: client certificate, for servers with client-certificate auth (with --key).
    #[arg(long = "cert", id = "tls_cert", global = true)]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS: client private key (with --cert).
    #[arg(long = "key", id = "tls_key", global = true)]
    tls_key: Option<std::path::PathBuf>,
    /// Authenticate as `name:password` (auth enabled on the server).
    #[arg(long, global = true)]
    user: Option<String>,
    /// Give up on a request after this long (humantime, e.g. `500ms`; 0 = wait forever) and
    /// count it as an error ("context deadline exceeded"), so a stalled server ends the run
    /// with errors instead of hanging it.
    #[arg(long, global = true, default_value = "30s")]
    request_timeout: String,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The wire protocol.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    /// etch's native protocol (length-prefixed protobuf frames over TCP).
    Native,
    /// The etcd v3 gRPC API.
    Grpc,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark put.
    Put(PutArgs),
    /// Benchmark range.
    Range(RangeArgs),
    /// Benchmark txn with puts (`--txn-ops` puts of distinct keys per txn).
    TxnPut(TxnPutArgs),
    /// Benchmark a read/write mix of txns (`--rw-ratio` reads per write).
    TxnMixed(TxnMixedArgs),
    /// Lease keep-alives: each client grants a lease, then renews it `--total` times in all.
    LeaseKeepalive(LeaseArgs),
    /// Watch creation and delivery: many streams x watchers over many keys, puts as fast as
    /// possible; reports creation time and delivery throughput.
    Watch(WatchArgs),
    /// Watch event latency: many streams x watchers on one key, puts at a rate; reports the
    /// latency from put to delivery over every (watcher, event).
    WatchLatency(WatchArgs),
}

#[derive(Args)]
struct LeaseArgs {
    /// Total number of keep-alive requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
}

#[derive(Args)]
struct WatchArgs {
    /// Watch streams (spread over --conns connections).
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Watchers per stream.
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
    /// Distinct keys watched (watchers are spread over them; watch-latency uses 1).
    #[arg(long, default_value_t = 1)]
    watched_key_total: usize,
    /// Puts to make once every watcher is created.
    #[arg(long, default_value_t = 100)]
    put_total: u64,
    /// Puts per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    put_rate: u64,
    /// Wait this long after creating the watchers before putting (humantime), e.g. to read the
    /// server's memory.
    #[arg(long, default_value = "0s")]
    hold: String,
}

/// How many requests, how fast.
#[derive(Args)]
struct Requests {
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Maximum requests per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// The keys and values written.
#[derive(Args)]
struct KeyValues {
    /// Key size, bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size, bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
}

#[derive(Args)]
struct PutArgs {
    #[command(flatten)]
    req: Requests,
    #[command(flatten)]
    kv: KeyValues,
    /// Use sequential keys instead of random ones.
    #[arg(long)]
    sequential_keys: bool,
    /// Compact every this long (humantime, e.g. `10s`; 0 = never), to the latest revision
    /// minus `--compact-index-delta`.
    #[arg(long, default_value = "0s")]
    compact_interval: String,
    /// How many revisions to keep when compacting.
    #[arg(long, default_value_t = 1000)]
    compact_index_delta: i64,
    /// Write each acknowledged key (hex) to this file, one per line (crash tests check them).
    #[arg(long)]
    ack_log: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct TxnPutArgs {
    #[command(flatten)]
    req: Requests,
    #[command(flatten)]
    kv: KeyValues,
    /// Puts per txn.
    #[arg(long, default_value_t = 1)]
    txn_ops: usize,
}

#[derive(Args)]
struct TxnMixedArgs {
    #[command(flatten)]
    req: Requests,
    #[command(flatten)]
    kv: KeyValues,
    /// Reads per write.
    #[arg(long, default_value_t = 1.0)]
    rw_ratio: f64,
    /// Reads: linearizable (l) or serializable (s).
    #[arg(long, default_value = "l")]
    consistency: String,
}

#[derive(Args)]
struct RangeArgs {
    /// Key to range over.
    key: String,
    /// Range end (exclusive); empty for a single key.
    end: Option<String>,
    #[command(flatten)]
    req: Requests,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l")]
    consistency: String,
    /// Maximum keys returned per range (0 = no limit).
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Only count the keys.
    #[arg(long)]
    count_only: bool,
}

/// etcd benchmark's key: a varint of the key number, zero-padded to `size` bytes.
fn bench_key(n: u64, size: usize) -> Bytes {
    let mut k = vec![0u8; size.max(10)];
    // Go's binary.PutVarint (zig-zag) of a non-negative number.
    let mut v = n << 1;
    let mut i = 0;
    while v >= 0x80 {
        k[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    k[i] = v as u8;
    k.truncate(size.max(i + 1));
    Bytes::from(k)
}

/// One connection, over either protocol.
#[derive(Clone)]
enum Conn {
    Native(Client),
    Grpc(Box<GrpcClient>),
}

/// A keep-alive channel: native renewals are requests; gRPC ones go over a stream.
enum KeepAliver {
    Native(Client),
    Grpc(KeepAliveStream),
}

/// A watch stream over either protocol.
enum BenchWatch {
    Native(WatchStream),
    Grpc(GrpcWatchStream),
}

impl Conn {
    async fn connect(
        p: Protocol,
        ep: &str,
        tls: &TlsFiles,
        user: Option<(&str, &str)>,
    ) -> Result<Conn, String> {
        match p {
            Protocol::Native => {
                let opts = etch_tools::ConnectOptions {
                    tls: tls.clone(),
                    user: user.map(|(n, p)| (n.to_owned(), p.to_owned())),
                    ..Default::default()
                };
                Client::connect_with(ep, &opts).await.map(Conn::Native)
            }
            Protocol::Grpc => GrpcClient::connect_as(ep, tls, user)
                .await
                .map(|c| Conn::Grpc(Box::new(c))),
        }
        .map_err(|e| format!("{ep}: {e}"))
    }

    /// Puts; returns the revision it created.
    async fn put(&self, r: PutRequest) -> Result<i64, ClientError> {
        let h = match self {
            Conn::Native(c) => c.put(r).await?.header,
            Conn::Grpc(c) => c.put(r).await?.header,
        };
        Ok(h.map_or(0, |h| h.revision))
    }

    async fn range(&self, r: RangeRequest) -> Result<(), ClientError> {
        match self {
            Conn::Native(c) => c.range(r).await.map(drop),
            Conn::Grpc(c) => c.range(r).await.map(drop),
        }
    }

    async fn txn(&self, r: TxnRequest) -> Result<(), ClientError> {
        match self {
            Conn::Native(c) => c.txn(r).await.map(drop),
            Conn::Grpc(c) => c.txn(r).await.map(drop),
        }
    }

    async fn compact(&self, revision: i64) -> Result<(), ClientError> {
        let r = CompactionRequest {
            revision,
            physical: false,
        };
        match self {
            Conn::Native(c) => c.compact(r).await.map(drop),
            Conn::Grpc(c) => c.compact(r).await.map(drop),
        }
    }

    async fn lease_grant(&self, ttl: i64) -> Result<i64, ClientError> {
        let r = LeaseGrantRequest { ttl, id: 0 };
        match self {
            Conn::Native(c) => c.lease_grant(r).await.map(|g| g.id),
            Conn::Grpc(c) => c.lease_grant(r).await.map(|g| g.id),
        }
    }

    async fn keep_aliver(&self) -> Result<KeepAliver, ClientError> {
        match self {
            Conn::Native(c) => Ok(KeepAliver::Native(c.clone())),
            Conn::Grpc(c) => c.keep_alive_stream().await.map(KeepAliver::Grpc),
        }
    }

    async fn watch_stream(&self) -> Result<BenchWatch, ClientError> {
        match self {
            Conn::Native(c) => c.watch_stream().map(BenchWatch::Native),
            Conn::Grpc(c) => c.watch_stream().await.map(BenchWatch::Grpc),
        }
    }
}

impl KeepAliver {
    /// Renews `id`; an expired lease (TTL <= 0) is an error.
    async fn keep_alive(&mut self, id: i64) -> Result<(), ClientError> {
        let r = match self {
            KeepAliver::Native(c) => c.lease_keep_alive(LeaseKeepAliveRequest { id }).await?,
            KeepAliver::Grpc(s) => s.keep_alive(id).await?,
        };
        if r.ttl > 0 {
            Ok(())
        } else {
            Err(ClientError::Protocol("lease expired".into()))
        }
    }
}

impl BenchWatch {
    async fn create(&self, req: WatchCreateRequest) -> Result<(), ClientError> {
        match self {
            BenchWatch::Native(s) => s.create(req).await,
            BenchWatch::Grpc(s) => s.create(req).await,
        }
    }

    async fn next(&mut self) -> Option<WatchResponse> {
        match self {
            BenchWatch::Native(s) => s.next().await,
            BenchWatch::Grpc(s) => s.next().await,
        }
    }
}

async fn connect_all(cli: &Cli) -> Result<Vec<Conn>, String> {
    let endpoints: Vec<&str> = cli.endpoints.split(',').filter(|s| !s.is_empty()).collect();
    if endpoints.is_empty() || cli.conns == 0 || cli.clients == 0 {
        return Err("--endpoints, --conns and --clients must not be empty or 0".into());
    }
    let tls = TlsFiles {
        ca: cli.cacert.clone(),
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
        insecure_skip_verify: false,
    };
    let user = match cli.user.as_deref() {
        None => None,
        Some(u) => Some(u.split_once(':').ok_or("--user must be name:password")?),
    };
    let mut conns = Vec::new();
    for i in 0..cli.conns {
        let ep = endpoints[i % endpoints.len()];
        conns.push(Conn::connect(cli.protocol, ep, &tls, user).await?);
    }
    Ok(conns)
}

struct Stats {
    hist: Histogram<u64>,
    errors: u64,
    first_errors: Vec<String>,
    reads: u64,
    writes: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The key of request `i`: sequential over the key space, or random in it.
fn pick_key(i: u64, sequential: bool, key_space: u64, key_size: usize) -> Bytes {
    let n = if sequential {
        i % key_space
    } else {
        rand::rng().random_range(0..key_space)
    };
    bench_key(n, key_size)
}

fn put_op(key: Bytes, value: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value: value.clone(),
            ..Default::default()
        })),
    }
}

/// What one client sends.
enum Op {
    Put {
        key_size: usize,
        value: Bytes,
        sequential: bool,
        key_space: u64,
    },
    Range(RangeRequest),
    KeepAlive(i64),
    TxnPut {
        key_size: usize,
        value: Bytes,
        ops: usize,
        key_space: u64,
    },
    TxnMixed {
        key_size: usize,
        value: Bytes,
        read_share: f64,
        key_space: u64,
        serializable: bool,
    },
}

/// Runs one request; `Ok(Some(key))` for an acknowledged put, `Ok(None)` otherwise; the bool
/// says whether it was a read.
async fn run_op(
    op: &Op,
    conn: &Conn,
    keeper: &mut Option<KeepAliver>,
    i: u64,
    last_rev: &AtomicU64,
) -> (Result<Option<Bytes>, ClientError>, bool) {
    match op {
        Op::Put {
            key_size,
            value,
            sequential,
            key_space,
        } => {
            let key = pick_key(i, *sequential, *key_space, *key_size);
            let r = conn
                .put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                })
                .await;
            if let Ok(rev) = &r {
                last_rev.fetch_max(*rev as u64, Ordering::Relaxed);
            }
            (r.map(|_| Some(key)), false)
        }
        Op::Range(r) => (conn.range(r.clone()).await.map(|()| None), true),
        Op::KeepAlive(id) => match keeper {
            Some(k) => (k.keep_alive(*id).await.map(|()| None), false),
            None => (Err(ClientError::Closed), false),
        },
        Op::TxnPut {
            key_size,
            value,
            ops,
            key_space,
        } => {
            // Distinct keys in one txn (etcd refuses duplicates).
            let first = rand::rng().random_range(0..*key_space);
            let success = (0..*ops as u64)
                .map(|j| put_op(bench_key((first + j) % key_space, *key_size), value))
                .collect();
            let r = TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            };
            (conn.txn(r).await.map(|()| None), false)
        }
        Op::TxnMixed {
            key_size,
            value,
            read_share,
            key_space,
            serializable,
        } => {
            let key = pick_key(i, false, *key_space, *key_size);
            let read = rand::rng().random_bool(read_share.clamp(0.0, 1.0));
            let op = if read {
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key,
                        serializable: *serializable,
                        ..Default::default()
                    })),
                }
            } else {
                put_op(key, value)
            };
            let r = TxnRequest {
                compare: vec![],
                success: vec![op],
                failure: vec![],
            };
            (conn.txn(r).await.map(|()| None), read)
        }
    }
}

async fn bench(cli: &Cli) -> Result<serde_json::Value, String> {
    let conns = connect_all(cli).await?;
    let (total, rate) = match &cli.cmd {
        Cmd::Put(PutArgs { req, .. })
        | Cmd::Range(RangeArgs { req, .. })
        | Cmd::TxnPut(TxnPutArgs { req, .. })
        | Cmd::TxnMixed(TxnMixedArgs { req, .. }) => (req.total, req.rate),
        Cmd::LeaseKeepalive(a) => (a.total, 0),
        Cmd::Watch(_) | Cmd::WatchLatency(_) => return Err("not a request benchmark".into()),
    };
    let ack_log = match &cli.cmd {
        // Buffered: the log is flushed when the run ends (the server may die, the bench does not).
        Cmd::Put(PutArgs {
            ack_log: Some(p), ..
        }) => Some(Arc::new(std::sync::Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| e.to_string())?,
        )))),
        _ => None,
    };
    let request_timeout =
        humantime::parse_duration(&cli.request_timeout).map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicU64::new(0));
    let last_rev = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(std::sync::Mutex::new(Stats {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        errors: 0,
        first_errors: Vec::new(),
        reads: 0,
        writes: 0,
    }));
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .map_err(|e| e.to_string())?,
    );
    if cli.json || cli.csv {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // put --compact-interval: compact in the background while the puts run.
    let compactor = match &cli.cmd {
        Cmd::Put(a) => {
            let every =
                humantime::parse_duration(&a.compact_interval).map_err(|e| e.to_string())?;
            (!every.is_zero()).then(|| {
                let (conn, last_rev, delta) =
                    (conns[0].clone(), last_rev.clone(), a.compact_index_delta);
                tokio::spawn(async move {
                    let mut compacted = 0;
                    loop {
                        tokio::time::sleep(every).await;
                        let to = last_rev.load(Ordering::Relaxed) as i64 - delta;
                        if to > compacted && conn.compact(to).await.is_ok() {
                            compacted = to;
                        }
                    }
                })
            })
        }
        _ => None,
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..cli.clients {
        let conn = conns[c % conns.len()].clone();
        let (next, stats, bar, ack_log, last_rev) = (
            next.clone(),
            stats.clone(),
            bar.clone(),
            ack_log.clone(),
            last_rev.clone(),
        );
        let mut keeper = None;
        let op: Op = match &cli.cmd {
            Cmd::Put(a) => Op::Put {
                key_size: a.kv.key_size,
                value: Bytes::from(vec![b'v'; a.kv.val_size]),
                sequential: a.sequential_keys,
                key_space: a.kv.key_space_size.max(1),
            },
            Cmd::TxnPut(a) => Op::TxnPut {
                key_size: a.kv.key_size,
                value: Bytes::from(vec![b'v'; a.kv.val_size]),
                ops: a.txn_ops.max(1),
                key_space: a.kv.key_space_size.max(a.txn_ops as u64).max(1),
            },
            Cmd::TxnMixed(a) => Op::TxnMixed {
                key_size: a.kv.key_size,
                value: Bytes::from(vec![b'v'; a.kv.val_size]),
                read_share: a.rw_ratio / (a.rw_ratio + 1.0),
                key_space: a.kv.key_space_size.max(1),
                serializable: a.consistency == "s",
            },
            Cmd::Watch(_) | Cmd::WatchLatency(_) => return Err("not a request benchmark".into()),
            Cmd::LeaseKeepalive(_) => {
                let id = conn.lease_grant(60).await.map_err(|e| e.to_string())?;
                keeper = Some(conn.keep_aliver().await.map_err(|e| e.to_string())?);
                Op::KeepAlive(id)
            }
            Cmd::Range(a) => Op::Range(RangeRequest {
                key: Bytes::copy_from_slice(a.key.as_bytes()),
                range_end: a
                    .end
                    .as_deref()
                    .map(|e| Bytes::copy_from_slice(e.as_bytes()))
                    .unwrap_or_default(),
                serializable: a.consistency == "s",
                limit: a.limit,
                count_only: a.count_only,
                ..Default::default()
            }),
        };
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                let run = run_op(&op, &conn, &mut keeper, i, &last_rev);
                let (res, read) = if request_timeout.is_zero() {
                    run.await
                } else {
                    tokio::time::timeout(request_timeout, run)
                        .await
                        .unwrap_or((Err(ClientError::Timeout), false))
                };
                let us = t.elapsed().as_micros() as u64;
                {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    match &res {
                        Ok(_) => {
                            let _ = s.hist.record(us.max(1));
                            if read {
                                s.reads += 1;
                            } else {
                                s.writes += 1;
                            }
                        }
                        Err(e) => {
                            s.errors += 1;
                            if s.first_errors.len() < 5 {
                                s.first_errors.push(e.to_string());
                            }
                        }
                    }
                }
                if let (Ok(Some(k)), Some(log)) = (&res, &ack_log) {
                    use std::io::Write;
                    let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(f, "{}", hex(k));
                }
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(c) = compactor {
        c.abort();
    }
    bar.finish_and_clear();
    if let Some(log) = &ack_log {
        use std::io::Write;
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
            .map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
    let h = &s.hist;
    let ms = |us: f64| us / 1000.0;
    let ok = h.len();
    // etcd's response-time histogram: 10 equal buckets from the fastest to the slowest.
    let (lo, hi) = (h.min(), h.max());
    let step = ((hi - lo) / 10).max(1);
    let histogram: Vec<serde_json::Value> = (0..10)
        .map(|b| {
            let from = lo + b * step;
            let to = if b == 9 { hi } else { from + step - 1 };
            serde_json::json!({"le_ms": ms(to as f64), "count": h.count_between(from, to)})
        })
        .collect();
    Ok(serde_json::json!({
        "protocol": if cli.protocol == Protocol::Grpc { "grpc" } else { "native" },
        "total": total,
        "ok": ok,
        "errors": s.errors,
        "first_errors": s.first_errors,
        "reads": s.reads,
        "writes": s.writes,
        "seconds": elapsed,
        "qps": ok as f64 / elapsed.max(1e-9),
        "latency_ms": {
            "avg": ms(h.mean()),
            "stddev": ms(h.stdev()),
            "min": ms(h.min() as f64),
            "max": ms(h.max() as f64),
            "p10": ms(h.value_at_quantile(0.10) as f64),
            "p50": ms(h.value_at_quantile(0.50) as f64),
            "p90": ms(h.value_at_quantile(0.90) as f64),
            "p99": ms(h.value_at_quantile(0.99) as f64),
            "p99.9": ms(h.value_at_quantile(0.999) as f64),
        },
        "histogram": histogram,
    }))
}

/// The report as CSV: a header and one row.
fn report_csv(v: &serde_json::Value) -> String {
    let l = &v["latency_ms"];
    let cols = [
        ("protocol", v["protocol"].as_str().unwrap_or("").to_owned()),
        ("total", v["total"].to_string()),
        ("ok", v["ok"].to_string()),
        ("errors", v["errors"].to_string()),
        ("seconds", v["seconds"].to_string()),
        ("qps", v["qps"].to_string()),
        ("avg_ms", l["avg"].to_string()),
        ("stddev_ms", l["stddev"].to_string()),
        ("min_ms", l["min"].to_string()),
        ("max_ms", l["max"].to_string()),
        ("p50_ms", l["p50"].to_string()),
        ("p90_ms", l["p90"].to_string()),
        ("p99_ms", l["p99"].to_string()),
        ("p99.9_ms", l["p99.9"].to_string()),
    ];
    let head: Vec<&str> = cols.iter().map(|(k, _)| *k).collect();
    let row: Vec<&str> = cols.iter().map(|(_, v)| v.as_str()).collect();
    format!("{}\n{}\n", head.join(","), row.join(","))
}

/// etcd benchmark's text report.
fn report_text(v: &serde_json::Value) -> String {
    let l = &v["latency_ms"];
    let secs = |k: &str| l[k].as_f64().unwrap_or(0.0) / 1000.0;
    let mut s = String::from("\nSummary:\n");
    s += &format!(
        "  Total:\t{:.4} secs.\n",
        v["seconds"].as_f64().unwrap_or(0.0)
    );
    s += &format!("  Slowest:\t{:.4} secs.\n", secs("max"));
    s += &format!("  Fastest:\t{:.4} secs.\n", secs("min"));
    s += &format!("  Average:\t{:.4} secs.\n", secs("avg"));
    s += &format!("  Stddev:\t{:.4} secs.\n", secs("stddev"));
    s += &format!("  Requests/sec:\t{:.4}\n", v["qps"].as_f64().unwrap_or(0.0));
    let buckets = v["histogram"].as_array().cloned().unwrap_or_default();
    let most = buckets
        .iter()
        .filter_map(|b| b["count"].as_u64())
        .max()
        .unwrap_or(0)
        .max(1);
    s += "\nResponse time histogram:\n";
    for b in &buckets {
        let n = b["count"].as_u64().unwrap_or(0);
        s += &format!(
            "  {:.4} [{n}]\t|{}\n",
            b["le_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            "∎".repeat((n * 40 / most) as usize)
        );
    }
    s += "\nLatency distribution:\n";
    for (name, key) in [
        ("10%", "p10"),
        ("50%", "p50"),
        ("90%", "p90"),
        ("99%", "p99"),
        ("99.9%", "p99.9"),
    ] {
        s += &format!("  {name} in {:.4} secs.\n", secs(key));
    }
    let errors = v["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        s += &format!(
            "\nError distribution:\n  [{errors}]\t{}\n",
            v["first_errors"]
        );
    }
    s
}

/// Creates the watchers, puts, and measures delivery (see [`Cmd::Watch`], [`Cmd::WatchLatency`]).
async fn watch_bench(cli: &Cli, a: &WatchArgs, latency: bool) -> Result<serde_json::Value, String> {
    let conns = connect_all(cli).await?;
    let keys = if latency {
        1
    } else {
        a.watched_key_total.max(1)
    };
    let key = |i: usize| Bytes::from(format!("etch-bench-watch/{i:06}"));
    let hold = humantime::parse_duration(&a.hold).map_err(|e| e.to_string())?;
    let start = Instant::now();
    // Create every watcher and wait for its `created`.
    let mut streams = Vec::new();
    let mut watchers_on_key = vec![0u64; keys];
    for s in 0..a.streams {
        let c = &conns[s % conns.len()];
        let mut st = c.watch_stream().await.map_err(|e| e.to_string())?;
        for w in 0..a.watchers_per_stream {
            let k = (s * a.watchers_per_stream + w) % keys;
            watchers_on_key[k] += 1;
            st.create(WatchCreateRequest {
                key: key(k),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        let mut created = 0;
        while created < a.watchers_per_stream {
            match tokio::time::timeout(Duration::from_secs(30), st.next()).await {
                Ok(Some(r)) if r.created && !r.canceled => created += 1,
                Ok(Some(r)) if r.canceled => {
                    return Err(format!("watch refused: {}", r.cancel_reason));
                }
                Ok(Some(_)) => {}
                _ => return Err("no created response within 30 s".into()),
            }
        }
        streams.push(st);
    }
    let create_secs = start.elapsed().as_secs_f64();
    eprintln!(
        "etch-bench: {} watchers created in {create_secs:.2} s; holding {hold:?}",
        a.streams * a.watchers_per_stream
    );
    tokio::time::sleep(hold).await;
    let puts_on_key =
        |k: usize| (a.put_total / keys as u64) + u64::from((k as u64) < a.put_total % keys as u64);
    let expected: u64 = (0..keys).map(|k| watchers_on_key[k] * puts_on_key(k)).sum();
    let epoch = Instant::now();
    // Receivers: per stream, a local histogram of put-to-delivery latency (µs).
    let mut readers = Vec::new();
    for mut st in streams {
        readers.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).ok();
            let mut n = 0u64;
            let mut last = 0u64;
            while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(5), st.next()).await {
                let now = epoch.elapsed().as_nanos() as u64;
                last = now;
                for e in &r.events {
                    n += 1;
                    let sent: u64 =
                        e.kv.as_ref()
                            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                            .unwrap_or(now);
                    if let Some(h) = h.as_mut() {
                        let _ = h.record((now.saturating_sub(sent) / 1000).max(1));
                    }
                }
            }
            (n, h, last)
        }));
    }
    let putter = &conns[0];
    for i in 0..a.put_total {
        if a.put_rate > 0 {
            let due = epoch + Duration::from_secs_f64(i as f64 / a.put_rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let value = Bytes::from(epoch.elapsed().as_nanos().to_string());
        putter
            .put(PutRequest {
                key: key(i as usize % keys),
                value,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut delivered = 0;
    let mut last_event = 0u64;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    for r in readers {
        let (n, h, last) = r.await.map_err(|e| e.to_string())?;
        delivered += n;
        last_event = last_event.max(last);
        if let Some(h) = h {
            hist.add(h).map_err(|e| e.to_string())?;
        }
    }
    // From the first put to the last event received (readers then idle out).
    let deliver_secs = (last_event as f64 / 1e9).max(1e-9);
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(serde_json::json!({
        "watchers": a.streams * a.watchers_per_stream,
        "streams": a.streams,
        "create_seconds": create_secs,
        "puts": a.put_total,
        "events_expected": expected,
        "events_delivered": delivered,
        "errors": expected.saturating_sub(delivered),
        "deliver_seconds": deliver_secs,
        "events_per_second": delivered as f64 / deliver_secs,
        "latency_ms": {
            "avg": hist.mean() / 1000.0,
            "p50": ms(hist.value_at_quantile(0.50)),
            "p90": ms(hist.value_at_quantile(0.90)),
            "p99": ms(hist.value_at_quantile(0.99)),
            "p99.9": ms(hist.value_at_quantile(0.999)),
            "max": ms(hist.max()),
        }
    }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match &cli.cmd {
        Cmd::Watch(a) => rt.block_on(watch_bench(&cli, a, false)),
        Cmd::WatchLatency(a) => rt.block_on(watch_bench(&cli, a, true)),
        _ => rt.block_on(bench(&cli)),
    };
    match result {
        Ok(v) => {
            if cli.json || v.get("watchers").is_some() {
                println!("{v}");
            } else if cli.csv {
                print!("{}", report_csv(&v));
            } else {
                print!("{}", report_text(&v));
            }
            if v["errors"].as_u64().unwrap_or(0) > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_for_every_workload() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        // A global flag named like a subcommand's argument must not clash (range's `key`).
        for args in [
            &[
                "etch-bench",
                "--key",
                "k.pem",
                "--cert",
                "c.pem",
                "range",
                "k",
                "--limit",
                "2",
            ][..],
            &[
                "etch-bench",
                "--protocol",
                "grpc",
                "txn-mixed",
                "--rw-ratio",
                "4",
            ][..],
            &[
                "etch-bench",
                "--csv",
                "put",
                "--compact-interval",
                "1s",
                "--rate",
                "10",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            if let Cmd::Range(r) = &cli.cmd {
                assert_eq!((r.key.as_str(), r.limit), ("k", 2));
                assert_eq!(cli.tls_key.as_deref(), Some(std::path::Path::new("k.pem")));
            }
        }
    }

    #[test]
    fn keys_are_distinct_varints() {
        assert_eq!(&bench_key(0, 8)[..], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bench_key(1, 8)[..], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_ne!(bench_key(64, 8), bench_key(65, 8));
        assert_eq!(bench_key(300, 8).len(), 8);
    }
}
