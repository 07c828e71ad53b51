//! The peer protocol's decisions, with no sockets or clocks (time is passed in): what a
//! member sends first on a stream ([`hello_frame`]), whether it admits a peer's stream
//! ([`admit`]), what a frame on an admitted stream carries ([`decode`]), how a raft message
//! travels ([`outbound`]), which members to talk to as the membership changes
//! ([`PeerSets::follow`]), when to redial ([`Backoff`], [`peer_restarted`]) and the bookkeeping of
//! questions to peers awaiting answers, each with a deadline ([`Asks`]). The transport actor
//! (`crate::actors::transport`) does the QUIC IO around them.
//!
//! Wire format: length-prefixed frames (`etch_protocol::frame`) whose payload is an
//! `etchpb.PeerFrame`. Every stream starts with a `PeerHello{cluster_id, member_id,
//! protocol_version, client_urls}`; then raft messages (one per frame), requests and answers,
//! or one snapshot (`SnapshotBegin`, chunks, `SnapshotEnd`). Peer input is checked, never
//! trusted to be well-formed: a frame that does not decode or does not belong on its stream
//! is a [`Refusal`], and the transport closes the connection with its text.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{EntryType, Message, MessageType};

use etch_protocol::etchpb::{
    InternalRequest, PeerAnswer, PeerFrame, PeerHello, PeerRequest, peer_answer, peer_frame::Body,
    peer_request,
};
use etch_protocol::frame;
use etch_protocol::ids::MemberId;
use etch_storage::members::Membership;

/// Peer protocol version spoken by this build.
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// Largest peer frame accepted: 16 MiB (a raft append carries up to 1 MiB of entries, and one
/// entry may be up to `--max-request-bytes`).
pub const MAX_PEER_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The close reason a removed member's connection gets; the removed member stops on it
/// (etcd answers a removed member's messages with "removed member").
pub const REMOVED_REASON: &[u8] = b"removed member";

/// A peer that opens a stream to this member more than this long after this member's own
/// connection to it was made has restarted (or lost its link): that connection is stale too
/// and is replaced at once, instead of after QUIC's idle timeout. Streams opened within it are
/// the two sides connecting at about the same time, which must not make them redial each
/// other forever.
pub const REDIAL_AFTER_PEER_HELLO: Duration = Duration::from_secs(1);

/// Shortest and longest wait between connection attempts to a peer.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Extra time an unanswered question is kept past its asker's own deadline.
pub const ASK_GRACE: Duration = Duration::from_secs(1);

/// Why a peer's stream or frame is refused: the text is the connection's close reason and
/// the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The first frame is not a Hello.
    NoHello,
    /// The peer speaks another protocol version.
    Version(u32),
    /// The peer is in another cluster (another `--initial-cluster-token`).
    Cluster {
        /// The peer's member ID.
        peer: u64,
        /// The peer's cluster ID.
        theirs: u64,
        /// This member's cluster ID.
        ours: u64,
    },
    /// The peer is not a member of this cluster.
    Unknown(u64),
    /// The peer was removed from the cluster: its connection is closed with
    /// [`REMOVED_REASON`], on which it stops.
    Removed(u64),
    /// A frame that does not decode, or does not belong on this stream.
    BadFrame(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoHello => f.write_str("first frame is not a PeerHello"),
            Refusal::Version(v) => write!(f, "peer protocol version {v} not supported"),
            Refusal::Cluster { peer, theirs, ours } => write!(
                f,
                "cluster ID mismatch: peer {} is in cluster {}, this member is in {}",
                MemberId(*peer),
                MemberId(*theirs),
                MemberId(*ours)
            ),
            Refusal::Unknown(id) => write!(f, "member {} is not in this cluster", MemberId(*id)),
            Refusal::Removed(id) => {
                write!(f, "member {} was removed from the cluster", MemberId(*id))
            }
            Refusal::BadFrame(why) => f.write_str(why),
        }
    }
}

