#!/usr/bin/env bash
# Builds etch's release binary with profile-guided optimization (PGO): an instrumented build
# (`-Cprofile-generate`) serves a training load on loopback, its profile is merged with the
# toolchain's own llvm-profdata, and the release build is compiled again with it
# (`-Cprofile-use`), so the compiler lays out and inlines the code the way a loaded member runs
# it. Output: target/pgo/release/etch (and etch-bench, etch-sim... built alongside, unprofiled
# apart from the code they share). Plain `cargo build --release` stays the default build.
# Both builds name the host as their target (`--target`), so the flags reach etch's own code
# and its dependencies but not build scripts and procedural macros, which run at build time:
# they are neither instrumented nor in the profile. Cargo then builds into
# DIR/<host triple>/release; the binaries are linked into DIR/release as well. `etch --version`
# names the commit built (`Git SHA:`, with `-dirty` if the sources differed from it).
#
#   tools/scripts/build-pgo.sh
#
# TARGET_CPU=native (or any name `rustc --print target-cpus` lists) also compiles both builds
# for that CPU (`-Ctarget-cpu`): the binary then runs only on CPUs with the same instruction
# set extensions, and its directories are target/pgo-gen-CPU, target/pgo-CPU and
# target/pgo-data-CPU (output target/pgo-CPU/release/etch).
#
# The training load, each against a fresh data directory: three members driven by etcd's
# benchmark tool (put at 1/1, 10/100 and 100/1000 conns/clients, linearizable and serializable
# ranges, txn-put, lease keepalives, watch latency) and etcdctl's everyday commands; then one
# member loading 150,000 distinct keys (flushes and compactions of a growing keyspace); then
# one member serving clients over TLS with certificate authentication and users (etcd's
# benchmark tool, etcdctl, the JSON gateway with curl) and over the native protocol
# (etch-bench). Members stop with SIGTERM, which is when the instrumented binary writes its
# profile. Needs /opt/etcd-bench/benchmark (../shared/tools/build-etcd-benchmark.sh),
# etcdctl, openssl, curl, and the toolchain's llvm-tools component (installed here with rustup
# if missing). Takes about 15 minutes on 2 cores (two full release builds). Uses ports
# 28780, 28790-28792 and 28800-28802.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
[ -x "$profdata" ] || rustup component add llvm-tools
cpu=${TARGET_CPU:-}
sfx=${cpu:+-$cpu}
flags="--cfg tokio_unstable${cpu:+ -Ctarget-cpu=$cpu}"
gen=target/pgo-gen$sfx
out=target/pgo$sfx
# The commit built, shown as `Git SHA:` by `etch --version` (bench-report.sh records it):
# `-dirty` when etch's sources or its lock file differ from that commit.
ETCH_GIT_SHA=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- Cargo.toml Cargo.lock node protocol storage tools/Cargo.toml tools/build.rs tools/src vendor 2>/dev/null ||
  ETCH_GIT_SHA=$ETCH_GIT_SHA-dirty
raw=$root/target/pgo-data$sfx/raw
merged=$root/target/pgo-data$sfx/etch.profdata
rm -rf "$raw"; mkdir -p "$raw"

echo "instrumented build ($gen)" >&2
ETCH_GIT_SHA=$ETCH_GIT_SHA RUSTFLAGS="$flags -Cprofile-generate=$raw" cargo build --release --bin etch --target "$host" --target-dir "$gen" -q
# The load generator for the native protocol (uninstrumented).
cargo build --release --bin etch-bench -q
ETCH=$root/$gen/$host/release/etch
. tools/scripts/profile/setup.sh

stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do
    for _ in $(seq 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
}

echo "training: 3 members" >&2
start3 28
# A step that fails is reported and skipped: the profile is only the poorer for it.
b() { "$ETCD_BENCH" --endpoints "$EPS" "$@" >"$work/step.out" 2>&1 || echo "training step failed: $* ($(tail -1 "$work/step.out"))" >&2; }
b --conns 10 --clients 100 put --key-size 8 --val-size 256 --total 60000 --sequential-keys --key-space-size 60000
b --conns 100 --clients 1000 put --key-size 8 --val-size 256 --total 60000 --sequential-keys --key-space-size 60000
b --conns 1 --clients 1 put --key-size 8 --val-size 256 --total 2000
b --conns 10 --clients 100 range foo --total 20000 --consistency l
b --conns 10 --clients 100 range foo --total 20000 --consistency s
b --conns 10 --clients 100 txn-put --txn-ops 4 --key-size 8 --val-size 256 --key-space-size 100000 --total 10000
b --conns 10 --clients 100 lease-keepalive --total 10000
b --conns 10 --clients 100 watch-latency --total 2000 --put-rate 1000
c() { "$ETCDCTL" --endpoints "$EPS" "$@" >/dev/null 2>&1 || true; }
c put /registry/pods/default/a x; c get /registry/ --prefix; c get /registry/ --prefix --keys-only
c del /registry/ --prefix; c member list; c endpoint status; c endpoint health
c compaction 1000; c defrag; c alarm list
c lease grant 60; c auth status; c user list
stop_all

echo "training: 1 member, 150,000 distinct keys" >&2
"$ETCH" --name t0 --data-dir "$work/t0" --listen-client-urls http://127.0.0.1:28790 \
  --advertise-client-urls http://127.0.0.1:28790 --listen-peer-urls http://127.0.0.1:28800 \
  --initial-advertise-peer-urls http://127.0.0.1:28800 --initial-cluster t0=http://127.0.0.1:28800 \
  --log-level warn 2>"$work/t0.log" &
