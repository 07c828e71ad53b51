//! Client proposals handed to a lingering leader without waking its thread
//! ([`ProposalInbox`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use actix::prelude::*;

use super::ConsensusActor;

/// Proposals the inbox holds at most: the proposer that fills it to this wakes the consensus
/// thread to take them, and until they are taken, later proposals go through the mailbox.
/// Half of [`super::MAX_HELD`]: a flush still proposes at most that many at once (the actor
/// proposes what it holds whenever taking the inbox fills a batch).
const MAX_PROPOSALS: usize = super::MAX_HELD / 2;

/// Bytes of proposals the inbox holds at most (as [`MAX_PROPOSALS`]; the last one put in may
/// go past it): half of [`super::MAX_HELD_BYTES`].
const MAX_BYTES: usize = super::MAX_HELD_BYTES / 2;

/// Where client proposals wait while a leader lingers ([`super::linger`]), instead of each
/// going through the consensus actor's mailbox. Every message queued in an idle actor's
/// mailbox wakes its thread (an `eventfd` write by the sender, a wake-up of the parked
/// thread), only for the proposal to be held until the linger ends. Proposals put here wait
/// without a wake-up.
///
/// The actor opens the inbox when it starts a linger ([`ProposalInbox::open`]) and, at the
/// start of every flush, closes it and takes what it holds ([`ProposalInbox::close_and_take`]),
/// so an open inbox always has a flush coming. A proposer that finds it closed (or full) sends
/// its proposal through the mailbox ([`Offered::Refused`]). One that sees it closed right
/// after putting its proposal in (a flush may have taken the inbox just before), or that
/// filled it, tells the actor to take it ([`Offered::Wake`], [`TakeInbox`]). So while the
/// actor runs, every proposal put in is taken once: by the flush that closes the inbox after
/// the proposer saw it open, or on the proposer's [`TakeInbox`]. When the actor stops, it
/// fails the waiters of what the inbox holds; a proposer whose [`TakeInbox`] the stopped
/// actor refuses withdraws its proposal ([`ProposalInbox::withdraw`]).
#[derive(Default)]
pub struct ProposalInbox {
    /// Whether proposals put in now are taken without a wake-up: a flush that closes the
    /// inbox is coming (the actor lingers).
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
    /// In the inbox: the flush that closes it next takes it.
    Held,
    /// In the inbox, but the actor must be told to take it ([`TakeInbox`]): the inbox was
    /// closed meanwhile, or is now full.
    Wake,
    /// Not taken (the inbox is closed or full): the proposal, to send through the mailbox.
    Refused(Vec<u8>),
}

impl ProposalInbox {
    /// Offers the proposal of request `id` (`data`, its encoded request).
    pub fn offer(&self, data: Vec<u8>, id: u64) -> Offered {
        if !self.open.load(Ordering::Acquire) {
            return Offered::Refused(data);
        }
        match self.push(data, id) {
            Err(data) => Offered::Refused(data),
            Ok(full) => self.after_push(full),
        }
    }

    /// Puts a proposal in: `Ok(true)` if that filled the inbox, `Err` (the proposal) if it was
    /// full already.
    fn push(&self, data: Vec<u8>, id: u64) -> Result<bool, Vec<u8>> {
        let mut q = self.lock();
        if q.proposals.len() >= MAX_PROPOSALS || q.bytes >= MAX_BYTES {
            return Err(data);
        }
        q.bytes += data.len();
        q.proposals.push((data, id));
        Ok(q.proposals.len() >= MAX_PROPOSALS || q.bytes >= MAX_BYTES)
    }

    /// What became of a proposal just put in (`full`: it filled the inbox).
    fn after_push(&self, full: bool) -> Offered {
        // Read after the push, whose lock orders it against every take. A flush's take before
        // it followed that flush's close, which this read then sees (or a later open, whose
        // own flush is yet to come): the proposal asks for a take. Any take after the push
        // takes the proposal.
        if full || !self.open.load(Ordering::SeqCst) {
            Offered::Wake
        } else {
            Offered::Held
        }
    }

    /// Withdraws the proposal of request `id` if it is still in the inbox (`true`): its
    /// [`TakeInbox`] could not be delivered. `false`: it was taken (proposed, or failed by a
    /// stopping actor); its waiter gets the outcome.
    pub fn withdraw(&self, id: u64) -> bool {
        let mut q = self.lock();
        match q.proposals.iter().position(|&(_, i)| i == id) {
            Some(at) => {
                let (data, _) = q.proposals.remove(at);
                q.bytes -= data.len();
                true
            }
            None => false,
        }
    }