/// The Hello this member sends first on every stream it opens.
pub fn hello_frame(cluster_id: u64, member_id: u64, client_urls: Vec<String>) -> Bytes {
    frame::encode_payload_of(&PeerFrame {
        body: Some(Body::Hello(PeerHello {
            cluster_id,
            member_id,
            protocol_version: PEER_PROTOCOL_VERSION,
            client_urls,
        })),
    })
}

/// Checks the first frame of a peer's stream against this member's cluster and the members
/// it admits.
///
/// # Errors
/// The [`Refusal`]: not a Hello, another version or cluster, an unknown or removed member.
pub fn admit(first: &[u8], cluster_id: u64, sets: &PeerSets) -> Result<PeerHello, Refusal> {
    let hello = match PeerFrame::decode(first).ok().and_then(|f| f.body) {
        Some(Body::Hello(h)) => h,
        _ => return Err(Refusal::NoHello),
    };
    if hello.protocol_version != PEER_PROTOCOL_VERSION {
        return Err(Refusal::Version(hello.protocol_version));
    }
    if hello.cluster_id != cluster_id {
        return Err(Refusal::Cluster {
            peer: hello.member_id,
            theirs: hello.cluster_id,
            ours: cluster_id,
        });
    }
    if sets.removed.contains(&hello.member_id) {
        return Err(Refusal::Removed(hello.member_id));
    }
    if !sets.known.contains(&hello.member_id) {
        return Err(Refusal::Unknown(hello.member_id));
    }
    Ok(hello)
}

/// What a frame on an admitted stream carries.
#[derive(Debug)]
pub enum Inbound {
    /// A raft message for this member, from the stream's peer.
    Raft(Message),
    /// A question from the peer.
    Request(PeerRequest),
    /// The peer's answer to one of this member's questions.
    Answer(PeerAnswer),
    /// The start of a snapshot stream: the leader's `MsgSnapshot` for this member; the
    /// store's chunks follow.
    SnapshotBegin(Message),
}

/// Decodes a frame read on the stream peer `stream_of` opened to this member `me`.
///
/// # Errors
/// [`Refusal::BadFrame`]: it does not decode, is not a peer message, or is a raft message
/// that does not belong on this stream ([`check_sender`]).
///
/// Decoding from `Bytes` copies nothing: the raft message and its entries' data are slices of
/// the frame.
pub fn decode(b: Bytes, stream_of: u64, me: u64) -> Result<Inbound, Refusal> {
    let bad = |why: String| Refusal::BadFrame(why);
    match PeerFrame::decode(b).ok().and_then(|f| f.body) {
        Some(Body::Raft(raft)) => {
            let msg = Message::parse_from_carllerche_bytes(&raft)
                .map_err(|e| bad(format!("raft message does not decode: {e}")))?;
            check_sender(&msg, stream_of, me).map_err(bad)?;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                // A snapshot comes on a stream of its own, with the store it describes.
                return Err(bad("snapshot message outside a snapshot stream".into()));
            }
            check_shape(&msg).map_err(bad)?;
            Ok(Inbound::Raft(msg))
        }
        Some(Body::Request(q)) => Ok(Inbound::Request(q)),
        Some(Body::Answer(a)) => Ok(Inbound::Answer(a)),
        Some(Body::SnapshotBegin(raft)) => match Message::parse_from_bytes(&raft) {
            Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot && m.to == me => {
                check_shape(&m).map_err(bad)?;
                Ok(Inbound::SnapshotBegin(m))
            }
            _ => Err(bad("bad snapshot message".into())),
        },
        _ => Err(bad("frame is not a raft message".into())),
    }
}

