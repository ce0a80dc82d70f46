"""Memory watchdog: raises an alarm when the process passes ``MAX_MEMORY_USAGE``.

Every queue in the streamer is bounded, so memory should stay flat; this is
the operator's alarm for when it does not (a leak, or far more symbols than
the budget was sized for). The alarm is logged, stored as an ``error`` feed
event and shown in each exchange's Redis status until memory drops again.

Before each look at RSS, every ``trim_interval`` seconds, the watchdog gives
the C heap's free pages back to the system (:mod:`streamer.heap`): RSS then
follows the memory in use instead of the largest burst so far, and the alarm
judges that.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psutil

from .connection.clock import now_us
from .heap import can_release_free_heap, release_free_heap
from .models import FeedEventKind

log = logging.getLogger(__name__)


class MemoryWatchdog:
    def __init__(self, feeds, *, limit_mb: int, interval: float = 5.0, trim_interval: float = 5.0) -> None:
        self.feeds = feeds
        self.limit_mb = limit_mb
        self.interval = interval
        #: Seconds between returns of free heap pages to the system (0: never).
        self.trim_interval = trim_interval
        if trim_interval > 0 and not can_release_free_heap():
            log.info("free heap memory cannot be returned to the system here (no malloc_trim)")
            self.trim_interval = 0
        self.process = psutil.Process()
        self.alarm = False
        self.peak_rss_mb = 0.0
        self.heap_trims = 0
        #: How long the longest trim held the event loop (they are rare and short; watched anyway).
        self.heap_trim_max_ms = 0.0
        self._last_trim: float | None = None

    def trim_heap_if_due(self, now: float | None = None) -> bool:
        """Give free heap pages back if ``trim_interval`` has passed since the last time."""
        if self.trim_interval <= 0:
            return False
        now = time.monotonic() if now is None else now
        if self._last_trim is not None and now - self._last_trim < self.trim_interval:
            return False
        self._last_trim = now
        started = time.perf_counter()
        release_free_heap()
        self.heap_trims += 1
        self.heap_trim_max_ms = max(self.heap_trim_max_ms, (time.perf_counter() - started) * 1000)
        return True

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / (1024 * 1024)

    def check(self) -> bool:
        """One check; returns whether the alarm is on."""
        self.trim_heap_if_due()
        rss = self.rss_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        over = rss > self.limit_mb
        if over and not self.alarm:
            detail = f"memory alarm: RSS {rss:.0f} MB exceeds MAX_MEMORY_USAGE {self.limit_mb} MB"
            log.error(detail)
            for feed in self.feeds:
                feed.status.detail = detail
                feed.outputs.status(feed.status)
                feed.local_event(now_us(), FeedEventKind.ERROR, detail)
        elif not over and self.alarm:
            log.warning("memory back under MAX_MEMORY_USAGE: RSS %.0f MB", rss)
            for feed in self.feeds:
                feed.status.detail = ""
                feed.outputs.status(feed.status)
        self.alarm = over
        return over

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval)
