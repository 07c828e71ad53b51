#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine, then runs
# formatting, lints and every test. Same locally and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: etcd's etcdctl (compatibility tests, later issues) and protoc for crates
# whose build scripts need it. Skipped when already present.
need=()
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
# etcd itself: the compatibility tests compare etcdctl's output against a real etcd 3.4.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# iptables: the cluster tests cut a member off from its peers (needs root, as CI has).
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# Prometheus: the observability test scrapes a cluster with a real one.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# A deliberately broken etch (reads served before apply reaches their ReadIndex) that the
# history suite must fail (tests/tests/history.rs), beside the real binaries.
cargo build -p etch-node --bin etch --features planted-bug-read-before-apply
mkdir -p target/planted
cp target/debug/etch target/planted/etch
# The black-box tests start the real binaries: build them first.
cargo build --workspace --bins
cp target/debug/etchctl target/planted/etchctl
cargo test --workspace
# etcd's own end-to-end suite with etch as `etcd` (the quick areas; docs/compatibility.md has
# the rest and how to run them).
./tests/etcd-e2e.sh -b target/debug/etch
