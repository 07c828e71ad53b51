//! The checkers: the recorded history against the final history of the keyspace (every event
//! from revision 1, read from a member after the faults stopped).
//!
//! etcd gives every change a revision, so linearizability of the key-value operations is
//! checked through them (the approach of Jepsen's etcd analysis):
//! - every acknowledged write is in the final history at the revision it was acknowledged with,
//!   with its value; no value is written twice; no value appears that no client wrote;
//! - every read returned the key's state at the revision it was served at (a failed compare saw
//!   a state that did not match, a successful one a state that did);
//! - real time: an operation invoked after another returned is served at a revision no lower
//!   (a write: strictly higher). With the two above, ordering operations by revision gives a
//!   legal sequential history that respects real time.
//!
//! The register keys (put and get only) are also checked without trusting revisions, by the
//! simulator's Gibbons-Korach checker (`crate::sim::check`, itself cross-checked against
//! stateright's `LinearizabilityTester`).
//!
//! Watches: each watcher's events, across its reconnections, must be exactly the final
//! history's events from its start revision to its last one: ordered, none repeated, none
//! missing. Leases: the key of a lease nobody revoked must not be gone before the lease's TTL
//! ran out after its last acknowledged renewal.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::record::{Event, Kind, Lease, Op, Outcome, Watched};

/// The checkers' findings.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Linearizability violations (key-value operations).
    pub linearizability: Vec<String>,
    /// Acknowledged writes missing from the final history.
    pub lost: Vec<String>,
    /// Watch violations.
    pub watch: Vec<String>,
    /// Lease violations.
    pub lease: Vec<String>,
}

impl Verdict {
    /// Whether every checker passed.
    pub fn ok(&self) -> bool {
        self.linearizability.is_empty()
            && self.lost.is_empty()
            && self.watch.is_empty()
            && self.lease.is_empty()
    }

    /// One line per kind with the count and the first few findings.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (name, v) in [
            ("linearizability", &self.linearizability),
            ("lost acknowledged writes", &self.lost),
            ("watch", &self.watch),
            ("lease", &self.lease),
        ] {
            s += &format!("{name} violations: {}\n", v.len());
            for f in v.iter().take(5) {
                s += &format!("  {f}\n");
            }
        }
        s
    }
}

/// A key's state from a revision on: (revision, value and mod_revision, or `None`: absent).
type State = (i64, Option<(u64, i64)>);

/// Per key, its states in revision order.
struct States(HashMap<String, Vec<State>>);

impl States {
    fn of(events: &[Event]) -> States {
        let mut m: HashMap<String, Vec<State>> = HashMap::new();
        for e in events {
            m.entry(e.key.clone())
                .or_default()
                .push((e.rev, e.value.map(|v| (v, e.rev))));
        }
        States(m)
    }

    /// The key's value and mod_revision at `rev`.
    fn at(&self, key: &str, rev: i64) -> Option<(u64, i64)> {
        let v = self.0.get(key)?;
        let i = v.partition_point(|s| s.0 <= rev);
        if i == 0 { None } else { v[i - 1].1 }
    }
}

/// Runs every checker. `registers` are the keys only put and read (checked again without
/// revisions).
pub fn check(
    ops: &[Op],
    leases: &[Lease],
    watched: &[Watched],
    history: &[Event],
    registers: &[&str],
) -> Verdict {
    let mut v = Verdict::default();
    let states = States::of(history);
    check_writes(ops, history, &mut v);
    check_reads(ops, &states, &mut v);
    check_real_time(ops, &mut v);
    check_registers(ops, registers, &mut v);
    check_watches(watched, history, &mut v);
    check_leases(ops, leases, history, &mut v);
    v
}

