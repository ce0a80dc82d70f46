"""Memory watchdog: raises an alarm when the process passes ``MAX_MEMORY_USAGE``.

Every queue in the streamer is bounded, so memory should stay flat; this is
the operator's alarm for when it does not (a leak, or far more symbols than
the budget was sized for). The alarm is logged, stored as an ``error`` feed
event and shown in each exchange's Redis status until memory drops again.
"""

from __future__ import annotations

import asyncio
import logging

import psutil

from .connection.clock import now_us
from .models import FeedEventKind

log = logging.getLogger(__name__)


class MemoryWatchdog:
    def __init__(self, feeds, *, limit_mb: int, interval: float = 5.0) -> None:
        self.feeds = feeds
        self.limit_mb = limit_mb
        self.interval = interval
        self.process = psutil.Process()
        self.alarm = False
        self.peak_rss_mb = 0.0

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / (1024 * 1024)

    def check(self) -> bool:
        """One check; returns whether the alarm is on."""
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
