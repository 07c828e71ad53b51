//! Node-wide state every room reads: [`NodeState`] (member and cluster IDs, term, leader,
//! commit index; written by consensus) and the simple auth [`Tokens`] (written by apply when
//! an Authenticate is applied, read by the services). Imports nothing above it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etch_protocol::ids::{ClusterId, MemberId};
use raft::INVALID_ID;
use tokio::sync::watch;

/// Node-wide facts that consensus keeps current and every front end reads (response headers,
/// status, health).
#[derive(Debug)]
pub struct NodeState {
    /// This member's ID.
    pub member_id: MemberId,
    /// The cluster's ID.
    pub cluster_id: ClusterId,
    pub(crate) term: AtomicU64,
    pub(crate) leader: AtomicU64,
    pub(crate) commit_index: AtomicU64,
    pub(crate) last_index: AtomicU64,
    fatal: watch::Sender<Option<String>>,
    /// The leader's member ID on every change (0 = none), for waits on a leader change.
    pub(crate) leader_changes: watch::Sender<u64>,
    /// Other members' advertised client URLs, as their peer Hellos announced them.
    client_urls: std::sync::RwLock<std::collections::HashMap<u64, Vec<String>>>,
    /// The applied membership (consensus keeps it current).
    membership: watch::Sender<etch_storage::members::Membership>,
    /// Open inbound peer streams, by member: a member with none is not connected (etcd's
    /// transport `ActiveSince`).
    peer_streams: Mutex<HashMap<u64, usize>>,
}

impl NodeState {
    /// State for a member that has not started raft yet.
    pub fn new(member_id: u64, cluster_id: u64) -> NodeState {
        NodeState {
            member_id: MemberId(member_id),
            cluster_id: ClusterId(cluster_id),
            term: AtomicU64::new(0),
            leader: AtomicU64::new(INVALID_ID),
            commit_index: AtomicU64::new(0),
            last_index: AtomicU64::new(0),
            fatal: watch::channel(None).0,
            leader_changes: watch::channel(INVALID_ID).0,
            client_urls: Default::default(),
            membership: watch::channel(Default::default()).0,
            peer_streams: Mutex::default(),
        }
    }
    /// A stream from member `id` opened (`true`) or ended (`false`).
    pub fn peer_stream(&self, id: u64, open: bool) {
        let mut m = self.peer_streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(id).or_default();
        if open {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }
    /// Whether member `id` has a stream open to this member now.
    pub fn peer_connected(&self, id: u64) -> bool {
        self.peer_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|n| *n > 0)
    }
    /// The applied membership.
    pub fn membership(&self) -> etch_storage::members::Membership {
        self.membership.borrow().clone()
    }
    /// The membership, on every change.
    pub fn membership_changes(&self) -> watch::Receiver<etch_storage::members::Membership> {
        self.membership.subscribe()
    }
    /// Records the applied membership.
    pub fn set_membership(&self, m: etch_storage::members::Membership) {
        self.membership.send_replace(m);
    }
    /// Whether this member is a learner now (it serves only serializable reads and status).
    pub fn is_learner(&self) -> bool {
        self.membership
            .borrow()
            .members
            .iter()
            .any(|m| m.id == self.member_id.0 && m.is_learner)
    }
    /// Current raft term.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Relaxed)
    }
    /// Current leader's member ID; `MemberId(0)` when there is none.
    pub fn leader(&self) -> MemberId {
        MemberId(self.leader.load(Ordering::Relaxed))
    }
    /// Raft commit index.
    pub fn commit_index(&self) -> u64 {
        self.commit_index.load(Ordering::Relaxed)
    }
    /// Index of the last entry in this member's raft log.
    pub fn last_index(&self) -> u64 {
        self.last_index.load(Ordering::Relaxed)
    }
    /// Records a fatal error; `run` returns it and the process exits non-zero.
    pub fn fail(&self, why: String) {
        tracing::error!(error = %why, "fatal error, stopping");
        self.fatal.send_replace(Some(why));
    }
    /// Spawns a task the member cannot do without (the peer listener and senders, automatic
    /// compaction, the corruption check) on the current tokio runtime: should it panic, the
    /// member stops with the panic's message (exit status 1, as for any fatal error) instead
    /// of running on without it. A panic on a tokio worker thread otherwise ends only its own
    /// task, which suits a client's connection but would leave a member half alive.
    pub fn spawn_essential<F>(
        self: &std::sync::Arc<Self>,
        what: &'static str,
        task: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use futures::FutureExt;
        let state = self.clone();
        tokio::spawn(async move {
            if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
                state.fail(format!("{what} panicked: {}", panic_message(&*panic)));
            }
        })
    }
    /// Records member `id`'s advertised client URLs (from its peer Hello).
    pub fn set_client_urls(&self, id: u64, urls: Vec<String>) {
        self.client_urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, urls);
    }
    /// Member `id`'s advertised client URLs, if its Hello has been seen.
    pub fn client_urls(&self, id: u64) -> Option<Vec<String>> {
        self.client_urls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
    /// The leader's member ID, updated on every change (0 = none).
    pub fn leader_changes(&self) -> watch::Receiver<u64> {
        self.leader_changes.subscribe()
    }
    /// Resolves when a fatal error has been recorded.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }
}

/// The simple tokens this member knows: token -> (user, last use).
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl Tokens {
    /// An empty store; tokens unused for `ttl` expire.
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            map: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `token` for `user` (at apply of an Authenticate).
    pub fn assign(&self, token: String, user: String) {
        let now = Instant::now();
        let mut m = self.lock();
        // Expired tokens go when new ones come, so the map stays bounded by live tokens.
        m.retain(|_, (_, used)| now.duration_since(*used) < self.ttl);
        m.insert(token, (user, now));
    }

    /// The user `token` was issued to, extending its life; `None` when unknown or expired.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut m = self.lock();
        match m.get_mut(token) {
            Some((user, used)) if now.duration_since(*used) < self.ttl => {
                *used = now;
                Some(user.clone())
            }
            Some(_) => {
                m.remove(token);
                None
            }
            None => None,
        }
    }

    /// Drops every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.lock().retain(|_, (u, _)| u != user);
    }

    /// Drops every token (auth disabled).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// The message a caught panic carried (`panic!` with a literal or a formatted string), or
/// "no message".
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_panicking_essential_task_stops_the_member_with_its_message() {
        let state = Arc::new(NodeState::new(1, 2));
        let mut fatal = state.fatal();
        let ok = state.spawn_essential("a quiet task", async {});
        ok.await.unwrap();
        assert!(fatal.borrow().is_none(), "a task that ends is not an error");
        let boom = state.spawn_essential("the test task", async {
            panic!("planted panic {}", 7);
        });
        boom.await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), fatal.wait_for(|f| f.is_some()))
            .await
            .expect("the member's state records the panic")
            .unwrap();
        let why = fatal.borrow().clone().unwrap();
        assert_eq!(why, "the test task panicked: planted panic 7");
    }
}
