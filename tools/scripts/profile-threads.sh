#!/usr/bin/env bash
# CPU per put by thread over a one-member load of a growing keyspace: one fresh etch member,
# etcd's benchmark tool loading KEYS distinct 16-byte keys with 256-byte values (10/100
# conns/clients, per-second samples), and every thread's utime+stime (/proc/PID/task/TID/stat)
# read every SAMPLE seconds (default 5). Prints markdown: for each window of WINDOW seconds, the puts and each thread
# group's CPU per put (profile/threads.py names the groups). Shows which part of a member
# grows as the keyspace grows (e.g. fjall's flush and compaction workers).
#
#   tools/scripts/profile-threads.sh [KEYS] [WINDOW]     (defaults 1000000 and 15)
#
# ETCH=path/to/etch measures another build; SAMPLE=1 (with WINDOW 1) shows each second, at the
# cost of a few processes a second for the reading. Needs /opt/etcd-bench/benchmark
# (../shared/tools/build-etcd-benchmark.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS=${1:-1000000}
WINDOW=${2:-15}
. tools/scripts/profile/setup.sh
"$ETCH" --name t0 --data-dir "$work/t0" --listen-client-urls http://127.0.0.1:26790 \
  --advertise-client-urls http://127.0.0.1:26790 --listen-peer-urls http://127.0.0.1:26800 \
  --initial-advertise-peer-urls http://127.0.0.1:26800 --initial-cluster t0=http://127.0.0.1:26800 \
  --quota-backend-bytes 8589934592 --log-level warn 2>"$work/t0.log" &
pid=$!
until=$((SECONDS + 60))
until "$ETCDCTL" --endpoints 127.0.0.1:26790 put ready 1 >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$until" ] || { echo "etch did not start: $(cat "$work/t0.log")" >&2; exit 1; }
  sleep 0.02
done
"$ETCD_BENCH" --endpoints 127.0.0.1:26790 --conns 10 --clients 100 --sample put --total "$KEYS" \
  --key-size 16 --val-size 256 --sequential-keys --key-space-size "$KEYS" >"$work/bench.out" 2>&1 &
bench=$!
# Snapshot lines: UNIX-SECOND TID NAME TICKS (the name's spaces, if any, as '_').
while kill -0 "$bench" 2>/dev/null; do
  now=$(date +%s)
  for f in /proc/"$pid"/task/*/stat; do
    tid=${f%/stat}; tid=${tid##*/}
    # A thread may exit between the glob and the read: skip it.
    { sed -e 's/^[0-9]* (\(.*\)) . /\1\t/' "$f" 2>/dev/null || true; } |
      awk -F'\t' -v t="$now" -v tid="$tid" '{n = $1; gsub(/ /, "_", n); split($2, a, " "); print t, tid, n, a[11] + a[12]}'
  done >>"$work/threads.txt"
  sleep "${SAMPLE:-5}"
done
wait "$bench"
grep -E '^[0-9]{10},' "$work/bench.out" >"$work/samples.csv" || true
printf '%s: %s keys, %s\n\n' "$ETCH" "$KEYS" "$(grep -E 'Requests/sec' "$work/bench.out" | tr -s ' \t' ' ')"
python3 tools/scripts/profile/threads.py "$work/threads.txt" "$work/samples.csv" "$WINDOW" "$(getconf CLK_TCK)"