fn check_writes(ops: &[Op], history: &[Event], v: &mut Verdict) {
    // Which revision wrote which value, and the deletes.
    let mut by_value: HashMap<u64, Vec<&Event>> = HashMap::new();
    let mut at: HashSet<(i64, &str, Option<u64>)> = HashSet::new();
    for e in history {
        if let Some(x) = e.value.filter(|x| *x != 0) {
            by_value.entry(x).or_default().push(e);
        }
        at.insert((e.rev, e.key.as_str(), e.value));
    }
    for (x, es) in &by_value {
        if es.len() > 1 {
            v.linearizability
                .push(format!("value v{x} written {} times: {es:?}", es.len()));
        }
    }
    let invoked: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Put { value } | Kind::Cas { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    for (x, es) in &by_value {
        if !invoked.contains(x) {
            v.linearizability.push(format!(
                "value v{x} at revision {} was never written by a client",
                es[0].rev
            ));
        }
    }
    for o in ops {
        let expected = match (&o.kind, &o.outcome) {
            (Kind::Put { value }, Outcome::Put { rev }) => Some((*rev, Some(*value))),
            (
                Kind::Cas { value, .. },
                Outcome::Cas {
                    rev,
                    succeeded: true,
                },
            ) => Some((*rev, Some(*value))),
            (Kind::Delete, Outcome::Delete { rev, deleted }) if *deleted > 0 => Some((*rev, None)),
            _ => None,
        };
        if let Some((rev, value)) = expected
            && !at.contains(&(rev, o.key.as_str(), value))
        {
            v.lost.push(format!(
                "acknowledged {:?} of {} at revision {rev} is not in the final history",
                o.kind, o.key
            ));
        }
    }
}

fn check_reads(ops: &[Op], states: &States, v: &mut Verdict) {
    for o in ops {
        match (&o.kind, &o.outcome) {
            (
                Kind::Get,
                Outcome::Get {
                    rev,
                    value,
                    mod_rev,
                },
            ) => {
                let want = states.at(&o.key, *rev);
                let got = value.map(|x| (x, *mod_rev));
                if want != got {
                    v.linearizability.push(format!(
                        "client {} read {} at revision {rev} as {got:?}; the history has {want:?}",
                        o.client, o.key
                    ));
                }
            }
            (Kind::Cas { expect, .. }, Outcome::Cas { rev, succeeded }) => {
                let before = if *succeeded { rev - 1 } else { *rev };
                let held = states.at(&o.key, before).map(|s| s.0) == *expect;
                if held != *succeeded {
                    v.linearizability.push(format!(
                        "client {}'s compare {} == {expect:?} {} at revision {rev}, but the \
                         history has {:?}",
                        o.client,
                        o.key,
                        if *succeeded { "held" } else { "failed" },
                        states.at(&o.key, before)
                    ));
                }
            }
            (Kind::Delete, Outcome::Delete { rev, deleted: 0 }) => {
                if let Some(s) = states.at(&o.key, *rev) {
                    v.linearizability.push(format!(
                        "client {} deleted nothing of {} at revision {rev}, but it held {s:?}",
                        o.client, o.key
                    ));
                }
            }
            _ => {}
        }
    }
}

/// An operation invoked after another returned must not be served at a lower revision (a
/// write: not at a lower or equal one, since what returned before it, read or write, had
/// seen or made that revision).
fn check_real_time(ops: &[Op], v: &mut Verdict) {
    let mut done: Vec<(u64, i64, usize)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| Some((o.end?, o.revision()?, i)))
        .collect();
    done.sort_unstable();
    let mut by_start: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].end.is_some() && ops[i].revision().is_some())
        .collect();
    by_start.sort_unstable_by_key(|&i| ops[i].start);
    let mut j = 0;
    let mut max: Option<(i64, usize)> = None;
    for i in by_start {
        let o = &ops[i];
        while j < done.len() && done[j].0 < o.start {
            if max.is_none_or(|m| done[j].1 > m.0) {
                max = Some((done[j].1, done[j].2));
            }
            j += 1;
        }
        let (Some((before, who)), Some(rev)) = (max, o.revision()) else {
            continue;
        };
        if rev < before || (o.wrote() && rev == before) {
            v.linearizability.push(format!(
                "client {}'s {:?} of {} invoked at {} µs was served at revision {rev}, after \
                 client {}'s {:?} of {} returned at {} µs with revision {before}",
                o.client,
                o.kind,
                o.key,
                o.start,
                ops[who].client,
                ops[who].kind,
                ops[who].key,
                ops[who].end.unwrap_or(0)
            ));
        }
    }
}

