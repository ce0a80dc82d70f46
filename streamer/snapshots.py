"""Periodic book snapshots: what the heatmaps and price buckets read.

Every ``UPDATE_FREQUENCY`` seconds (default 1 s) each synchronised book is
written to ``book_snapshots``: the top ``HEATMAP_DEPTH`` levels per side, or,
with ``COBY_SNAPSHOT_BAND_PCT`` set, every level within that percentage of the
mid price. Books that are resynchronising are skipped (their absence is what
the quality score's snapshot coverage measures).
"""

from __future__ import annotations

import asyncio
import logging

from .book.orderbook import OrderBook
from .connection.clock import now_us
from .feed import ExchangeFeed

log = logging.getLogger(__name__)


def select_levels(
    book: OrderBook, depth: int, band_pct: float | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    if band_pct is None:
        return book.top("bid", depth), book.top("ask", depth)
    best_bid, best_ask = book.best_bid(), book.best_ask()
    if best_bid is None or best_ask is None:
        return book.top("bid", depth), book.top("ask", depth)
    mid = (float(best_bid[0]) + float(best_ask[0])) / 2
    low, high = mid * (1 - band_pct / 100), mid * (1 + band_pct / 100)
    return list(book.band("bid", low, high)), list(book.band("ask", low, high))


class Snapshotter:
    def __init__(self, feeds: list[ExchangeFeed], *, interval: float, depth: int, band_pct: float | None) -> None:
        self.feeds = feeds
        self.interval = interval
        self.depth = depth
        self.band_pct = band_pct

    async def snapshot_all(self) -> int:
        """Write one snapshot of every synchronised book; returns how many."""
        written = 0
        ts = now_us()
        for feed in self.feeds:
            for sync in list(feed.books.values()):
                if not sync.is_synced:
                    continue
                bids, asks = select_levels(sync.book, self.depth, self.band_pct)
                if not bids and not asks:
                    continue
                await feed.outputs.book_snapshot(feed.exchange, sync.symbol, ts, sync.last_seq, bids, asks)
                feed.stats.snapshots_written += 1
                written += 1
        return written

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await self.snapshot_all()
