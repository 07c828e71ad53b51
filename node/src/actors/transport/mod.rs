//! The peer transport actor: raft messages between members over QUIC (quinn), the IO around
//! the peer protocol's core (`crate::core::peer`: Hello, admission, frame decoding, membership
//! following, backoff, question bookkeeping).
//!
//! One QUIC connection per peer direction; each side opens a long-lived unidirectional stream
//! to each peer and writes length-prefixed frames on it: its Hello first, then one raft
//! message per frame. A receiver refuses a stream whose Hello names another cluster (a member
//! started with another `--initial-cluster-token`) or an unknown member, and closes the
//! connection on any frame that does not decode: peer input is checked, never trusted to be
//! well-formed, and never panics the node.
//!
//! Outbound messages go through a bounded queue per peer; when it is full or the peer cannot
//! be reached, messages are dropped (raft retransmits) and the peer is reported unreachable to
//! raft-rs, which then probes it gently. Connections are re-established with backoff.

use etch_protocol::ids::MemberId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raft::eraftpb::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use etch_protocol::etchpb::{PeerAnswer, PeerFrame, peer_answer, peer_frame::Body, peer_request};
use etch_protocol::frame;

use etch_storage::mvcc::MvccStore;

use crate::actors::consensus::{ConsensusActor, Step, Unreachable};
use crate::config::{Peer, PeerTls};
use crate::core::peer::{self as core, Asks, Backoff, Inbound, Outbound, Refusal};
pub use crate::core::peer::{
    MAX_PEER_FRAME_BYTES, PEER_PROTOCOL_VERSION, PeerSets, REMOVED_REASON,
};

pub use crate::tls::peer::{PEER_ALPN, self_signed};
use requests::{Answered, Asked};
pub use requests::{Ask, PeerServer, SetPeerServer, answer_error};
use snapshot::{receive_snapshot, send_snapshot};

mod endpoint;
pub mod join;
mod members;
pub use members::SetMembers;
mod requests;
mod snapshot;

use crate::tls::peer as tls;
pub use endpoint::endpoint;

/// Raft messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_MESSAGES: usize = 4096;

/// The actor: routes outbound raft messages to per-peer sender tasks; snapshots get a
/// stream (and task) of their own.
pub struct TransportActor {
    queues: HashMap<u64, mpsc::Sender<Bytes>>,
    /// This member's own questions to peers waiting for their answers.
    asks: Asks<tokio::sync::oneshot::Sender<PeerAnswer>>,
    /// What serves peers' requests (set once the services exist).
    server: Option<Arc<dyn PeerServer>>,
    peers: HashMap<u64, Peer>,
    endpoint: quinn::Endpoint,
    hello: Bytes,
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    /// Where peers' announced client URLs are kept (MemberList).
    state: Arc<crate::state::NodeState>,
    /// When each peer last opened a stream to this member (its Hello), for its sender task.
    hellos: HashMap<u64, watch::Sender<Option<tokio::time::Instant>>>,
    /// Who may open streams to this member (shared with the accept loop).
    members: Arc<std::sync::RwLock<PeerSets>>,
    stop: watch::Receiver<bool>,
    /// The clients' runtime (tokio's workers), where snapshot sends run: exporting the store
    /// must not hold the consensus thread's raft messages back, and a panic there fails the
    /// snapshot instead of stopping the member.
    workers: tokio::runtime::Handle,
}

/// Refused handshakes from one address are logged at warn at most this often.
const REJECTION_WARN_EVERY: Duration = Duration::from_secs(60);

impl TransportActor {
    /// Starts the transport: a sender task per peer in `peers` (member ID -> address) and the
    /// accept loop on `endpoint`, all stopping when `stop` turns true, on the calling thread's
    /// runtime; snapshot sends run on `workers`. This member's identity comes from `state`; its
    /// Hello announces `client_urls`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        endpoint: quinn::Endpoint,
        state: Arc<crate::state::NodeState>,
        client_urls: Vec<String>,
        peers: &[Peer],
        store: Arc<MvccStore>,
        consensus: Addr<ConsensusActor>,
        stop: watch::Receiver<bool>,
        workers: tokio::runtime::Handle,
    ) -> Addr<TransportActor> {
        let (member_id, cluster_id) = (state.member_id.0, state.cluster_id.0);
        let hello = core::hello_frame(cluster_id, member_id, client_urls);
        let members = Arc::new(std::sync::RwLock::new(PeerSets::new(
            peers.iter().map(|p| p.id),
            member_id,
        )));
        let ctx = Context::<TransportActor>::new();
        let me = ctx.address();
        state.spawn_essential(
            "the peer listener",
            accept_loop(
                endpoint.clone(),
                cluster_id,
                member_id,
                members.clone(),
                store.clone(),
                consensus.clone(),
                me,
                state.clone(),
                stop.clone(),
            ),
        );
        let mut actor = TransportActor {
            queues: HashMap::new(),
            asks: Asks::default(),
            server: None,
            peers: HashMap::new(),
            endpoint,
            hello,
            store,
            consensus,
            state,
            hellos: HashMap::new(),
            members,
            stop,
            workers,
        };
        for p in peers {
            actor.add_peer(p.clone());
        }
        ctx.run(actor)
    }
}

