#!/usr/bin/env python3
"""Splits a member's CPU by stage of the write path from `perf script` output.

    stages.py PERF_SCRIPT_OUTPUT US_PER_WRITE

Each sample's call stack is assigned to the first stage whose pattern matches any of its
frames (the order below matters: the WAL actor's fsync is WAL, not scheduler); samples that
match none are thread hand-offs and idle polling of the runtimes when they run scheduler
code, "other" otherwise. Prints tab-separated "stage, share %, us per write" (the member's
CPU per write times the share), most expensive first.
"""
import collections
import re
import sys

STAGES = [
    ("WAL: encode, write, fdatasync", r"actors::wal|storage::wal|fdatasync"),
    ("apply: MVCC into fjall, answers", r"actors::apply|core::apply|storage::mvcc|fjall|lsm_tree"),
    ("raft: step, Ready, proposals", r"actors::consensus|core::consensus|core::raft|raft::raw_node|raft::raft::|raft_log|raftlog"),
    ("peers: frames over QUIC", r"actors::transport|core::peer|quinn|rustls|ring::"),
    ("gRPC: h2/tonic, service", r"tonic|h2::|hyper|etch_node::service|etch_node::api|tower"),
    ("lease, watch, metrics", r"actors::lease|actors::watch|etch_node::metrics|metrics_exporter"),
]
SCHED = r"schedule|futex|epoll|park|wake|tokio::runtime|actix_rt|Arbiter|mio::"


def samples(path):
    stack = []
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line.startswith("\t"):
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                stack.append(parts[1])
    if stack:
        yield stack


def main():
    path, us = sys.argv[1], float(sys.argv[2])
    counts, total = collections.Counter(), 0
    for stack in samples(path):
        total += 1
        text = "\n".join(stack)
        for name, pat in STAGES:
            if re.search(pat, text):
                counts[name] += 1
                break
        else:
            counts["thread hand-offs, runtime polling" if re.search(SCHED, text) else "other (allocator, kernel, libc)"] += 1
    for name, c in counts.most_common():
        print("%s\t%.1f\t%.1f" % (name, 100 * c / total, us * c / total))


main()
