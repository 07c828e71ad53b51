//! The membership in the store: one protobuf `etchpb.Membership` under the meta key
//! `membership`, written in the same batch as the applied index of the entry that changed it
//! (so a restart or a snapshot never sees one without the other). Rules: [`crate::members`].

use prost::Message as _;

use super::{AppliedIndex, META_MEMBERSHIP, MvccStore, RequestError};
use crate::members::{self, Change, Membership};
use crate::{Error, Result};

impl MvccStore {
    /// The membership as of the applied index (empty before the first member is applied).
    ///
    /// # Errors
    /// [`Error::Fjall`], [`Error::CorruptStore`] when the record does not decode.
    pub fn membership(&self) -> Result<Membership> {
        match self.db().meta.get(META_MEMBERSHIP)? {
            None => Ok(Membership::default()),
            Some(v) => Membership::decode(&v[..])
                .map_err(|e| Error::CorruptStore(format!("meta {META_MEMBERSHIP}: {e}"))),
        }
    }

    /// Records `m` as the membership when the store has none (a data dir made before the
    /// membership was kept in the store: its members come from the bootstrap flags).
    ///
    /// # Errors
    /// [`Error::Fjall`], [`Error::CorruptStore`].
    pub fn init_membership(&self, m: &Membership) -> Result<()> {
        if self.db().meta.get(META_MEMBERSHIP)?.is_none() {
            self.db().meta.insert(META_MEMBERSHIP, m.encode_to_vec())?;
            self.persist()?;
        }
        Ok(())
    }

    /// Replaces the membership outright, with no applied-index bookkeeping: for building a
    /// new data dir (snapshot restore, `--force-new-cluster`), never for applied entries.
    ///
    /// # Errors
    /// [`Error::Fjall`].
    pub fn replace_membership(&self, m: &Membership) -> Result<()> {
        self.db().meta.insert(META_MEMBERSHIP, m.encode_to_vec())?;
        self.persist()
    }

    /// Applies the membership change of raft entry `index`: `None` when the entry is already
    /// applied, else the membership after it or the rule it broke (then only the applied index
    /// moves).
    ///
    /// # Errors
    /// Outer: [`Error::Fjall`], [`Error::CorruptStore`].
    pub fn apply_membership(
        &self,
        index: u64,
        term: u64,
        change: &Change,
    ) -> Result<Option<std::result::Result<Membership, RequestError>>> {
        if index <= self.applied_index().index {
            return Ok(None);
        }
        let mut m = self.membership()?;
        let outcome = members::apply(&mut m, change);
        let d = self.db();
        let mut batch = d.db.batch();
        if outcome.is_ok() {
            batch.insert(&d.meta, META_MEMBERSHIP, m.encode_to_vec());
        }
        let applied = AppliedIndex { index, term };
        Self::put_applied(&d, &mut batch, applied);
        batch.commit()?;
        self.set_applied(applied);
        Ok(Some(outcome.map(|()| m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etch_protocol::etcdserverpb::Member;

    #[test]
    fn membership_is_applied_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let add = Change::Add(Member {
            id: 7,
            peer_ur_ls: vec!["http://a".into()],
            ..Default::default()
        });
        {
            let s = MvccStore::open(dir.path()).unwrap();
            let m = s.apply_membership(1, 1, &add).unwrap().unwrap().unwrap();
            assert_eq!(m.members.len(), 1);
            // Replay of the same index is skipped; a refused change still moves the index.
            assert!(s.apply_membership(1, 1, &add).unwrap().is_none());
            let refused = s.apply_membership(2, 1, &add).unwrap().unwrap();
            assert_eq!(refused, Err(RequestError::MemberExists));
            assert_eq!(s.applied_index().index, 2);
            s.persist().unwrap();
        }
        let s = MvccStore::open(dir.path()).unwrap();
        assert_eq!(s.membership().unwrap().members[0].id, 7);
    }
}
