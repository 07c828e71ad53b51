#!/usr/bin/env bash
# CPU and wake-ups per put by thread on 3 members: a fresh etch cluster on loopback, etcd's
# benchmark tool putting TOTAL distinct keys (8-byte keys, 256-byte values) at CONNS/CLIENTS
# over all three members, and every thread's utime+stime and voluntary context switches
# (/proc/PID/task/TID/stat and status) read before and after. Prints, per thread group and
# member (L = leader, F = follower), us of CPU per put and switches per put, and the UDP
# datagrams per put over the whole box (/proc/net/snmp: the peers' QUIC packets).
#
#   tools/scripts/profile-threads-cluster.sh [TOTAL] [CONNS] [CLIENTS]   (60000, 10, 100)
#
# ETCH=path/to/etch measures another build.
# Thread groups as tools/scripts/profile/threads.py names them (the consensus thread: raft,
# WAL, QUIC; apply; watch; the main thread: the lessor; tokio's workers: gRPC, with the
# arbiters' own blocking pools, also named tokio-rt-worker). Needs
# /opt/etcd-bench/benchmark (../shared/tools/build-etcd-benchmark.sh) and etcdctl. Uses ports
# 27790-27792 and 27800-27802.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOTAL=${1:-60000}; CONNS=${2:-10}; CLIENTS=${3:-100}
. tools/scripts/profile/setup.sh
d=$work
start3 27
"$ETCD_BENCH" --endpoints "$EPS" --conns 10 --clients 100 put --key-size 8 --val-size 256 \
  --total 5000 >/dev/null 2>&1
snap() {
  local p t
  for p in "${pids[@]}"; do
    for t in /proc/"$p"/task/*; do
      echo "$p $(basename "$t") $(tr ' ' _ <"$t/comm") $(sed 's/^.*) //' "$t/stat" | awk '{print $12 + $13}') $(awk '/^voluntary_ctxt/ {print $2}' "$t/status")"
    done
  done
}
snap >"$d/a"; grep '^Udp:' /proc/net/snmp | tail -1 >"$d/u0"
"$ETCD_BENCH" --endpoints "$EPS" --conns "$CONNS" --clients "$CLIENTS" put --key-size 8 \
  --val-size 256 --total "$TOTAL" --sequential-keys --key-space-size "$TOTAL" 2>&1 | grep "Requests/sec"
snap >"$d/b"; grep '^Udp:' /proc/net/snmp | tail -1 >"$d/u1"
paste "$d/u0" "$d/u1" | awk -v n="$TOTAL" '{printf "UDP datagrams per put: in %.3f, out %.3f\n", ($12 - $2) / n, ($15 - $5) / n}'
PYTHONPATH=tools/scripts/profile python3 - "$d/a" "$d/b" "$TOTAL" "$leader" "$(getconf CLK_TCK)" "${pids[@]}" <<'PY'
import collections, sys
from threads import thread_groups
a, b, total, leader, tick = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pids = sys.argv[6:]
def load(f):
    r = {}
    for line in open(f):
        p, t, n, k, v = line.split()
        r[(p, t)] = (n, int(k), int(v))
    return r
A, B = load(a), load(b)
cpu = collections.defaultdict(lambda: collections.defaultdict(float))
sw = collections.defaultdict(lambda: collections.defaultdict(float))
for p in pids:
    groups = thread_groups({int(t): B[(q, t)][0] for (q, t) in B if q == p})
    for t, g in groups.items():
        n, k, v = B[(p, str(t))]
        _, k0, v0 = A.get((p, str(t)), (n, 0, 0))
        cpu[g][p] += (k - k0) * 1e6 / tick / total
        sw[g][p] += (v - v0) / total
names = ["%s(%s)" % (p, "L" if i == leader else "F") for i, p in enumerate(pids)]
print("| group | " + " | ".join("%s us/put" % n for n in names) + " | sum us/put | " + " | ".join("%s switches/put" % n for n in names) + " |")
print("|---" * (2 * len(pids) + 2) + "|")
for g, v in sorted(cpu.items(), key=lambda x: -sum(x[1].values())):
    vals = [v[p] for p in pids]
    if sum(vals) < 0.05:
        continue
    print("| %s | %s | %.1f | %s |" % (g, " | ".join("%.1f" % x for x in vals), sum(vals), " | ".join("%.2f" % sw[g][p] for p in pids)))
tot = [sum(cpu[g][p] for g in cpu) for p in pids]
print("| total | %s | %.1f | %s |" % (" | ".join("%.1f" % x for x in tot), sum(tot), " | ".join("%.2f" % sum(sw[g][p] for g in sw) for p in pids)))
PY
