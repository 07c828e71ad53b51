//! Who this member is and what its raft log starts from, decided once at start.
//!
//! - A data dir that has an identity keeps it (the bootstrap flags are then ignored, as in
//!   etcd), and its peers are the applied membership's.
//! - A new member of a new cluster (`--initial-cluster-state=new`) takes its IDs from the
//!   flags and writes the bootstrap entries: one configuration change per initial member
//!   (`crate::core::raft::bootstrap_entries`), committed at term 1.
//! - A new member joining a running cluster (`existing`) asks the peers of `--initial-cluster`
//!   for the member list (`crate::actors::transport::join`), takes the cluster ID and its own
//!   member ID from it, and starts with an empty log: the leader sends it the log from index 1
//!   or a snapshot, and with them the membership.

use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

use etch_storage::members::{self, Membership};
use etch_storage::mvcc::MvccStore;
use etch_storage::raftlog::RaftLog;
use etch_storage::wal::{Recovered, Wal};

use crate::actors::transport::join;
use crate::config::{Config, Peer};
use crate::{Error, Result};

/// This member's identity and first peers.
pub(crate) struct Boot {
    pub(crate) member_id: u64,
    pub(crate) cluster_id: u64,
    /// A new member of a running cluster.
    pub(crate) joining: bool,
    /// The members to connect to first.
    pub(crate) peers: Vec<Peer>,
    /// This member's advertised client URLs.
    pub(crate) client_urls: Vec<String>,
}

fn fatal(why: impl Into<String>) -> Error {
    Error::Fatal(why.into())
}

/// Finds out who this member is (see the module doc) and records it in the store.
///
/// # Errors
/// Store errors; for a joining member, etcd's "cannot fetch cluster info from peer urls" and
/// "error validating peerURLs" failures.
pub(crate) async fn identify(
    config: &Config,
    store: &MvccStore,
    fresh: bool,
    endpoint: Option<&quinn::Endpoint>,
) -> Result<Boot> {
    let own = config.members.iter().find(|m| m.id == config.member_id);
    let client_urls = own.map(|m| m.client_ur_ls.clone()).unwrap_or_default();
    if let Some((member_id, cluster_id)) = store.identity()? {
        if (member_id, cluster_id) != (config.member_id, config.cluster_id) {
            tracing::warn!(member_id = %etch_protocol::ids::MemberId(member_id), "data dir has an identity: bootstrap flags ignored");
        }
        let membership = store.membership()?;
        let peers = match (
            membership.members.is_empty(),
            config.join_existing,
            endpoint,
        ) {
            (false, _, _) => peers_of(&membership, member_id),
            // A joining member restarted before it applied anything: its peers' IDs are in the
            // cluster's member list, not derivable from the flags.
            (true, true, Some(ep)) => match join::fetch_members(ep, &config.peers).await {
                Ok(list) => peers_of(
                    &Membership {
                        members: list.members,
                        removed: Vec::new(),
                    },
                    member_id,
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch the member list again");
                    config.peers.clone()
                }
            },
            (true, _, _) => config.peers.clone(),
        };
        return Ok(Boot {
            member_id,
            cluster_id,
            joining: false,
            peers,
            client_urls,
        });
    }
    if !config.join_existing || !fresh {
        store.set_identity(config.member_id, config.cluster_id)?;
        return Ok(Boot {
            member_id: config.member_id,
            cluster_id: config.cluster_id,
            joining: false,
            peers: config.peers.clone(),
            client_urls,
        });
    }
    let endpoint = endpoint.ok_or_else(|| fatal("joining a cluster needs a peer listener"))?;
    let list = join::fetch_members(endpoint, &config.peers)
        .await
        .map_err(|e| fatal(format!("cannot fetch cluster info from peer urls: {e}")))?;
    let own_urls = own.map(|m| m.peer_ur_ls.clone()).unwrap_or_default();
    let member_id = join::own_id(&list, &own_urls).map_err(fatal)?;
    let cluster_id = list.header.as_ref().map_or(0, |h| h.cluster_id);
    tracing::info!(
        member_id = %etch_protocol::ids::MemberId(member_id),
        cluster_id = %etch_protocol::ids::MemberId(cluster_id),
        members = list.members.len(),
        "joining a running cluster"
    );
    store.set_identity(member_id, cluster_id)?;
    let known = Membership {
        members: list.members,
        removed: Vec::new(),
    };
    Ok(Boot {
        member_id,
        cluster_id,
        joining: true,
        peers: peers_of(&known, member_id),
        client_urls,
    })
}

/// The members of `m` other than `me`, as transport peers (members whose URL does not resolve
/// are left out, with a warning).
pub(crate) fn peers_of(m: &Membership, me: u64) -> Vec<Peer> {
    m.members
        .iter()
        .filter(|x| x.id != me)
        .filter_map(|x| match Peer::new(x.id, &x.peer_ur_ls) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(peer = %etch_protocol::ids::MemberId(x.id), error = %e, "member's peer URL unusable");
                None
            }
        })
        .collect()
}

