//! Client proposals handed to a lingering leader without waking its thread
//! ([`ProposalInbox`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use actix::prelude::*;

use super::ConsensusActor;

/// Proposals the inbox takes before the proposer that fills it past this wakes the consensus
/// thread anyway: half of [`super::MAX_HELD`], so that with the proposals the mailbox and the
/// followers brought a flush stays near that bound.
const WAKE_AT_PROPOSALS: usize = super::MAX_HELD / 2;

/// Bytes of proposals the inbox takes before the proposer that fills it past this wakes the
/// consensus thread anyway: half of [`super::MAX_HELD_BYTES`], for the same reason.
const WAKE_AT_BYTES: usize = super::MAX_HELD_BYTES / 2;

/// Where client proposals wait while a leader lingers ([`super::linger`]), instead of each
/// going through the consensus actor's mailbox. Every message queued in an idle actor's
/// mailbox wakes its thread (an `eventfd` write by the sender, a wake-up of the parked
/// thread), only for the proposal to be held until the linger ends. Proposals put here wait
/// without a wake-up: the actor takes them all when the linger ends, with the proposals it
/// holds.
///
/// The inbox is open only while the consensus actor lingers ([`ProposalInbox::open`]); the
/// actor closes it and takes what it holds before each flush ([`ProposalInbox::close_and_take`]).
/// A proposer that finds it closed, or that sees it closed right after putting a proposal in
/// (the actor may have taken the inbox's proposals just before), or that filled it past
/// [`WAKE_AT_PROPOSALS`] or [`WAKE_AT_BYTES`], sends a message to the actor instead
/// ([`Offered`]). So every proposal put in is taken by a flush: the one ending the linger
/// that was open when the proposer saw the inbox open after putting it in, or the one its
/// message leads to.
#[derive(Default)]
pub struct ProposalInbox {
    /// Whether the consensus actor lingers and takes this inbox's proposals when it ends.
    open: AtomicBool,
    queued: Mutex<Queued>,
}

/// The proposals in the inbox: `(encoded request, request id)`, in the order put in.
#[derive(Default)]
struct Queued {
    proposals: Vec<(Vec<u8>, u64)>,
    bytes: usize,
}

/// What became of a proposal offered to the inbox ([`ProposalInbox::offer`]).
#[derive(Debug)]
pub enum Offered {
    /// In the inbox: the flush that ends the current linger proposes it.
    Held,
    /// In the inbox, but the consensus actor must be told to take the inbox's proposals (the
    /// linger ended meanwhile, or the inbox is full).
    Wake,
    /// Not taken (no linger is open): the proposal, to send through the mailbox.
    Closed(Vec<u8>),
}

impl ProposalInbox {
    /// Offers the proposal of request `id` (`data`, its encoded request).
    pub fn offer(&self, data: Vec<u8>, id: u64) -> Offered {
        if !self.open.load(Ordering::Acquire) {
            return Offered::Closed(data);
        }
        let full = self.push(data, id);
        self.after_push(full)
    }

    /// Puts a proposal in; `true` if the inbox is now full.
    fn push(&self, data: Vec<u8>, id: u64) -> bool {
        let mut q = self.lock();
        q.bytes += data.len();
        q.proposals.push((data, id));
        q.proposals.len() >= WAKE_AT_PROPOSALS || q.bytes >= WAKE_AT_BYTES
    }

    /// What became of a proposal just put in (`full`: the inbox is now full).
    fn after_push(&self, full: bool) -> Offered {
        // Read after the push: an actor that closed the inbox before this read may have
        // taken the proposals before the push, and takes this one only once told to. One
        // that closes it after this read takes it (the push precedes the close, and the take
        // follows the close).
        if full || !self.open.load(Ordering::SeqCst) {
            Offered::Wake
        } else {
            Offered::Held
        }
    }

    /// Opens the inbox: the consensus actor lingers, and closes it and takes its proposals
    /// when the linger ends.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Closes the inbox and takes the proposals in it, oldest first.
    pub fn close_and_take(&self) -> Vec<(Vec<u8>, u64)> {
        self.open.store(false, Ordering::SeqCst);
        let mut q = self.lock();
        q.bytes = 0;
        std::mem::take(&mut q.proposals)
    }

