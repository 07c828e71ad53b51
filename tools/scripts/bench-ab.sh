#!/usr/bin/env bash
# A/B of etch builds (or etch against etcd) on 3 members, in alternated runs, because this
# shared 2-core machine's speed moves between runs and only pairs taken close together compare.
# Each run starts a fresh cluster of one build, warms it up (5,000 puts at 10/100), then measures
# with etcd's benchmark tool (8-byte keys, 256-byte values):
#   1. one client at the leader, ONE puts: average latency, puts/s, and the members' voluntary
#      context switches per put (summed over every thread of the three members, from
#      /proc/PID/task/*/status);
#   2. LOAD (conns/clients, default 10/100), TOTAL puts over all three members: puts/s, the
#      members' CPU per write (utime+stime from /proc/PID/stat) and switches per write.
# Prints one markdown row per run, then each build's medians. THREADS=1 also prints (on stderr),
# per run, the one-client step's voluntary context switches per put by thread name, for the
# leader and for the two followers together.
#
#   tools/scripts/bench-ab.sh ROUNDS BIN...      e.g. bench-ab.sh 3 /tmp/etch-old ./target/release/etch
#
# A BIN whose path contains "etcd" is run as etcd (e.g. /opt/etcd35/bin/etcd). ONE (2000),
# TOTAL (30000) and LOAD ("10 100") override the sizes. By default every put of both steps
# overwrites one key (the tool's default key space of 1, as the figures measured with this script
# in docs/performance.md were taken); KEYS=distinct writes distinct keys instead
# (`--sequential-keys --key-space-size` of the step's total, as tools/scripts/bench-writes.sh and
# docs/benchmarks.md do): each put then also adds a key to the store's index, which costs the
# members about 3-4 us more per write. Needs /opt/etcd-bench/benchmark
# (../shared/tools/build-etcd-benchmark.sh) and etcdctl.
set -euo pipefail
ROUNDS=${1:?rounds}; shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS BIN..." >&2; exit 2; }
ONE=${ONE:-2000}; TOTAL=${TOTAL:-30000}; read -r CONNS CLIENTS <<<"${LOAD:-10 100}"
ETCD_BENCH=${ETCD_BENCH:-/opt/etcd-bench/benchmark}
ETCDCTL=${ETCDCTL:-etcdctl}
TICK=$(getconf CLK_TCK)
work=$(mktemp -d)
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
EPS=127.0.0.1:26790,127.0.0.1:26791,127.0.0.1:26792

start() {
  local bin=$1 i ic="n0=http://127.0.0.1:26800,n1=http://127.0.0.1:26801,n2=http://127.0.0.1:26802"
  rm -rf "$work/d"; PIDS=()
  for i in 0 1 2; do
    local args=(--name "n$i" --data-dir "$work/d/n$i" --listen-client-urls "http://127.0.0.1:2679$i"
      --advertise-client-urls "http://127.0.0.1:2679$i" --listen-peer-urls "http://127.0.0.1:2680$i"
      --initial-advertise-peer-urls "http://127.0.0.1:2680$i" --initial-cluster "$ic")
    case $bin in
      *etcd*) "$bin" "${args[@]}" --log-level error >>"$work/n$i.log" 2>&1 & ;;
      *) "$bin" "${args[@]}" --log-level warn 2>>"$work/n$i.log" & ;;
    esac
    PIDS+=($!)
  done
  for _ in $(seq 600); do
    ETCDCTL_API=3 "$ETCDCTL" --endpoints "$EPS" put ready 1 >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$bin: the cluster did not start: $(tail -n 3 "$work"/n*.log)" >&2; exit 1
}

# Stops the cluster and waits for its processes.
stop() { kill "${PIDS[@]}" 2>/dev/null || true; wait "${PIDS[@]}" 2>/dev/null || true; PIDS=(); }