/// The raft log this member starts from: the bootstrap entries for a new cluster, an empty
/// log for a joining member, what the WAL recovered otherwise, with the configuration of the
/// store's applied membership (which may be ahead of the WAL's release point). A data dir made
/// before the membership was kept in the store gets it from the bootstrap flags.
///
/// # Errors
/// WAL and store errors.
pub(crate) fn raft_log(
    config: &Config,
    store: &MvccStore,
    wal: &mut Wal,
    recovered: &Recovered,
    fresh: bool,
    joining: bool,
    membership: &mut Membership,
) -> Result<RaftLog> {
    if fresh {
        // The log's origin: index 0, no voters yet.
        wal.append_snapshot(&SnapshotMetadata::default())?;
        let log = RaftLog::from_recovered(recovered, ConfState::default());
        if !joining {
            let mut initial: Vec<_> = config
                .members
                .iter()
                .map(|m| etch_protocol::etcdserverpb::Member {
                    // Client URLs are published by each member; the entries must be the same
                    // on every initial member.
                    client_ur_ls: Vec::new(),
                    ..m.clone()
                })
                .collect();
            initial.sort_by_key(|m| m.id);
            let entries = crate::core::raft::bootstrap_entries(&initial);
            let hs = HardState {
                term: 1,
                vote: 0,
                commit: entries.len() as u64,
                ..Default::default()
            };
            wal.append(&entries, Some(&hs))?;
            log.append(&entries);
            log.set_hard_state(hs);
        }
        wal.sync()?;
        return Ok(log);
    }
    let legacy = ConfState {
        voters: config.initial_members.clone(),
        ..Default::default()
    };
    let log = RaftLog::from_recovered(recovered, legacy);
    if membership.members.is_empty() && !log.conf_state().voters.is_empty() {
        *membership = Membership {
            members: config.members.clone(),
            removed: Vec::new(),
        };
        membership.members.sort_by_key(|m| m.id);
        store.init_membership(membership)?;
    }
    if store.applied_index().index > log.release_index() && !membership.members.is_empty() {
        log.set_conf_state(members::conf_state(membership));
    }
    if config.force_new_cluster {
        let me = config_member(store)?;
        force_new_cluster(wal, &log, membership, store.applied_index().index, me)?;
    }
    Ok(log)
}

fn config_member(store: &MvccStore) -> Result<u64> {
    Ok(store.identity()?.map_or(0, |(m, _)| m))
}

/// etcd's `--force-new-cluster`: this member becomes a one-member cluster, keeping its IDs and
/// committed data. As etcd does (`raft.go` `restartAsStandaloneNode`), entries past the commit
/// index are dropped and entries removing every other member are written and committed after
/// it; applying those leaves it the only voter, and it elects itself. A learner is refused (it
/// would be left without any voter).
fn force_new_cluster(
    wal: &mut Wal,
    log: &RaftLog,
    m: &Membership,
    applied: u64,
    me: u64,
) -> Result<()> {
    use protobuf::Message as _;
    use raft::eraftpb::{ConfChangeType, ConfChangeV2, EntryType};
    if m.members.iter().any(|x| x.id == me && x.is_learner) {
        return Err(fatal(
            "--force-new-cluster: this member is a learner; restart a voter instead",
        ));
    }
    // As etcd, entries past the commit index (never acknowledged) are dropped: the removals
    // are written from there on, replacing them.
    let hs = raft::Storage::initial_state(log)?.hard_state;
    let cut = hs.commit.max(applied).min(log.last_index());
    let dropped = log.last_index() - cut;
    // The members as of the commit index: the applied membership, then the configuration
    // changes of the committed entries the store has not applied yet.
    let mut ids: std::collections::BTreeSet<u64> = m
        .members
        .iter()
        .map(|x| x.id)
        .chain(log.conf_state().voters)
        .chain(log.conf_state().learners)
        .collect();
    let from = applied.max(log.release_index()) + 1;
    if from <= cut {
        let ctx = raft::GetEntriesContext::empty(false);
        for e in raft::Storage::entries(log, from, cut + 1, None, ctx)? {
            if e.get_entry_type() != EntryType::EntryConfChangeV2 {
                continue;
            }
            let Ok(cc) = ConfChangeV2::parse_from_bytes(&e.data) else {
                continue;
            };
            for c in cc.changes.iter() {
                match c.get_change_type() {
                    ConfChangeType::RemoveNode => ids.remove(&c.node_id),
                    _ => ids.insert(c.node_id),
                };
            }
        }
    }
    let others: Vec<u64> = ids.into_iter().filter(|id| *id != me).collect();
    let term = hs.term.max(1);
    let mut entries: Vec<_> = others
        .iter()
        .enumerate()
        .map(|(i, id)| {
            crate::core::raft::conf_change_entry(
                cut + 1 + i as u64,
                term,
                ConfChangeType::RemoveNode,
                etch_protocol::etcdserverpb::Member {
                    id: *id,
                    ..Default::default()
                },
            )
        })
        .collect();
    if entries.is_empty() && dropped > 0 {
        // Nothing to remove, but the uncommitted tail must still go: an empty entry replaces it.
        let mut e = raft::eraftpb::Entry {
            index: cut + 1,
            term,
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryNormal);
        entries.push(e);
    }
    let commit = cut + entries.len() as u64;
    let hs = HardState {
        term,
        vote: me,
        commit,
        ..Default::default()
    };
    wal.append(&entries, Some(&hs))?;
    wal.sync()?;
    log.append(&entries);
    log.set_hard_state(hs);
    tracing::warn!(
        removed = ?others.iter().map(|id| etch_protocol::ids::MemberId(*id).to_string()).collect::<Vec<_>>(),
        uncommitted_entries_dropped = dropped,
        commit_index = commit,
        "forcing a new one-member cluster from this member's data"
    );
    Ok(())
}
