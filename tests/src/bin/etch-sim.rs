//! Soak runs of the cluster simulator: `etch-sim --seeds 100000 [--from 1]` runs seeds until
//! one fails (printing its trace and exiting 1) or all pass.

use etch_tests::sim::{self, Config};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let (from, count) = (arg("--from", 1), arg("--seeds", 1000));
    let cfg = Config::default();
    let started = std::time::Instant::now();
    for seed in from..from + count {
        if let Err(f) = sim::run(seed, &cfg) {
            eprintln!("{f}");
            std::process::exit(1);
        }
        let done = seed - from + 1;
        if done % 100 == 0 {
            let per_min = done as f64 / started.elapsed().as_secs_f64() * 60.0;
            eprintln!("{done} seeds passed ({per_min:.0} per minute)");
        }
    }
    eprintln!("{count} seeds passed in {:?}", started.elapsed());
}
