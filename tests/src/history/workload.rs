//! The clients: key-value clients (gRPC and native, spread over the members), lease holders and
//! watchers. Each records what it invoked and what it saw; each reconnects (to its member's
//! current address, else the next member) when its connection fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use etch_protocol::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_protocol::etcdserverpb::request_op::Request as ReqOp;
use etch_protocol::etcdserverpb::response_op::Response as RespOp;
use etch_protocol::etcdserverpb::*;
use etch_tools::{Client, ClientError, GrpcClient};

use super::record::{Event, Kind, Lease, Op, Outcome, Watched, events_of, parse_value};

/// How long a client waits for one answer before it counts the outcome unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the clients share with the runner.
pub struct Ctx {
    clock: Instant,
    /// Per member: (native address, gRPC address); empty while the member is down.
    endpoints: RwLock<Vec<(String, String)>>,
    stop: AtomicBool,
    next_value: AtomicU64,
}

impl Ctx {
    /// A context for members at `endpoints` ((native, gRPC) each).
    pub fn new(endpoints: Vec<(String, String)>) -> Arc<Ctx> {
        Arc::new(Ctx {
            clock: Instant::now(),
            endpoints: RwLock::new(endpoints),
            stop: AtomicBool::new(false),
            next_value: AtomicU64::new(1),
        })
    }

