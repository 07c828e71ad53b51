//! The clients' history and its linearizability check, each key a register.
//!
//! Every put writes a value unique in the run, so each read names the write it saw, and
//! linearizability of a register reduces to Gibbons and Korach's zone conditions ("Testing
//! shared memories", SIAM J. Comput. 26(4), 1997), checked in O(n log n) per key:
//! - no read returns before the write it saw was invoked, nor a value never written;
//! - for each value, its *cluster* (the write and the reads that saw it) has a zone between
//!   the earliest return and the latest invocation among its operations; when the earliest
//!   return comes first the zone is *forward* (the value must hold across it), else
//!   *backward* (the cluster fits in one instant);
//! - no two forward zones overlap, and no backward zone lies inside a forward zone.
//!
//! An operation whose outcome the client never learned (a timeout, a crashed member, a "no
//! leader" error) is open-ended: a write that some read saw happened, at an unknown time after
//! its invocation; a write nobody saw may not have happened and is left out; such a read tells
//! nothing. Times are the positions of invocations and returns in the simulation's event
//! order, so no two are equal.
//!
//! The unit tests compare this checker's verdicts with stateright's `LinearizabilityTester`
//! (an exhaustive search, too slow for runs of hundreds of operations with unknown outcomes)
//! on thousands of small random histories.

use std::collections::BTreeMap;

/// A client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put of a value unique in the run.
    Write(String, u64),
    /// Linearizable get.
    Read(String),
}

/// A client operation's acknowledged result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    /// The put was applied.
    Written,
    /// The value read (`None`: no such key).
    Read(Option<u64>),
}

/// One operation of one key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Client that issued it.
    pub client: usize,
    /// `Some(v)`: a write of `v`; `None`: a read.
    pub write: Option<u64>,
    /// The value a read returned.
    pub read: Option<Option<u64>>,
    /// Invocation time.
    pub start: u64,
    /// Return time; `None` when the outcome is unknown.
    pub end: Option<u64>,
}

/// Every client's operations, per key.
#[derive(Debug, Default)]
pub struct History {
    ops: BTreeMap<String, Vec<Record>>,
    /// Per client: its operation in flight (key, index in that key's records), and whether its
    /// last operation was acknowledged.
    clients: BTreeMap<usize, (Option<(String, usize)>, bool)>,
    clock: u64,
}

