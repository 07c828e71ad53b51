//! The history suite's long mode: `etch-history --duration 30m [--seed 1] [--pause 2s..5s]
//! [--faults kill,stop,...] [--dir DIR]` runs 3 real etch members (`target/release/etch`, or
//! `$ETCH_BIN_DIR/etch`) under the workload and a fault every few seconds, then checks the
//! history. Prints the summary; exits 1 when any check failed.

use std::time::Duration;

use etch_tests::history::{self, Config, faults};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let duration = humantime::parse_duration(&arg("--duration").unwrap_or("60s".into()))
        .expect("--duration: a humantime duration such as 30m");
    let seed = arg("--seed").map_or(1, |s| s.parse().expect("--seed: a number"));
    let pause = arg("--pause").unwrap_or("2s..5s".into());
    let (lo, hi) = pause.split_once("..").expect("--pause: MIN..MAX");
    let pause: (Duration, Duration) = (
        humantime::parse_duration(lo).expect("--pause MIN"),
        humantime::parse_duration(hi).expect("--pause MAX"),
    );
    let kinds: Vec<&'static str> = match arg("--faults") {
        None => faults::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|k| {
                *faults::ALL
                    .iter()
                    .find(|a| **a == k)
                    .unwrap_or_else(|| panic!("unknown fault {k}; known: {:?}", faults::ALL))
            })
            .collect(),
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = arg("--dir").map_or(tmp.path().to_owned(), Into::into);
    let cfg = Config {
        seed,
        duration,
        pause,
        faults: kinds,
        clients_per_member: 2,
        readers_per_member: 1,
        lease_clients: 2,
        dir,
    };
    eprintln!("etch-history: {cfg:?}");
    let started = std::time::Instant::now();
    let (report, ops) = history::run(&cfg);
    println!("{}", report.summary(&ops));
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    if !report.ok() {
        let dump = cfg.dir.join("ops.txt");
        let lines: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        let _ = std::fs::write(&dump, lines.join("\n"));
        eprintln!("operations written to {}", dump.display());
        std::process::exit(1);
    }
}
