#!/usr/bin/env bash
# System calls and voluntary context switches per put, etch and etcd 3.5 side by side: a fresh
# 3-member cluster of each on loopback (one after the other), etcd's benchmark tool putting
# TOTAL distinct keys (8-byte keys, 256-byte values) at CONNS/CLIENTS over all three members,
# `perf stat` counting the members' system calls by tracepoint meanwhile, and the members'
# utime+stime (/proc/PID/stat) and their threads' voluntary context switches
# (/proc/PID/task/TID/status) read before and after. Prints a markdown table: puts/s, members' CPU per put (us), voluntary
# switches per put and each system call per put, summed over the three members.
#
#   tools/scripts/profile-syscalls.sh [TOTAL] [CONNS] [CLIENTS]   (100000, 10, 100)
#
# ETCH=path/to/etch measures another build; ETCD=path/to/etcd another etcd (default etcd
# 3.5.1 from /opt/etcd35, see README). Needs perf (Debian linux-perf) and
# /opt/etcd-bench/benchmark (../shared/tools/build-etcd-benchmark.sh). Uses ports 29790-29792
# and 29800-29802 (etch) and 29890-29892 and 29900-29902 (etcd).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOTAL=${1:-100000}; CONNS=${2:-10}; CLIENTS=${3:-100}
ETCD=${ETCD:-/opt/etcd35/bin/etcd}
. tools/scripts/profile/setup.sh
CALLS=(write writev read recvfrom sendmsg recvmmsg epoll_wait epoll_pwait futex fdatasync nanosleep)

# start_etcd: a fresh 3-member etcd cluster; sets `pids` and EPS as start3 does.
start_etcd() {
  local i ic="e0=http://127.0.0.1:29900,e1=http://127.0.0.1:29901,e2=http://127.0.0.1:29902"
  pids=()
  for i in 0 1 2; do
    "$ETCD" --name "e$i" --data-dir "$work/e$i" --listen-client-urls "http://127.0.0.1:2989$i" \
      --advertise-client-urls "http://127.0.0.1:2989$i" --listen-peer-urls "http://127.0.0.1:2990$i" \
      --initial-advertise-peer-urls "http://127.0.0.1:2990$i" --initial-cluster "$ic" \
      --log-level error >"$work/e$i.log" 2>&1 &
    pids+=($!)
  done
  EPS=127.0.0.1:29890,127.0.0.1:29891,127.0.0.1:29892
  for _ in $(seq 500); do "$ETCDCTL" --endpoints "$EPS" put ready 1 >/dev/null 2>&1 && return; sleep 0.05; done
  echo "etcd did not start: $(cat "$work"/e*.log)" >&2; exit 1
}

# totals: the members' utime+stime (clock ticks, the process's own count, which keeps what
# exited threads used) and voluntary context switches (summed over the live threads).
totals() {
  local p ticks=0 sw=0
  for p in "${pids[@]}"; do
    ticks=$((ticks + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    sw=$((sw + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ {s += $2} END {print s + 0}')))
  done
  echo "$ticks $sw"
}

# measure NAME: warms the cluster up, then counts over the load; appends a row to $work/rows.
measure() {
  local name=$1 ev="" c qps a b
  "$ETCD_BENCH" --endpoints "$EPS" --conns 10 --clients 100 put --key-size 8 --val-size 256 \
    --total 5000 >/dev/null 2>&1
  for c in "${CALLS[@]}"; do ev+="${ev:+,}syscalls:sys_enter_$c"; done
  read -r -a a <<<"$(totals)"
  # perf counts the members for as long as the benchmark tool runs.
  qps=$(perf stat -e "$ev" -p "$(IFS=,; echo "${pids[*]}")" -o "$work/$name.stat" -- \
    "$ETCD_BENCH" --endpoints "$EPS" --conns "$CONNS" --clients "$CLIENTS" put --key-size 8 \
    --val-size 256 --total "$TOTAL" --sequential-keys --key-space-size "$TOTAL" 2>&1 |
    awk '/Requests\/sec/ {printf "%.0f", $2}')
  read -r -a b <<<"$(totals)"
  python3 - "$work/$name.stat" "$name" "$qps" "$TOTAL" "$(getconf CLK_TCK)" "${a[@]}" "${b[@]}" "${CALLS[@]}" >>"$work/rows" <<'PY'
import re, sys
path, name, qps, total, tick, t0, s0, t1, s1 = sys.argv[1:10]
calls, total = sys.argv[10:], int(total)
counts = {}
for line in open(path):
    m = re.match(r"\s*([\d,]+)\s+syscalls:sys_enter_(\w+)", line)
    if m:
        counts[m.group(2)] = int(m.group(1).replace(",", "")) / total
cpu = (int(t1) - int(t0)) * 1e6 / int(tick) / total
sw = (int(s1) - int(s0)) / total
print("| %s | %s | %.1f | %.2f | %s |" % (name, qps, cpu, sw, " | ".join("%.3f" % counts.get(c, 0) for c in calls)))
PY
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}

start3 29
measure etch
start_etcd
measure "etcd $("$ETCD" --version | awk '/etcd Version/ {print $3}')"
echo "put at $CONNS/$CLIENTS conns/clients, $TOTAL distinct keys, 3 members; per put, summed over the members:"
echo
echo "| server | puts/s | CPU us | voluntary switches | $(IFS='|'; echo "${CALLS[*]}" | sed 's/|/ | /g') |"
echo "|---|---|---|---|$(printf -- '---|%.0s' "${CALLS[@]}")"
cat "$work/rows"
