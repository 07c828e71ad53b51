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

pub(crate) mod tls;

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

use crate::config::{Peer, PeerTls};
use crate::consensus::{ConsensusActor, InstallSnapshot, SnapshotSent, Step, Unreachable};

pub use tls::{PEER_ALPN, self_signed};

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
    /// Forwarded requests waiting for the leader's answer, by forward id.
    forwards: HashMap<u64, tokio::sync::oneshot::Sender<etch_protocol::etchpb::Frame>>,
    next_forward: u64,
    /// This member's own questions to peers waiting for their answers, by question id.
    asks: HashMap<u64, tokio::sync::oneshot::Sender<PeerAnswer>>,
    next_ask: u64,
    /// The service, for requests forwarded to this member (set once it exists).
    service: Option<Arc<crate::service::Service>>,
    peers: HashMap<u64, Peer>,
    endpoint: quinn::Endpoint,
    hello: Bytes,
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    /// Where peers' announced client URLs are kept (MemberList).
    state: Arc<crate::consensus::NodeState>,
    /// When each peer last opened a stream to this member (its Hello), for its sender task.
    hellos: HashMap<u64, watch::Sender<Option<tokio::time::Instant>>>,
}

/// A peer that opens a stream to this member more than this long after this member's own
/// connection to it was made has restarted (or lost its link): that connection is stale too
/// and is replaced at once, instead of after QUIC's idle timeout. Streams opened within it are
/// the two sides connecting at about the same time, which must not make them redial each
/// other forever.
const REDIAL_AFTER_PEER_HELLO: Duration = Duration::from_secs(1);

/// Refused handshakes from one address are logged at warn at most this often.
const REJECTION_WARN_EVERY: Duration = Duration::from_secs(60);

/// Builds the QUIC endpoint on `socket`. With `tls`, the member presents its certificate as
/// server and client, verifies peers against the trusted CA when one is given, and requires
/// client certificates with `client_cert_auth` (etcd's `--peer-*` flags). Without, it uses an
/// auto-generated certificate and accepts peers' (etcd `--peer-auto-tls`).
///
/// # Errors
/// Unreadable or invalid certificate files, socket errors.
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: Option<&PeerTls>,
) -> std::io::Result<quinn::Endpoint> {
    let other = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // With peer certificate files, the certificate is reloaded when they change (rotation
    // without restart), for both directions; a generated one never changes.
    let cert = Arc::new(match tls {
        Some(t) => {
            crate::api::tls::ReloadingCert::load(&t.cert_file, &t.key_file, provider.clone())?
        }
        None => crate::api::tls::ReloadingCert::self_signed(provider.clone())?,
    });
    let roots = match tls.and_then(|t| t.trusted_ca_file.as_ref()) {
        Some(ca) => Some(Arc::new(tls::load_roots(ca)?)),
        None => None,
    };
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?;
    let crls = match tls.and_then(|t| t.crl_file.as_ref()) {
        Some(f) => tls::load_crls(f)?,
        None => Vec::new(),
    };
    let server = match (&roots, tls.filter(|t| t.client_cert_auth)) {
        (Some(roots), Some(t)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .with_crls(crls.clone())
            // Go checks the leaf's serial against the CRL; a CRL of another issuer says
            // nothing about it.
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| other(&e))?;
            server.with_client_cert_verifier(Arc::new(tls::AllowedPeers {
                inner: verifier,
                allowed_cn: t.allowed_cn.clone(),
                allowed_hostname: t.allowed_hostname.clone(),
            }))
        }
        _ => server.with_no_client_auth(),
    };
    let mut server = server.with_cert_resolver(cert.clone());
    server.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(&e))?;
    let client = match &roots {
        Some(roots) if !crls.is_empty() => client.with_webpki_verifier(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| other(&e))?,
        ),
        Some(roots) => client.with_root_certificates(roots.clone()),
        None => client
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::AutoTlsVerifier::new())),
    };
    let mut client = if tls.is_some() {
        client.with_client_cert_resolver(cert)
    } else {
        client.with_no_client_auth()
    };
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(5_000).into()));
    let transport = Arc::new(transport);
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| other(&e))?,
    ));
    server_cfg.transport_config(transport.clone());
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| other(&e))?,
    ));
    client_cfg.transport_config(transport);
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(client_cfg);
    Ok(ep)
}