    /// µs since the run started.
    pub fn now(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// Member `i` now listens at `native`/`grpc` (empty: down).
    pub fn set_endpoint(&self, i: usize, native: String, grpc: String) {
        let mut e = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        e[i] = (native, grpc);
    }

    fn endpoint(&self, i: usize, grpc: bool) -> String {
        let e = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        let (n, g) = &e[i % e.len()];
        if grpc { g.clone() } else { n.clone() }
    }

    fn members(&self) -> usize {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Tells every client to finish its current operation and return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn value(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }
}

/// A connection over either API.
enum Conn {
    Native(Client),
    Grpc(Box<GrpcClient>),
}

impl Conn {
    async fn open(ctx: &Ctx, member: usize, grpc: bool) -> Result<Conn, ClientError> {
        let ep = ctx.endpoint(member, grpc);
        if ep.is_empty() {
            return Err(ClientError::Closed);
        }
        let dial = async {
            Ok(if grpc {
                Conn::Grpc(Box::new(GrpcClient::connect(&ep).await?))
            } else {
                Conn::Native(Client::connect_timeout(&ep, Duration::from_secs(2)).await?)
            })
        };
        tokio::time::timeout(Duration::from_secs(3), dial)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn put(&self, r: PutRequest) -> Result<PutResponse, ClientError> {
        match self {
            Conn::Native(c) => c.put(r).await,
            Conn::Grpc(c) => c.put(r).await,
        }
    }

    async fn range(&self, r: RangeRequest) -> Result<RangeResponse, ClientError> {
        match self {
            Conn::Native(c) => c.range(r).await,
            Conn::Grpc(c) => c.range(r).await,
        }
    }

    async fn txn(&self, r: TxnRequest) -> Result<TxnResponse, ClientError> {
        match self {
            Conn::Native(c) => c.txn(r).await,
            Conn::Grpc(c) => c.txn(r).await,
        }
    }
}

fn value_bytes(v: u64) -> bytes::Bytes {
    format!("v{v}").into()
}

fn rev_of(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// One operation against `conn`.
async fn perform(conn: &Conn, key: &str, kind: &Kind) -> Result<Outcome, ClientError> {
    let k = bytes::Bytes::from(key.to_owned());
    Ok(match kind {
        Kind::Put { value } => {
            let r = conn
                .put(PutRequest {
                    key: k,
                    value: value_bytes(*value),
                    ..Default::default()
                })
                .await?;
            Outcome::Put {
                rev: rev_of(&r.header),
            }
        }
        Kind::Get => {
            let r = conn
                .range(RangeRequest {
                    key: k,
                    ..Default::default()
                })
                .await?;
            let kv = r.kvs.first();
            Outcome::Get {
                rev: rev_of(&r.header),
                value: kv.map(|kv| parse_value(&kv.value)),
                mod_rev: kv.map_or(0, |kv| kv.mod_revision),
            }
        }
        Kind::Cas { expect, value } => {
            let compare = match expect {
                Some(x) => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: k.clone(),
                    target_union: Some(TargetUnion::Value(value_bytes(*x))),
                    ..Default::default()
                },
                None => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: k.clone(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let r = conn
                .txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp {
                        request: Some(ReqOp::RequestPut(PutRequest {
                            key: k,
                            value: value_bytes(*value),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                })
                .await?;
            Outcome::Cas {
                rev: rev_of(&r.header),
                succeeded: r.succeeded,
            }
        }
        Kind::Delete => {
            let r = conn
                .txn(TxnRequest {
                    success: vec![RequestOp {
                        request: Some(ReqOp::RequestDeleteRange(DeleteRangeRequest {
                            key: k,
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                })
                .await?;
            let deleted = match r.responses.first().and_then(|x| x.response.as_ref()) {
                Some(RespOp::ResponseDeleteRange(d)) => d.deleted,
                _ => return Err(ClientError::Protocol("txn without its delete".into())),
            };
            Outcome::Delete {
                rev: rev_of(&r.header),
                deleted,
            }
        }
    })
}

/// Whether the connection is worth keeping after `e` (the server answered).
fn answered(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { .. })
}

/// A key-value client: until stopped, picks a key and an operation (registers: put or get;
/// other keys also compare-and-swap and delete; only gets when `read_only`) and records it.
#[allow(clippy::too_many_arguments)]
pub async fn kv_client(
    ctx: Arc<Ctx>,
    client: usize,
    mut member: usize,
    grpc: bool,
    read_only: bool,
    registers: Vec<String>,
    keys: Vec<String>,
    seed: u64,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut last_read: std::collections::HashMap<String, Option<u64>> = Default::default();
    while !ctx.stopped() {
        let Some(c) = &conn else {
            match Conn::open(&ctx, member, grpc).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    member = (member + 1) % ctx.members();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        let register = rng.random_bool(0.4);
        let key = if register {
            registers[rng.random_range(0..registers.len())].clone()
        } else {
            keys[rng.random_range(0..keys.len())].clone()
        };
        let kind = match (register, rng.random_range(0..10)) {
            _ if read_only => Kind::Get,
            (_, 0..=3) => Kind::Put { value: ctx.value() },
            (_, 4..=6) | (true, _) => Kind::Get,
            (false, 7..=8) => Kind::Cas {
                expect: last_read.get(&key).copied().flatten(),
                value: ctx.value(),
            },
            (false, _) => Kind::Delete,
        };
        let start = ctx.now();
        let r = tokio::time::timeout(OP_TIMEOUT, perform(c, &key, &kind)).await;
        let end = ctx.now();
        let (end, outcome) = match r {
            Ok(Ok(o)) => (Some(end), o),
            Ok(Err(e)) => {
                if !answered(&e) {
                    conn = None;
                }
                (None, Outcome::Unknown)
            }
            Err(_) => {
                conn = None;
                (None, Outcome::Unknown)
            }
        };
        if let Outcome::Get { value, .. } = outcome {
            last_read.insert(key.clone(), value);
        }
        // A read that failed says nothing; a write that failed may still have happened.
        if outcome == Outcome::Unknown && kind == Kind::Get {
            continue;
        }
        if outcome == Outcome::Unknown {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ops.push(Op {
            client,
            key,
            kind,
            start,
            end,
            outcome,
        });
    }
    ops
}

/// A lease holder: grants a lease (TTL `ttl` s), puts `l/<client>/<n>` with it, renews it
/// every second for 1 to 6 s (native unary renewals, or a gRPC keep-alive stream), then either
/// revokes it or lets it expire. Records every lease.
pub async fn lease_client(
    ctx: Arc<Ctx>,
    client: usize,
    mut member: usize,
    ttl: i64,
    seed: u64,
) -> Vec<Lease> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut leases = Vec::new();
    let mut n = 0;
    while !ctx.stopped() {
        let Ok(Conn::Native(c)) = Conn::open(&ctx, member, false).await else {
            member = (member + 1) % ctx.members();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // The lease's clock starts when the leader applies the grant, after it was sent.
        let sent = ctx.now();
        let grant =
            tokio::time::timeout(OP_TIMEOUT, c.lease_grant(LeaseGrantRequest { ttl, id: 0 })).await;
        let Ok(Ok(g)) = grant else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut lease = Lease {
            id: g.id,
            granted: (sent, g.ttl),
            ..Lease::default()
        };
        n += 1;
        let key = format!("l/{client}/{n}");
        let put = tokio::time::timeout(
            OP_TIMEOUT,
            c.put(PutRequest {
                key: key.clone().into(),
                value: bytes::Bytes::from_static(b"lease"),
                lease: g.id,
                ..Default::default()
            }),
        )
        .await;
        if matches!(put, Ok(Ok(_))) {
            lease.key = Some(key);
        }
        let grpc = if rng.random_bool(0.5) {
            match GrpcClient::connect(&ctx.endpoint(member, true)).await {
                Ok(g) => g.keep_alive_stream().await.ok(),
                Err(_) => None,
            }
        } else {
            None
        };
        let mut grpc = grpc;
        let renewals = rng.random_range(1..=6);
        for _ in 0..renewals {
            if ctx.stopped() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sent = ctx.now();
            let r = match &mut grpc {
                Some(s) => tokio::time::timeout(OP_TIMEOUT, s.keep_alive(g.id)).await,
                None => {
                    tokio::time::timeout(
                        OP_TIMEOUT,
                        c.lease_keep_alive(LeaseKeepAliveRequest { id: g.id }),
                    )
                    .await
                }
            };
            match r {
                Ok(Ok(k)) if k.ttl > 0 => lease.keep_alives.push((sent, k.ttl)),
                Ok(Ok(_)) => break, // expired: nothing more to renew
                // A keep-alive stream's answers carry no request number: after a lost one, a
                // late answer would be taken for the next request's. Renew unary from now on.
                _ => grpc = None,
            }
        }
        if rng.random_bool(0.5) {
            lease.revoked_at = Some(ctx.now());
            let _ =
                tokio::time::timeout(OP_TIMEOUT, c.lease_revoke(LeaseRevokeRequest { id: g.id }))
                    .await;
        }
        leases.push(lease);
    }
    leases
}

/// A watcher of the whole keyspace from revision `from`, over gRPC or native: on a broken
/// stream it watches again from the revision after the last event it received, as etcd's
/// clients do. Records into `out` as it goes (the runner reads it to know how far it got);
/// runs until aborted.
pub async fn watcher(
    ctx: Arc<Ctx>,
    mut member: usize,
    grpc: bool,
    from: i64,
    out: Arc<Mutex<Watched>>,
) {
    let mut next = from;
    loop {
        let create = WatchCreateRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            start_revision: next,
            ..Default::default()
        };
        let stream: Result<Watch, ClientError> = async {
            Ok(if grpc {
                let g = GrpcClient::connect(&ctx.endpoint(member, true)).await?;
                let s = g.watch_stream().await?;
                s.create(create).await?;
                Watch::Grpc {
                    _conn: Box::new(g),
                    stream: Box::new(s),
                }
            } else {
                let c =
                    Client::connect_timeout(&ctx.endpoint(member, false), Duration::from_secs(2))
                        .await?;
                let s = c.watch_stream()?;
                s.create(create).await?;
                Watch::Native {
                    _conn: Box::new(c),
                    stream: Box::new(s),
                }
            })
        }
        .await;
        let Ok(mut stream) = stream else {
            member = (member + 1) % ctx.members();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        out.lock().unwrap_or_else(|p| p.into_inner()).watches += 1;
        loop {
            let Some(r) = stream.next().await else { break };
            if r.canceled {
                break;
            }
            let events: Vec<Event> = events_of(&r);
            if let Some(last) = events.last() {
                next = last.rev + 1;
            }
            out.lock()
                .unwrap_or_else(|p| p.into_inner())
                .events
                .extend(events);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A watch stream of either API, for [`watcher`]; `_conn` keeps its connection open.
enum Watch {
    Grpc {
        _conn: Box<GrpcClient>,
        stream: Box<etch_tools::grpc::GrpcWatchStream>,
    },
    Native {
        _conn: Box<Client>,
        stream: Box<etch_tools::WatchStream>,
    },
}

impl Watch {
    /// The next response; `None` when the stream ended or stayed silent for 10 s.
    async fn next(&mut self) -> Option<WatchResponse> {
        let next = async {
            match self {
                Watch::Grpc { stream, .. } => stream.next().await,
                Watch::Native { stream, .. } => stream.next().await,
            }
        };
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .ok()
            .flatten()
    }
}