impl History {
    /// An empty history over `keys` (each starts absent).
    pub fn new(keys: &[&str]) -> History {
        History {
            ops: keys.iter().map(|k| (k.to_string(), Vec::new())).collect(),
            ..History::default()
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Client `c` invokes `op`.
    pub fn invoke(&mut self, c: usize, op: Op) {
        let start = self.tick();
        let (key, write) = match op {
            Op::Write(k, v) => (k, Some(v)),
            Op::Read(k) => (k, None),
        };
        let ops = self.ops.entry(key.clone()).or_default();
        ops.push(Record {
            client: c,
            write,
            read: None,
            start,
            end: None,
        });
        let at = ops.len() - 1;
        self.clients.insert(c, (Some((key, at)), false));
    }

    /// Client `c`'s operation in flight returned `ret`.
    pub fn complete(&mut self, c: usize, ret: Ret) {
        let end = self.tick();
        let Some((Some((key, at)), acked)) = self.clients.get_mut(&c) else {
            return;
        };
        let r = &mut self.ops.get_mut(key.as_str()).expect("key")[*at];
        r.end = Some(end);
        if let Ret::Read(v) = ret {
            r.read = Some(v);
        }
        *acked = true;
        self.clients.insert(c, (None, true));
    }

    /// Client `c` will never learn the outcome of its operation in flight.
    pub fn indeterminate(&mut self, c: usize) {
        self.clients.insert(c, (None, false));
    }

    /// Whether client `c`'s last operation was acknowledged.
    pub fn last_acknowledged(&self, c: usize) -> bool {
        self.clients
            .get(&c)
            .is_some_and(|(inflight, acked)| inflight.is_none() && *acked)
    }

    /// Every key's history must be linearizable.
    ///
    /// # Errors
    /// The first key that is not, why, and its operations.
    pub fn check(&self) -> Result<(), String> {
        for (key, ops) in &self.ops {
            if let Err(why) = linearizable(ops) {
                let lines: Vec<String> = ops.iter().map(|r| format!("{r:?}")).collect();
                return Err(format!(
                    "the history of key {key:?} is not linearizable: {why}\n  {}",
                    lines.join("\n  ")
                ));
            }
        }
        Ok(())
    }
}

/// Gibbons-Korach zone check of one register's history (module doc).
///
/// # Errors
/// Why the history is not linearizable.
pub fn linearizable(ops: &[Record]) -> Result<(), String> {
    const NEG: i128 = i128::MIN / 2;
    const POS: i128 = i128::MAX / 2;
    let end = |r: &Record| r.end.map_or(POS, i128::from);
    // The writes, by value; `None` is the initial absent value, written before everything.
    let mut writes: BTreeMap<Option<u64>, (i128, i128)> = BTreeMap::new();
    writes.insert(None, (NEG, NEG));
    for r in ops {
        if let Some(v) = r.write {
            writes.insert(Some(v), (i128::from(r.start), end(r)));
        }
    }
    // Clusters: (earliest return, latest invocation) over the write and its completed reads.
    let mut clusters: BTreeMap<Option<u64>, (i128, i128, bool)> = BTreeMap::new();
    for r in ops.iter().filter(|r| r.write.is_none() && r.end.is_some()) {
        let v = r.read.expect("a completed read has a value");
        let Some(&(ws, wf)) = writes.get(&v) else {
            return Err(format!("a read returned {v:?}, which was never written"));
        };
        if end(r) < ws {
            return Err(format!(
                "a read returned {v:?} before that write was invoked"
            ));
        }
        let c = clusters.entry(v).or_insert((wf, ws, true));
        c.0 = c.0.min(end(r));
        c.1 = c.1.max(i128::from(r.start));
    }
    // Completed writes nobody read still occupy an instant; unknown ones may not have happened.
    for r in ops {
        if let (Some(v), Some(_)) = (r.write, r.end) {
            clusters
                .entry(Some(v))
                .or_insert((end(r), i128::from(r.start), false));
        }
    }
    let mut forward: Vec<(i128, i128, Option<u64>)> = Vec::new();
    let mut backward: Vec<(i128, i128, Option<u64>)> = Vec::new();
    for (v, (min_end, max_start, _)) in &clusters {
        if min_end < max_start {
            forward.push((*min_end, *max_start, *v));
        } else {
            backward.push((*max_start, *min_end, *v));
        }
    }
    forward.sort();
    for w in forward.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!(
                "values {:?} and {:?} must each hold while the other does",
                w[0].2, w[1].2
            ));
        }
    }
    // A backward zone inside a forward one: the forward zone starting last before it.
    for (lo, hi, v) in &backward {
        let i = forward.partition_point(|f| f.0 < *lo);
        if let Some(f) = i.checked_sub(1).map(|i| forward[i])
            && *hi < f.1
        {
            return Err(format!(
                "value {v:?} was current only while {:?} had to be",
                f.2
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
    use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let mut h = History::new(&["a"]);
        h.invoke(0, Op::Write("a".into(), 1));
        h.complete(0, Ret::Written);
        h.invoke(1, Op::Read("a".into()));
        h.complete(1, Ret::Read(Some(1)));
        assert!(h.check().is_ok());
        h.invoke(1, Op::Read("a".into()));
        h.complete(1, Ret::Read(None));
        assert!(h.check().is_err());
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened() {
        let mut h = History::new(&["a"]);
        h.invoke(0, Op::Write("a".into(), 1));
        h.indeterminate(0);
        h.invoke(1, Op::Read("a".into()));
        h.complete(1, Ret::Read(None));
        h.invoke(1, Op::Read("a".into()));
        h.complete(1, Ret::Read(Some(1)));
        assert!(h.check().is_ok());
        // But once seen, it cannot be unseen.
        h.invoke(1, Op::Read("a".into()));
        h.complete(1, Ret::Read(None));
        assert!(h.check().is_err());
    }

    /// Random small histories: clients run operations on one register whose real effects
    /// happen at random instants inside each operation (so most histories are linearizable),
    /// then some reads are given a wrong value and some outcomes are forgotten. This checker
    /// and stateright's exhaustive tester must agree on every one.
    #[test]
    fn agrees_with_stateright_on_random_histories() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..4000 {
            let clients = rng.random_range(1..=3usize);
            let mut events: Vec<(u64, usize, bool)> = Vec::new(); // (time, client, is_start)
            let mut ops: Vec<(usize, Option<u64>, u64, u64, u64)> = Vec::new();
            let mut next_value = 1;
            for c in 0..clients {
                let mut t = rng.random_range(0..5u64);
                for _ in 0..rng.random_range(1..=3) {
                    let start = t;
                    let effect = start + rng.random_range(0..5);
                    let end = effect + rng.random_range(0..5);
                    let w = rng.random_bool(0.5).then(|| {
                        next_value += 1;
                        next_value
                    });
                    ops.push((c, w, start, effect, end));
                    t = end + rng.random_range(1..4);
                }
            }
            // Each op gets distinct times: order by (time, start before end, client).
            for (i, (_, _, s, _, e)) in ops.iter().enumerate() {
                events.push((s * 4, i, true));
                events.push((e * 4 + 2, i, false));
            }
            events.sort();
            // The register's value at each op's effect instant (ties by op order).
            let mut by_effect: Vec<usize> = (0..ops.len()).collect();
            by_effect.sort_by_key(|i| (ops[*i].3, *i));
            let mut reg = None;
            let mut seen = vec![None; ops.len()];
            for i in by_effect {
                match ops[i].1 {
                    Some(v) => reg = Some(v),
                    None => seen[i] = Some(reg),
                }
            }
            let corrupt = rng.random_bool(0.3);
            let mut h = History::new(&["k"]);
            let mut tester: LinearizabilityTester<usize, Register<Option<u64>>> =
                LinearizabilityTester::new(Register(None));
            let unknown: Vec<bool> = (0..ops.len()).map(|_| rng.random_bool(0.15)).collect();
            let mut forgotten = vec![false; clients];
            for (_, i, is_start) in events {
                let (c, w, ..) = ops[i];
                if forgotten[c] {
                    continue;
                }
                if is_start {
                    h.invoke(
                        c,
                        w.map_or(Op::Read("k".into()), |v| Op::Write("k".into(), v)),
                    );
                    let op = w.map_or(RegisterOp::Read, |v| RegisterOp::Write(Some(v)));
                    tester.on_invoke(c, op).unwrap();
                } else if unknown[i] {
                    h.indeterminate(c);
                    forgotten[c] = true;
                } else if w.is_some() {
                    h.complete(c, Ret::Written);
                    tester.on_return(c, RegisterRet::WriteOk).unwrap();
                } else {
                    let mut v = seen[i].expect("read");
                    if corrupt && rng.random_bool(0.3) {
                        v = [None, Some(2), Some(3), Some(99)][rng.random_range(0..4)];
                    }
                    h.complete(c, Ret::Read(v));
                    tester.on_return(c, RegisterRet::ReadOk(v)).unwrap();
                }
            }
            let ours = h.check().is_ok();
            assert_eq!(ours, tester.is_consistent(), "{:?}\n{:?}", h.ops, h.check());
            if ours {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        assert!(
            valid > 1000 && invalid > 300,
            "{valid} valid, {invalid} invalid"
        );
    }
}