/// The register keys, checked by their values alone (no revisions trusted).
fn check_registers(ops: &[Op], registers: &[&str], v: &mut Verdict) {
    use crate::sim::check::{History, Op as ROp, Ret};
    let keys: HashSet<&str> = registers.iter().copied().collect();
    // Invocations and returns in time order; at equal times an invocation comes first (the two
    // operations then count as concurrent, the weaker claim).
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        if !keys.contains(o.key.as_str()) {
            continue;
        }
        events.push((o.start, 0, i));
        events.push((o.end.unwrap_or(u64::MAX), 1, i));
    }
    events.sort_unstable();
    let mut h = History::new(registers);
    // Each operation is its own client in `History`'s bookkeeping (keyed by its index), so an
    // invocation and a return of one client at the same microsecond cannot be paired wrongly.
    for (_, phase, i) in events {
        let o = &ops[i];
        match (phase, &o.kind, &o.outcome) {
            (0, Kind::Put { value }, _) => h.invoke(i, ROp::Write(o.key.clone(), *value)),
            (0, _, _) => h.invoke(i, ROp::Read(o.key.clone())),
            (_, Kind::Put { .. }, Outcome::Put { .. }) => h.complete(i, Ret::Written),
            (_, Kind::Get, Outcome::Get { value, .. }) => h.complete(i, Ret::Read(*value)),
            _ => h.indeterminate(i),
        }
    }
    if let Err(e) = h.check() {
        v.linearizability.push(format!("registers (by value): {e}"));
    }
}

fn check_watches(watched: &[Watched], history: &[Event], v: &mut Verdict) {
    for w in watched {
        let Some(last) = w.events.last().map(|e| e.rev) else {
            continue;
        };
        let want: Vec<&Event> = history
            .iter()
            .filter(|e| e.rev >= w.from && e.rev <= last)
            .collect();
        let got: Vec<&Event> = w.events.iter().collect();
        if want != got {
            let i = want
                .iter()
                .zip(&got)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            v.watch.push(format!(
                "watcher {} ({} watches from revision {}): {} events, the history has {} up to \
                 revision {last}; first difference at #{i}: got {:?}, history {:?}",
                w.watcher,
                w.watches,
                w.from,
                got.len(),
                want.len(),
                got.get(i),
                want.get(i)
            ));
        }
    }
}