/// Whether `msg`, read on the stream peer `stream_of` opened to this member `me`, may be
/// stepped: it must be addressed to this member and come from that peer, except a
/// `MsgTransferLeader`, which a follower forwards to its leader with the transferee as sender
/// (raft-rs `RawNode::transfer_leader` sets `from`, and `send` keeps a sender already set).
///
/// # Errors
/// Why the message does not belong on this stream.
pub fn check_sender(msg: &Message, stream_of: u64, me: u64) -> Result<(), String> {
    let forwarded = msg.get_msg_type() == MessageType::MsgTransferLeader;
    if msg.to != me || (msg.from != stream_of && !forwarded) {
        return Err(format!(
            "message from {} to {} on the stream of {}",
            MemberId(msg.from),
            MemberId(msg.to),
            MemberId(stream_of)
        ));
    }
    // raft-rs's leader takes the first entry of these (`fatal!("stepped empty MsgProp")`,
    // `m.entries[0]` for a ReadIndex): one without any would panic it.
    let needs_entry = matches!(
        msg.get_msg_type(),
        MessageType::MsgPropose | MessageType::MsgReadIndex
    );
    if needs_entry && msg.entries.is_empty() {
        return Err(format!(
            "{:?} without entries from {}",
            msg.get_msg_type(),
            MemberId(msg.from)
        ));
    }
    Ok(())
}

