"""Giving the C heap's free memory back to the operating system.

Frames, level lists, row batches and COPY buffers larger than Python's
small-object limit (512 bytes) come from the C library's ``malloc``. glibc
keeps what is freed in its heap for reuse, and the pages stay resident: each
burst (a resync of every book, a COPY backlog) touches free pages the last
one did not, so RSS creeps up in steps while the memory in use does not
(BENCHMARKS.md, "Soak": the 10-minute run with and without trimming).

:func:`release_free_heap` calls glibc's ``malloc_trim(0)``, which hands
every wholly free page of the heap back (``madvise``), not only its top.
It holds the event loop while it walks the heap's free chunks, a cost that
grows with the memory it returns: trimming every few seconds keeps each trim
small (the watchdog keeps the longest in ``heap_trim_max_ms``). Where the C
library has no ``malloc_trim`` (musl, macOS) it does nothing and says so.
"""

from __future__ import annotations

import ctypes


def _load_malloc_trim():
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter itself runs on
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def can_release_free_heap() -> bool:
    """True where the C library can give free heap pages back (glibc)."""
    return _malloc_trim is not None


def release_free_heap() -> bool:
    """Return the heap's free pages to the operating system; False where that is not possible."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)  # 1 if memory was released, 0 if there was none to release
    return True