    /// Takes the proposals in the inbox, leaving it open or closed as it is.
    pub fn take(&self) -> Vec<(Vec<u8>, u64)> {
        let mut q = self.lock();
        q.bytes = 0;
        std::mem::take(&mut q.proposals)
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ConsensusActor {
    /// Holds the proposals waiting in the inbox, closing it first if `close` (a flush is
    /// about to propose what is held, so the linger is over).
    pub(super) fn take_inbox(&mut self, close: bool) {
        let taken = if close {
            self.inbox.close_and_take()
        } else {
            self.inbox.take()
        };
        for (data, id) in taken {
            crate::metrics::dequeued("consensus");
            self.hold(data, id);
        }
    }
}

/// Sent by a proposer that put its proposal in the [`ProposalInbox`] but found it closed
/// after, or full: take the inbox's proposals (and flush them as any held proposal).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TakeInbox;

impl Handler<TakeInbox> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, _: TakeInbox, ctx: &mut Context<Self>) {
        self.take_inbox(false);
        if self.core.held_len() > 0 {
            self.schedule_flush(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_inbox_hands_the_proposal_back_and_an_open_one_holds_it_until_taken() {
        let inbox = ProposalInbox::default();
        assert!(matches!(inbox.offer(vec![1], 1), Offered::Closed(d) if d == vec![1]));
        inbox.open();
        assert!(matches!(inbox.offer(vec![2], 2), Offered::Held));
        assert!(matches!(inbox.offer(vec![3], 3), Offered::Held));
        assert_eq!(inbox.close_and_take(), vec![(vec![2], 2), (vec![3], 3)]);
        assert!(matches!(inbox.offer(vec![4], 4), Offered::Closed(_)));
        assert!(inbox.take().is_empty());
    }

    #[test]
    fn a_proposal_put_in_after_the_actor_took_the_inbox_asks_for_a_wake_up() {
        let inbox = ProposalInbox::default();
        inbox.open();
        // The proposer saw the inbox open; the linger ends before it puts its proposal in.
        assert!(inbox.open.load(Ordering::SeqCst));
        assert!(inbox.close_and_take().is_empty());
        let full = inbox.push(vec![1], 1);
        assert!(matches!(inbox.after_push(full), Offered::Wake));
        assert_eq!(inbox.take(), vec![(vec![1], 1)]);
        // Taken before the next linger ends it, the proposal would otherwise wait for it.
        inbox.open();
        let full = inbox.push(vec![2], 2);
        assert!(matches!(inbox.after_push(full), Offered::Held));
    }

    #[test]
    fn a_full_inbox_asks_for_a_wake_up() {
        let inbox = ProposalInbox::default();
        inbox.open();
        for i in 1..WAKE_AT_PROPOSALS as u64 {
            assert!(matches!(inbox.offer(vec![0], i), Offered::Held));
        }
        assert!(matches!(
            inbox.offer(vec![0], WAKE_AT_PROPOSALS as u64),
            Offered::Wake
        ));
        assert_eq!(inbox.close_and_take().len(), WAKE_AT_PROPOSALS);
        inbox.open();
        assert!(matches!(
            inbox.offer(vec![0; WAKE_AT_BYTES], 1),
            Offered::Wake
        ));
        assert_eq!(inbox.take().len(), 1);
    }

    /// Proposers racing an actor that opens, closes and takes the inbox over and over: every
    /// proposal is taken exactly once, by a take that follows it or by the take its
    /// [`Offered::Wake`] asks for.
    #[test]
    fn every_proposal_offered_while_the_inbox_opens_and_closes_is_taken_once() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        const PROPOSERS: u64 = 4;
        const EACH: u64 = 20_000;
        let inbox = Arc::new(ProposalInbox::default());
        let woken = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let proposers: Vec<_> = (0..PROPOSERS)
            .map(|p| {
                let (inbox, woken, done) = (inbox.clone(), woken.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut direct = Vec::new();
                    for i in 0..EACH {
                        let id = p * EACH + i;
                        match inbox.offer(vec![0], id) {
                            Offered::Held => {}
                            Offered::Wake => {
                                woken.fetch_add(1, Ordering::SeqCst);
                            }
                            Offered::Closed(_) => direct.push(id),
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    direct
                })
            })
            .collect();
        let mut taken = Vec::new();
        let mut served = 0;
        let mut serve = |taken: &mut Vec<u64>| {
            // The actor answers wake-ups with a take (the inbox may be open or closed then).
            let w = woken.load(Ordering::SeqCst);
            if w > served {
                served = w;
                taken.extend(inbox.take().into_iter().map(|(_, id)| id));
            }
        };
        while done.load(Ordering::SeqCst) < PROPOSERS as usize {
            inbox.open();
            std::thread::yield_now();
            taken.extend(inbox.close_and_take().into_iter().map(|(_, id)| id));
            serve(&mut taken);
        }
        // Every proposer is done and the actor lingers no more: only the wake-ups it was
        // asked for take what is left.
        serve(&mut taken);
        assert!(inbox.take().is_empty(), "a proposal was left in the inbox");
        for p in proposers {
            taken.extend(p.join().expect("a proposer panicked"));
        }
        taken.sort_unstable();
        let all: Vec<u64> = (0..PROPOSERS * EACH).collect();
        assert_eq!(taken, all, "every proposal taken exactly once");
    }
}