/// Whether `msg`'s fields agree with one another as those of every message raft-rs sends do.
/// raft-rs trusts its peers: some messages no correct peer sends make it panic (raft-rs 0.7
/// `RaftLog::commit_to` "out of range", `maybe_append` "conflict with committed entry",
/// `Raft::send` "term should (not) be set", `restore` "unable to restore config"), or corrupt
/// its unstable log. Such a message is refused here, before it reaches raft-rs:
///
/// - the term: every message carries its sender's term (never 0) but the proposals and
///   read-index requests a follower forwards, which carry none (raft-rs `Raft::send`); raft-rs
///   takes a message of term 0 as a local one and skips its term checks;
/// - an append: entries numbered on from the index it follows (`index + 1`, `index + 2`, ...),
///   with terms at least that entry's term (`log_term`, never 0 past index 0), never
///   decreasing and at most the message's term;
/// - a snapshot: an index and a term (at most the message's), and a configuration raft-rs can
///   take ([`check_conf_state`]);
/// - a forwarded proposal: writes only (`EntryNormal`), each an `InternalRequest` as the
///   proposer encodes it (or empty). Every member applies what the leader takes, and apply
///   stops a member on an entry it cannot decode, so one bad proposal would stop the whole
///   cluster; configuration changes are proposed by the leader itself, after etcd's checks,
///   never forwarded.
///
/// # Errors
/// What does not agree, for the log.
pub fn check_shape(msg: &Message) -> Result<(), String> {
    let t = msg.get_msg_type();
    let forwarded = matches!(t, MessageType::MsgPropose | MessageType::MsgReadIndex);
    if forwarded != (msg.term == 0) {
        return Err(format!(
            "{t:?} from {} with term {}",
            MemberId(msg.from),
            msg.term
        ));
    }
    match t {
        MessageType::MsgAppend => {
            if msg.index > 0 && msg.log_term == 0 {
                return Err(format!(
                    "append from {} after index {} of term 0",
                    MemberId(msg.from),
                    msg.index
                ));
            }
            let mut floor = msg.log_term.max(1);
            for (i, e) in msg.entries.iter().enumerate() {
                let want = msg.index.checked_add(i as u64 + 1);
                if want != Some(e.index) || e.term < floor || e.term > msg.term {
                    return Err(format!(
                        "append from {} (term {}, after index {} of term {}): entry {} has \
                         index {} and term {}",
                        MemberId(msg.from),
                        msg.term,
                        msg.index,
                        msg.log_term,
                        i,
                        e.index,
                        e.term
                    ));
                }
                floor = e.term;
            }
        }
        MessageType::MsgSnapshot => {
            let meta = msg.get_snapshot().get_metadata();
            if meta.index == 0 || meta.term == 0 || meta.term > msg.term {
                return Err(format!(
                    "snapshot from {} (term {}) at index {} of term {}",
                    MemberId(msg.from),
                    msg.term,
                    meta.index,
                    meta.term
                ));
            }
            check_conf_state(meta.get_conf_state())?;
        }
        MessageType::MsgPropose => {
            for (i, e) in msg.entries.iter().enumerate() {
                if e.get_entry_type() != EntryType::EntryNormal {
                    return Err(format!(
                        "proposal from {}: entry {i} is an {:?} (members forward writes only; \
                         the leader proposes configuration changes itself)",
                        MemberId(msg.from),
                        e.get_entry_type()
                    ));
                }
                // Decoded from a clone of the entry's `Bytes`: prost slices the fields out of
                // it instead of copying them.
                if !e.data.is_empty() && InternalRequest::decode(e.data.clone()).is_err() {
                    return Err(format!(
                        "proposal from {}: entry {i} is not a request",
                        MemberId(msg.from)
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether raft-rs can restore a snapshot's configuration (its `confchange::restore`, else
/// `fatal!("unable to restore config")`): some voters, no member ID 0, each member in one
/// role, and the joint-consensus fields consistent (outgoing learners among the outgoing
/// voters; without outgoing voters, no outgoing learners and no automatic leave).
///
/// # Errors
/// What is wrong with it, for the log.
pub fn check_conf_state(cs: &raft::eraftpb::ConfState) -> Result<(), String> {
    let all = || {
        cs.voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
    };
    let distinct = |a: &[u64], b: &[u64]| a.iter().all(|id| !b.contains(id));
    let ok = !cs.voters.is_empty()
        && all().all(|id| *id != 0)
        && distinct(&cs.voters, &cs.learners)
        && distinct(&cs.learners, &cs.voters_outgoing)
        && distinct(&cs.learners_next, &cs.voters)
        && distinct(&cs.learners_next, &cs.learners)
        && cs
            .learners_next
            .iter()
            .all(|id| cs.voters_outgoing.contains(id))
        && (!cs.voters_outgoing.is_empty() || (cs.learners_next.is_empty() && !cs.auto_leave));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "snapshot configuration raft cannot take: voters {:?}, learners {:?}, outgoing \
             voters {:?}, next learners {:?}, auto leave {}",
            cs.voters, cs.learners, cs.voters_outgoing, cs.learners_next, cs.auto_leave
        ))
    }
}

/// How a raft message travels.
#[derive(Debug)]
pub enum Outbound {
    /// As one frame on the peer's long-lived stream.
    Frame(Bytes),
    /// On a stream of its own, with the store ([`Inbound::SnapshotBegin`]).
    Snapshot(Message),
}

/// How `msg` travels; `None` if it does not encode.
pub fn outbound(msg: Message) -> Option<Outbound> {
    if msg.get_msg_type() == MessageType::MsgSnapshot {
        return Some(Outbound::Snapshot(msg));
    }
    // The `PeerFrame{raft}` wrapper (field 2, length-delimited) is written in front of the
    // raft message's own encoding, in one buffer: the same bytes as encoding the message and
    // then the frame, without the second copy.
    let len = msg.compute_size() as usize;
    let mut buf = Vec::with_capacity(len + 6);
    prost::encoding::encode_key(
        RAFT_FIELD,
        prost::encoding::WireType::LengthDelimited,
        &mut buf,
    );
    prost::encoding::encode_varint(len as u64, &mut buf);
    msg.write_to_vec(&mut buf).ok()?;
    Some(Outbound::Frame(buf.into()))
}

/// The field number of `PeerFrame.raft` (etch.proto).
const RAFT_FIELD: u32 = 2;

/// A question as a frame.
pub fn request_frame(id: u64, body: peer_request::Body) -> Bytes {
    frame::encode_payload_of(&PeerFrame {
        body: Some(Body::Request(PeerRequest {
            id,
            body: Some(body),
        })),
    })
}

/// An answer as a frame.
pub fn answer_frame(id: u64, body: peer_answer::Body) -> Bytes {
    frame::encode_payload_of(&PeerFrame {
        body: Some(Body::Answer(PeerAnswer {
            id,
            body: Some(body),
        })),
    })
}

/// The members whose streams this member admits, and the removed ones it turns away for good.
#[derive(Debug, Default)]
pub struct PeerSets {
    /// Current members' IDs (this member included).
    pub known: HashSet<u64>,
    /// Removed members' IDs.
    pub removed: HashSet<u64>,
}

/// What the transport must change after a membership change ([`PeerSets::follow`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Follow {
    /// Peers to stop talking to.
    pub gone: Vec<u64>,
    /// Members to talk to, with their peer URLs (connect, or reconnect if their address
    /// changed).
    pub wanted: Vec<(u64, Vec<String>)>,
}

impl PeerSets {
    /// The sets at start: `peers` and this member `me`.
    pub fn new(peers: impl IntoIterator<Item = u64>, me: u64) -> PeerSets {
        PeerSets {
            known: peers.into_iter().chain([me]).collect(),
            removed: HashSet::new(),
        }
    }

    /// Follows the applied membership `m` of member `me`, which talks to `current` now. A
    /// member still replaying the history before its own addition sees old memberships: it
    /// keeps admitting and talking to today's members, dropping only those removed for good,
    /// so it keeps hearing the current leader.
    pub fn follow(&mut self, m: &Membership, me: u64, current: &[u64]) -> Follow {
        let joined = m.members.iter().any(|x| x.id == me);
        let mut known: HashSet<u64> = m.members.iter().map(|x| x.id).chain([me]).collect();
        if !joined {
            known.extend(self.known.iter().copied());
        }
        known.retain(|id| !m.removed.contains(id));
        self.known = known;
        self.removed = m.removed.iter().copied().collect();
        let wanted: HashMap<u64, &Vec<String>> = m
            .members
            .iter()
            .filter(|x| x.id != me)
            .map(|x| (x.id, &x.peer_ur_ls))
            .collect();
        let mut gone: Vec<u64> = current
            .iter()
            .copied()
            .filter(|id| {
                if joined {
                    !wanted.contains_key(id)
                } else {
                    self.removed.contains(id)
                }
            })
            .collect();
        gone.sort_unstable();
        let mut wanted: Vec<(u64, Vec<String>)> =
            wanted.into_iter().map(|(id, u)| (id, u.clone())).collect();
        wanted.sort_unstable();
        Follow { gone, wanted }
    }
}

/// Whether a peer's Hello at `peer_hello_at` means it restarted after this member's
/// connection to it was made at `connected_at` ([`REDIAL_AFTER_PEER_HELLO`]).
pub fn peer_restarted(connected_at: Instant, peer_hello_at: Instant) -> bool {
    peer_hello_at > connected_at + REDIAL_AFTER_PEER_HELLO
}

/// Exponential backoff between connection attempts ([`BACKOFF`]).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: BACKOFF.0 }
    }
}

impl Backoff {
    /// An attempt failed: how long to wait before the next (doubling up to the longest).
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF.1);
        wait
    }

    /// A connection was made: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.next = BACKOFF.0;
    }
}

