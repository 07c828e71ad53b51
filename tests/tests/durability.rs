//! Durability over real processes: restarts, SIGKILL under load, torn WAL tails, corrupted
//! WAL segments.

use etch_tests::{Node, bench, wal_segments};

fn put_many(n: &Node, prefix: &str, count: usize) {
    for i in 0..count {
        n.ctl_ok(&["put", &format!("{prefix}{i:04}"), &format!("value-{i}")]);
    }
}

#[test]
fn graceful_restart_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(dir.path(), &[]);
    put_many(&n, "k", 50);
    n.ctl_ok(&["del", "k0007"]);
    let status = n.terminate();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    assert!(n.log().contains("stopped"), "{}", n.log());
    // The commit index of the last writes (which waits for the next WAL write, or the stop's)
    // is in the WAL too: every entry is recorded as committed.
    let wal_dir = wal_segments(&n.data_dir)[0].parent().unwrap().to_owned();
    let (_, rec) = etch_storage::wal::Wal::open(&wal_dir).unwrap();
    let last = rec.entries.last().map(|e| e.index);
    assert_eq!(rec.hard_state.map(|h| h.commit), last);
    n.restart();
    assert_eq!(n.ctl_ok(&["get", "k", "--prefix", "--count-only"]), "49\n");
    assert_eq!(
        n.ctl_ok(&["get", "k0049", "--print-value-only"]),
        "value-49\n"
    );
    // Revisions continue where they stopped: 50 puts + 1 delete after revision 1.
    n.ctl_ok(&["put", "after", "x"]);
    let o = n.ctl_ok(&["get", "after", "-w", "json"]);
    assert!(o.contains("\"mod_revision\":53"), "{o}");
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(dir.path(), &[]);
    let ack = dir.path().join("acked.txt");
    let addr = n.native.clone();
    let ack_arg = ack.to_string_lossy().to_string();
    let load = std::thread::spawn(move || {
        bench(
            &addr,
            &[
                "--clients",
                "20",
                "--conns",
                "4",
                "put",
                "--total",
                "2000000",
                "--sequential-keys",
                "--key-space-size",
                "2000000",
                "--key-size",
                "16",
                "--ack-log",
                &ack_arg,
            ],
        )
    });
    // Kill once a good number of writes has been acknowledged.
    etch_tests::wait_for(
        std::time::Duration::from_secs(60),
        "writes under load",
        || (n.local_count() > 3000).then_some(()),
    );
    n.kill9();
    let out = load.join().unwrap();
    assert!(!out.status.success(), "the bench should see the node die");
    n.restart();
    // Every acknowledged key is there after the restart.
    let got = n.ctl_ok(&["get", "", "--from-key", "--keys-only", "-w", "json"]);
    let j: serde_json::Value = serde_json::from_str(got.trim()).unwrap();
    assert!(Node::assert_all_acked_present(&ack, &j["kvs"]) > 3000);
}

#[test]
fn torn_wal_tail_is_repaired_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(dir.path(), &[]);
    put_many(&n, "t", 20);
    n.kill9();
    // Simulate a write torn by a crash: a record header promising more bytes than follow,
    // right after the last record of the last segment.
    let segs = wal_segments(&n.data_dir);
    let last = segs.last().unwrap();
    let data = std::fs::read(last).unwrap();
    let end = data.iter().rposition(|&b| b != 0).unwrap() + 1;
    let torn = [0x40u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 2, 7, 7, 7];
    etch_storage::wal::overwrite_at(last, end as u64, &torn).unwrap();
    n.restart();
    assert!(
        n.log().contains("torn"),
        "repair should be reported:\n{}",
        n.log()
    );
    assert_eq!(n.ctl_ok(&["get", "t", "--prefix", "--count-only"]), "20\n");
    // The repaired log keeps taking writes that survive another restart.
    n.ctl_ok(&["put", "after-repair", "ok"]);
    n.restart();
    assert_eq!(
        n.ctl_ok(&["get", "after-repair", "--print-value-only"]),
        "ok\n"
    );
}

#[test]
fn corrupt_record_in_older_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    // 64 KiB segments so a few hundred writes span several files.
    let mut n = Node::start(dir.path(), &["--experimental-wal-segment-bytes", "65536"]);
    let value = "v".repeat(1000);
    for i in 0..200 {
        n.ctl_ok(&["put", &format!("c{i:03}"), &value]);
    }
    n.kill9();
    let segs = wal_segments(&n.data_dir);
    assert!(segs.len() >= 3, "expected several segments, got {segs:?}");
    // Flip a byte inside the payload of a record in the first segment.
    let victim = &segs[0];
    let data = std::fs::read(victim).unwrap();
    let offset = 2000u64;
    etch_storage::wal::overwrite_at(victim, offset, &[data[offset as usize] ^ 0xff]).unwrap();
    let (status, out) = n.start_expecting_failure();
    assert!(!status.success(), "etch must refuse to start:\n{out}");
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(out.contains("corrupt WAL record"), "{out}");
    assert!(out.contains(&name), "error names the file {name}:\n{out}");
    assert!(out.contains("at offset"), "error names the offset:\n{out}");
}

#[test]
fn raft_log_is_released_and_restart_recovers_from_the_release_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(
        dir.path(),
        &[
            "--snapshot-count",
            "500",
            "--experimental-wal-segment-bytes",
            "65536",
        ],
    );
    // 5,000 entries stay behind a release point for slow followers; write well past that.
    let out = bench(
        &n.native,
        &[
            "--clients",
            "20",
            "--conns",
            "2",
            "--json",
            "put",
            "--total",
            "9000",
            "--sequential-keys",
            "--key-space-size",
            "9000",
            "--val-size",
            "64",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    etch_tests::wait_for(
        std::time::Duration::from_secs(30),
        "the raft log release",
        || n.log().contains("raft log released").then_some(()),
    );
    let first = wal_segments(&n.data_dir)[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        !first.starts_with("0000000000000000-"),
        "the first segment should be gone, have {first}"
    );
    n.kill9();
    n.restart();
    assert_eq!(
        n.ctl_ok(&["get", "", "--from-key", "--count-only"]),
        "9000\n"
    );
    n.ctl_ok(&["put", "after", "release"]);
    n.restart();
    assert_eq!(
        n.ctl_ok(&["get", "after", "--print-value-only"]),
        "release\n"
    );
}
