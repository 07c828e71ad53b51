//! How a member started with `--initial-cluster-state=existing` learns whom it joins (etcd's
//! `GetClusterFromRemotePeers` over the peer URL's `/members`): before it has a member ID it
//! opens a bidirectional stream to a peer of `--initial-cluster`, sends a Hello with cluster and
//! member ID 0 and one `PeerRequest{member_list}`, and reads one `PeerAnswer` carrying the
//! cluster ID (in the header) and the members. Its own ID is that of the member whose peer
//! URLs are its own (etcd's `ValidateClusterAndAssignIDs`).
//!
//! The answering side serves nothing else on such a stream, and only to a Hello of that exact
//! shape: the member list is what a peer may learn before it is a member.

use super::*;
use etch_protocol::etchpb::{PeerHello, PeerRequest};
use prost::Message as _;

/// Longest wait for one peer's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one join question on a bidirectional stream, from the applied membership.
pub(super) async fn answer(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    state: Arc<crate::state::NodeState>,
) {
    let mut r = FramedRead::new(recv, frame::codec(MAX_PEER_FRAME_BYTES));
    let mut w = FramedWrite::new(send, frame::codec(MAX_PEER_FRAME_BYTES));
    let read = async {
        let hello = r.next().await?.ok()?;
        let Some(Body::Hello(h)) = PeerFrame::decode(&hello[..]).ok()?.body else {
            return None;
        };
        if h.cluster_id != 0 || h.member_id != 0 || h.protocol_version != PEER_PROTOCOL_VERSION {
            return None;
        }
        let q = r.next().await?.ok()?;
        match PeerFrame::decode(&q[..]).ok()?.body {
            Some(Body::Request(PeerRequest {
                id,
                body: Some(peer_request::Body::MemberList(_)),
            })) => Some(id),
            _ => None,
        }
    };
    let Ok(Some(id)) = tokio::time::timeout(ASK_TIMEOUT, read).await else {
        return;
    };
    let m = state.membership();
    let answer = PeerAnswer {
        id,
        body: Some(peer_answer::Body::MemberList(
            etch_protocol::etcdserverpb::MemberListResponse {
                header: Some(etch_protocol::etcdserverpb::ResponseHeader {
                    cluster_id: state.cluster_id.0,
                    member_id: state.member_id.0,
                    revision: 0,
                    raft_term: state.term(),
                }),
                members: m.members,
            },
        )),
    };
    let f = frame::encode_payload_of(&PeerFrame {
        body: Some(Body::Answer(answer)),
    });
    if w.send(f).await.is_ok() {
        let _ = w.get_mut().finish();
        // Let the answer leave before the stream is dropped.
        let _ = tokio::time::timeout(ASK_TIMEOUT, w.get_mut().stopped()).await;
    }
}

/// Asks each of `peers` in turn for the cluster's member list; the first answer wins.
///
/// # Errors
/// etcd's "could not retrieve cluster information from the given URLs" when no peer answers,
/// and "failed to get raft cluster member(s) from the given URLs" for an empty list.
pub async fn fetch_members(
    endpoint: &quinn::Endpoint,
    peers: &[Peer],
) -> Result<etch_protocol::etcdserverpb::MemberListResponse, String> {
    for p in peers {
        match tokio::time::timeout(ASK_TIMEOUT, ask(endpoint, p)).await {
            Ok(Ok(r)) if r.members.is_empty() => {
                return Err("failed to get raft cluster member(s) from the given URLs".into());
            }
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => {
                tracing::warn!(addr = %p.addr, error = %e, "failed to get cluster response")
            }
            Err(_) => tracing::warn!(addr = %p.addr, "failed to get cluster response: timed out"),
        }
    }
    Err("could not retrieve cluster information from the given URLs".into())
}

async fn ask(
    endpoint: &quinn::Endpoint,
    p: &Peer,
) -> Result<etch_protocol::etcdserverpb::MemberListResponse, String> {
    let conn = endpoint
        .connect(p.addr, &p.host)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut w = FramedWrite::new(send, frame::codec(MAX_PEER_FRAME_BYTES));
    let mut r = FramedRead::new(recv, frame::codec(MAX_PEER_FRAME_BYTES));
    for body in [
        Body::Hello(PeerHello {
            cluster_id: 0,
            member_id: 0,
            protocol_version: PEER_PROTOCOL_VERSION,
            client_urls: Vec::new(),
        }),
        Body::Request(PeerRequest {
            id: 1,
            body: Some(peer_request::Body::MemberList(Default::default())),
        }),
    ] {
        w.send(frame::encode_payload_of(&PeerFrame { body: Some(body) }))
            .await
            .map_err(|e| e.to_string())?;
    }
    let b = r
        .next()
        .await
        .ok_or("the peer closed the stream")?
        .map_err(|e| e.to_string())?;
    let answer = match PeerFrame::decode(&b[..]).map_err(|e| e.to_string())?.body {
        Some(Body::Answer(PeerAnswer {
            body: Some(peer_answer::Body::MemberList(l)),
            ..
        })) => l,
        _ => return Err("unexpected answer".into()),
    };
    conn.close(0u32.into(), b"done");
    Ok(answer)
}

/// This member's ID in `list`: the member whose peer URLs are `own_urls` (as sets).
///
/// # Errors
/// etcd's "PeerURLs: no match found for existing member" when none matches.
pub fn own_id(
    list: &etch_protocol::etcdserverpb::MemberListResponse,
    own_urls: &[String],
) -> Result<u64, String> {
    let mut mine = own_urls.to_vec();
    mine.sort();
    list.members
        .iter()
        .find(|m| {
            let mut theirs = m.peer_ur_ls.clone();
            theirs.sort();
            theirs == mine
        })
        .map(|m| m.id)
        .ok_or_else(|| {
            format!(
                "error validating peerURLs: PeerURLs: no match found for existing member ({})",
                own_urls.join(",")
            )
        })
}
