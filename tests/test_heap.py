"""Free C-heap memory goes back to the system, on the memory watchdog's schedule.

The release itself is measured in a child process of its own, so that this
process's heap (pytest, the other tests) cannot blur the RSS it reads.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from streamer.heap import can_release_free_heap, release_free_heap
from streamer.watchdog import MemoryWatchdog

needs_malloc_trim = pytest.mark.skipif(
    not can_release_free_heap(), reason="this C library has no malloc_trim (glibc has; musl and macOS do not)"
)

#: Allocates 64 MB in 8 KiB blocks (from malloc's heap, not mmap), frees all
#: but one block in 64 (what stays in use pins the heap: its top cannot shrink
#: by itself), then prints RSS in MB before and after release_free_heap().
_CHILD = textwrap.dedent(
    """
    import psutil
    from streamer.heap import release_free_heap

    process = psutil.Process()
    rss = lambda: process.memory_info().rss / 2**20
    baseline = rss()
    blocks = [bytes(8192) for _ in range(8192)]
    allocated = rss()
    kept = blocks[::64]
    del blocks
    freed = rss()
    assert release_free_heap()
    print(baseline, allocated, freed, rss())
    """
)


@needs_malloc_trim
def test_release_free_heap_gives_freed_pages_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True).stdout
    baseline, allocated, freed, released = map(float, out.split())
    assert allocated - baseline >= 48  # the 64 MB were resident
    assert freed - baseline >= 48  # and freeing them alone kept them resident
    assert freed - released >= 48  # the release gave them back


@needs_malloc_trim
def test_watchdog_trims_every_interval_and_before_it_measures():
    watchdog = MemoryWatchdog([], limit_mb=10**6, trim_interval=10.0)
    assert watchdog.trim_heap_if_due(now=100.0)
    assert not watchdog.trim_heap_if_due(now=105.0)
    assert watchdog.trim_heap_if_due(now=110.5)
    assert watchdog.heap_trims == 2
    assert watchdog.heap_trim_max_ms >= 0.0
    assert watchdog.check() is False  # the first check of a fresh schedule trims, then measures
    assert watchdog.heap_trims == 3


def test_watchdog_with_trimming_off_never_trims_and_still_raises_its_alarm():
    watchdog = MemoryWatchdog([], limit_mb=1, trim_interval=0.0)
    assert watchdog.check() is True  # any Python process is above 1 MB
    assert watchdog.alarm and watchdog.peak_rss_mb > 1
    assert not watchdog.trim_heap_if_due(now=1e9)
    assert watchdog.heap_trims == 0


def test_release_free_heap_says_whether_it_can():
    assert release_free_heap() is can_release_free_heap()
