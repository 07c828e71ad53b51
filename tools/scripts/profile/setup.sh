# Sourced by the profile-*.sh scripts (from the repository root): etcd's benchmark tool and
# etcdctl (ETCD_BENCH, ETCDCTL), the etch binary (ETCH, or the current release build), and a
# scratch directory `work` that is removed, with every background job stopped, at exit.
ETCD_BENCH=${ETCD_BENCH:-/opt/etcd-bench/benchmark}
ETCDCTL=${ETCDCTL:-/opt/etcd35/bin/etcdctl}
[ -x "$ETCDCTL" ] || ETCDCTL=$(command -v etcdctl)
if [ -z "${ETCH:-}" ]; then cargo build --release --bins -q; ETCH=./target/release/etch; fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