fn check_leases(ops: &[Op], leases: &[Lease], history: &[Event], v: &mut Verdict) {
    // For each revision, the earliest time an operation served at or after it returned: the
    // change at that revision had happened by then.
    let mut by_rev: BTreeMap<i64, u64> = BTreeMap::new();
    for o in ops {
        if let (Some(end), Some(rev)) = (o.end, o.revision()) {
            let e = by_rev.entry(rev).or_insert(end);
            *e = (*e).min(end);
        }
    }
    let mut suffix_min: Vec<(i64, u64)> = by_rev.into_iter().collect();
    for i in (0..suffix_min.len().saturating_sub(1)).rev() {
        suffix_min[i].1 = suffix_min[i].1.min(suffix_min[i + 1].1);
    }
    for l in leases {
        let Some(key) = &l.key else { continue };
        let Some(deleted) = history
            .iter()
            .find(|e| &e.key == key && e.value.is_none())
            .map(|e| e.rev)
        else {
            continue;
        };
        if l.revoked_at.is_some() {
            continue;
        }
        let i = suffix_min.partition_point(|x| x.0 < deleted);
        let Some(&(_, seen)) = suffix_min.get(i) else {
            continue;
        };
        let earliest = l.earliest_expiry();
        if seen < earliest {
            v.lease.push(format!(
                "lease {:x}: its key {key} was deleted at revision {deleted} by {} µs, before \
                 its TTL ran out at {earliest} µs (last renewal acknowledged: {:?})",
                l.id,
                seen,
                l.keep_alives.last()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, key: &str, kind: Kind, start: u64, end: u64, outcome: Outcome) -> Op {
        Op {
            client,
            key: key.into(),
            kind,
            start,
            end: Some(end),
            outcome,
        }
    }

    fn put_event(rev: i64, key: &str, value: u64) -> Event {
        Event {
            rev,
            key: key.into(),
            value: Some(value),
        }
    }

    #[test]
    fn a_stale_read_and_a_lost_write_are_found() {
        let history = vec![put_event(2, "r0", 1), put_event(3, "r0", 2)];
        let good = vec![
            op(
                0,
                "r0",
                Kind::Put { value: 1 },
                0,
                10,
                Outcome::Put { rev: 2 },
            ),
            op(
                0,
                "r0",
                Kind::Put { value: 2 },
                20,
                30,
                Outcome::Put { rev: 3 },
            ),
            op(
                1,
                "r0",
                Kind::Get,
                40,
                50,
                Outcome::Get {
                    rev: 3,
                    value: Some(2),
                    mod_rev: 3,
                },
            ),
        ];
        assert!(check(&good, &[], &[], &history, &["r0"]).ok());
        // Served at revision 2 after the put at 3 returned: stale (both checkers see it).
        let mut stale = good.clone();
        stale[2].outcome = Outcome::Get {
            rev: 2,
            value: Some(1),
            mod_rev: 2,
        };
        let v = check(&stale, &[], &[], &history, &["r0"]);
        assert_eq!(v.linearizability.len(), 2, "{}", v.summary());
        // An acknowledged put missing from the history.
        let v = check(&good, &[], &[], &history[..1], &["r0"]);
        assert!(!v.lost.is_empty(), "{}", v.summary());
    }

    #[test]
    fn watch_gaps_and_repeats_and_early_lease_expiry_are_found() {
        let history = vec![
            put_event(2, "k", 1),
            put_event(3, "k", 2),
            Event {
                rev: 4,
                key: "l/1".into(),
                value: None,
            },
        ];
        let w = |events: Vec<Event>| Watched {
            watcher: 0,
            from: 2,
            events,
            watches: 1,
        };
        assert!(
            check(&[], &[], &[w(history.clone())], &history, &[])
                .watch
                .is_empty()
        );
        let gap = w(vec![history[0].clone(), history[2].clone()]);
        assert_eq!(check(&[], &[], &[gap], &history, &[]).watch.len(), 1);
        let repeat = w(vec![
            history[0].clone(),
            history[0].clone(),
            history[1].clone(),
        ]);
        assert_eq!(check(&[], &[], &[repeat], &history, &[]).watch.len(), 1);
        // A read served at revision 4 returned at 2 s; the lease was renewed at 1.5 s for 2 s.
        let ops = vec![op(
            0,
            "k",
            Kind::Get,
            1_900_000,
            2_000_000,
            Outcome::Get {
                rev: 4,
                value: Some(2),
                mod_rev: 3,
            },
        )];
        let lease = Lease {
            id: 1,
            key: Some("l/1".into()),
            granted: (0, 2),
            keep_alives: vec![(1_500_000, 2)],
            revoked_at: None,
        };
        assert_eq!(
            check(&ops, std::slice::from_ref(&lease), &[], &history, &[])
                .lease
                .len(),
            1
        );
        let revoked = Lease {
            revoked_at: Some(1_800_000),
            ..lease
        };
        assert!(check(&ops, &[revoked], &[], &history, &[]).lease.is_empty());
    }
}