/// A peer opened a stream to this member; its Hello announced its client URLs.
#[derive(Message)]
#[rtype(result = "()")]
struct PeerClientUrls(u64, Vec<String>);

impl Handler<PeerClientUrls> for TransportActor {
    type Result = ();

    fn handle(&mut self, m: PeerClientUrls, _: &mut Context<Self>) {
        if let Some(h) = self.hellos.get(&m.0) {
            h.send_replace(Some(tokio::time::Instant::now()));
        }
        self.state.set_client_urls(m.0, m.1);
    }
}

impl Actor for TransportActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        // Questions whose askers gave up are forgotten.
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.asks.expire(std::time::Instant::now());
        });
    }
}

/// Sent by consensus with raft messages for peers (a Ready's `messages` at once,
/// `persisted_messages` after the WAL fsync). Delivery is best effort.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendMessages(pub Vec<Message>);

impl Handler<SendMessages> for TransportActor {
    type Result = ();

    fn handle(&mut self, m: SendMessages, _: &mut Context<Self>) {
        for msg in m.0 {
            let to = msg.to;
            let (Some(q), Some(peer)) = (self.queues.get(&to), self.peers.get(&to)) else {
                tracing::debug!(to = %MemberId(to), "message for an unknown member dropped");
                continue;
            };
            match core::outbound(msg) {
                Some(Outbound::Snapshot(msg)) => {
                    self.workers.spawn(send_snapshot(
                        self.endpoint.clone(),
                        peer.clone(),
                        self.hello.clone(),
                        msg,
                        self.store.clone(),
                        self.consensus.clone(),
                    ));
                }
                Some(Outbound::Frame(f)) => {
                    let full = q.try_send(f).is_err();
                    if full {
                        self.consensus.do_send(Unreachable(to));
                    }
                }
                None => {}
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps a stream to peer `id` open and writes its queued messages; reconnects with backoff.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    endpoint: quinn::Endpoint,
    peer: Peer,
    mut rx: mpsc::Receiver<Bytes>,
    mut peer_hello: watch::Receiver<Option<tokio::time::Instant>>,
    hello: Bytes,
    consensus: Addr<ConsensusActor>,
    state: Arc<crate::state::NodeState>,
    mut stop: watch::Receiver<bool>,
) {
    let (id, addr) = (peer.id, peer.addr);
    let mut backoff = Backoff::default();
    loop {
        if rx.is_closed() {
            // The member was removed, or moved to another address (a new task took over).
            return;
        }
        let stream = async {
            let conn = endpoint
                .connect(addr, &peer.host)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| match tls::remote_tls_error(&e) {
                    Some(text) => {
                        tracing::warn!(to = %MemberId(id), %addr, "{text}");
                        text
                    }
                    None => e.to_string(),
                })?;
            let send = conn.open_uni().await.map_err(|e| e.to_string())?;
            let mut w = FramedWrite::new(send, frame::codec(MAX_PEER_FRAME_BYTES));
            w.send(hello.clone()).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, w))
        };
        let connected = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = tokio::time::timeout(Duration::from_secs(2), stream) => r.map_err(|_| "connect timed out".to_owned()).and_then(|r| r),
        };
        let (conn, mut w) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = %MemberId(id), %addr, error = %e, "peer unreachable");
                consensus.do_send(Unreachable(id));
                // Messages queued for an unreachable peer are stale by the time it returns.
                while rx.try_recv().is_ok() {}
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(backoff.failed()) => {}
                }
                continue;
            }
        };
        tracing::info!(peer = %MemberId(id), %addr, "connected to peer");
        let connected_at = tokio::time::Instant::now();
        peer_hello.mark_unchanged();
        // Kept for a connection the peer then refuses (see below).
        let mut refused_backoff = backoff;
        backoff.reset();
        let to = MemberId(id).to_string();
        let sent = metrics::counter!(crate::metrics::PEER_SENT_BYTES, "To" => to.clone());
        // Registered (at 0) as soon as the peer is known, so rate() has data before a failure.
        metrics::counter!(crate::metrics::PEER_SENT_FAILURES, "To" => to.clone()).increment(0);
        let mut sampled = tokio::time::Instant::now();
        loop {
            let b = tokio::select! {
                _ = stopped(&mut stop) => {
                    conn.close(0u32.into(), b"shutdown");
                    return;
                }
                Ok(()) = peer_hello.changed() => {
                    let at = *peer_hello.borrow_and_update();
                    if at.is_some_and(|t| core::peer_restarted(connected_at.into_std(), t.into_std())) {
                        tracing::info!(peer = %MemberId(id), "peer reconnected to us: replacing the connection to it");
                        conn.close(0u32.into(), b"peer restarted");
                        break;
                    }
                    continue;
                }
                b = rx.recv() => match b { Some(b) => b, None => return },
            };
            // Each frame is its payload plus the 4-byte length.
            sent.increment(b.len() as u64 + 4);
            let mut ok = w.feed(b).await.is_ok();
            while ok && let Ok(b) = rx.try_recv() {
                sent.increment(b.len() as u64 + 4);
                ok = w.feed(b).await.is_ok();
            }
            if sampled.elapsed() >= Duration::from_secs(1) {
                sampled = tokio::time::Instant::now();
                sample_connection(&conn, &to);
            }
            if !ok || SinkExt::<Bytes>::flush(&mut w).await.is_err() {
                metrics::counter!(crate::metrics::PEER_SENT_FAILURES, "To" => to.clone())
                    .increment(1);
                consensus.do_send(Unreachable(id));
                match conn.close_reason().as_ref().and_then(tls::remote_tls_error) {
                    // TLS 1.3: the dialer finishes its handshake before the peer has checked
                    // its certificate, so a refusal arrives as the connection's close. It is a
                    // failed connect: back off as for one, instead of redialing at once.
                    Some(text) => {
                        tracing::warn!(to = %MemberId(id), %addr, "{text}");
                        while rx.try_recv().is_ok() {}
                        tokio::select! {
                            _ = stopped(&mut stop) => return,
                            _ = tokio::time::sleep(refused_backoff.failed()) => {}
                        }
                        backoff = refused_backoff;
                    }
                    None if removed_by(&conn) => {
                        state.fail(crate::actors::consensus::REMOVED.to_owned());
                        return;
                    }
                    None => tracing::info!(peer = %MemberId(id), "lost the stream to peer"),
                }
                break;
            }
        }
    }
}

