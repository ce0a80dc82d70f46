"""Garbage-collector settings for a long-running streamer process.

The hot path allocates several objects per frame (rows, level tuples, mapped
events) that reference counting frees at once; the cyclic collector only has
to look at them. With CPython's defaults it runs a young collection every 700
allocations and, every so often, a full one that walks every object of the
process (books, symbol tables, imported modules): 20-40 ms with the event
loop stopped, which is the latency of every frame waiting behind it.

So, once the process is set up: :func:`gc.freeze` moves everything alive then
(modules, configuration, clients) out of the collector's view for good, and a
higher last threshold makes full collections ten times rarer. The young
thresholds stay at CPython's defaults: a collection's pause grows with the
objects it examines, and small frequent ones keep each pause well under a
millisecond. Memory use stays bounded: garbage cycles are still collected.
"""

from __future__ import annotations

import gc

#: Allocations (minus deallocations) between young collections; then how many
#: young collections per middle one, and middle per full one (defaults 700, 10, 10).
THRESHOLDS = (700, 10, 100)


def tune_for_streaming() -> None:
    """Freeze what exists now and make full collections rarer (process-wide; call once set up)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