impl TransportActor {
    /// Starts the transport: a sender task per peer in `peers` (member ID -> address) and the
    /// accept loop on `endpoint`, all stopping when `stop` turns true. This member's identity
    /// comes from `state`; its Hello announces `client_urls`.
    pub fn start(
        endpoint: quinn::Endpoint,
        state: Arc<crate::consensus::NodeState>,
        client_urls: Vec<String>,
        peers: &[Peer],
        store: Arc<MvccStore>,
        consensus: Addr<ConsensusActor>,
        stop: watch::Receiver<bool>,
    ) -> Addr<TransportActor> {
        let (member_id, cluster_id) = (state.member_id, state.cluster_id);
        let hello = frame::encode_payload_of(&PeerFrame {
            body: Some(Body::Hello(PeerHello {
                cluster_id,
                member_id,
                protocol_version: PEER_PROTOCOL_VERSION,
                client_urls,
            })),
        });
        let mut queues = HashMap::new();
        let mut hellos = HashMap::new();
        for p in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
            queues.insert(p.id, tx);
            let (hello_tx, hello_rx) = watch::channel(None);
            hellos.insert(p.id, hello_tx);
            tokio::spawn(send_loop(
                endpoint.clone(),
                p.clone(),
                rx,
                hello_rx,
                hello.clone(),
                consensus.clone(),
                stop.clone(),
            ));
        }
        let known: Vec<u64> = peers.iter().map(|p| p.id).collect();
        let ctx = Context::<TransportActor>::new();
        let me = ctx.address();
        tokio::spawn(accept_loop(
            endpoint.clone(),
            cluster_id,
            member_id,
            known,
            store.clone(),
            consensus.clone(),
            me,
            stop,
        ));
        let actor = TransportActor {
            queues,
            forwards: HashMap::new(),
            next_forward: 1,
            asks: HashMap::new(),
            next_ask: 1,
            service: None,
            peers: peers.iter().map(|p| (p.id, p.clone())).collect(),
            endpoint,
            hello,
            store,
            consensus,
            state,
            hellos,
        };
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
                tracing::debug!(to = %format!("{to:x}"), "message for an unknown member dropped");
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
async fn send_loop(
    endpoint: quinn::Endpoint,
    peer: Peer,
    mut rx: mpsc::Receiver<Bytes>,
    mut peer_hello: watch::Receiver<Option<tokio::time::Instant>>,
    hello: Bytes,
    consensus: Addr<ConsensusActor>,
    mut stop: watch::Receiver<bool>,
) {
    let (id, addr) = (peer.id, peer.addr);
    let mut backoff = Duration::from_millis(50);
    loop {
        let stream = async {
            let conn = endpoint
                .connect(addr, &peer.host)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| match tls::remote_tls_error(&e) {
                    Some(text) => {
                        tracing::warn!(to = %format!("{id:x}"), %addr, "{text}");
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
                tracing::debug!(peer = %format!("{id:x}"), %addr, error = %e, "peer unreachable");
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
        tracing::info!(peer = %format!("{id:x}"), %addr, "connected to peer");
        let connected_at = tokio::time::Instant::now();
        peer_hello.mark_unchanged();
        // Kept for a connection the peer then refuses (see below).
        let refused_backoff = backoff;
        backoff = Duration::from_millis(50);
        let to = format!("{id:x}");
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
                        tracing::info!(peer = %format!("{id:x}"), "peer reconnected to us: replacing the connection to it");
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
                        tracing::warn!(to = %format!("{id:x}"), %addr, "{text}");
                        while rx.try_recv().is_ok() {}
                        tokio::select! {
                            _ = stopped(&mut stop) => return,
                            _ = tokio::time::sleep(refused_backoff) => {}
                        }
                        backoff = (refused_backoff * 2).min(MAX_BACKOFF);
                    }
                    None => tracing::info!(peer = %format!("{id:x}"), "lost the stream to peer"),
                }
                break;
            }
        }
    }
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

/// Streams a snapshot to one peer on a connection and stream of its own: the MsgSnapshot,
/// then the store exported from a consistent fjall snapshot (on a blocking thread), then the
/// end marker. Reports the outcome to raft-rs.
async fn send_snapshot(
    endpoint: quinn::Endpoint,
    peer: Peer,
    hello: Bytes,
    msg: Message,
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
) {
    let to = msg.to;
    let index = msg.get_snapshot().get_metadata().index;
    let result = async {
        let raft = msg.write_to_bytes().map_err(|e| e.to_string())?;
        let conn = endpoint
            .connect(peer.addr, &peer.host)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let send = conn.open_uni().await.map_err(|e| e.to_string())?;
        let mut w = FramedWrite::new(send, frame::codec(MAX_PEER_FRAME_BYTES));
        w.send(hello).await.map_err(|e| e.to_string())?;
        let begin = PeerFrame {
            body: Some(Body::SnapshotBegin(raft.into())),
        };
        w.send(frame::encode_payload_of(&begin))
            .await
            .map_err(|e| e.to_string())?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let export = tokio::task::spawn_blocking(move || {
            store.export(|chunk| tx.blocking_send(chunk).is_ok())
        });
        let mut bytes = 0usize;
        while let Some(chunk) = rx.recv().await {
            bytes += chunk.len();
            let f = PeerFrame {
                body: Some(Body::SnapshotChunk(chunk.into())),
            };
            w.send(frame::encode_payload_of(&f))
                .await
                .map_err(|e| e.to_string())?;
        }
        export
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let end = PeerFrame {
            body: Some(Body::SnapshotEnd(true)),
        };
        w.send(frame::encode_payload_of(&end))
            .await
            .map_err(|e| e.to_string())?;
        let mut send = w.into_inner();
        send.finish().map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(60), send.stopped())
            .await
            .map_err(|_| "peer did not acknowledge the snapshot".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok::<usize, String>(bytes)
    }
    .await;
    match &result {
        Ok(bytes) => tracing::info!(to = %format!("{to:x}"), index, bytes, "snapshot sent"),
        Err(e) => {
            tracing::warn!(to = %format!("{to:x}"), index, error = %e, "snapshot send failed")
        }
    }
    consensus.do_send(SnapshotSent {
        to,
        ok: result.is_ok(),
    });
}

/// Receives a snapshot stream into a fresh database, then hands it to consensus.
async fn receive_snapshot(
    r: &mut FramedRead<quinn::RecvStream, tokio_util::codec::LengthDelimitedCodec>,
    msg: Message,
    store: Arc<MvccStore>,
    consensus: &Addr<ConsensusActor>,
) -> Result<(), String> {
    let s = store.clone();
    let mut ingest = tokio::task::spawn_blocking(move || s.begin_ingest())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    loop {
        let b = match r.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                ingest.abandon();
                return Err(format!("snapshot stream: {e}"));
            }
            None => {
                ingest.abandon();
                return Err("snapshot stream ended early".into());
            }
        };
        match PeerFrame::decode(&b[..]).ok().and_then(|f| f.body) {
            Some(Body::SnapshotChunk(chunk)) => {
                let (back, res) = tokio::task::spawn_blocking(move || {
                    let res = ingest.write_chunk(&chunk);
                    (ingest, res)
                })
                .await
                .map_err(|e| e.to_string())?;
                ingest = back;
                if let Err(e) = res {
                    ingest.abandon();
                    return Err(e.to_string());
                }
            }
            Some(Body::SnapshotEnd(_)) => {
                consensus
                    .send(InstallSnapshot { msg, ingest })
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            _ => {
                ingest.abandon();
                return Err("unexpected frame in a snapshot stream".into());
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    endpoint: quinn::Endpoint,
    cluster_id: u64,
    member_id: u64,
    known: Vec<u64>,
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    transport: Addr<TransportActor>,
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
        let (consensus, known, store, transport, warned) = (
            consensus.clone(),
            known.clone(),
            store.clone(),
            transport.clone(),
            warned.clone(),
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
    known: Vec<u64>,
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    transport: Addr<TransportActor>,
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
    if !known.contains(&hello.member_id) {
        return reject(format!(
            "member {:x} is not in this cluster",
            hello.member_id
        ));
    }
    transport.do_send(PeerClientUrls(hello.member_id, hello.client_urls));
    let received = metrics::counter!(
        crate::metrics::PEER_RECEIVED_BYTES,
        "From" => format!("{:x}", hello.member_id)
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
        let raft = match PeerFrame::decode(&b[..]).ok().and_then(|f| f.body) {
            Some(Body::Raft(raft)) => raft,
            Some(Body::ForwardRequest(f)) => {
                transport.do_send(Forwarded {
                    from: hello.member_id,
                    frame: f,
                });
                continue;
            }
            Some(Body::ForwardResponse(f)) => {
                transport.do_send(ForwardAnswered(f));
                continue;
            }
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
                tracing::info!(from = %format!("{:x}", hello.member_id), index, "receiving a snapshot");
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
        if msg.to != member_id || msg.from != hello.member_id {
            return reject(format!(
                "message from {:x} to {:x} on the stream of {:x}",
                msg.from, msg.to, hello.member_id
            ));
        }
        // Raft tolerates loss: if consensus is saturated, drop rather than block the stream.
        let _ = consensus.try_send(Step(msg));
    }
}

/// Sent by `run` once the service exists: requests forwarded to this member are served by it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetService(pub Arc<crate::service::Service>);

impl Handler<SetService> for TransportActor {
    type Result = ();
    fn handle(&mut self, m: SetService, _: &mut Context<Self>) {
        self.service = Some(m.0);
    }
}

/// Sent by the service on a follower: forward `frame` (a lease keep-alive or time-to-live) to
/// the leader `to`. Replies with a receiver for the leader's answer (dropped if it never comes;
/// the caller bounds the wait).
#[derive(Message)]
#[rtype(result = "Option<tokio::sync::oneshot::Receiver<etch_protocol::etchpb::Frame>>")]
pub struct Forward {
    /// The leader.
    pub to: u64,
    /// The request (its id is replaced).
    pub frame: etch_protocol::etchpb::Frame,
}

impl Handler<Forward> for TransportActor {
    type Result = Option<tokio::sync::oneshot::Receiver<etch_protocol::etchpb::Frame>>;
    fn handle(&mut self, mut m: Forward, _: &mut Context<Self>) -> Self::Result {
        let q = self.queues.get(&m.to)?;
        let id = self.next_forward;
        self.next_forward += 1;
        m.frame.id = id;
        let f = frame::encode_payload_of(&PeerFrame {
            body: Some(Body::ForwardRequest(m.frame)),
        });
        q.try_send(f).ok()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Forgotten senders of answers that never came are dropped with the map entry when
        // the caller gives up; bound the map so a silent leader cannot grow it without end.
        if self.forwards.len() > 100_000 {
            self.forwards.clear();
        }
        self.forwards.insert(id, tx);
        Some(rx)
    }
}

/// A request forwarded to this member by `from`.
#[derive(Message)]
#[rtype(result = "()")]
struct Forwarded {
    from: u64,
    frame: etch_protocol::etchpb::Frame,
}

impl Handler<Forwarded> for TransportActor {
    type Result = ();
    fn handle(&mut self, m: Forwarded, ctx: &mut Context<Self>) {
        let Some(service) = self.service.clone() else {
            return;
        };
        let Some(q) = self.queues.get(&m.from).cloned() else {
            return;
        };
        ctx.spawn(
            async move {
                let resp = crate::api::native::handle_forwarded(&service, m.frame).await;
                let f = frame::encode_payload_of(&PeerFrame {
                    body: Some(Body::ForwardResponse(resp)),
                });
                let _ = q.send(f).await;
            }
            .into_actor(self),
        );
    }
}

/// The leader's answer to a forwarded request.
#[derive(Message)]
#[rtype(result = "()")]
struct ForwardAnswered(etch_protocol::etchpb::Frame);

impl Handler<ForwardAnswered> for TransportActor {
    type Result = ();
    fn handle(&mut self, m: ForwardAnswered, _: &mut Context<Self>) {
        if let Some(tx) = self.forwards.remove(&m.0.id) {
            let _ = tx.send(m.0);
        }
    }
}

/// Sent by this member's own checks (the corruption check): ask peer `to` a question. Replies
/// with a receiver for the answer (dropped if it never comes; the caller bounds the wait), or
/// `None` for an unknown peer or a full queue.
#[derive(Message)]
#[rtype(result = "Option<tokio::sync::oneshot::Receiver<PeerAnswer>>")]
pub struct Ask {
    /// The peer.
    pub to: u64,
    /// The question.
    pub body: peer_request::Body,
}

impl Handler<Ask> for TransportActor {
    type Result = Option<tokio::sync::oneshot::Receiver<PeerAnswer>>;
    fn handle(&mut self, m: Ask, _: &mut Context<Self>) -> Self::Result {
        let q = self.queues.get(&m.to)?;
        let id = self.next_ask;
        self.next_ask += 1;
        let f = frame::encode_payload_of(&PeerFrame {
            body: Some(Body::Request(PeerRequest {
                id,
                body: Some(m.body),
            })),
        });
        q.try_send(f).ok()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Answers that never came leave their senders behind; callers ask rarely (one check
        // per interval), so a bound only guards against a peer that never answers.
        if self.asks.len() > 10_000 {
            self.asks.clear();
        }
        self.asks.insert(id, tx);
        Some(rx)
    }
}

/// A peer's question to this member.
#[derive(Message)]
#[rtype(result = "()")]
struct Asked {
    from: u64,
    request: PeerRequest,
}

impl Handler<Asked> for TransportActor {
    type Result = ();
    fn handle(&mut self, m: Asked, ctx: &mut Context<Self>) {
        let Some(q) = self.queues.get(&m.from).cloned() else {
            return;
        };
        let service = self.service.clone();
        ctx.spawn(
            async move {
                let body = match (m.request.body, service) {
                    (Some(peer_request::Body::HashKv(r)), Some(svc)) => {
                        match svc.peer_hash_kv(r.revision).await {
                            Ok(h) => peer_answer::Body::HashKv(h),
                            Err(e) => answer_error(&e),
                        }
                    }
                    (None, _) => answer_error(&crate::error::ApiError::Unimplemented),
                    (_, None) => answer_error(&crate::error::ApiError::Stopped),
                };
                let f = frame::encode_payload_of(&PeerFrame {
                    body: Some(Body::Answer(PeerAnswer {
                        id: m.request.id,
                        body: Some(body),
                    })),
                });
                let _ = q.send(f).await;
            }
            .into_actor(self),
        );
    }
}

fn answer_error(e: &crate::error::ApiError) -> peer_answer::Body {
    let (code, message) = crate::api::errors::status_of(e);
    peer_answer::Body::Error(etch_protocol::etchpb::Error {
        code: code as u32,
        message: message.to_owned(),
    })
}

/// A peer's answer to this member's question.
#[derive(Message)]
#[rtype(result = "()")]
struct Answered(PeerAnswer);

impl Handler<Answered> for TransportActor {
    type Result = ();
    fn handle(&mut self, m: Answered, _: &mut Context<Self>) {
        if let Some(tx) = self.asks.remove(&m.0.id) {
            let _ = tx.send(m.0);
        }
    }
}
