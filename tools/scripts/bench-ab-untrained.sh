#!/usr/bin/env bash
# Two etch builds, alternated, on loads tools/scripts/build-pgo.sh's training does not run (so
# a build with profile-guided optimization is not only measured on what it was trained on): a
# fresh 3-member cluster per build and round, etcd's benchmark tool at 10/100 conns/clients,
#   put: 60,000 distinct 64-byte keys with 1 KiB values;
#   stm: 10,000 STM transactions over 1,000 keys, 4 keys a transaction, 64-byte values;
# and for each, requests/s and the members' CPU per request (utime+stime from /proc/PID/stat,
# summed over the members, before and after).
#
#   tools/scripts/bench-ab-untrained.sh A B [ROUNDS]     (e.g. ./target/release/etch
#                                                         ./target/pgo/release/etch 2)
#
# Needs /opt/etcd-bench/benchmark (../shared/tools/build-etcd-benchmark.sh) and etcdctl. Uses
# ports 27790-27792 and 27800-27802.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:?first etch binary}; B=${2:?second etch binary}; ROUNDS=${3:-2}
one() {
  ETCH=$1 bash -c '
  . tools/scripts/profile/setup.sh
  start3 27
  tick=$(getconf CLK_TCK)
  cpu() { local s=0 p; for p in "${pids[@]}"; do s=$((s + $(sed "s/^.*) //" /proc/$p/stat | awk "{print \$12+\$13}"))); done; echo $s; }
  run() {
    local name=$1 n=$2 c0 c1 r; shift 2
    c0=$(cpu)
    r=$("$ETCD_BENCH" --endpoints "$EPS" "$@" 2>&1 | awk "/Requests\\/sec/ {print \$2}")
    c1=$(cpu)
    python3 -c "import sys; print(\"| %s | %s | %.0f | %.1f |\" % (sys.argv[1], sys.argv[2], float(sys.argv[3]), (int(sys.argv[5]) - int(sys.argv[4])) * 1e6 / int(sys.argv[6]) / int(sys.argv[7])))" \
      "$ETCH" "$name" "$r" "$c0" "$c1" "$tick" "$n"
  }
  run put-64B-keys-1KiB-values 60000 --conns 10 --clients 100 put --key-size 64 --val-size 1024 \
    --total 60000 --sequential-keys --key-space-size 60000
  run stm 10000 --conns 10 --clients 100 stm --keys 1000 --keys-per-txn 4 --val-size 64 --total 10000
  '
}
echo "| build | load | req/s | members' CPU per request, us |"
echo "|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  for bin in "$A" "$B"; do one "$bin"; done
done
