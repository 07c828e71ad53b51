//! etch node: one member of an etch cluster.
//!
//! Inside a node, actors exchange messages (ARCHITECTURE.md section 2):
//! [`consensus`] (raft-rs) -> [`wal`] (durability) -> [`apply`] (MVCC on fjall, own thread),
//! and the peer transport (QUIC); consensus, the WAL and the transport share the consensus
//! thread. [`service`] turns client requests into proposals and reads, [`api`] serves the
//! wire protocols, and [`run`] wires them together.

pub mod actors;
pub mod api;
pub mod config;
pub mod core;
pub mod error;
pub mod listener;
mod logger;
pub mod metrics;
pub mod service;
mod startup;
pub mod state;
pub mod tls;

use etch_protocol::ids::MemberId;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch as chan;
use tokio_util::task::TaskTracker;

use etch_storage::mvcc::MvccStore;
use etch_storage::wal::Wal;

pub use config::{Config, Flags};
pub use error::{Error, Result};

use crate::actors::apply::{ApplyActor, Waiters};
use crate::actors::consensus::{ConsensusActor, ProposalInbox, RaftCore};
use crate::actors::wal::WalActor;
use crate::actors::{consensus, lease, proposer, transport, watch};
use crate::service::{Limits, Service};
use crate::service::{auth, compactor, corrupt};
use crate::state::NodeState;

/// Extra bytes a native frame may carry beyond `--max-request-bytes` (envelope, headers), so an
/// oversized request gets etcd's "request is too large" instead of a dropped connection.
pub const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

/// How long shutdown waits for in-flight requests before closing anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a graceful stop waits for the store's memtables to be flushed (5 s): past it the
/// member stops anyway and its next start replays the store's journal.
const STOP_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Sockets the caller bound (so tests can bind port 0 and read the port back).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Native protocol listeners.
    pub native: Vec<std::net::TcpListener>,
    /// etcd gRPC API listeners (client URLs).
    pub client: Vec<std::net::TcpListener>,
    /// etcd gRPC API listeners on unix sockets (`unix://` client URLs).
    pub client_unix: Vec<std::os::unix::net::UnixListener>,
    /// `/metrics` and health listeners (`--listen-metrics-urls`).
    pub metrics: Vec<std::net::TcpListener>,
    /// The peer socket (UDP, QUIC); needed when the cluster has other members.
    pub peer: Option<std::net::UdpSocket>,
}