cpu() { local p; for p in "${PIDS[@]}"; do sed 's/^.*) //' "/proc/$p/stat"; done | awk '{t += $12 + $13} END {print t}'; }
switches() { local p; for p in "${PIDS[@]}"; do cat /proc/"$p"/task/*/status; done | awk '/^voluntary_ctxt/ {s += $2} END {print s}'; }
# by_thread: "PID THREAD-NAME SWITCHES" for every thread of the cluster.
by_thread() {
  local p t
  for p in "${PIDS[@]}"; do for t in /proc/"$p"/task/*; do
    echo "$p $(tr ' ' _ <"$t/comm") $(awk '/^voluntary_ctxt/ {print $2}' "$t/status")"
  done; done
}
leader() {
  ETCDCTL_API=3 "$ETCDCTL" --endpoints "$EPS" endpoint status -w json | python3 -c '
import json, sys
print([e["Endpoint"].replace("http://", "") for e in json.load(sys.stdin)
       if e["Status"]["leader"] == e["Status"]["header"]["member_id"]][0])'
}
case ${KEYS:-one} in
  one | distinct) ;;
  *) echo "KEYS must be one or distinct, not $KEYS" >&2; exit 2 ;;
esac
# bench ARGS... --total N: prints "puts/s avg_ms" (with KEYS=distinct, N distinct keys).
bench() {
  local keys=()
  [ "${KEYS:-one}" = distinct ] && keys=(--sequential-keys --key-space-size "${!#}")
  "$ETCD_BENCH" "$@" put --key-size 8 --val-size 256 "${keys[@]}" 2>/dev/null |
    awk '/Average:/ {a = $2} /Requests\/sec/ {r = $2} END {printf "%.0f %.3f\n", r, a * 1000}'
}

echo "| run | build | 1 client at the leader: avg ms | puts/s | switches/put | $CONNS/$CLIENTS: puts/s | members' CPU/write, us | switches/write |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    start "$bin"
    "$ETCD_BENCH" --endpoints "$EPS" --conns 10 --clients 100 put --key-size 8 --val-size 256 --total 5000 >/dev/null 2>&1
    s0=$(switches); lep=$(leader); by_thread >"$work/t0"
    read -r r1 a1 < <(bench --endpoints "$lep" --conns 1 --clients 1 --total "$ONE")
    s1=$(switches); c1=$(cpu); by_thread >"$work/t1"
    read -r r2 _ < <(bench --endpoints "$EPS" --conns "$CONNS" --clients "$CLIENTS" --total "$TOTAL")
    s2=$(switches); c2=$(cpu)
    if [ -n "${THREADS:-}" ]; then
      # The leader's PID: the members listen on 2679N in start order.
      python3 - "$work/t0" "$work/t1" "${PIDS[$(( ${lep##*:} - 26790 ))]}" "$ONE" >&2 <<'PY'
import collections, sys
before = {tuple(l.split()[:2]): int(l.split()[2]) for l in open(sys.argv[1])}
leader, n, per = sys.argv[3], int(sys.argv[4]), collections.Counter()
for l in open(sys.argv[2]):
    pid, name, v = l.split()
    per[("leader" if pid == leader else "followers", name)] += int(v) - before.get((pid, name), 0)
print("  switches per put by thread: " + ", ".join(
    "%s %s %.1f" % (role, name, v / n) for (role, name), v in sorted(per.items()) if v))
PY
    fi
    stop
    row=$(awk -v s0="$s0" -v s1="$s1" -v s2="$s2" -v c1="$c1" -v c2="$c2" -v one="$ONE" -v n="$TOTAL" -v hz="$TICK" \
      'BEGIN {printf "%.1f %.0f %.1f", (s1 - s0) / one, (c2 - c1) * 1e6 / hz / n, (s2 - s1) / n}')
    read -r sw1 us2 sw2 <<<"$row"
    echo "| $round | $bin | $a1 | $r1 | $sw1 | $r2 | $us2 | $sw2 |"
    echo "$bin $a1 $r1 $sw1 $r2 $us2 $sw2" >>"$work/rows"
  done
done
echo
echo "| build (medians of $ROUNDS) | avg ms | puts/s | switches/put | $CONNS/$CLIENTS puts/s | CPU/write, us | switches/write |"
echo "|---|---|---|---|---|---|---|"
python3 - "$work/rows" "$@" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for b in sys.argv[2:]:
    cols = list(zip(*[[float(x) for x in r[1:]] for r in rows if r[0] == b]))
    m = [statistics.median(c) for c in cols]
    print("| %s | %.3f | %.0f | %.1f | %.0f | %.0f | %.1f |" % (b, *m))
PY
