#!/usr/bin/env bash
# etch vs etcd, same machine, same run, same cluster size. etcd's own tools/benchmark measures
# both over gRPC (like for like); etch-bench also measures etch's native protocol. Prints a
# markdown table.
#
#   tools/scripts/bench-compare.sh MEMBERS [TOTAL]     MEMBERS = 1 or 3; TOTAL default 100000
#
# Needs: etcd (Debian etcd-server) and /opt/etcd-bench/benchmark
# (../shared/tools/build-etcd-benchmark.sh). Client counts: 1 and 100, plus 1000 for 3 members.
# ETCH=path/to/etch measures another etch build than ./target/release/etch.
set -euo pipefail
cd "$(dirname "$0")/../.."
MEMBERS=${1:?members: 1 or 3}
TOTAL=${2:-100000}
ETCD_BENCH=${ETCD_BENCH:-/opt/etcd-bench/benchmark}
cargo build --release --bins -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

etch_eps=(); grpc_eps=(); etcd_eps=(); etch_ic=(); etcd_ic=()
for i in $(seq 0 $((MEMBERS - 1))); do
  etch_eps+=("127.0.0.1:2378$i"); grpc_eps+=("127.0.0.1:2377$i"); etcd_eps+=("127.0.0.1:2379$i")
  etch_ic+=("m$i=http://127.0.0.1:2380$i"); etcd_ic+=("e$i=http://127.0.0.1:2381$i")
done
ETCH_EPS=$(IFS=,; echo "${etch_eps[*]}"); ETCD_EPS=$(IFS=,; echo "${etcd_eps[*]}")
GRPC_EPS=$(IFS=,; echo "${grpc_eps[*]}")
ETCH_IC=$(IFS=,; echo "${etch_ic[*]}"); ETCD_IC=$(IFS=,; echo "${etcd_ic[*]}")
for i in $(seq 0 $((MEMBERS - 1))); do
  "${ETCH:-./target/release/etch}" --name "m$i" --data-dir "$work/m$i" --listen-native-urls "tcp://127.0.0.1:2378$i" \
    --listen-client-urls "http://127.0.0.1:2377$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$ETCH_IC" --log-level warn 2>"$work/m$i.log" &
  etcd --name "e$i" --data-dir "$work/e$i" --listen-client-urls "http://127.0.0.1:2379$i" \
    --advertise-client-urls "http://127.0.0.1:2379$i" --listen-peer-urls "http://127.0.0.1:2381$i" \
    --initial-advertise-peer-urls "http://127.0.0.1:2381$i" --initial-cluster "$ETCD_IC" \
    --log-level error >"$work/e$i.log" 2>&1 &
done
for _ in $(seq 200); do
  ./target/release/etchctl --endpoints "$ETCH_EPS" put foo bar >/dev/null 2>&1 &&
    etcdctl --endpoints "$ETCD_EPS" put foo bar >/dev/null 2>&1 && break
  sleep 0.1
done

summary() { python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.2f %.2f %d" % (r["qps"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["errors"]))'; }
etch_run() { ./target/release/etch-bench --endpoints "$ETCH_EPS" --json "$@" | summary; }
etcd_run() { etcd_tool "$ETCD_EPS" "$@"; }
grpc_run() { etcd_tool "$GRPC_EPS" "$@"; }
etcd_tool() { local eps=$1; shift; "$ETCD_BENCH" --endpoints "$eps" "$@" 2>/dev/null | python3 -c '
import re,sys
t=sys.stdin.read()
q=float(re.search(r"Requests/sec:\s+([\d.]+)",t).group(1))
p50=float(re.search(r"50% in ([\d.]+) secs",t).group(1))*1000
p99=float(re.search(r"99% in ([\d.]+) secs",t).group(1))*1000
print("%.0f %.2f %.2f 0" % (q,p50,p99))'; }

clients_list="1 100"; [ "$MEMBERS" -gt 1 ] && clients_list="1 100 1000"
echo "| workload | clients | etch (gRPC) req/s | etch (gRPC) p50 / p99 ms | etcd req/s | etcd p50 / p99 ms | etch (native, etch-bench) req/s |"
echo "|---|---|---|---|---|---|---|"
for clients in $clients_list; do
  total=$TOTAL; [ "$clients" = 1 ] && total=$((TOTAL / 10))
  conns=$(( clients < 100 ? (clients < 10 ? clients : 10) : 100 ))
  read -r g gp50 gp99 _ < <(grpc_run --conns $conns --clients $clients put --total $total --key-size 8 --val-size 256 --sequential-keys --key-space-size $total)
  read -r b bp50 bp99 _ < <(etcd_run --conns $conns --clients $clients put --total $total --key-size 8 --val-size 256 --sequential-keys --key-space-size $total)
  read -r a _ _ aerr < <(etch_run --conns $conns --clients $clients put --total $total --key-size 8 --val-size 256 --sequential-keys --key-space-size $total)
  [ "$aerr" = 0 ] || echo "etch errors: $aerr" >&2
  echo "| put (8 B key, 256 B value) | $clients | $g | $gp50 / $gp99 | $b | $bp50 / $bp99 | $a |"
  for c in l s; do
    read -r g gp50 gp99 _ < <(grpc_run --conns $conns --clients $clients range foo --total $total --consistency $c)
    read -r b bp50 bp99 _ < <(etcd_run --conns $conns --clients $clients range foo --total $total --consistency $c)
    read -r a _ _ _ < <(etch_run --conns $conns --clients $clients range foo --total $total --consistency $c)
    echo "| range, consistency=$c | $clients | $g | $gp50 / $gp99 | $b | $bp50 / $bp99 | $a |"
  done
done
# etcd's other workloads against etch, for errors (numbers printed by the tool itself).
for w in "txn-put --total 10000 --key-size 8 --val-size 256" "watch --put-total 1000 --put-rate 1000 --watched-key-total 10 --streams 10 --watch-per-stream 10" \
         "lease-keepalive --total 10000"; do
  if "$ETCD_BENCH" --endpoints "$GRPC_EPS" --conns 10 --clients 100 $w >"$work/w.out" 2>&1; then
    echo "etcd benchmark $w against etch: ok ($(grep -m1 -E 'Requests/sec|Total' "$work/w.out" | tr -s ' \t' ' '))" >&2
  else
    echo "etcd benchmark $w against etch: FAILED" >&2; tail -5 "$work/w.out" >&2
  fi
done
