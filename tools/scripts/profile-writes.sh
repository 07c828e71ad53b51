#!/usr/bin/env bash
# Where a write's CPU goes: a 3-member etch cluster under etcd's benchmark tool (put, 10/100
# conns/clients, 8-byte keys, 256-byte values), `perf record --call-graph dwarf` of the leader
# and of one follower in the middle of the run, and each member's CPU per write (utime+stime
# from /proc/PID/stat over the whole run / writes) split by stage (profile/stages.py). Prints
# markdown.
#
#   tools/scripts/profile-writes.sh [TOTAL]     (default 100000 puts)
#
# ETCH=path/to/etch profiles another build (e.g. an older commit's). Needs perf (Debian
# linux-perf) and /opt/etcd-bench/benchmark (../shared/tools/build-etcd-benchmark.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOTAL=${1:-100000}
. tools/scripts/profile/setup.sh
TICK=$(getconf CLK_TCK)
start3 25
follower=$(( (leader + 1) % 3 ))
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
b_l=$(ticks "${pids[$leader]}"); b_f=$(ticks "${pids[$follower]}")
"$ETCD_BENCH" --endpoints $EPS --conns 10 --clients 100 put --total "$TOTAL" --key-size 8 \
  --val-size 256 --sequential-keys --key-space-size "$TOTAL" >"$work/bench.out" 2>&1 &
bench=$!
sleep 2
perf record -F 199 --call-graph dwarf,16384 -p "${pids[$leader]}" -o "$work/leader.data" -- sleep 4 >/dev/null 2>&1 &
p1=$!
perf record -F 199 --call-graph dwarf,16384 -p "${pids[$follower]}" -o "$work/follower.data" -- sleep 4 >/dev/null 2>&1 &
p2=$!
wait $bench $p1 $p2
a_l=$(ticks "${pids[$leader]}"); a_f=$(ticks "${pids[$follower]}")
qps=$(awk '/Requests\/sec/ {print $2}' "$work/bench.out")
us_l=$(python3 -c "print(($a_l - $b_l) * 1e6 / $TICK / $TOTAL)")
us_f=$(python3 -c "print(($a_f - $b_f) * 1e6 / $TICK / $TOTAL)")
for m in leader follower; do
  perf script -i "$work/$m.data" -F ip,sym 2>/dev/null >"$work/$m.txt"
done
# KEEP=dir keeps the perf script outputs (leader.txt, follower.txt) for a closer look.
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$work/leader.txt" "$work/follower.txt" "$KEEP/"
python3 tools/scripts/profile/stages.py "$work/leader.txt" "$us_l" >"$work/leader.tsv"
python3 tools/scripts/profile/stages.py "$work/follower.txt" "$us_f" >"$work/follower.tsv"
printf '%s, put 10/100, %s puts: %.0f req/s; CPU per write: leader %.1f us, follower %.1f us\n\n' \
  "$ETCH" "$TOTAL" "$qps" "$us_l" "$us_f"
echo "| stage | leader us/write (share) | follower us/write (share) |"
echo "|---|---|---|"
python3 - "$work/leader.tsv" "$work/follower.tsv" <<'PY'
import sys
rows = {}
for col, path in enumerate(sys.argv[1:3]):
    for line in open(path):
        name, share, us = line.rstrip("\n").split("\t")
        rows.setdefault(name, ["-", "-"])[col] = "%s (%s%%)" % (us, share)
for name, (l, f) in rows.items():
    print("| %s | %s | %s |" % (name, l, f))
PY
