#!/usr/bin/env bash
# Starts a 3-member etch cluster on loopback in one command; Ctrl-C stops it.
#
#   tools/scripts/cluster.sh [data-root]      (default ./cluster.etch)
#
# Members m0, m1, m2: etcd gRPC API on 127.0.0.1:23770-23772 (etcdctl), native protocol on
# 127.0.0.1:23790-23792 (etchctl), peers (QUIC/UDP) on 127.0.0.1:23800-23802.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${1:-cluster.etch}
cargo build --release --bins -q
mkdir -p "$root"
initial="m0=http://127.0.0.1:23800,m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
for i in 0 1 2; do
  ./target/release/etch --name "m$i" --data-dir "$root/m$i" \
    --listen-native-urls "tcp://127.0.0.1:2379$i" \
    --listen-client-urls "http://127.0.0.1:2377$i" --advertise-client-urls "http://127.0.0.1:2377$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$initial" --initial-cluster-token etch-local \
    2> "$root/m$i.log" &
  pids+=($!)
done
echo "etch cluster: etcdctl --endpoints 127.0.0.1:23770,127.0.0.1:23771,127.0.0.1:23772;" \
  "etchctl --endpoints 127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792 (logs in $root/m*.log)"
wait