/// Whether the peer closed `conn` because this member was removed from the cluster.
fn removed_by(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.reason.as_ref() == REMOVED_REASON
    )
}

/// Records QUIC's view of the connection to peer `to` (hex ID): RTT estimate, packets lost,
/// congestion window.
fn sample_connection(conn: &quinn::Connection, to: &str) {
    use crate::metrics as m;
    metrics::histogram!(m::PEER_RTT, "To" => to.to_owned()).record(conn.rtt().as_secs_f64());
    let path = conn.stats().path;
    metrics::counter!(m::QUIC_LOST_PACKETS, "To" => to.to_owned()).absolute(path.lost_packets);
    metrics::gauge!(m::QUIC_CWND, "To" => to.to_owned()).set(path.cwnd as f64);
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    endpoint: quinn::Endpoint,
    cluster_id: u64,
    member_id: u64,
    known: Arc<std::sync::RwLock<PeerSets>>,
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    transport: Addr<TransportActor>,
    state: Arc<crate::state::NodeState>,
    mut stop: watch::Receiver<bool>,
) {
    // A refused peer redials about once a second: warn once a minute per address, the rest at
    // debug.
    let warned: Arc<std::sync::Mutex<HashMap<std::net::SocketAddr, tokio::time::Instant>>> =
        Arc::default();
    loop {
        let incoming = tokio::select! {
            _ = stopped(&mut stop) => {
                endpoint.close(0u32.into(), b"shutdown");
                return;
            }
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let (consensus, known, store, transport, warned, state) = (
            consensus.clone(),
            known.clone(),
            store.clone(),
            transport.clone(),
            warned.clone(),
            state.clone(),
        );
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // A peer without a valid certificate ends here (mutual TLS), as does a
                    // handshake cut short by a restart.
                    let now = tokio::time::Instant::now();
                    let first = {
                        let mut w = warned.lock().unwrap_or_else(|p| p.into_inner());
                        w.retain(|_, at| now.duration_since(*at) < REJECTION_WARN_EVERY);
                        let first = !w.contains_key(&remote);
                        if first {
                            w.insert(remote, now);
                        }
                        first
                    };
                    if first {
                        tracing::warn!(%remote, error = %e, "rejected peer connection: TLS handshake failed");
                    } else {
                        tracing::debug!(%remote, error = %e, "rejected peer connection: TLS handshake failed");
                    }
                    return;
                }
            };
            // A member joining the cluster asks for the member list on a bidirectional stream.
            let (c, st) = (conn.clone(), state.clone());
            tokio::spawn(async move {
                while let Ok((send, recv)) = c.accept_bi().await {
                    tokio::spawn(join::answer(send, recv, st.clone()));
                }
            });
            while let Ok(recv) = conn.accept_uni().await {
                tokio::spawn(read_stream(
                    recv,
                    conn.clone(),
                    cluster_id,
                    member_id,
                    known.clone(),
                    store.clone(),
                    consensus.clone(),
                    transport.clone(),
                    state.clone(),
                ));
            }
        });
    }
}