pids=($!)
EPS=127.0.0.1:28790
for _ in $(seq 500); do "$ETCDCTL" --endpoints "$EPS" put ready 1 >/dev/null 2>&1 && break; sleep 0.05; done
b --conns 10 --clients 100 put --key-size 16 --val-size 256 --total 150000 --sequential-keys --key-space-size 150000
stop_all

echo "training: 1 member with client TLS, certificate auth and users, native protocol, HTTP gateway" >&2
# Paths no load above takes would otherwise count as never run, which the compiler optimizes
# for size: TLS to clients (Kubernetes runs etcd with client certificates), authentication,
# the native protocol and the JSON gateway.
t=$work/tls
mkdir -p "$t"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=etch-pgo-ca -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
cert() { # cert NAME CN EXTENSIONS (X.509 v3: rustls refuses v1 certificates)
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$t/$1.key" -out "$t/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$t/$1.ext"
  openssl x509 -req -in "$t/$1.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 2 \
    -extfile "$t/$1.ext" -out "$t/$1.pem" 2>/dev/null
}
cert server etch-pgo "$(printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth')"
cert root root "$(printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth')"
"$ETCH" --name s0 --data-dir "$work/s0" --listen-client-urls https://127.0.0.1:28790 \
  --advertise-client-urls https://127.0.0.1:28790 --listen-peer-urls http://127.0.0.1:28800 \
  --initial-advertise-peer-urls http://127.0.0.1:28800 --initial-cluster s0=http://127.0.0.1:28800 \
  --listen-native-urls tcp://127.0.0.1:28780 --cert-file "$t/server.pem" --key-file "$t/server.key" \
  --trusted-ca-file "$t/ca.pem" --client-cert-auth --log-level warn 2>"$work/s0.log" &
pids=($!)
EPS=127.0.0.1:28790
tls=(--cacert "$t/ca.pem" --cert "$t/root.pem" --key "$t/root.key")
ok=
for _ in $(seq 100); do "$ETCDCTL" --endpoints "$EPS" "${tls[@]}" --command-timeout 2s put ready 1 >/dev/null 2>&1 && ok=1 && break; sleep 0.1; done
[ -n "$ok" ] || { echo "the TLS member did not answer: $(cat "$work/s0.log")" >&2; exit 1; }
n() { ./target/release/etch-bench --endpoints 127.0.0.1:28780 --protocol native "${tls[@]}" "$@" >"$work/step.out" 2>&1 || echo "training step failed: native $* ($(tail -1 "$work/step.out"))" >&2; }
n --conns 10 --clients 100 put --key-size 8 --val-size 256 --total 30000
n --conns 10 --clients 100 range foo --total 10000
n --conns 10 --clients 100 txn-put --txn-ops 4 --key-size 8 --val-size 256 --total 5000
n --conns 10 watch-latency --streams 10 --watchers-per-stream 10 --put-total 1000 --put-rate 1000
b "${tls[@]}" --conns 10 --clients 100 put --key-size 8 --val-size 256 --total 30000
b "${tls[@]}" --conns 10 --clients 100 range foo --total 10000 --consistency l
for _ in $(seq 20); do
  curl -s --cacert "$t/ca.pem" --cert "$t/root.pem" --key "$t/root.key" https://127.0.0.1:28790/v3/kv/put \
    -d '{"key":"Zm9v","value":"YmFy"}' >/dev/null || true
  curl -s --cacert "$t/ca.pem" --cert "$t/root.pem" --key "$t/root.key" https://127.0.0.1:28790/v3/kv/range \
    -d '{"key":"Zm9v"}' >/dev/null || true
done
ct() { "$ETCDCTL" --endpoints "$EPS" "${tls[@]}" "$@" >/dev/null 2>&1 || echo "training step failed: etcdctl $*" >&2; }
ct user add root --new-user-password pgo-root
ct user grant-role root root
ct user add reader --new-user-password pgo-reader
ct role add readers; ct role grant-permission readers read /registry/ --prefix; ct user grant-role reader readers
ct auth enable
# The client certificate's CN (root) is the user from here on, as in etcd.
b "${tls[@]}" --conns 10 --clients 100 put --key-size 8 --val-size 256 --total 20000
b "${tls[@]}" --conns 10 --clients 100 range foo --total 10000
for _ in $(seq 20); do ct --user reader:pgo-reader get /registry/a; ct --user root:pgo-root put /registry/a b; done
ct --user root:pgo-root auth disable
stop_all

ls "$raw"/*.profraw >/dev/null
"$profdata" merge -o "$merged" "$raw"/*.profraw
echo "optimized build ($out)" >&2
ETCH_GIT_SHA=$ETCH_GIT_SHA RUSTFLAGS="$flags -Cprofile-use=$merged" cargo build --release --bins --target "$host" --target-dir "$out" -q
# The paths the scripts and docs name (target/pgo/release/etch): hard links to this build's.
mkdir -p "$out/release"
for f in "$out/$host/release"/*; do
  [ -f "$f" ] && [ -x "$f" ] && ln -f "$f" "$out/release/$(basename "$f")"
done
echo "built $out/release/etch with $merged" >&2
