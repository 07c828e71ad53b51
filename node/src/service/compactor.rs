//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), with etcd
//! v3.5's semantics (`server/etcdserver/api/v3compactor`):
//! - `periodic` with retention `R`: the current revision is sampled every `R / 10` (every
//!   6 minutes once `R` is past an hour); when a sample is at least `R` old, the store is
//!   compacted to its revision, so about `R` of history stays readable.
//! - `revision` with retention `N`: every 5 minutes the store is compacted to
//!   `current - N`, if that moved since the last compaction.
//!
//! Only the leader compacts (etcd pauses the compactor on followers), and it does so through
//! consensus, like a client's Compaction request. [`Schedule`] is the pure decision part
//! (time passed in); [`spawn`] is the task that feeds it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use etch_protocol::etcdserverpb::CompactionRequest;
use etch_protocol::etchpb::AuthInfo;

use crate::config::AutoCompaction;
use crate::service::Service;

/// Revision mode's check interval (etcd `revInterval`).
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The sampling divisor of periodic mode (etcd `retryDivisor`).
const PERIODIC_DIVISOR: u32 = 10;

/// When to compact, and to which revision.
#[derive(Debug)]
pub struct Schedule {
    mode: AutoCompaction,
    /// (when, revision) samples, oldest first (periodic mode).
    samples: VecDeque<(Instant, i64)>,
    /// The last revision compacted to.
    last: i64,
}

impl Schedule {
    /// A schedule for `mode`.
    pub fn new(mode: AutoCompaction) -> Schedule {
        Schedule {
            mode,
            samples: VecDeque::new(),
            last: 0,
        }
    }

    /// How often [`Schedule::tick`] should run.
    pub fn interval(&self) -> Duration {
        match self.mode {
            AutoCompaction::Periodic(r) => r.min(Duration::from_secs(3600)) / PERIODIC_DIVISOR,
            AutoCompaction::Revision(_) => REVISION_MODE_INTERVAL,
        }
    }

    /// Records `revision` (the current one) at `now`; returns the revision to compact to, if
    /// one is due.
    pub fn tick(&mut self, now: Instant, revision: i64) -> Option<i64> {
        let target = match self.mode {
            AutoCompaction::Periodic(r) => {
                self.samples.push_back((now, revision));
                // The newest sample at least `r` old; older ones are no longer needed.
                let mut due = None;
                while let Some(&(at, rev)) = self.samples.front() {
                    if now.duration_since(at) < r {
                        break;
                    }
                    due = Some(rev);
                    self.samples.pop_front();
                }
                due?
            }
            AutoCompaction::Revision(n) => revision - n,
        };
        (target > self.last && target > 0).then_some(target)
    }

    /// Records a finished compaction to `revision` (or one found already done).
    pub fn compacted(&mut self, revision: i64) {
        self.last = self.last.max(revision);
    }

    /// Forgets the samples (this member stopped leading: etcd pauses the compactor).
    pub fn pause(&mut self) {
        self.samples.clear();
    }
}

/// Runs automatic compaction for `service` while it lives; compacts only while this member
/// leads.
pub fn spawn(service: Arc<Service>, mode: AutoCompaction) -> tokio::task::JoinHandle<()> {
    let state = service.state_arc();
    state.spawn_essential("automatic compaction", async move {
        let mut schedule = Schedule::new(mode);
        let mut tick = tokio::time::interval(schedule.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(?mode, interval = ?schedule.interval(), "automatic compaction enabled");
        loop {
            tick.tick().await;
            let state = service.state();
            if state.leader() != state.member_id {
                schedule.pause();
                continue;
            }
            let current = service.store().current_revision();
            let Some(revision) = schedule.tick(Instant::now(), current) else {
                continue;
            };
            let req = CompactionRequest {
                revision,
                physical: false,
            };
            match service.compact(&AuthInfo::default(), req).await {
                Ok(_) => {
                    tracing::info!(revision, "automatic compaction finished");
                    schedule.compacted(revision);
                }
                Err(crate::error::ApiError::Request(
                    etch_storage::mvcc::RequestError::Compacted,
                )) => schedule.compacted(revision),
                Err(e) => tracing::warn!(revision, error = %e, "automatic compaction failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_keeps_the_retention_of_history() {
        let r = Duration::from_secs(10);
        let mut s = Schedule::new(AutoCompaction::Periodic(r));
        assert_eq!(s.interval(), Duration::from_secs(1));
        let t0 = Instant::now();
        // Revisions grow by 100 a second; nothing is due before 10 s have passed.
        for i in 0..10 {
            assert_eq!(s.tick(t0 + Duration::from_secs(i), 100 * i as i64), None);
        }
        // At 10 s the sample from 0 s is due (revision 0: nothing to compact); at 11 s the one
        // from 1 s.
        assert_eq!(s.tick(t0 + Duration::from_secs(10), 1000), None);
        assert_eq!(s.tick(t0 + Duration::from_secs(11), 1100), Some(100));
        s.compacted(100);
        assert_eq!(s.tick(t0 + Duration::from_secs(12), 1200), Some(200));
        s.compacted(200);
        // No writes: the same revision is not compacted twice.
        assert_eq!(s.tick(t0 + Duration::from_secs(13), 200), Some(300));
        s.compacted(300);
        assert_eq!(s.tick(t0 + Duration::from_secs(30), 300), None);
        // Long retentions sample every 6 minutes.
        let s = Schedule::new(AutoCompaction::Periodic(Duration::from_secs(5 * 3600)));
        assert_eq!(s.interval(), Duration::from_secs(360));
    }

    #[test]
    fn revision_mode_keeps_n_revisions() {
        let mut s = Schedule::new(AutoCompaction::Revision(1000));
        let t0 = Instant::now();
        assert_eq!(s.tick(t0, 500), None);
        assert_eq!(s.tick(t0, 1500), Some(500));
        s.compacted(500);
        assert_eq!(s.tick(t0, 1500), None);
        assert_eq!(s.tick(t0, 1600), Some(600));
    }

    #[test]
    fn modes_parse_as_in_etcd() {
        use AutoCompaction::*;
        let p = |m, r| AutoCompaction::parse(m, r);
        assert_eq!(p("periodic", "0").unwrap(), None);
        assert_eq!(
            p("periodic", "1").unwrap(),
            Some(Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            p("periodic", "30m").unwrap(),
            Some(Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(p("revision", "1000").unwrap(), Some(Revision(1000)));
        assert!(p("revision", "1h").is_err());
        assert!(p("daily", "1").is_err());
    }
}
