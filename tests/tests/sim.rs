//! The deterministic cluster simulator (`etch_tests::sim`): a bounded number of seeds must
//! pass every check, and the same seeds must catch each planted bug.
//!
//! `ETCH_SIM_SEED=<n>` runs that one seed and prints its trace; `ETCH_SIM_SEEDS=<n>` changes
//! how many seeds the passing test runs.

use etch_tests::sim::{self, Bugs, Config};

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("ETCH_SIM_SEED") {
        return vec![s.parse().expect("ETCH_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("ETCH_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    (1..=n).collect()
}

#[test]
fn seeds_pass_every_check() {
    let cfg = Config {
        print_trace: std::env::var("ETCH_SIM_SEED").is_ok(),
        ..Config::default()
    };
    let started = std::time::Instant::now();
    let mut total = sim::Stats::default();
    for seed in seeds() {
        match sim::run(seed, &cfg) {
            Ok(s) => {
                total.acknowledged += s.acknowledged;
                total.indeterminate += s.indeterminate;
                total.crashes += s.crashes;
                total.partitions += s.partitions;
                total.terms += s.terms;
                if std::env::var("ETCH_SIM_SEED").is_ok() {
                    eprintln!("seed {seed}: {s:?}");
                }
                total.early_reads += s.early_reads;
                total.watch_events += s.watch_events;
                total.lease_keepalives += s.lease_keepalives;
                total.lease_revokes += s.lease_revokes;
                total.compactions += s.compactions;
                total.watch_compacted += s.watch_compacted;
                total.member_changes += s.member_changes;
                total.members_removed += s.members_removed;
                total.log_releases += s.log_releases;
                total.snapshots_installed += s.snapshots_installed;
            }
            Err(f) => panic!("{f}"),
        }
    }
    eprintln!("{total:?} in {:?}", started.elapsed());
    assert_eq!(total.early_reads, 0, "reads are served only once applied");
    assert!(
        total.member_changes > 0 && total.members_removed > 0,
        "membership changes ran: {total:?}"
    );
    assert!(
        total.log_releases > 0 && total.snapshots_installed > 0,
        "raft logs were released and members caught up from snapshots: {total:?}"
    );
    // The runs must have exercised the faults, or passing means nothing.
    assert!(total.acknowledged > 100, "{total:?}");
    assert!(
        total.crashes > 0 && total.partitions > 0 && total.terms > 1,
        "{total:?}"
    );
}

/// The same seed gives the same run, event for event.
#[test]
fn a_seed_replays_exactly() {
    let cfg = Config::default();
    let a = sim::run(5, &cfg).map_err(|f| f.to_string()).unwrap();
    let b = sim::run(5, &cfg).map_err(|f| f.to_string()).unwrap();
    assert_eq!(a.trace_digest, b.trace_digest);
    assert_eq!(a.events, b.events);
    assert!(a.events > 500, "{a:?}");
    assert_ne!(a.trace_digest, sim::run(6, &cfg).unwrap().trace_digest);
}

/// Runs seeds with `bugs` planted until one fails; returns how many it took.
fn seeds_to_catch(bugs: Bugs) -> u64 {
    let cfg = Config {
        bugs,
        ..Config::default()
    };
    for seed in 1..=60 {
        if let Err(f) = sim::run(seed, &cfg) {
            eprintln!(
                "caught at seed {seed}: {}",
                f.why.lines().next().unwrap_or("")
            );
            return seed;
        }
    }
    panic!("the planted bug {bugs:?} survived 60 seeds");
}

#[test]
fn acknowledging_before_the_fsync_is_caught() {
    seeds_to_catch(Bugs {
        ack_before_fsync: true,
        ..Bugs::default()
    });
}

#[test]
fn serving_a_read_before_apply_reaches_its_index_is_caught() {
    seeds_to_catch(Bugs {
        read_before_apply: true,
        ..Bugs::default()
    });
}

#[test]
fn a_watch_resumed_one_revision_early_is_caught() {
    seeds_to_catch(Bugs {
        watch_resume_repeats: true,
        ..Bugs::default()
    });
}

#[test]
fn a_lessor_whose_clock_runs_ahead_is_caught() {
    seeds_to_catch(Bugs {
        lessor_clock_ahead_ms: 700,
        ..Bugs::default()
    });
}

/// Five members: minorities of two can be cut off or crash.
#[test]
fn five_member_seeds_pass_every_check() {
    let cfg = Config {
        members: 5,
        ..Config::default()
    };
    let n: u64 = std::env::var("ETCH_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for seed in 1..=n {
        if let Err(f) = sim::run(seed, &cfg) {
            panic!("{f}");
        }
    }
}
