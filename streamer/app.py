"""The streamer process: feeds for the configured exchanges, the sinks, the snapshotter.

``Streamer`` owns every long-running task and shuts them down in order:
stop the connections, take a last snapshot of every book, flush PostgreSQL
and Redis. Nothing received before :meth:`Streamer.stop` returns is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from functools import partial
from pathlib import Path

import psycopg

from .capture.writer import CaptureWriter
from .config import Settings
from .connection.clock import now_us
from .durability import FeedDurability
from .errors import ConfigError
from .exchanges.registry import get_mapper
from .gc_tuning import tune_for_streaming
from .feed import ExchangeFeed, FeedConfig
from .outputs import Outputs
from .sinks.postgres import PostgresSink
from .sinks.redis_sink import RedisSink
from .sinks.schema import apply_schema
from .snapshots import Snapshotter
from .watchdog import MemoryWatchdog

log = logging.getLogger(__name__)


class _CaptureRecorder:
    """Adapts a :class:`CaptureWriter` to the WebSocket and REST recorder hooks."""

    def __init__(self, writer: CaptureWriter) -> None:
        self.writer = writer

    def connect(self, conn: int, url: str) -> None:
        self.writer.connect(conn, url)

    def send(self, conn: int, url: str, data: str) -> None:
        self.writer.send(conn, url, data)

    def recv(self, conn: int, data: str | bytes) -> None:
        self.writer.recv(conn, data)

    def http(self, url: str, data: str) -> None:
        self.writer.http(url, data)


def journal_root(settings: Settings) -> Path:
    """A journal belongs to the database and schema its checkpoints are in:
    pointing COBY at another database starts new journals rather than
    replaying old ones into it."""
    return settings.data_dir / "journal" / f"{settings.db.name}.{settings.db.schema}"


def journal_dir(settings: Settings, feed: str) -> Path:
    """The journal of one feed (``okx``, or ``okx@2`` for a shard)."""
    return journal_root(settings) / feed


class Streamer:
    def __init__(self, settings: Settings, feeds: list[FeedConfig], *, record_dir: Path | None = None) -> None:
        if not feeds:
            raise ValueError("no exchanges configured")
        names = [config.name for config in feeds]
        if len(set(names)) != len(names):
            raise ConfigError(f"a feed is configured twice: {sorted(names)}")
        self.settings = settings
        self.feed_configs = feeds
        self.record_dir = record_dir
        self.pg = PostgresSink(settings)
        self.redis = RedisSink(settings)  # coalescing as configured (COBY_REDIS_COALESCE_MS)
        self.pg.turn_hint = self.redis  # a long COPY lets the live cache's write through when it is due
        self.outputs = Outputs(self.pg, self.redis, redis_depth=settings.heatmap_depth)
        self.feeds: list[ExchangeFeed] = []
        self._writers: list[CaptureWriter] = []
        self._tasks: list[asyncio.Task] = []
        self._helpers: list[asyncio.Task] = []
        self.watchdog: MemoryWatchdog | None = None
        self.snapshotter: Snapshotter | None = None
        self.started_us: int | None = None

    async def start(self) -> None:
        with psycopg.connect(self.settings.db.url(), autocommit=True) as conn:
            apply_schema(conn, self.settings)
        await self.pg.start()
        await self.redis.start()
        for config in self.feed_configs:
            recorder = None
            if self.record_dir is not None:
                self.record_dir.mkdir(parents=True, exist_ok=True)
                session = f"{config.name}-{now_us() // 1_000_000}"
                writer = CaptureWriter(
                    self.record_dir / f"{session}.jsonl.gz", exchange=config.exchange, session=session
                )
                self._writers.append(writer)
                recorder = _CaptureRecorder(writer)
            durability = FeedDurability(
                config.name,
                journal_dir(self.settings, config.name),
                self.pg,
                budget_bytes=self.settings.spool_budget_mb * 2**20,
            )
            config = replace(config, snapshot_depth=self.settings.heatmap_depth,
                             snapshot_band_pct=self.settings.snapshot_band_pct)
            feed = ExchangeFeed(
                config, partial(get_mapper, config.exchange, **self._mapper_options(config.exchange)),
                self.outputs, durability,
                recorder=recorder, http_recorder=recorder,
            )
            self.feeds.append(feed)
        self.snapshotter = Snapshotter(self.feeds, interval=self.settings.snapshot_interval)
        self.watchdog = MemoryWatchdog(self.feeds, limit_mb=self.settings.max_memory_mb,
                                       trim_interval=self.settings.heap_trim_interval)
        tune_for_streaming()  # set up: keep the collector's pauses off the frames from here on
        self.started_us = now_us()
        for feed in self.feeds:
            self._tasks.append(asyncio.create_task(feed.run(), name=f"feed-{feed.name}"))
        # Helper tasks last: stop() lets the feeds finish and cancels these.
        self._helpers = [
            asyncio.create_task(self.snapshotter.run(), name="snapshotter"),
            asyncio.create_task(self.watchdog.run(), name="memory-watchdog"),
        ]

    def _mapper_options(self, exchange: str) -> dict:
        if exchange == "kraken":
            return {"book_depth": self.settings.kraken_book_depth}
        return {}

    async def stop(self) -> None:
        for feed in self.feeds:
            await feed.stop()
        # Let each feed finish the frame it is processing (its connection is
        # closed, so its loop ends); cancel only what does not end in time.
        pending: set = set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
        for task in [*pending, *self._helpers]:
            task.cancel()
        for task in [*self._tasks, *self._helpers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.snapshotter is not None:
            await self.snapshotter.snapshot_all()
        for feed in self.feeds:
            await feed.durability.wait_recovered()
        await self.pg.close()
        await self.redis.close()
        for feed in self.feeds:
            feed.durability.close()
        for writer in self._writers:
            writer.close()

    async def __aenter__(self) -> "Streamer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def failed_task(self) -> BaseException | None:
        """The exception of a task that died, if any (a bug: surface it, don't hide it)."""
        for task in [*self._tasks, *self._helpers]:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    def summary(self) -> dict:
        return {feed.name: feed.summary() for feed in self.feeds}
