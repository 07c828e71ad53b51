//! Raft snapshots in the simulation, carried out as the peer transport does: the leader's
//! `MsgSnapshot` goes with its whole store, exported at send time
//! (`MvccStore::export`); the receiver ingests the chunks into a fresh database
//! (`begin_ingest`/`write_chunk`), and installs it only if its consensus core still wants a
//! snapshot at that index (`ConsensusCore::offer_snapshot`), then tells the core
//! (`snapshot_installed`); the sender's core learns the outcome (`snapshot_sent`). A snapshot
//! stream is lost when the network between the two is cut, or the receiver is down.

use std::rc::Rc;

use raft::eraftpb::Message;
use rand::Rng;

use etch_node::core::consensus::SnapshotOffer;

use super::{Event, Sim};

impl Sim {
    /// Member `msg.from` sends `msg` (a `MsgSnapshot`) with its store as it is now.
    pub(super) fn send_snapshot(&mut self, msg: Message) {
        let (from, to) = (msg.from, msg.to);
        let index = msg.get_snapshot().get_metadata().index;
        let Some(m) = self.members.get(&from).filter(|m| m.up) else {
            return;
        };
        let inc = m.incarnation;
        let store = m.apply.as_ref().expect("apply").store().clone();
        let mut chunks = Vec::new();
        if let Err(e) = store.export(|c| {
            chunks.push(c);
            true
        }) {
            self.log(format!("m{from} cannot export its store: {e}"));
            if let Some(core) = self.members.get_mut(&from).and_then(|m| m.core.as_mut()) {
                core.snapshot_sent(to, false);
            }
            return;
        }
        // Not its size: the store deletes compacted history on a thread of its own, so how
        // much of it the export still holds depends on timing (a seed must replay exactly).
        self.log(format!("m{from} sends m{to} a snapshot at index {index}"));
        let d = self.rng.random_range(1..=self.cfg.max_delay_ms * 5);
        self.at(d, Event::DeliverSnapshot(msg, inc, Rc::new(chunks)));
    }

    /// The snapshot stream `msg` + `chunks` from incarnation `inc` of its sender arrives.
    pub(super) fn deliver_snapshot(
        &mut self,
        msg: Message,
        inc: u64,
        chunks: &[Vec<u8>],
    ) -> Result<(), String> {
        let (from, to) = (msg.from, msg.to);
        let reached = !self.cut(from, to) && self.members.get(&to).is_some_and(|m| m.up);
        if reached {
            self.install(msg, chunks)?;
        } else {
            self.log(format!("snapshot stream m{from} -> m{to} lost"));
        }
        let sender = self
            .members
            .get_mut(&from)
            .filter(|m| m.up && m.incarnation == inc);
        if let Some(core) = sender.and_then(|m| m.core.as_mut()) {
            core.snapshot_sent(to, reached);
            self.drive(from)?;
        }
        Ok(())
    }

    /// Member `msg.to` ingests the stream and installs it if its core wants it.
    fn install(&mut self, msg: Message, chunks: &[Vec<u8>]) -> Result<(), String> {
        let to = msg.to;
        let index = msg.get_snapshot().get_metadata().index;
        let m = self.members.get_mut(&to).expect("member");
        let store = m.apply.as_ref().expect("apply").store().clone();
        let mut ingest = store
            .begin_ingest()
            .map_err(|e| format!("m{to} begin ingest: {e}"))?;
        for c in chunks {
            ingest
                .write_chunk(c)
                .map_err(|e| format!("m{to} snapshot chunk: {e}"))?;
        }
        let core = m.core.as_mut().expect("core");
        match core.offer_snapshot(index) {
            SnapshotOffer::Install => {}
            SnapshotOffer::Stale => {
                ingest.abandon();
                core.step(msg);
                self.log(format!("m{to} ignores a stale snapshot at index {index}"));
                return self.drive(to);
            }
            // Installs are synchronous here: none is ever in flight.
            SnapshotOffer::Busy => {
                ingest.abandon();
                return Err(format!("m{to}: a snapshot install already in flight"));
            }
        }
        let before = store.applied_index().index;
        let applied = store
            .install(ingest)
            .map_err(|e| format!("m{to} install: {e}"))?;
        let membership = store
            .membership()
            .map_err(|e| format!("m{to} membership: {e}"))?;
        let leases = store.leases().map_err(|e| format!("m{to} leases: {e}"))?;
        let now = self.now;
        if let Some(l) = m.lessor.as_mut() {
            l.replace(&leases, now);
        }
        m.core
            .as_mut()
            .expect("core")
            .snapshot_installed(msg, membership);
        self.stats.snapshots_installed += 1;
        self.log(format!(
            "m{to} installs a snapshot at index {index} (store applied {before} -> {applied})"
        ));
        self.applied_store(to, before)?;
        self.drive(to)
    }
}
