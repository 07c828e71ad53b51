#!/usr/bin/env python3
"""What the first touch of a page costs on this machine: writes 2 GiB to a new file in DIR
with 256 KiB pwrites and prints the time of each 256 MiB. The first 256 MiB usually lands on
pages freed a moment before (the page cache of a file just deleted); the rest on pages the
kernel has not used lately, which on a virtual machine whose host takes back free memory
(virtio-balloon free page reporting, DAMON pageout) come back through a host fault each.

    python3 tools/scripts/profile/new_pages.py DIR     (DIR on the disk to measure)
"""
import os, sys, time

chunk = bytes(256 * 1024)
path = os.path.join(sys.argv[1], "new_pages.test")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
try:
    off = 0
    for part in range(8):
        t0 = time.perf_counter()
        for _ in range(1024):
            os.pwrite(fd, chunk, off)
            off += len(chunk)
        dt = time.perf_counter() - t0
        print(f"256 MiB #{part + 1}: {dt:.3f} s ({dt / 65536 * 1e6:.1f} us per 4 KiB page)")
finally:
    os.close(fd)
    os.unlink(path)