/// Runs a node until `shutdown` resolves (then stops gracefully: stop accepting, finish
/// in-flight requests, make the store durable) or a fatal error occurs.
///
/// Must be called inside a running actix `System`.
///
/// # Errors
/// Storage errors at open (including WAL corruption, naming file and offset), a data dir that
/// belongs to another member, and any fatal error while running.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    metrics::install();
    // TLS files are read before any actor starts: a bad file stops the member cleanly.
    // h2 for gRPC, http/1.1 for the JSON gateway and /metrics on the same port.
    let client_tls = config
        .client_tls
        .as_ref()
        .map(|t| tls::client::server_config(t, &[b"h2", b"http/1.1"]).map(Arc::new))
        .transpose()?;
    let native_tls = config
        .client_tls
        .as_ref()
        .map(|t| tls::client::server_config(t, &[b"etch"]).map(Arc::new))
        .transpose()?;
    let member_dir = config.data_dir.join("member");
    if let Some(f) = &config.disk_fault_file {
        tracing::warn!(file = %f.display(), "disk fault injection on: for tests only");
        etch_storage::faults::install(f.clone());
    }
    let (mut wal, recovered) =
        Wal::open_with_segment_bytes(&config.wal_dir, config.wal_segment_bytes)?;
    if recovered.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovered.truncated_bytes,
            "repaired a torn WAL tail"
        );
    }
    let store = Arc::new(MvccStore::open(&member_dir)?);
    // The peer endpoint comes first: a member joining a running cluster asks its peers who
    // it is before anything else. Consensus, its WAL and QUIC share one thread, the consensus
    // thread: the socket is registered with that thread's reactor, and quinn's endpoint and
    // connection drivers and the transport's tasks are spawned there, so a peer's packet
    // reaches raft and raft's messages reach the socket without a hand-off between threads;
    // tokio's workers serve the clients (docs/performance.md).
    let raft_arbiter = Arbiter::new();
    let endpoint = match listeners.peer {
        Some(socket) => {
            let addr = socket.local_addr()?;
            let tls = config.peer_tls.clone();
            let ep = on_arbiter(&raft_arbiter, move || {
                transport::endpoint(socket, tls.as_ref())
            })
            .await??;
            Some((addr, ep))
        }
        None => None,
    };
    let fresh = recovered.snapshot.is_none()
        && recovered.entries.is_empty()
        && recovered.hard_state.is_none();
    let boot = startup::identify(&config, &store, fresh, endpoint.as_ref().map(|e| &e.1)).await?;
    let (member_id, cluster_id) = (boot.member_id, boot.cluster_id);
    let mut membership = store.membership()?;
    if etch_storage::members::is_removed(&membership, member_id) {
        tracing::warn!(error = consensus::REMOVED, "server error");
        tracing::warn!("data-dir used by this member must be removed");
        return Ok(());
    }
    let log = startup::raft_log(
        &config,
        &store,
        &mut wal,
        &recovered,
        fresh,
        boot.joining,
        &mut membership,
    )?;
    let applied = store.applied_index().index;
    tracing::info!(
        member_id = %MemberId(member_id),
        cluster_id = %MemberId(cluster_id),
        data_dir = %config.data_dir.display(),
        applied_index = applied,
        last_index = log.last_index(),
        revision = store.current_revision(),
        "starting etch"
    );
    let core = RaftCore::new(
        member_id,
        log,
        applied,
        config.election_ticks(),
        &logger::raft_logger(member_id),
    )?;

    let state = Arc::new(NodeState::new(member_id, cluster_id));
    state.set_membership(membership.clone());
    let waiters = Arc::new(Waiters::default());
    let tokens = Arc::new(auth::Tokens::new(config.auth_token_ttl));
    let (applied_tx, applied_rx) = chan::channel(applied);
    announce_ready(state.clone(), applied_rx.clone());
    let applied_rx_publish = applied_rx.clone();

    // The WAL actor runs on the consensus thread, as etcd's raft loop saves its WAL itself: a
    // Ready's write and fsync need no hand-off between threads (one-client latency,
    // docs/performance.md), and consensus has nothing else to do for the Ready meanwhile (one
    // WAL write is in flight at a time; proposals gather in raft's log; a leader's appends
    // leave before its fsync starts, see `WalActor`). Apply gets a thread of its own: it runs
    // beside the next fsync, and a slow store write never holds raft's ticks and messages (as
    // etcd applies beside its raft loop).
    let wal_addr = WalActor::start_in_arbiter(&raft_arbiter.handle(), move |ctx| {
        ctx.set_mailbox_capacity(64);
        WalActor::new(wal)
    });
    // The lessor's address first: apply notifies it and the service asks it.
    let lessor_ctx = Context::<lease::LeaseActor>::new();
    let lessor = lessor_ctx.address();
    // Consensus, apply and transport address each other: make consensus's address first.
    // The mailbox is made here, the context on the consensus thread (a context stays on
    // its thread); 16 messages is actix's default capacity, raised when the actor starts.
    let (consensus_tx, consensus_rx) = actix::dev::channel::channel::<ConsensusActor>(16);
    let consensus = Addr::new(consensus_tx);
    let to_consensus = consensus.clone().recipient();
    let apply_arbiter = Arbiter::new();
    let (st, w, ls, tk) = (
        store.clone(),
        waiters.clone(),
        lessor.clone(),
        tokens.clone(),
    );
    let (revision_tx, revision_rx) = chan::channel(store.current_revision());
    let watched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wd = watched.clone();
    let apply_addr = ApplyActor::start_in_arbiter(&apply_arbiter.handle(), move |ctx| {
        ctx.set_mailbox_capacity(1024);
        ApplyActor::new(st, w, applied_tx, revision_tx, wd, ls, tk, to_consensus)
    });
    // Watch fanout reads events from the store: a thread of its own too.
    let watch_arbiter = Arbiter::new();
    let (st, ns, wl) = (store.clone(), state.clone(), config.watch);
    let watch_addr = watch::WatchActor::start_in_arbiter(&watch_arbiter.handle(), move |_| {
        watch::WatchActor::new(st, revision_rx, watched, ns, wl)
    });
    let (stop_tx, stop_rx) = chan::channel(false);
    let mut peer_endpoint = None;
    let transport = match endpoint {
        None if boot.peers.is_empty() => None,
        None => {
            return Err(Error::Io(std::io::Error::other(
                "a peer socket is needed for a multi-member cluster",
            )));
        }
        Some((addr, ep)) => {
            tracing::info!(%addr, peers = boot.peers.len(), "serving peers (QUIC)");
            peer_endpoint = Some(ep.clone());
            // Snapshot sends run on tokio's workers (this runtime).
            let workers = tokio::runtime::Handle::current();
            let (st, urls, peers, sto, con, stop) = (
                state.clone(),
                boot.client_urls.clone(),
                boot.peers.clone(),
                store.clone(),
                consensus.clone(),
                stop_rx.clone(),
            );
            let t = on_arbiter(&raft_arbiter, move || {
                transport::TransportActor::start(ep, st, urls, &peers, sto, con, stop, workers)
            })
            .await?;
            if !membership.members.is_empty() {
                t.do_send(transport::SetMembers(membership.clone()));
            }
            Some(t)
        }
    };
    let inbox = Arc::new(ProposalInbox::default());
    let consensus_actor = ConsensusActor::new(
        consensus::ConsensusCore::new(
            core,
            member_id,
            config.snapshot_count,
            consensus::CATCH_UP_ENTRIES,
        ),
        wal_addr,
        apply_addr,
        transport.clone(),
        state.clone(),
        config.heartbeat_interval,
        waiters.clone(),
        applied_rx.clone(),
        inbox.clone(),
    );
    on_arbiter(&raft_arbiter, move || {
        Context::with_receiver(consensus_rx).run(consensus_actor);
    })
    .await?;

    let proposer = proposer::Proposer::new(
        consensus.clone(),
        inbox,
        waiters,
        applied_rx.clone(),
        state.clone(),
        config.max_request_bytes,
        config.request_timeout,
    );
    let service = Arc::new(Service::new(
        store.clone(),
        service::Actors {
            consensus: consensus.clone(),
            watch: watch_addr,
            lessor,
            transport: transport.clone(),
        },
        proposer.clone(),
        applied_rx,
        state.clone(),
        Limits {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            request_timeout: config.request_timeout,
            watch: config.watch,
            min_lease_ttl: config.min_lease_ttl,
            bcrypt_cost: config.bcrypt_cost,
            quota_backend_bytes: config.quota_backend_bytes,
            strict_reconfig_check: config.strict_reconfig_check,
            max_learners: config.max_learners,
        },
        auth::TokenProvider {
            simple: tokens,
            jwt: match &config.auth_token {
                config::AuthToken::Jwt { .. } => Some(Arc::new(
                    auth::Jwt::load(&config.auth_token)
                        .map_err(|e| Error::Io(std::io::Error::other(e)))?,
                )),
                config::AuthToken::Simple => None,
            },
        },
    ));
    if let Some(t) = &transport {
        t.do_send(transport::SetPeerServer(Arc::new(service::PeerRequests(
            service.clone(),
        ))));
    }
    let compactor = config
        .auto_compaction
        .map(|mode| compactor::spawn(service.clone(), mode));
    let peer_ids: Vec<u64> = boot.peers.iter().map(|p| p.id).collect();
    if let (true, Some(t)) = (config.initial_corrupt_check, &transport) {
        corrupt::initial_check(&service, t, &peer_ids, config.request_timeout)
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    }
    let corrupt_checker = match (config.corrupt_check_interval, &transport) {
        (Some(every), Some(t)) => Some(corrupt::spawn_periodic(
            service.clone(),
            t.clone(),
            peer_ids,
            every,
            config.request_timeout,
        )),
        _ => None,
    };
    lessor_ctx.run(lease::LeaseActor::new(
        &store.leases()?,
        proposer,
        state.clone(),
        config.lease_checkpoint_interval,
    ));

    let tracker = TaskTracker::new();
    let (stop_native, stop_native_rx) = chan::channel(false);
    for l in listeners.native {
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let l = tokio::net::TcpListener::from_std(l)?;
        tracing::info!(%addr, "serving the native protocol");
        tracker.spawn(api::native::serve(
            l,
            service.clone(),
            config.max_request_bytes + FRAME_OVERHEAD_BYTES,
            native_tls.clone(),
            stop_native_rx.clone(),
            tracker.clone(),
        ));
    }

    let mut client_listeners = Vec::new();
    for l in listeners.client {
        l.set_nonblocking(true)?;
        client_listeners.push(listener::Listener::Tcp(tokio::net::TcpListener::from_std(
            l,
        )?));
    }
    for l in listeners.client_unix {
        l.set_nonblocking(true)?;
        client_listeners.push(listener::Listener::Unix(
            tokio::net::UnixListener::from_std(l)?,
        ));
    }
    for l in client_listeners {
        tracing::info!(addr = %l.describe(), "serving the etcd gRPC API");
        let grpc = api::grpc::Grpc::new(service.clone(), config.election_timeout)
            .with_max_concurrent_streams(config.max_concurrent_streams);
        let mut stop = stop_native_rx.clone();
        let max = config.max_request_bytes;
        let tls = client_tls.clone();
        tracker.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = grpc.serve(l, max, tls, shutdown).await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
    }

    for l in listeners.metrics {
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let l = tokio::net::TcpListener::from_std(l)?;
        tracing::info!(%addr, "serving metrics and health");
        let router = api::http::metrics_router(service.clone());
        let mut stop = stop_native_rx.clone();
        tracker.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }

    let publisher = tokio::spawn(publish(
        service.clone(),
        state.clone(),
        applied_rx_publish,
        config.name.clone(),
        boot.client_urls.clone(),
    ));
    let mut fatal = state.fatal();
    let mut removed = false;
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        r = fatal.wait_for(|f| f.is_some()) => {
            let why = r.map(|v| v.clone().unwrap_or_default()).unwrap_or_default();
            // etcd stops a removed member cleanly (exit 0) and says what to do.
            removed = why == consensus::REMOVED;
            if removed {
                tracing::warn!("data-dir used by this member must be removed");
            }
            Err(Error::Fatal(why))
        }
    };
    publisher.abort();
    tracing::info!("shutting down: no new requests; finishing in-flight ones");
    // Stop accepting client requests, but keep peers connected until in-flight requests are
    // done and leadership is handed over.
    stop_native.send_replace(true);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time");
    }
    if result.is_ok()
        && let Ok(Some(target)) = consensus.send(consensus::TransferLeadership(None)).await
    {
        tracing::info!(to = %MemberId(target), "transferring leadership before stopping");
        let mut leader = state.leader_changes();
        let handed_over = leader.wait_for(|l| *l != member_id);
        let _ = tokio::time::timeout(config.election_timeout * 2, handed_over).await;
    }
    if let Some(c) = corrupt_checker {
        c.abort();
    }
    if let Some(c) = compactor {
        c.abort();
    }
    stop_tx.send_replace(true);
    // Waits for the last commit index to be written (bounded: a WAL that failed or waits
    // behind a full mailbox must not hold the stop; consensus itself has stopped already).
    // The bound may cut short a write already running on the consensus thread: the commit
    // index is volatile state in Raft, learned again from the leader after a restart, so a
    // stop that ends before it is durable is no worse than a crash.
    if let Ok(Some(write)) = consensus.send(StopConsensus).await {
        match tokio::time::timeout(Duration::from_secs(1), write).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "writing the commit index at stop"),
            Ok(Err(e)) => tracing::warn!(error = %e, "writing the commit index at stop"),
            Err(_) => tracing::warn!("writing the commit index at stop took over 1 s"),
        }
    }
    if let Some(ep) = peer_endpoint {
        // Let the connections' close frames leave, so peers see this member go at once
        // instead of after QUIC's idle timeout.
        ep.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_millis(500), ep.wait_idle()).await;
    }
    if result.is_ok() || removed {
        // Memtables written out now spare the next start replaying fjall's journal; if that
        // fails or takes too long, the fsync alone keeps what was applied.
        // Blocking for up to the deadline: off the async threads.
        let s = store.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            s.flush_memtables(STOP_FLUSH_DEADLINE).or_else(|e| {
                tracing::warn!(error = %e, "flushing the store's memtables at stop");
                s.persist().map(|()| false)
            })
        })
        .await;
        match flushed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(
                deadline = ?STOP_FLUSH_DEADLINE,
                "store memtables not flushed; the next start replays the store journal"
            ),
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "the store's memtable flush at stop did not finish");
                store.persist()?;
            }
        }
    }
    apply_arbiter.stop();
    raft_arbiter.stop();
    watch_arbiter.stop();
    tracing::info!("stopped");
    if removed {
        return Ok(());
    }
    result
}

