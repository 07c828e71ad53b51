#!/usr/bin/env bash
# Watch at scale on one etch member (release build): event latency with 100,000 watchers over
# 1,000 streams, and the server's memory per watcher and per stream (RSS sampled while the
# watchers are held idle). Prints a markdown table.
#
#   tools/scripts/bench-watch.sh [streams] [watchers-per-stream] [puts]   (default 1000 100 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
STREAMS=${1:-1000}; WPS=${2:-100}; PUTS=${3:-20}
cargo build --release --bins -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }

run() { # streams watchers-per-stream -> prints "rss_delta json"
  local dir="$work/run-$1-$2"
  ./target/release/etch --data-dir "$dir" --listen-native-urls tcp://127.0.0.1:23787 --log-level warn 2>"$dir.log" &
  local pid=$!
  for _ in $(seq 100); do ./target/release/etchctl --endpoints 127.0.0.1:23787 endpoint status >/dev/null 2>&1 && break; sleep 0.1; done
  local before; before=$(rss $pid)
  ./target/release/etch-bench --endpoints 127.0.0.1:23787 --conns 10 watch-latency --streams "$1" \
    --watchers-per-stream "$2" --put-total "$PUTS" --put-rate 2 --hold 3s >"$dir.json" 2>"$dir.err" &
  local bench=$!
  until grep -q "watchers created" "$dir.err" 2>/dev/null; do sleep 0.2; done
  sleep 1
  local after; after=$(rss $pid)
  wait $bench
  kill $pid; wait $pid 2>/dev/null || true
  echo "$((after - before)) $(cat "$dir.json")"
}

read -r full_mem full_json < <(run "$STREAMS" "$WPS")
read -r streams_mem _ < <(run "$STREAMS" 1)
python3 - "$full_mem" "$full_json" "$streams_mem" "$STREAMS" "$WPS" <<'PY'
import json, sys
full_mem, r, streams_mem, streams, wps = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
watchers = streams * wps
per_stream = streams_mem / streams
per_watcher = (full_mem - streams_mem) / max(1, watchers - streams)
l = r["latency_ms"]
print("| measure | etch | etcd (published) |")
print("|---|---|---|")
print(f"| watchers / streams | {watchers:,} / {streams:,} | |")
print(f"| create all watchers | {r['create_seconds']:.2f} s | |")
print(f"| events delivered / expected | {r['events_delivered']:,} / {r['events_expected']:,} | |")
print(f"| event latency p50 / p99 / max | {l['p50']:.1f} / {l['p99']:.1f} / {l['max']:.1f} ms | |")
print(f"| delivery rate | {r['events_per_second']:,.0f} events/s | |")
print(f"| server memory per watcher | {per_watcher:,.0f} B | ~350 B |")
print(f"| server memory per stream | {per_stream / 1024:,.1f} KiB | ~18 KB |")
PY
