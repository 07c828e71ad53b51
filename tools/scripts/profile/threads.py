"""CPU per put by thread group, per window of a load (tools/scripts/profile-threads.sh).

Usage: threads.py THREADS SAMPLES WINDOW TICKS_PER_SECOND

THREADS: lines "UNIX-SECOND TID NAME TICKS", one per thread per snapshot (TICKS: utime+stime).
SAMPLES: etcd benchmark tool's per-second samples (UNIX-SECOND,MIN,AVG,MAX,THROUGHPUT).
Prints a markdown table: for each window of WINDOW seconds, the puts completed in it and each
group's CPU in us per put. A thread that exits within a window (tokio's blocking pool) loses
that window's CPU: the figures are a lower bound for such groups.

Groups, from etch's thread names: the main thread (lowest TID) runs the actix system arbiter
(the lease actor); the three `actix-rt|system:0|arbiter:N` threads, by creation order (TID),
are the consensus (raft, WAL and QUIC transport), apply and watch arbiters (node/src/lib.rs
starts them in that order); `tokio-rt-worker` threads run gRPC and HTTP; `fjall:worker` threads flush
memtables and compact tables; `etch-compact` purges compacted history; `etch-wal-zero`
prepares the WAL's next segment; `etch-metrics` drains histogram samples.
"""
import collections
import sys


def thread_groups(names):
    """Maps each thread of one etch process ({tid: name}) to its group, as the module doc says."""
    main_tid = min(names)
    actix = sorted(t for t, n in names.items() if n.startswith("actix-rt") and t != main_tid)
    roles = dict(zip(actix, ["consensus+WAL+QUIC", "apply", "watch"]))

    def group(tid):
        n = names[tid]
        if tid == main_tid:
            return "lease (main)"
        if tid in roles:
            return roles[tid]
        if n.startswith("tokio-rt-worke"):
            return "gRPC (tokio)"
        if n.startswith("fjall:worker"):
            return "fjall flush+compaction"
        return n

    return {tid: group(tid) for tid in names}


def main():
    threads_path, samples_path, window, tick = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    snaps = collections.OrderedDict()  # second -> {tid: ticks}
    names = {}
    for line in open(threads_path):
        parts = line.split()
        if len(parts) != 4:
            continue
        t, tid, name, ticks = int(parts[0]), int(parts[1]), parts[2], int(parts[3])
        snaps.setdefault(t, {})[tid] = ticks
        names[tid] = name
    group = thread_groups(names).__getitem__

    puts = {}
    for line in open(samples_path):
        r = line.strip().split(",")
        if len(r) == 5:
            puts[int(r[0])] = int(r[4])
    groups = []
    for tid in sorted(names):
        g = group(tid)
        if g not in groups:
            groups.append(g)
    ts = list(snaps)
    print("| from s | puts | " + " | ".join(groups) + " | total us/put |")
    print("|---" * (len(groups) + 3) + "|")
    i = 0
    while i < len(ts) - 1:
        j = i + 1
        while j < len(ts) - 1 and ts[j] - ts[i] < window:
            j += 1
        a, b = ts[i], ts[j]
        p = sum(v for k, v in puts.items() if a <= k < b)
        if p > 0:
            us = collections.Counter()
            for tid in names:
                d = snaps[b].get(tid, 0) - snaps[a].get(tid, 0)
                us[group(tid)] += max(d, 0) * 1e6 / tick / p
            print("| %d | %d | " % (a - ts[0], p) + " | ".join("%.1f" % us[g] for g in groups)
                  + " | %.1f |" % sum(us.values()))
        i = j


if __name__ == "__main__":
    main()
