//! The peer transport actor: raft messages between members over QUIC (quinn).
//!
//! One QUIC connection per peer direction; each side opens a long-lived unidirectional stream
//! to each peer and writes length-prefixed frames on it (the native frame format of
//! `etch_protocol::frame`, payload `etchpb.PeerFrame`): a `PeerHello{cluster_id, member_id,
//! protocol_version}` first, then one raft message per frame. A receiver refuses a stream whose
//! Hello names another cluster (a member started with another `--initial-cluster-token`), and
//! closes the connection on any frame that does not decode: peer input is checked, never
//! trusted to be well-formed, and never panics the node.
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
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use etch_protocol::etchpb::{
    PeerAnswer, PeerFrame, PeerHello, PeerRequest, peer_answer, peer_frame::Body, peer_request,
};
use etch_protocol::frame;

use etch_storage::mvcc::MvccStore;

use crate::actors::consensus::{ConsensusActor, Step, Unreachable};
use crate::config::{Peer, PeerTls};

pub use crate::tls::peer::{PEER_ALPN, self_signed};
use requests::{Answered, Asked};
pub use requests::{Ask, PeerServer, SetPeerServer, answer_error};
use snapshot::{receive_snapshot, send_snapshot};

mod endpoint;
pub mod join;
mod members;
use members::REMOVED_REASON;
pub use members::{PeerSets, SetMembers};
mod requests;
mod snapshot;

use crate::tls::peer as tls;
pub use endpoint::endpoint;

/// Peer protocol version spoken by this build.
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// Largest peer frame accepted: 16 MiB (a raft append carries up to 1 MiB of entries, and one
/// entry may be up to `--max-request-bytes`).
pub const MAX_PEER_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Raft messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_MESSAGES: usize = 4096;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The actor: routes outbound raft messages to per-peer sender tasks; snapshots get a
/// stream (and task) of their own.
pub struct TransportActor {
    queues: HashMap<u64, mpsc::Sender<Bytes>>,
    /// This member's own questions to peers waiting for their answers, by question id.
    asks: HashMap<u64, tokio::sync::oneshot::Sender<PeerAnswer>>,
    next_ask: u64,
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
}

/// A peer that opens a stream to this member more than this long after this member's own
/// connection to it was made has restarted (or lost its link): that connection is stale too
/// and is replaced at once, instead of after QUIC's idle timeout. Streams opened within it are
/// the two sides connecting at about the same time, which must not make them redial each
/// other forever.
const REDIAL_AFTER_PEER_HELLO: Duration = Duration::from_secs(1);

/// Refused handshakes from one address are logged at warn at most this often.
const REJECTION_WARN_EVERY: Duration = Duration::from_secs(60);