    /// Opens the inbox: the consensus actor lingers, and the flush ending the linger closes it
    /// and takes its proposals.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Closes the inbox and takes the proposals in it, oldest first.
    pub fn close_and_take(&self) -> Vec<(Vec<u8>, u64)> {
        self.open.store(false, Ordering::SeqCst);
        self.take()
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
    /// Holds the proposals waiting in the inbox, closing it first if `close` (a flush follows
    /// and ends the linger). Whenever what is held makes a full batch, it is proposed at once,
    /// so no flush proposes more than a full batch and one request.
    pub(super) fn take_inbox(&mut self, close: bool, ctx: &mut Context<Self>) {
        let taken = if close {
            self.inbox.close_and_take()
        } else {
            self.inbox.take()
        };
        for (data, id) in taken {
            crate::metrics::dequeued("consensus");
            if self.hold(data, id) && self.held_full() {
                self.propose_held(ctx);
            }
        }
    }
}

/// Sent by a proposer that put its proposal in the [`ProposalInbox`] but saw it closed right
/// after, or filled it: take the inbox's proposals (proposed as any held proposal).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TakeInbox;

impl Handler<TakeInbox> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, _: TakeInbox, ctx: &mut Context<Self>) {
        self.take_inbox(false, ctx);
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
        assert!(matches!(inbox.offer(vec![1], 1), Offered::Refused(d) if d == vec![1]));
        inbox.open();
        assert!(matches!(inbox.offer(vec![2], 2), Offered::Held));
        assert!(matches!(inbox.offer(vec![3], 3), Offered::Held));
        assert_eq!(inbox.close_and_take(), vec![(vec![2], 2), (vec![3], 3)]);
        assert!(matches!(inbox.offer(vec![4], 4), Offered::Refused(_)));
        assert!(inbox.take().is_empty());
    }

    #[test]
    fn a_proposal_put_in_after_the_actor_took_the_inbox_asks_for_a_wake_up() {
        let inbox = ProposalInbox::default();
        inbox.open();
        // The proposer saw the inbox open; the linger ends before it puts its proposal in.
        assert!(inbox.open.load(Ordering::SeqCst));
        assert!(inbox.close_and_take().is_empty());
        let full = inbox.push(vec![1], 1).expect("room");
        assert!(matches!(inbox.after_push(full), Offered::Wake));
        assert_eq!(inbox.take(), vec![(vec![1], 1)]);
        // Taken before the next linger ends it, the proposal would otherwise wait for it.
        inbox.open();
        let full = inbox.push(vec![2], 2).expect("room");
        assert!(matches!(inbox.after_push(full), Offered::Held));
    }

    #[test]
    fn a_full_inbox_asks_for_a_wake_up_and_refuses_more() {
        let inbox = ProposalInbox::default();
        inbox.open();
        for i in 1..MAX_PROPOSALS as u64 {
            assert!(matches!(inbox.offer(vec![0], i), Offered::Held));
        }
        assert!(matches!(
            inbox.offer(vec![0], MAX_PROPOSALS as u64),
            Offered::Wake
        ));
        assert!(matches!(inbox.offer(vec![9], 0), Offered::Refused(d) if d == vec![9]));
        assert_eq!(inbox.close_and_take().len(), MAX_PROPOSALS);
        inbox.open();
        assert!(matches!(inbox.offer(vec![0; MAX_BYTES], 1), Offered::Wake));
        assert!(matches!(inbox.offer(vec![0], 2), Offered::Refused(_)));
        assert_eq!(inbox.take().len(), 1);
    }

    #[test]
    fn a_proposal_is_withdrawn_only_while_it_is_in_the_inbox() {
        let inbox = ProposalInbox::default();
        inbox.open();
        assert!(matches!(inbox.offer(vec![1, 1], 1), Offered::Held));
        assert!(matches!(inbox.offer(vec![2], 2), Offered::Held));
        assert!(inbox.withdraw(1));
        assert!(!inbox.withdraw(1));
        assert_eq!(inbox.lock().bytes, 1);
        assert_eq!(inbox.close_and_take(), vec![(vec![2], 2)]);
        assert!(!inbox.withdraw(2));
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
                            Offered::Refused(_) => direct.push(id),
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
