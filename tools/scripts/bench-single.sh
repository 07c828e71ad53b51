#!/usr/bin/env bash
# Single-member etch vs etcd, same machine, same run: etch measured with etch-bench (native
# protocol), etcd with etcd's own tools/benchmark (gRPC). Prints a markdown table.
#
# Needs: etcd (Debian etcd-server) and /opt/etcd-bench/benchmark
# (../shared/tools/build-etcd-benchmark.sh). Usage: tools/scripts/bench-single.sh [total]
set -euo pipefail
cd "$(dirname "$0")/../.."
TOTAL=${1:-100000}
ETCD_BENCH=${ETCD_BENCH:-/opt/etcd-bench/benchmark}
cargo build --release --bins -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

qps_etch() { ./target/release/etch-bench --endpoints 127.0.0.1:23780 --json "$@" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.2f %.2f" % (r["qps"], r["latency_ms"]["p50"], r["latency_ms"]["p99"]))'; }
qps_etcd() { "$ETCD_BENCH" --endpoints 127.0.0.1:23790 "$@" 2>/dev/null | python3 -c '
import re,sys
t=sys.stdin.read()
q=float(re.search(r"Requests/sec:\s+([\d.]+)",t).group(1))
p50=float(re.search(r"50% in ([\d.]+) secs",t).group(1))*1000
p99=float(re.search(r"99% in ([\d.]+) secs",t).group(1))*1000
print("%.0f %.2f %.2f" % (q,p50,p99))'; }

./target/release/etch --data-dir "$work/etch" --listen-native-urls tcp://127.0.0.1:23780 --log-level warn 2>"$work/etch.log" &
etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster default=http://127.0.0.1:23800 --log-level error >"$work/etcd.log" 2>&1 &
for i in $(seq 100); do
  ./target/release/etchctl --endpoints 127.0.0.1:23780 endpoint status >/dev/null 2>&1 &&
    etcdctl --endpoints 127.0.0.1:23790 endpoint status >/dev/null 2>&1 && break
  sleep 0.1
done
./target/release/etchctl --endpoints 127.0.0.1:23780 put foo bar >/dev/null
etcdctl --endpoints 127.0.0.1:23790 put foo bar >/dev/null

echo "| workload | clients | etch req/s | etch p50 / p99 ms | etcd req/s | etcd p50 / p99 ms |"
echo "|---|---|---|---|---|---|"
for clients in 1 100; do
  total=$TOTAL; [ "$clients" = 1 ] && total=$((TOTAL / 10))
  conns=$(( clients < 10 ? clients : 10 ))
  read -r a ap50 ap99 < <(qps_etch --conns $conns --clients $clients put --total $total --key-size 8 --val-size 256 --sequential-keys --key-space-size $total)
  read -r b bp50 bp99 < <(qps_etcd --conns $conns --clients $clients put --total $total --key-size 8 --val-size 256 --sequential-keys --key-space-size $total)
  echo "| put (8 B key, 256 B value) | $clients | $a | $ap50 / $ap99 | $b | $bp50 / $bp99 |"
  for c in l s; do
    read -r a ap50 ap99 < <(qps_etch --conns $conns --clients $clients range foo --total $total --consistency $c)
    read -r b bp50 bp99 < <(qps_etcd --conns $conns --clients $clients range foo --total $total --consistency $c)
    echo "| range, consistency=$c | $clients | $a | $ap50 / $ap99 | $b | $bp50 / $bp99 |"
  done
done