/// Runs `f` on `arbiter`'s thread (inside its runtime, so what `f` registers or spawns stays
/// there) and returns its result.
///
/// # Errors
/// [`Error::Io`] when the arbiter stopped before `f` ran.
async fn on_arbiter<T: Send + 'static>(
    arbiter: &Arbiter,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = arbiter.spawn_fn(move || {
        let _ = tx.send(f());
    });
    let gone = || Error::Io(std::io::Error::other("an actor thread stopped"));
    if !sent {
        return Err(gone());
    }
    rx.await.map_err(|_| gone())
}

/// Publishes this member's name and client URLs through raft once it serves (etcd's
/// `publish`), retrying until the membership has them.
async fn publish(
    service: Arc<Service>,
    state: Arc<NodeState>,
    mut applied: chan::Receiver<u64>,
    name: String,
    client_urls: Vec<String>,
) {
    let mut leader = state.leader_changes();
    loop {
        if leader.wait_for(|l| *l != 0).await.is_err() {
            return;
        }
        let commit = state.commit_index();
        if applied.wait_for(|a| *a >= commit).await.is_err() {
            return;
        }
        match service.publish_attributes(&name, &client_urls).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Logs etcd's readiness lines once this member knows a leader and has applied the log up to
/// the commit index it saw then: tools that start etcd wait for them (etcd 3.4's e2e launcher
/// for "enabled capabilities for version" and "published", etcd 3.5's for "ready to serve
/// client requests").
fn announce_ready(state: Arc<NodeState>, mut applied: chan::Receiver<u64>) {
    tokio::spawn(async move {
        let mut leader = state.leader_changes();
        if leader.wait_for(|l| *l != 0).await.is_err() {
            return;
        }
        let commit = state.commit_index();
        if applied.wait_for(|a| *a >= commit).await.is_err() {
            return;
        }
        tracing::info!(
            cluster_version = config::CLUSTER_VERSION,
            "enabled capabilities for version {}",
            config::CLUSTER_VERSION
        );
        tracing::info!(
            member_id = %state.member_id,
            "published local member to cluster through raft"
        );
        tracing::info!("ready to serve client requests");
    });
}

/// Stops the consensus actor (shutdown) at once; replies with the WAL write of the commit
/// index that only a later write would have carried, to wait for
/// ([`ConsensusActor::stop_after_last_write`]).
#[derive(Message)]
#[rtype(
    result = "Option<actix::dev::Request<crate::actors::wal::WalActor, crate::actors::wal::AppendEntries>>"
)]
struct StopConsensus;

impl Handler<StopConsensus> for ConsensusActor {
    type Result = MessageResult<StopConsensus>;
    fn handle(&mut self, _: StopConsensus, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stop_after_last_write(ctx))
    }
}