/// This member's questions to peers awaiting answers, by question id, each dropped
/// [`ASK_GRACE`] after its asker's deadline (the asker gave up by then; dropping its
/// `T`, a reply channel, tells it the answer will not come).
#[derive(Debug)]
pub struct Asks<T> {
    next: u64,
    pending: HashMap<u64, (Instant, T)>,
}

impl<T> Default for Asks<T> {
    fn default() -> Asks<T> {
        Asks {
            next: 1,
            pending: HashMap::new(),
        }
    }
}

impl<T> Asks<T> {
    /// The id the next question will get.
    pub fn next_id(&self) -> u64 {
        self.next
    }

    /// Records a question asked at `now` whose asker waits up to `timeout`; returns its id.
    pub fn ask(&mut self, now: Instant, timeout: Duration, reply: T) -> u64 {
        let id = self.next;
        self.next += 1;
        self.pending.insert(id, (now + timeout + ASK_GRACE, reply));
        id
    }

    /// The answer to question `id` arrived: its reply, unless it expired (or never was).
    pub fn answered(&mut self, id: u64) -> Option<T> {
        self.pending.remove(&id).map(|(_, r)| r)
    }

    /// Drops the questions whose time is up at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.pending.len();
        self.pending.retain(|_, (deadline, _)| *deadline > now);
        before - self.pending.len()
    }

    /// Questions awaiting answers.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no question awaits an answer.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etch_protocol::etcdserverpb::Member;

    /// A message as raft-rs sends it: of term 2, but a forwarded proposal or read index (0).
    fn msg(t: MessageType, from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = to;
        if !matches!(t, MessageType::MsgPropose | MessageType::MsgReadIndex) {
            m.term = 2;
        }
        m
    }

    fn entry(index: u64, term: u64) -> raft::eraftpb::Entry {
        raft::eraftpb::Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn messages_whose_fields_disagree_are_refused() {
        let decoded = |m: &Message| decode(raft_frame(m).into(), m.from, m.to);
        // Terms: set on everything but what a follower forwards.
        let mut hb = msg(MessageType::MsgHeartbeat, 2, 1);
        assert!(decoded(&hb).is_ok());
        hb.term = 0;
        assert_eq!(
            decoded(&hb).unwrap_err().to_string(),
            "MsgHeartbeat from 2 with term 0"
        );
        let mut prop = msg(MessageType::MsgPropose, 2, 1);
        prop.mut_entries().push(entry(0, 0));
        assert!(decoded(&prop).is_ok());
        prop.term = 2;
        assert!(decoded(&prop).is_err());
        // Forwarded entries: writes as the proposer encodes them, nothing else.
        let proposal = |entry_type: EntryType, data: Vec<u8>| {
            let mut m = msg(MessageType::MsgPropose, 2, 1);
            let mut e = entry(0, 0);
            e.set_entry_type(entry_type);
            e.data = data.into();
            m.mut_entries().push(e);
            m
        };
        let request = InternalRequest {
            id: 7,
            ..Default::default()
        }
        .encode_to_vec();
        assert!(decoded(&proposal(EntryType::EntryNormal, request)).is_ok());
        assert_eq!(
            decoded(&proposal(EntryType::EntryNormal, vec![0x0a, 0x05, 0xff]))
                .unwrap_err()
                .to_string(),
            "proposal from 2: entry 0 is not a request"
        );
        assert!(
            decoded(&proposal(EntryType::EntryConfChangeV2, Vec::new()))
                .unwrap_err()
                .to_string()
                .contains("entry 0 is an EntryConfChangeV2")
        );
        // Appends: entries follow the index they are appended after, terms never go down
        // and never pass the message's.
        let append = |index, log_term, entries: &[(u64, u64)]| {
            let mut m = msg(MessageType::MsgAppend, 2, 1);
            m.index = index;
            m.log_term = log_term;
            m.entries = entries.iter().map(|&(i, t)| entry(i, t)).collect();
            m
        };
        for ok in [
            append(0, 0, &[(1, 1), (2, 1), (3, 2)]),
            append(7, 1, &[(8, 2)]),
            append(7, 2, &[]),
        ] {
            assert!(decoded(&ok).is_ok(), "{ok:?}");
        }
        for bad in [
            append(7, 0, &[]),
            append(10, 1, &[(7, 2)]),
            append(10, 1, &[(11, 2), (13, 2)]),
            append(10, 2, &[(11, 1)]),
            append(10, 1, &[(11, 2), (12, 1)]),
            append(10, 1, &[(11, 3)]),
            append(u64::MAX, 1, &[(0, 1)]),
        ] {
            assert!(decoded(&bad).is_err(), "{bad:?}");
        }
        // A snapshot only on a snapshot stream, with an index, a term and a configuration.
        let snap = |index, term, voters: Vec<u64>, learners: Vec<u64>| {
            let mut m = msg(MessageType::MsgSnapshot, 2, 1);
            let meta = m.mut_snapshot().mut_metadata();
            meta.index = index;
            meta.term = term;
            meta.mut_conf_state().voters = voters;
            meta.mut_conf_state().learners = learners;
            m
        };
        let begin = |m: &Message| {
            let f = PeerFrame {
                body: Some(Body::SnapshotBegin(m.write_to_bytes().unwrap().into())),
            }
            .encode_to_vec();
            decode(f.into(), 2, 1)
        };
        let good = snap(5, 2, vec![1, 2, 3], vec![4]);
        assert!(matches!(begin(&good), Ok(Inbound::SnapshotBegin(_))));
        assert!(
            decoded(&good).is_err(),
            "a snapshot outside a snapshot stream"
        );
        for bad in [
            snap(0, 2, vec![1, 2, 3], vec![]),
            snap(5, 0, vec![1, 2, 3], vec![]),
            snap(5, 3, vec![1, 2, 3], vec![]),
            snap(5, 2, vec![], vec![1]),
            snap(5, 2, vec![1, 0], vec![]),
            snap(5, 2, vec![1, 2], vec![2]),
        ] {
            assert!(begin(&bad).is_err(), "{bad:?}");
        }
    }

    fn raft_frame(m: &Message) -> Vec<u8> {
        PeerFrame {
            body: Some(Body::Raft(m.write_to_bytes().unwrap().into())),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_forwarded_leader_transfer_keeps_its_sender() {
        // Member 3 forwards member 1's transfer request to the leader 2.
        assert!(check_sender(&msg(MessageType::MsgTransferLeader, 1, 2), 3, 2).is_ok());
        // Anything else must come from the stream's own member, to this member.
        assert!(check_sender(&msg(MessageType::MsgAppend, 1, 2), 3, 2).is_err());
        assert!(check_sender(&msg(MessageType::MsgAppend, 3, 2), 3, 2).is_ok());
        assert!(check_sender(&msg(MessageType::MsgTransferLeader, 1, 4), 3, 2).is_err());
    }

    #[test]
    fn a_proposal_or_read_index_without_entries_is_refused() {
        // raft-rs's leader would panic on either.
        for t in [MessageType::MsgPropose, MessageType::MsgReadIndex] {
            let mut m = msg(t, 3, 2);
            assert!(check_sender(&m, 3, 2).is_err(), "{t:?}");
            m.mut_entries().push(raft::eraftpb::Entry::default());
            assert!(check_sender(&m, 3, 2).is_ok(), "{t:?}");
        }
    }

    #[test]
    fn hellos_are_checked_against_cluster_version_and_members() {
        let sets = PeerSets::new([2, 3], 1);
        let hello = |cluster, member, version| {
            let mut f = hello_frame(cluster, member, vec!["http://a:1".into()]);
            if version != PEER_PROTOCOL_VERSION {
                f = frame::encode_payload_of(&PeerFrame {
                    body: Some(Body::Hello(PeerHello {
                        cluster_id: cluster,
                        member_id: member,
                        protocol_version: version,
                        client_urls: Vec::new(),
                    })),
                });
            }
            f
        };
        let h = admit(&hello(9, 2, 1), 9, &sets).expect("admitted");
        assert_eq!(h.client_urls, vec!["http://a:1".to_owned()]);
        assert_eq!(admit(&hello(9, 2, 7), 9, &sets), Err(Refusal::Version(7)));
        let e = admit(&hello(8, 2, 1), 9, &sets).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster ID mismatch: peer 2 is in cluster 8, this member is in 9"
        );
        assert_eq!(admit(&hello(9, 4, 1), 9, &sets), Err(Refusal::Unknown(4)));
        assert_eq!(admit(b"\x01\x02garbage", 9, &sets), Err(Refusal::NoHello));
        let raft = raft_frame(&msg(MessageType::MsgAppend, 2, 1));
        assert_eq!(admit(&raft, 9, &sets), Err(Refusal::NoHello));
    }

    #[test]
    fn frames_on_an_admitted_stream_decode_or_are_refused() {
        let ok = raft_frame(&msg(MessageType::MsgHeartbeat, 2, 1));
        assert!(matches!(decode(ok.into(), 2, 1), Ok(Inbound::Raft(m)) if m.from == 2));
        // Another member's message on this stream: refused with the text the log shows.
        let other = raft_frame(&msg(MessageType::MsgHeartbeat, 3, 1));
        assert_eq!(
            decode(other.into(), 2, 1).unwrap_err().to_string(),
            "message from 3 to 1 on the stream of 2"
        );
        assert!(matches!(
            decode(Bytes::from_static(b"\xff\xff\xff"), 2, 1),
            Err(Refusal::BadFrame(_))
        ));
        let q = request_frame(5, peer_request::Body::HashKv(Default::default()));
        assert!(matches!(decode(q, 2, 1), Ok(Inbound::Request(r)) if r.id == 5));
        let snap = PeerFrame {
            body: Some(Body::SnapshotBegin(
                msg(MessageType::MsgSnapshot, 2, 3)
                    .write_to_bytes()
                    .unwrap()
                    .into(),
            )),
        }
        .encode_to_vec();
        assert!(
            matches!(decode(snap.into(), 2, 1), Err(Refusal::BadFrame(_))),
            "not for this member"
        );
        assert!(matches!(
            outbound(msg(MessageType::MsgSnapshot, 1, 2)),
            Some(Outbound::Snapshot(_))
        ));
        // An append with entries: the one-buffer encoding is exactly the frame prost would
        // write around the raft message, and decodes back to the same message.
        let mut append = msg(MessageType::MsgAppend, 1, 2);
        append.entries = (1..=3u64)
            .map(|index| raft::eraftpb::Entry {
                index,
                term: 2,
                data: vec![b'v'; 300].into(),
                ..Default::default()
            })
            .collect::<Vec<_>>()
            .into();
        let expected = raft_frame(&append);
        match outbound(append.clone()) {
            Some(Outbound::Frame(f)) => {
                assert_eq!(f[..], expected[..]);
                assert!(matches!(decode(f, 1, 2), Ok(Inbound::Raft(m)) if m == append));
            }
            other => panic!("{other:?}"),
        }
    }

    fn member(id: u64, url: &str) -> Member {
        Member {
            id,
            peer_ur_ls: vec![url.into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_peers_follow_the_membership() {
        let mut sets = PeerSets::new([2, 3], 1);
        let m = Membership {
            members: vec![member(1, "u1"), member(2, "u2"), member(4, "u4")],
            removed: vec![3],
        };
        let f = sets.follow(&m, 1, &[2, 3]);
        assert_eq!(f.gone, vec![3]);
        assert_eq!(
            f.wanted,
            vec![(2, vec!["u2".to_owned()]), (4, vec!["u4".to_owned()])]
        );
        assert!(sets.known.contains(&4) && !sets.known.contains(&3));
        assert!(sets.removed.contains(&3));
        // A member replaying history before its own addition keeps today's peers.
        let mut joining = PeerSets::new([1, 2], 5);
        let old = Membership {
            members: vec![member(1, "u1")],
            removed: Vec::new(),
        };
        let f = joining.follow(&old, 5, &[1, 2]);
        assert!(f.gone.is_empty(), "{f:?}");
        assert!(joining.known.contains(&2));
    }

    #[test]
    fn questions_expire_after_their_askers_deadline() {
        let t0 = Instant::now();
        let mut asks = Asks::default();
        let a = asks.ask(t0, Duration::from_secs(1), "a");
        let b = asks.ask(t0, Duration::from_secs(10), "b");
        assert_ne!(a, b);
        assert_eq!(asks.expire(t0 + Duration::from_secs(1)), 0, "grace");
        assert_eq!(asks.expire(t0 + Duration::from_secs(3)), 1);
        assert_eq!(asks.answered(a), None, "expired");
        assert_eq!(asks.answered(b), Some("b"));
        assert!(asks.is_empty());
    }

    #[test]
    fn backoff_doubles_to_its_limit_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.failed(), BACKOFF.0);
        assert_eq!(b.failed(), BACKOFF.0 * 2);
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.failed(), BACKOFF.1);
        b.reset();
        assert_eq!(b.failed(), BACKOFF.0);
        let t = Instant::now();
        assert!(!peer_restarted(t, t + Duration::from_millis(500)));
        assert!(peer_restarted(t, t + Duration::from_secs(2)));
    }
}
