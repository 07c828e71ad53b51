//! The watch fanout actor: runs [`crate::core::watch::WatchHub`] on an arbiter of its own
//! (store reads block), advances it when apply publishes a new revision, and sends each
//! stream's responses to its connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, watch};

use etch_protocol::etcdserverpb::{WatchCreateRequest, WatchResponse};
use etch_storage::mvcc::MvccStore;

pub use crate::core::watch::{Sink, StreamKey, WatchHub, WatchLimits};
use crate::state::NodeState;

/// The sink of one stream: a bounded channel to the connection, with the header completed.
#[derive(Clone)]
pub struct StreamSink {
    tx: mpsc::Sender<WatchResponse>,
    state: Arc<NodeState>,
}

impl StreamSink {
    /// A sink over `tx`, filling headers from `state`.
    pub fn new(tx: mpsc::Sender<WatchResponse>, state: Arc<NodeState>) -> StreamSink {
        StreamSink { tx, state }
    }
}

impl Sink for StreamSink {
    fn try_send(&self, mut r: WatchResponse) -> bool {
        if let Some(h) = &mut r.header {
            h.cluster_id = self.state.cluster_id.0;
            h.member_id = self.state.member_id.0;
            h.raft_term = self.state.term();
        }
        self.tx.try_send(r).is_ok()
    }

    fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

/// The actor: runs the hub on its own arbiter (store reads block).
pub struct WatchActor {
    hub: WatchHub<StreamSink>,
    store: Arc<MvccStore>,
    revision: watch::Receiver<i64>,
    /// Set while any watcher exists: apply wakes this actor for new revisions only then.
    watched: Arc<AtomicBool>,
    state: Arc<NodeState>,
    limits: WatchLimits,
    /// A catch-up step is scheduled ([`CATCH_UP`] from now).
    catch_up_armed: bool,
}

/// How often unsynced watchers (started below the current revision, or whose client reads
/// slower than they fill) are stepped again while no new revision arrives.
const CATCH_UP: Duration = Duration::from_millis(20);

impl WatchActor {
    /// A watch actor over `store`, advancing when `revision` changes. It sets `watched`
    /// before it reads the revision for a new watcher and clears it when the last watcher
    /// goes; apply wakes it only while `watched` is set (`ApplyActor::new`).
    pub fn new(
        store: Arc<MvccStore>,
        revision: watch::Receiver<i64>,
        watched: Arc<AtomicBool>,
        state: Arc<NodeState>,
        limits: WatchLimits,
    ) -> WatchActor {
        let current = *revision.borrow();
        WatchActor {
            hub: WatchHub::new(current, limits),
            store,
            revision,
            watched,
            state,
            limits,
            catch_up_armed: false,
        }
    }

    /// Clears `watched` when no watcher is left.
    fn forget_watched_if_idle(&self) {
        if self.hub.watcher_count() == 0 {
            self.watched.store(false, Ordering::SeqCst);
        }
    }

    fn fatal(&self, e: etch_storage::Error) {
        self.state.fail(format!("watch: {e}"));
    }

    fn step(&mut self, ctx: &mut Context<Self>) {
        let current = *self.revision.borrow();
        if let Err(e) = self.hub.advance(&self.store, current) {
            return self.fatal(e);
        }
        if let Err(e) = self.hub.catch_up(&self.store) {
            return self.fatal(e);
        }
        self.arm_catch_up(ctx);
    }

    /// Schedules a step [`CATCH_UP`] from now while a watcher is unsynced: such watchers
    /// catch up even when no new revision arrives, and a member without one has no timer
    /// waking its watch thread.
    fn arm_catch_up(&mut self, ctx: &mut Context<Self>) {
        if self.catch_up_armed || self.hub.unsynced_count() == 0 {
            return;
        }
        self.catch_up_armed = true;
        ctx.run_later(CATCH_UP, |act, ctx| {
            act.catch_up_armed = false;
            act.step(ctx);
        });
    }
}

impl Actor for WatchActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        // Coalescing wake-ups: each change of the revision asks for one step; a full mailbox
        // already holds a step that will read up to the latest revision.
        let mut rx = self.revision.clone();
        let addr = ctx.address();
        actix::spawn(async move {
            while rx.changed().await.is_ok() {
                let _ = addr.try_send(Advance);
            }
        });
        ctx.run_interval(self.limits.progress_notify_interval, |act, ctx| {
            act.hub.notify_progress();
            act.arm_catch_up(ctx);
        });
        // Counts for /metrics, once a second (counting walks every stream).
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            use crate::metrics as m;
            metrics::gauge!(m::WATCHER_TOTAL).set(act.hub.watcher_count() as f64);
            metrics::gauge!(m::WATCH_STREAM_TOTAL).set(act.hub.stream_count() as f64);
            metrics::gauge!(m::WATCH_UNSYNCED).set(act.hub.unsynced_count() as f64);
            // Watchers the hub dropped itself (canceled by compaction) leave no wake-ups.
            act.forget_watched_if_idle();
        });
    }
}

/// Sent when the applied revision changed: deliver new events.
#[derive(Message)]
#[rtype(result = "()")]
struct Advance;

impl Handler<Advance> for WatchActor {
    type Result = ();
    fn handle(&mut self, _: Advance, ctx: &mut Context<Self>) {
        self.step(ctx);
    }
}

/// Sent by a front end for a WatchCreateRequest on a stream (the sink registers the stream).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CreateWatch {
    /// The stream.
    pub stream: StreamKey,
    /// Where its responses go.
    pub sink: StreamSink,
    /// The request.
    pub req: WatchCreateRequest,
    /// The answer to a create the front end refused (no read permission): sent to the sink
    /// in this create's turn, and no watcher is made.
    pub refused: Option<WatchResponse>,
}

impl Handler<CreateWatch> for WatchActor {
    type Result = ();
    fn handle(&mut self, m: CreateWatch, ctx: &mut Context<Self>) {
        if let Some(r) = m.refused {
            m.sink.try_send(r);
            return;
        }
        // From here on apply wakes this actor for every new revision; one applied before
        // (without a wake-up) is read by the step below.
        self.watched.store(true, Ordering::SeqCst);
        // Deliver what is already applied first, so the new watcher's start is exact.
        self.step(ctx);
        self.hub
            .create(m.stream, m.sink, &m.req, self.store.compact_revision());
        self.step(ctx);
        // A refused watch (or one canceled at once) leaves no watcher.
        self.forget_watched_if_idle();
    }
}

/// Sent by a front end for a WatchCancelRequest.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelWatch {
    /// The stream.
    pub stream: StreamKey,
    /// The watch.
    pub watch_id: i64,
}

impl Handler<CancelWatch> for WatchActor {
    type Result = ();
    fn handle(&mut self, m: CancelWatch, _: &mut Context<Self>) {
        self.hub.cancel(m.stream, m.watch_id);
        self.forget_watched_if_idle();
    }
}

/// Sent by a front end for a WatchProgressRequest.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RequestProgress(pub StreamKey);

impl Handler<RequestProgress> for WatchActor {
    type Result = ();
    fn handle(&mut self, m: RequestProgress, ctx: &mut Context<Self>) {
        self.step(ctx);
        self.hub.progress(m.0);
    }
}

/// Sent when a client connection closes: drop its streams and watchers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseConnection(pub u64);

impl Handler<CloseConnection> for WatchActor {
    type Result = ();
    fn handle(&mut self, m: CloseConnection, _: &mut Context<Self>) {
        self.hub.close_connection(m.0);
        self.forget_watched_if_idle();
    }
}
