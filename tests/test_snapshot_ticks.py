"""Periodic snapshots of many books: one tick journaled in parts, and a database that keeps up.

A thousand books at 50 levels a side are 100,000 snapshot rows a tick, as
many as the PostgreSQL sink buffers before it spills rows to be re-derived
from the journal (processing every frame twice). The feed journals a tick in
parts of ``TICK_BOOKS`` books and lets a crowded database catch up between
them. Here the sink's buffer is made small so that one whole tick would
overflow it and one part does not.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from streamer.app import Streamer
from streamer.bench.e2e.serve import simulated_symbols, symbol_name
from streamer.connection.clock import now_us
from streamer.connection.ws import WsOptions
from streamer.feed import FeedConfig
from streamer.journal.records import TICK_BOOKS
from streamer.simulator.backend import run_simulated_exchanges

BOOKS = 5 * TICK_BOOKS
DEPTH = 10  # snapshot levels per side


async def test_a_tick_over_many_books_is_written_in_parts_without_spilling(settings):
    # At most 6,000 rows buffered: a whole tick (500 books x 20 rows) would spill;
    # a part (100 books, 2,000 rows) fits beside what the sink waits to write.
    settings = replace(settings, data_buffer_size=600, batch_write_size=500, heatmap_depth=DEPTH,
                       snapshot_interval=3600.0)
    symbols = simulated_symbols("okx", BOOKS)
    async with run_simulated_exchanges(["okx"], {"okx": symbols}, rate=2) as urls:
        feed = FeedConfig("okx", [symbol_name(s) for s in symbols], urls["okx"],
                          ws=WsOptions(backoff_base=0.2, backoff_cap=1.0))
        streamer = Streamer(settings, [feed])
        await streamer.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            live = streamer.feeds[0]
            while not (len(live.books) == BOOKS and all(s.is_synced and len(s.book) >= 2 * DEPTH
                                                        for s in live.books.values())):
                assert loop.time() < deadline, "books not synced in time"
                await asyncio.sleep(0.05)
            ts = now_us()
            await live.snapshot_tick(ts)
        finally:
            await streamer.stop()
    stats = streamer.pg.stats()
    assert stats["spills"] == 0 and stats["max_buffered_rows"] == 6_000
    assert live.processor.stats.snapshots_written >= BOOKS
    query = sql.SQL("SELECT count(DISTINCT symbol), count(*) FROM {}.book_snapshots WHERE local_ts = to_timestamp(%s)"
                    ).format(sql.Identifier(settings.db.schema))
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        books, rows = conn.execute(query, (ts / 1_000_000,)).fetchone()
    assert books == BOOKS and rows == BOOKS * 2 * DEPTH > stats["max_buffered_rows"]
