"""Periodic book snapshots: what the heatmaps and price buckets read.

Every ``UPDATE_FREQUENCY`` seconds (default 1 s) each feed gets a snapshot
tick; the feed journals it and its processor writes every synchronised book
to ``book_snapshots``: the top ``HEATMAP_DEPTH`` levels per side, or, with
``COBY_SNAPSHOT_BAND_PCT`` set, every level within that percentage of the mid
price. Books that are resynchronising are skipped (their absence is what the
quality score's snapshot coverage measures).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .connection.clock import now_us

if TYPE_CHECKING:  # pragma: no cover
    from .feed import ExchangeFeed


class Snapshotter:
    def __init__(self, feeds: list["ExchangeFeed"], *, interval: float) -> None:
        self.feeds = feeds
        self.interval = interval

    async def snapshot_all(self) -> None:
        ts = now_us()
        for feed in self.feeds:
            await feed.snapshot_tick(ts)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await self.snapshot_all()
