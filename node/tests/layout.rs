//! The layout of `node/src` (docs/architecture.md): its rooms import only rooms below them, so
//! there is no import cycle, and no source file is longer than [`MAX_LINES`] lines of code
//! (tests excluded). Reads the sources; nothing is compiled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rooms, lowest first: a room may import only rooms earlier in this list. `lib.rs`
/// (which wires the rooms together), `main.rs` and `logger.rs` stand outside.
const ROOMS: &[&str] = &[
    "config", "error", "state", "listener", "metrics", "core", "tls", "actors", "service", "api",
];

/// Longest source file, lines before its `#[cfg(test)]` module.
const MAX_LINES: usize = 600;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read node/src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file: up to its test module, without comment lines.
fn code(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// The rooms `lines` name as `crate::<room>`.
fn imports(lines: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in lines {
        let mut rest = *l;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn rooms_import_only_rooms_below_them_and_files_stay_short() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut long = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let room = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(f).expect("read source");
        let lines = code(&text);
        if lines.len() > MAX_LINES {
            long.push(format!("{} ({} lines)", rel.display(), lines.len()));
        }
        // The wiring: `run` (lib), its start-up decisions (startup), the binary and its logger.
        if matches!(room.as_str(), "lib" | "main" | "logger" | "startup") {
            continue;
        }
        let rank = ROOMS
            .iter()
            .position(|r| *r == room)
            .unwrap_or_else(|| panic!("{} is in no room: add it to ROOMS", rel.display()));
        for target in imports(&lines) {
            if target == room {
                continue;
            }
            let Some(t) = ROOMS.iter().position(|r| *r == target) else {
                upward
                    .entry(rel.display().to_string())
                    .or_default()
                    .push(format!("{target} (no such room)"));
                continue;
            };
            if t >= rank {
                upward
                    .entry(rel.display().to_string())
                    .or_default()
                    .push(target);
            }
        }
    }
    assert!(
        upward.is_empty(),
        "rooms import rooms at or above them (order, lowest first: {ROOMS:?}): {upward:#?}"
    );
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines of code: {long:?}"
    );
    assert!(files.len() > 30, "found only {} files", files.len());
}

#[test]
fn the_scan_sees_imports_and_skips_comments_and_tests() {
    let text = "use crate::config::Config;\n// crate::api in a comment\nfn f() { crate::core::x(); }\n#[cfg(test)]\nmod tests { use crate::api; }\n";
    let got = imports(&code(text));
    assert_eq!(
        got,
        BTreeSet::from(["config".to_owned(), "core".to_owned()])
    );
}
