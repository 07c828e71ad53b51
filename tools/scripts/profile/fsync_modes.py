#!/usr/bin/env python3
"""fdatasync cost by how a preallocated file was prepared: sparse (set_len, as a new WAL
segment), zero-filled (as etch's WAL zeroer leaves it), fallocate (as etcd preallocates), and
zero-filled written with O_DIRECT in 4 KiB blocks (tried for etch's WAL, not kept).
Writes 2 KiB records (4 KiB blocks for direct) with pwrite + fdatasync into a 64 MiB file in
DIR, three rounds of each, and prints the time per call, voluntary context switches and the
caller's CPU per call.

    python3 tools/scripts/profile/fsync_modes.py DIR [MODE...]   (DIR on the disk to measure;
                                                                  MODEs: sparse zero falloc direct)
"""
import os, time, sys, resource, mmap
def run(path, mode, n=2000, rec=2048):
    fd = os.open(path, os.O_RDWR|os.O_CREAT|os.O_TRUNC, 0o644)
    size = 64*1024*1024
    if mode == 'sparse':
        os.ftruncate(fd, size)
    elif mode == 'falloc':
        os.posix_fallocate(fd, 0, size)
    elif mode in ('zero', 'direct'):
        buf = b'\0'*(1<<20)
        for i in range(64): os.write(fd, buf)
    os.fsync(fd)
    data = os.urandom(rec)
    if mode == 'direct':
        os.close(fd)
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        rec = 4096
        data = mmap.mmap(-1, rec)  # page-aligned, as O_DIRECT needs
        data.write(os.urandom(rec))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    off = 0
    for i in range(n):
        os.pwrite(fd, data, off); off += rec
        os.fdatasync(fd)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    os.close(fd); os.unlink(path)
    print(f"{mode:7s} {dt/n*1e6:8.1f} us/fsync  vcs/op {(r1.ru_nvcsw-r0.ru_nvcsw)/n:.2f}  cpu us/op {((r1.ru_utime+r1.ru_stime)-(r0.ru_utime+r0.ru_stime))/n*1e6:.1f}")
d = sys.argv[1]
for m in (sys.argv[2:] or ['sparse','zero','falloc','direct'])*3:
    run(os.path.join(d,'f.test'), m)