/// Reads one peer stream: a Hello, then raft messages for this member, or one snapshot.
#[allow(clippy::too_many_arguments)]
async fn read_stream(
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    cluster_id: u64,
    member_id: u64,
    known: Arc<std::sync::RwLock<PeerSets>>,
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    transport: Addr<TransportActor>,
    state: Arc<crate::state::NodeState>,
) {
    let remote = conn.remote_address();
    let reject = |why: Refusal| {
        if let Refusal::Removed(id) = why {
            tracing::warn!(%remote, peer = %MemberId(id), "rejected stream from a removed member");
            conn.close(2u32.into(), REMOVED_REASON);
        } else {
            tracing::warn!(%remote, reason = %why, "rejected peer connection");
            conn.close(1u32.into(), why.to_string().as_bytes());
        }
    };
    let mut r = FramedRead::new(recv, frame::codec(MAX_PEER_FRAME_BYTES));
    let first = match r.next().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => return reject(Refusal::BadFrame(format!("bad frame: {e}"))),
        None => return,
    };
    let admitted = {
        let sets = known.read().unwrap_or_else(|p| p.into_inner());
        core::admit(&first, cluster_id, &sets)
    };
    let hello = match admitted {
        Ok(h) => h,
        Err(why) => return reject(why),
    };
    transport.do_send(PeerClientUrls(hello.member_id, hello.client_urls));
    /// Counts the stream as open while it is read.
    struct Open(Arc<crate::state::NodeState>, u64);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.peer_stream(self.1, false);
            if !self.0.peer_connected(self.1) {
                tracing::info!(peer = %MemberId(self.1), "peer disconnected");
            }
        }
    }
    state.peer_stream(hello.member_id, true);
    let _open = Open(state.clone(), hello.member_id);
    let received = metrics::counter!(
        crate::metrics::PEER_RECEIVED_BYTES,
        "From" => MemberId(hello.member_id).to_string()
    );
    while let Some(next) = r.next().await {
        let b = match next {
            Ok(b) => {
                received.increment(b.len() as u64 + 4);
                b
            }
            // The length codec reports oversized frames as InvalidData; anything else is the
            // connection going away (a peer stopping or restarting), which is not an offence.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return reject(Refusal::BadFrame(format!("bad frame: {e}")));
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "peer stream ended");
                return;
            }
        };
        let removed = known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .removed
            .contains(&hello.member_id);
        if removed {
            // Removed while connected: tell it, so it stops (`reject` logs it).
            return reject(Refusal::Removed(hello.member_id));
        }
        match core::decode(b.freeze(), hello.member_id, member_id) {
            // Raft tolerates loss: if consensus is saturated, drop rather than block the stream.
            Ok(Inbound::Raft(msg)) => {
                let _ = consensus.try_send(Step(msg));
            }
            Ok(Inbound::Request(request)) => transport.do_send(Asked {
                from: hello.member_id,
                request,
            }),
            Ok(Inbound::Answer(a)) => transport.do_send(Answered(a)),
            Ok(Inbound::SnapshotBegin(msg)) => {
                let index = msg.get_snapshot().get_metadata().index;
                tracing::info!(from = %MemberId(hello.member_id), index, "receiving a snapshot");
                if let Err(e) = receive_snapshot(&mut r, msg, store.clone(), &consensus).await {
                    tracing::warn!(error = %e, "snapshot receive failed");
                }
                return;
            }
            Err(why) => return reject(why),
        }
    }
}
