# Sourced by the profile-*.sh scripts (from the repository root): etcd's benchmark tool and
# etcdctl (ETCD_BENCH, ETCDCTL), the etch binary (ETCH, or the current release build), and a
# scratch directory `work` that is removed, with every background job stopped, at exit.
ETCD_BENCH=${ETCD_BENCH:-/opt/etcd-bench/benchmark}
ETCDCTL=${ETCDCTL:-/opt/etcd35/bin/etcdctl}
[ -x "$ETCDCTL" ] || ETCDCTL=$(command -v etcdctl)
if [ -z "${ETCH:-}" ]; then cargo build --release --bins -q; ETCH=./target/release/etch; fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# start3 PORTBASE: starts a fresh 3-member etch cluster (client ports PORTBASE790-792, peer
# ports PORTBASE800-802, data and logs in $work), waits for a linearizable write and its
# leader; sets `pids` (member i's PID), EPS (the client endpoints) and `leader` (its index).
start3() {
  local base=$1 i ic="p0=http://127.0.0.1:${1}800,p1=http://127.0.0.1:${1}801,p2=http://127.0.0.1:${1}802"
  pids=()
  for i in 0 1 2; do
    "$ETCH" --name "p$i" --data-dir "$work/p$i" --listen-client-urls "http://127.0.0.1:${base}79$i" \
      --advertise-client-urls "http://127.0.0.1:${base}79$i" --listen-peer-urls "http://127.0.0.1:${base}80$i" \
      --initial-advertise-peer-urls "http://127.0.0.1:${base}80$i" --initial-cluster "$ic" \
      --log-level warn 2>"$work/p$i.log" &
    pids+=($!)
  done
  EPS=127.0.0.1:${base}790,127.0.0.1:${base}791,127.0.0.1:${base}792
  for _ in $(seq 500); do "$ETCDCTL" --endpoints "$EPS" put ready 1 >/dev/null 2>&1 && break; sleep 0.05; done
  leader=
  for _ in $(seq 100); do
    leader=$("$ETCDCTL" --endpoints "$EPS" endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
print([i for i, e in enumerate(r) if e["Status"]["leader"] == e["Status"]["header"]["member_id"]][0])' 2>/dev/null) && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "no leader: $(cat "$work"/p*.log)" >&2; exit 1; }
}
