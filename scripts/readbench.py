#!/usr/bin/env python3
"""Sequential read throughput of one file: PASSES passes of 128 KiB preads.
"cold" drops the file's page cache before each pass (posix_fadvise
DONTNEED), so every pass reaches the filesystem below (for a lazily pulled
file: the FUSE daemon and its chunk cache); "warm" keeps it (page cache).
Prints the median MB/s. Usage: readbench.py FILE PASSES cold|warm"""
import os
import statistics
import sys
import time

path, passes, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
rates = []
for _ in range(passes + 1):
    if mode == "cold":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    t = time.perf_counter()
    off = 0
    while True:
        b = os.pread(fd, 1 << 17, off)
        if not b:
            break
        off += len(b)
    dt = time.perf_counter() - t
    if off != size:
        sys.exit(f"short read: {off} of {size}")
    rates.append(size / dt / 1e6)
print(f"{statistics.median(rates[1:]):.1f}")  # the first pass only warms up