impl TransportActor {
    /// Starts the transport: a sender task per peer in `peers` (member ID -> address) and the
    /// accept loop on `endpoint`, all stopping when `stop` turns true. This member's identity
    /// comes from `state`; its Hello announces `client_urls`.
    pub fn start(
        endpoint: quinn::Endpoint,
        state: Arc<crate::state::NodeState>,
        client_urls: Vec<String>,
        peers: &[Peer],
        store: Arc<MvccStore>,
        consensus: Addr<ConsensusActor>,
        stop: watch::Receiver<bool>,
    ) -> Addr<TransportActor> {
        let (member_id, cluster_id) = (state.member_id.0, state.cluster_id.0);
        let hello = frame::encode_payload_of(&PeerFrame {
            body: Some(Body::Hello(PeerHello {
                cluster_id,
                member_id,
                protocol_version: PEER_PROTOCOL_VERSION,
                client_urls,
            })),
        });
        let members = Arc::new(std::sync::RwLock::new(PeerSets {
            known: peers.iter().map(|p| p.id).chain([member_id]).collect(),
            removed: Default::default(),
        }));
        let ctx = Context::<TransportActor>::new();
        let me = ctx.address();
        tokio::spawn(accept_loop(
            endpoint.clone(),
            cluster_id,
            member_id,
            members.clone(),
            store.clone(),
            consensus.clone(),
            me,
            state.clone(),
            stop.clone(),
        ));
        let mut actor = TransportActor {
            queues: HashMap::new(),
            asks: HashMap::new(),
            next_ask: 1,
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
            let Some(q) = self.queues.get(&to) else {
                tracing::debug!(to = %MemberId(to), "message for an unknown member dropped");
                continue;
            };
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                if let Some(peer) = self.peers.get(&to) {
                    tokio::spawn(send_snapshot(
                        self.endpoint.clone(),
                        peer.clone(),
                        self.hello.clone(),
                        msg,
                        self.store.clone(),
                        self.consensus.clone(),
                    ));
                }
                continue;
            }
            let Ok(raft) = msg.write_to_bytes() else {
                continue;
            };
            let f = frame::encode_payload_of(&PeerFrame {
                body: Some(Body::Raft(raft.into())),
            });
            if q.try_send(f).is_err() {
                self.consensus.do_send(Unreachable(to));
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
    let mut backoff = Duration::from_millis(50);
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
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(peer = %MemberId(id), %addr, "connected to peer");
        let connected_at = tokio::time::Instant::now();
        peer_hello.mark_unchanged();
        // Kept for a connection the peer then refuses (see below).
        let refused_backoff = backoff;
        backoff = Duration::from_millis(50);
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
                    if at.is_some_and(|t| t > connected_at + REDIAL_AFTER_PEER_HELLO) {
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
                            _ = tokio::time::sleep(refused_backoff) => {}
                        }
                        backoff = (refused_backoff * 2).min(MAX_BACKOFF);
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
    let reject = |why: String| {
        tracing::warn!(%remote, reason = %why, "rejected peer connection");
        conn.close(1u32.into(), why.as_bytes());
    };
    let mut r = FramedRead::new(recv, frame::codec(MAX_PEER_FRAME_BYTES));
    let hello = match r.next().await {
        Some(Ok(b)) => match PeerFrame::decode(&b[..]).ok().and_then(|f| f.body) {
            Some(Body::Hello(h)) => h,
            _ => return reject("first frame is not a PeerHello".into()),
        },
        Some(Err(e)) => return reject(format!("bad frame: {e}")),
        None => return,
    };
    if hello.protocol_version != PEER_PROTOCOL_VERSION {
        return reject(format!(
            "peer protocol version {} not supported",
            hello.protocol_version
        ));
    }
    if hello.cluster_id != cluster_id {
        return reject(format!(
            "cluster ID mismatch: peer {:x} is in cluster {:x}, this member is in {:x}",
            hello.member_id, hello.cluster_id, cluster_id
        ));
    }
    let (is_known, is_removed) = {
        let sets = known.read().unwrap_or_else(|p| p.into_inner());
        (
            sets.known.contains(&hello.member_id),
            sets.removed.contains(&hello.member_id),
        )
    };
    if is_removed {
        tracing::warn!(%remote, peer = %MemberId(hello.member_id), "rejected stream from a removed member");
        conn.close(2u32.into(), REMOVED_REASON);
        return;
    }
    if !is_known {
        return reject(format!(
            "member {:x} is not in this cluster",
            hello.member_id
        ));
    }
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
                return reject(format!("bad frame: {e}"));
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
            // Removed while connected: tell it, so it stops (etcd answers a removed member's
            // messages with "removed member").
            tracing::info!(peer = %MemberId(hello.member_id), "closing the stream of a removed member");
            conn.close(2u32.into(), REMOVED_REASON);
            return;
        }
        let raft = match PeerFrame::decode(&b[..]).ok().and_then(|f| f.body) {
            Some(Body::Raft(raft)) => raft,
            Some(Body::Request(q)) => {
                transport.do_send(Asked {
                    from: hello.member_id,
                    request: q,
                });
                continue;
            }
            Some(Body::Answer(a)) => {
                transport.do_send(Answered(a));
                continue;
            }
            Some(Body::SnapshotBegin(raft)) => {
                let msg = match Message::parse_from_bytes(&raft) {
                    Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot && m.to == member_id => m,
                    _ => return reject("bad snapshot message".into()),
                };
                let index = msg.get_snapshot().get_metadata().index;
                tracing::info!(from = %MemberId(hello.member_id), index, "receiving a snapshot");
                if let Err(e) = receive_snapshot(&mut r, msg, store.clone(), &consensus).await {
                    tracing::warn!(error = %e, "snapshot receive failed");
                }
                return;
            }
            _ => return reject("frame is not a raft message".into()),
        };
        let msg = match Message::parse_from_bytes(&raft) {
            Ok(m) => m,
            Err(e) => return reject(format!("raft message does not decode: {e}")),
        };
        if let Err(why) = check_sender(&msg, hello.member_id, member_id) {
            return reject(why);
        }
        // Raft tolerates loss: if consensus is saturated, drop rather than block the stream.
        let _ = consensus.try_send(Step(msg));
    }
}

/// Whether `msg`, read on the stream peer `stream_of` opened to this member `me`, may be
/// stepped: it must be addressed to this member and come from that peer, except a
/// `MsgTransferLeader`, which a follower forwards to its leader with the transferee as sender
/// (raft-rs `RawNode::transfer_leader` sets `from`, and `send` keeps a sender already set).
///
/// # Errors
/// Why the message does not belong on this stream.
fn check_sender(msg: &Message, stream_of: u64, me: u64) -> Result<(), String> {
    let forwarded = msg.get_msg_type() == MessageType::MsgTransferLeader;
    if msg.to != me || (msg.from != stream_of && !forwarded) {
        return Err(format!(
            "message from {:x} to {:x} on the stream of {:x}",
            msg.from, msg.to, stream_of
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_leader_transfer_keeps_its_sender() {
        let msg = |t: MessageType, from: u64, to: u64| {
            let mut m = Message::default();
            m.set_msg_type(t);
            m.from = from;
            m.to = to;
            m
        };
        // Member 3 forwards member 1's transfer request to the leader 2.
        assert!(check_sender(&msg(MessageType::MsgTransferLeader, 1, 2), 3, 2).is_ok());
        // Anything else must come from the stream's own member, to this member.
        assert!(check_sender(&msg(MessageType::MsgAppend, 1, 2), 3, 2).is_err());
        assert!(check_sender(&msg(MessageType::MsgAppend, 3, 2), 3, 2).is_ok());
        assert!(check_sender(&msg(MessageType::MsgTransferLeader, 1, 4), 3, 2).is_err());
    }
}
