//! The leader's linger timer ([`LingerTimer`]): the consensus thread's own timerfd.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::ConsensusActor;

/// The linger timer expired ([`LingerTimer`]): the linger it was last armed for ended.
pub(super) struct LingerExpired;

/// Times a leader's lingers to the microsecond: a timerfd (`timerfd_create(2)`,
/// `CLOCK_MONOTONIC`) registered with the consensus thread's own event loop, which the kernel
/// makes readable at the deadline, so the thread that parks in `epoll_wait` is woken by the
/// timer itself. The consensus thread's runtime timers fire on millisecond ticks: there a
/// 300 us linger lasted 0.3-1.3 ms, and a moderate load (10 clients on one connection) idled
/// about 1 ms a round after every writer was back. (A thread of its own that slept until each
/// deadline cost a wake-up of that thread and its own wake-up of the consensus thread per
/// round: 0.6 us of CPU per put on one member; docs/performance.md, "Lingers timed by a
/// timerfd".) One linger is timed at a time: arming the timer again replaces its deadline.
pub(super) struct LingerTimer {
    fd: Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
}

impl LingerTimer {
    /// The timer, disarmed, and the stream of its expiries (one [`LingerExpired`] per expiry,
    /// ending only if reading the timerfd fails); `None` if the kernel refused the timerfd or
    /// the runtime its registration (lingers then use the runtime's timer). Must run on the
    /// thread whose event loop delivers the expiries (the actor's, in `started`).
    pub(super) fn start() -> Option<(
        LingerTimer,
        impl futures::Stream<Item = LingerExpired> + 'static,
    )> {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        // `AsyncFd::with_interest` is deprecated for descriptors that could be closed or
        // swapped under the registration; an `OwnedFd` stays one open descriptor for its whole
        // life, and this one sits in an `Arc` from here on, so `AsyncFd::get_mut` (the one way
        // to swap it) is out of reach: the contract `register_with_interest` asks of its
        // callers (it is unsafe, which the workspace forbids).
        #[allow(deprecated)]
        let made = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE));
        let fd = match made {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the linger timer; lingers use the runtime's millisecond timer");
                return None;
            }
        };
        let expiries = futures::stream::unfold(fd.clone(), |fd| async move {
            loop {
                let mut ready = fd.readable().await.ok()?;
                let mut count = [0u8; 8];
                // The expiry count (8 bytes); WouldBlock: the readiness was stale. The timer is
                // one-shot, so after an expiry nothing is left to read until it is armed
                // again: the readiness is cleared at once instead of by a read that would
                // find nothing when the stream is polled next.
                match rustix::io::read(fd.get_ref(), &mut count) {
                    Ok(8) => {
                        ready.clear_ready();
                        return Some((LingerExpired, fd));
                    }
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Ok(_) | Err(_) => return None,
                }
            }
        });
        Some((LingerTimer { fd }, expiries))
    }

    /// Arms the timer to expire once, `wait` from now (at least 1 ns: a zero time would
    /// disarm it), replacing any deadline it had; false if the kernel refused.
    pub(super) fn arm(&self, wait: Duration) -> bool {
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        let wait = wait.max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: wait.subsec_nanos().into(),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec).is_ok()
    }
}

/// Linger number `.0` ended: handled for each expiry of the linger timer ([`LingerTimer`],
/// with the number it was armed for), or sent by the runtime's timer when there is none.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct LingerEnd(pub(super) u64);

impl Handler<LingerEnd> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: LingerEnd, ctx: &mut Context<Self>) {
        // A linger cut short (a full batch went at once) leaves a stale end behind.
        if m.0 == self.linger_number && self.flush_scheduled {
            self.flush_scheduled = false;
            self.flush(ctx);
        }
    }
}

impl StreamHandler<LingerExpired> for ConsensusActor {
    fn handle(&mut self, _: LingerExpired, ctx: &mut Context<Self>) {
        <Self as Handler<LingerEnd>>::handle(self, LingerEnd(self.linger_armed), ctx);
    }

    /// The timer's stream ends only if reading its timerfd failed: lingers then use the
    /// runtime's timer. (The default would stop the actor.)
    fn finished(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!("the linger timer failed; lingers use the runtime's millisecond timer");
        self.linger_timer = None;
        // A linger it was timing would never end: end it now.
        if self.flush_scheduled && self.linger_armed == self.linger_number {
            self.flush_scheduled = false;
            self.flush(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_linger_never_ends_before_its_deadline_and_arming_again_replaces_it() {
        use futures::StreamExt;
        actix::System::new().block_on(async {
            let (timer, expiries) = LingerTimer::start().expect("a timerfd");
            let mut expiries = Box::pin(expiries);
            let mut next = async || {
                tokio::time::timeout(Duration::from_secs(10), expiries.next())
                    .await
                    .expect("an expiry within 10 s")
                    .expect("the timer's stream runs")
            };
            // Lingers one after another, a zero wait too (a zero time would disarm a timerfd).
            for wait in [300, 0, 2_000, 20_000].map(Duration::from_micros) {
                let deadline = Instant::now() + wait;
                assert!(timer.arm(wait));
                let LingerExpired = next().await;
                let at = Instant::now();
                assert!(
                    at >= deadline,
                    "a {wait:?} linger ended {:?} early",
                    deadline - at
                );
            }
            // A nearer deadline replaces a later one: the expiry comes at the nearer, well
            // within the wait below (had the later one stayed, nothing would come for a
            // minute), and the timer is then disarmed (the later deadline is gone).
            assert!(timer.arm(Duration::from_secs(60)));
            let deadline = Instant::now() + Duration::from_micros(500);
            assert!(timer.arm(Duration::from_micros(500)));
            let LingerExpired = next().await;
            assert!(
                Instant::now() >= deadline,
                "the replacing linger ended early"
            );
            let left = rustix::time::timerfd_gettime(timer.fd.get_ref()).expect("timerfd_gettime");
            assert_eq!(
                (left.it_value.tv_sec, left.it_value.tv_nsec),
                (0, 0),
                "the replaced deadline is still armed"
            );
        });
    }
}
