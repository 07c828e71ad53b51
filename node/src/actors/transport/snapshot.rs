//! Raft snapshots between peers: each transfer uses a QUIC stream of its own (so raft's
//! messages never queue behind it on a stream; its packets are still read and decrypted on
//! the consensus thread, beside raft) carrying the leader's MsgSnapshot, then chunks of the
//! MVCC store (`etch_storage::mvcc::snapshot`), then an end marker.

use super::*;
use crate::actors::consensus::{InstallSnapshot, SnapshotSent};
use etch_protocol::ids::MemberId;
use prost::Message as _;
use protobuf::Message as _;

/// Streams a snapshot to one peer on a connection and stream of its own: the MsgSnapshot,
/// then the store exported from a consistent fjall snapshot (on a blocking thread), then the
/// end marker. Reports the outcome to raft-rs.
pub(super) async fn send_snapshot(
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
    };
    // A panic while sending fails this snapshot (raft-rs then probes the follower again and
    // may send another) instead of leaving the follower waiting for it forever.
    use futures::FutureExt;
    let result = std::panic::AssertUnwindSafe(result)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(format!("panicked: {}", crate::state::panic_message(&*p))));
    match &result {
        Ok(bytes) => tracing::info!(to = %MemberId(to), index, bytes, "snapshot sent"),
        Err(e) => {
            tracing::warn!(to = %MemberId(to), index, error = %e, "snapshot send failed")
        }
    }
    consensus.do_send(SnapshotSent {
        to,
        ok: result.is_ok(),
    });
}

/// Receives a snapshot stream into a fresh database, then hands it to consensus.
pub(super) async fn receive_snapshot(
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
