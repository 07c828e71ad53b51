//! The history suite's short mode (`etch_tests::history`): 3 real members under gRPC and
//! native clients, lease holders and watchers, with a fault every few seconds; then the
//! linearizability, watch, lease and durability checks and the members' HashKV. The long mode
//! is `etch-history --duration 30m` (docs/durability.md).
//!
//! The last test runs the same short mode against a deliberately broken build (linearizable
//! reads served before apply reaches their ReadIndex, built by `tests/run.sh` into
//! `target/planted/`) and expects the checkers to fail it.

use std::path::Path;
use std::time::Duration;

use etch_tests::history::{self, Config, faults};

fn config(dir: &Path, seed: u64, faults: &[&'static str]) -> Config {
    Config {
        seed,
        duration: Duration::from_secs(40),
        pause: (Duration::from_millis(1500), Duration::from_secs(3)),
        faults: faults.to_vec(),
        clients_per_member: 2,
        readers_per_member: 1,
        lease_clients: 2,
        dir: dir.to_owned(),
    }
}

fn run_and_check(cfg: &Config) {
    let (report, ops) = history::run(cfg);
    let summary = report.summary(&ops);
    eprintln!("{summary}");
    assert!(report.ok(), "the history checks failed:\n{summary}");
    assert!(
        report.acknowledged_writes > 100,
        "too little load:\n{summary}"
    );
    assert!(
        !report.faults.is_empty(),
        "no fault was injected:\n{summary}"
    );
}

/// Process and network faults: kill -9, SIGSTOP (of any member, and of the leader for longer
/// than the election timeout, under lease keep-alive load), a partition.
#[test]
fn process_and_network_faults_keep_every_promise() {
    let dir = tempfile::tempdir().unwrap();
    run_and_check(&config(
        dir.path(),
        11,
        &["kill", "stop", "stop-leader", "partition"],
    ));
}

/// The disk's faults: a 5 s fsync, fsync EIO, ENOSPC on the WAL and on the store, a torn WAL
/// tail, a flipped bit in an older WAL record, a corrupted store table. Each member that hit
/// one follows etch's rule for it (docs/durability.md) and is restarted or rebuilt.
#[test]
fn disk_faults_keep_every_promise() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<&'static str> = faults::ALL
        .iter()
        .copied()
        .filter(|k| !["kill", "stop", "stop-leader", "partition"].contains(k))
        .collect();
    let mut cfg = config(dir.path(), 12, &disk);
    cfg.duration = Duration::from_secs(60);
    run_and_check(&cfg);
}

/// The checkers catch a broken build: with reads served before apply reaches their
/// ReadIndex, some client reads a value older than a write that had already returned.
#[test]
fn a_build_that_serves_reads_before_apply_fails_the_short_mode() {
    let planted = etch_tests::bin("etch")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("planted");
    assert!(
        planted.join("etch").exists(),
        "{} missing: tests/run.sh builds it (cargo build -p etch-node --features \
         planted-bug-read-before-apply, copied there with etchctl)",
        planted.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(etch_tests::bin("etch-history"))
        .args(["--duration", "40s", "--seed", "3", "--pause", "2s..4s"])
        .args(["--faults", "fsync-delay,stop"])
        .arg("--dir")
        .arg(dir.path())
        .env("ETCH_BIN_DIR", &planted)
        .output()
        .expect("etch-history");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the broken build passed:\n{stdout}"
    );
    let found: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("linearizability violations: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        found > 0,
        "no linearizability violation reported:\n{stdout}"
    );
}
