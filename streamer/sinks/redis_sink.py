"""Redis live cache: latest book per symbol, capped trade streams, connection status.

Key layout: :class:`streamer.contract.RedisKeys` (fixed there).

Writes are **coalesced**: :meth:`RedisSink.publish_live_book` only marks a
book dirty (its top levels are read from the book when the flush writes it,
so a book that changes many times costs one read), and
:meth:`RedisSink.publish_book` records given levels. A background flush writes
each dirty book once, in one pipeline with the pending trades and statuses.
The first change after a flush wakes the flusher, which waits
``coalesce_delay`` (``COBY_REDIS_COALESCE_MS``) for more changes to gather
and then writes. By default (0) it waits only for the frames already
received to be processed: one write is on the wire at a time, and the next
carries every change made meanwhile, so a book is visible in Redis about a
millisecond after its frame arrived, and a symbol that changes 200 times
within one write costs one ``SET`` + ``SADD`` + ``PUBLISH``, not 200. Under
load the writes run back to back and each carries more books (a delay makes
them fewer and larger still, for less CPU per frame, and adds itself to
every write). :attr:`RedisSink.due_us` says when the pending write falls
due, so a feed working through queued frames yields the event loop to the
flusher then (``turn_hint`` in :mod:`streamer.connection.ws`) rather than at
the end of a fixed turn, and wakes it (:meth:`RedisSink.release`) so that it
runs before the feed's next turn. Without changes the flusher wakes every
``flush_interval`` seconds to check Redis's health.

Redis is a cache, PostgreSQL the system of record, so Redis trouble never
reaches the caller: the public methods are synchronous, never block and never
raise. While Redis is unreachable the sink keeps only the latest state per key
(bounded by the number of symbols) plus, per trade stream, the newest
``pending_trades_per_stream`` trades (older ones are counted in
``trades_dropped``: they remain in PostgreSQL). It reconnects with capped,
jittered backoff; after any (re)connection, including a Redis restart noticed
only by the client library's own reconnect, it rewrites every live book and
status, so a restarted, empty Redis is repopulated within one flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..connection.backoff import backoff_delay
from ..connection.clock import now_us
from ..config import Settings
from ..contract import RedisKeys
from ..models import ConnectionStatus, RawLevel, TradeEvent
from ..secrets import describe_error

log = logging.getLogger(__name__)

#: ``due_us`` when nothing waits to be written.
NEVER = 1 << 62
#: ``coalesce_delay``'s default: the configured ``COBY_REDIS_COALESCE_MS``.
FROM_SETTINGS: Any = object()

BookKey = tuple[str, str]  # (exchange, symbol)



def book_json(
    exchange: str,
    symbol: str,
    native_symbol: str,
    bids: list[RawLevel],
    asks: list[RawLevel],
    seq: int | None,
    local_ts: int,
    exchange_ts: int | None,
) -> bytes:
    """The JSON document stored at ``RedisKeys.book`` (layout in its docstring)."""
    return orjson.dumps(
        {
            "exchange": exchange,
            "symbol": symbol,
            "native_symbol": native_symbol,
            "local_ts": local_ts,
            "exchange_ts": exchange_ts,
            "seq": seq,
            "bids": bids,
            "asks": asks,
        }
    )


def trade_fields(trade: TradeEvent) -> dict[str, str]:
    """Fields of one trade-stream entry."""
    return {
        "trade_id": trade.trade_id,
        "price": trade.price,
        "size": trade.size,
        "side": trade.side,
        "local_ts": str(trade.local_ts),
        "exchange_ts": "" if trade.exchange_ts is None else str(trade.exchange_ts),
    }


def _levels_now(entry: tuple) -> tuple:
    """The :func:`book_json` arguments of a book entry; a live book's levels are read now."""
    live = entry[8]
    if live is None:
        return entry[:8]
    sync, depth = live
    book = sync.book
    return (*entry[:3], book.top("bid", depth), book.top("ask", depth), sync.last_seq, entry[6], entry[7])


class RedisSink:
    """Coalescing, never-blocking writer of the live cache."""

    def __init__(
        self,
        settings: Settings,
        *,
        flush_interval: float = 0.05,
        coalesce_delay: float | None = FROM_SETTINGS,
        pending_trades_per_stream: int | None = None,
        reconnect_base_delay: float = 0.1,
        reconnect_max_delay: float = 5.0,
        socket_timeout: float = 2.0,
        health_interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self.keys = RedisKeys(settings.redis.prefix)
        self.flush_interval = flush_interval
        #: Seconds a change waits for others to join its write; None: no wake-up
        #: on changes, only the ``flush_interval`` timer (and :meth:`flush`).
        self.coalesce_delay = settings.redis_coalesce_ms / 1000 if coalesce_delay is FROM_SETTINGS else coalesce_delay
        self.pending_trades_per_stream = pending_trades_per_stream or settings.trade_stream_maxlen
        self.stream_maxlen = settings.trade_stream_maxlen
        self.reconnect_base_delay = reconnect_base_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.socket_timeout = socket_timeout
        self.health_interval = health_interval
        self._last_round_trip = 0.0

        # Latest state: what Redis must hold (rewritten in full after a reconnect).
        # A book entry is the arguments of :func:`book_json`, or for a live book
        # (exchange, symbol, native, None, None, None, local_ts, exchange_ts, (sync, depth)):
        # its levels and sequence are read from the book at flush time.
        self._books: dict[BookKey, tuple] = {}
        self._statuses: dict[str, dict[str, str]] = {}
        # What the next flush must write: dirty books with the receive time of
        # their first change since the last flush (how long a change waited).
        self._dirty_books: dict[BookKey, int] = {}
        self._deleted_books: set[BookKey] = set()
        # Books known to be in the RedisKeys.books set (SADD only when one is not).
        self._members: set[BookKey] = set()
        self._dirty_statuses: set[str] = set()
        self._trades: dict[BookKey, deque[dict[str, str]]] = {}
        #: Set on every new Redis connection: the next flush rewrites everything.
        self._resync = True

        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        #: When the pending changes are due to be written (``now_us`` clock; NEVER
        #: when nothing waits): the feed's receive loop gives the flusher its turn then.
        self.due_us = NEVER
        #: The flusher's wait for ``due_us``; :meth:`release` ends it early.
        self._due_wait: asyncio.Future | None = None
        self._io_lock = asyncio.Lock()
        self._closed = False
        self._failures = 0
        self._connections = 0

        # Counters.
        self.flushes = 0
        self.books_written = 0
        self.book_publishes = 0
        self.trades_written = 0
        self.trades_dropped = 0
        self.errors = 0
        self.resyncs = 0
        self.connected = False
        self.last_flush_latency: float | None = None
        self.last_error: str | None = None
        #: Optional instrumentation (off by default; the benchmarks set it): called
        #: right after Redis acknowledged a flush, with ``((exchange, symbol),
        #: local_ts, first_local_ts)`` of every book it wrote (the receive times of
        #: the frame that last changed it and of the oldest change it carries), so
        #: receipt-to-visible latency can be measured.
        self.books_visible_hook: Callable[[list[tuple[BookKey, int, int]]], None] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        kwargs = self.settings.redis.client_kwargs()
        self._client = aioredis.Redis(
            **kwargs,
            socket_connect_timeout=self.socket_timeout,
            # No per-read timeout: redis-py would arm one for every reply of a
            # pipeline (a third of a flush's CPU). Each round trip runs under one
            # deadline instead (_round_trip).
            socket_timeout=None,
            # One attempt per command: the flush loop owns retrying (with backoff),
            # so a dead Redis never stalls a flush in the client's own retries.
            retry=Retry(NoBackoff(), 0),
            redis_connect_func=self._on_connect,
            max_connections=4,
        )
        self._task = asyncio.create_task(self._run(), name="redis-sink-flusher")

    async def _on_connect(self, connection) -> None:
        await connection.on_connect()
        self._connections += 1
        if self._connections > 1:
            # A new connection may be to a restarted (empty) server: rewrite all.
            # (The first one needs nothing: the sink starts with a full write.)
            self._resync = True

    async def close(self, timeout: float = 5.0) -> None:
        """Final flush (best effort within ``timeout``), then disconnect."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                # Let the flusher finish its current pipeline rather than cut it off.
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        if self._client is not None:
            try:
                await asyncio.wait_for(self._flush_once(), timeout)
            except (asyncio.TimeoutError, TimeoutError, RedisError, OSError) as exc:
                log.warning("Redis final flush failed (%s); live cache may be stale", type(exc).__name__)
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> "RedisSink":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- producers (synchronous, never block, never raise on Redis trouble) --

    def publish_book(
        self,
        exchange: str,
        symbol: str,
        native_symbol: str,
        bids: list[RawLevel],
        asks: list[RawLevel],
        seq: int | None,
        local_ts: int,
        exchange_ts: int | None,
    ) -> None:
        """Record the latest top levels (best first) of a synchronised book."""
        key = (exchange, symbol)
        self._books[key] = (exchange, symbol, native_symbol, bids, asks, seq, local_ts, exchange_ts, None)
        self._mark_dirty(key, local_ts)

    def publish_live_book(self, sync: Any, depth: int, local_ts: int, exchange_ts: int | None) -> None:
        """A synchronised book changed (``sync`` is its :class:`~streamer.book.sync.BookSync`).

        Nothing is copied now: the flush reads the best ``depth`` levels and the
        sequence from the book, which by then holds every change up to the
        newest ``local_ts``. The caller publishes each change of the book and
        calls :meth:`delete_book` when it leaves sync.
        """
        key = (sync.exchange, sync.symbol)
        self._books[key] = (sync.exchange, sync.symbol, sync.native_symbol, None, None, None, local_ts, exchange_ts,
                            (sync, depth))
        self._mark_dirty(key, local_ts)

    def _mark_dirty(self, key: BookKey, local_ts: int) -> None:
        dirty = self._dirty_books
        if key not in dirty:
            dirty[key] = local_ts
            if self.coalesce_delay is not None and not self._wake.is_set():
                self._wake.set()
            if self.due_us == NEVER and self.coalesce_delay is not None:
                self.due_us = local_ts + int(self.coalesce_delay * 1_000_000)
        self._deleted_books.discard(key)
        self.book_publishes += 1

    def delete_book(self, exchange: str, symbol: str) -> None:
        """The book is resynchronising: remove it so no stale book is served."""
        key = (exchange, symbol)
        self._books.pop(key, None)
        self._dirty_books.pop(key, None)
        self._deleted_books.add(key)
        self._wake.set()  # a stale book should disappear as soon as possible

    def add_trade(self, trade: TradeEvent) -> None:
        key = (trade.exchange, trade.symbol)
        pending = self._trades.get(key)
        if pending is None:
            pending = self._trades[key] = deque(maxlen=self.pending_trades_per_stream)
        if len(pending) == pending.maxlen:
            self.trades_dropped += 1  # the oldest pending trade leaves the live cache (still in PostgreSQL)
        pending.append(trade_fields(trade))

    def set_status(self, status: ConnectionStatus) -> None:
        self._statuses[status.feed] = status.as_redis_hash()
        self._dirty_statuses.add(status.feed)

    async def flush(self) -> bool:
        """Write everything pending now; False if Redis could not be reached."""
        try:
            await self._flush_once()
            return True
        except (RedisError, OSError) as exc:
            self._flush_failed(exc)
            return False

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "flushes": self.flushes,
            "book_publishes": self.book_publishes,
            "books_written": self.books_written,
            "trades_written": self.trades_written,
            "trades_dropped": self.trades_dropped,
            "trades_pending": sum(len(d) for d in self._trades.values()),
            "errors": self.errors,
            "resyncs": self.resyncs,
            "live_books": len(self._books),
            "last_flush_latency": self.last_flush_latency,
            "last_error": self.last_error,
        }

    # -- flushing ------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._resync or self._dirty_books or self._deleted_books or self._dirty_statuses or self._trades)

    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except (asyncio.TimeoutError, TimeoutError):
                pass
            self._wake.clear()
            try:
                if self.coalesce_delay is not None and self._has_work():
                    # Let the changes of the next frames join this write, until the
                    # first change has waited coalesce_delay (0: of the frames already
                    # received, which run before this task resumes).
                    left = (self.due_us - now_us()) / 1_000_000
                    await self._wait_until_due(min(self.coalesce_delay, max(0.0, left)))
                if not self._has_work():
                    await self._check_health()
                    continue
                await self._flush_once()
                if self._resync:  # a reconnect happened during that flush: rewrite all now
                    await self._flush_once()
                self._failures = 0
            except (RedisError, OSError) as exc:
                self._flush_failed(exc)
                await asyncio.sleep(backoff_delay(self._failures, self.reconnect_base_delay, self.reconnect_max_delay))
                self._failures += 1
            except Exception:  # a bug must not kill the cache silently; keep running and say so
                self.errors += 1
                log.exception("unexpected error in the Redis flush loop")
                await asyncio.sleep(self.reconnect_max_delay)

    async def _wait_until_due(self, seconds: float) -> None:
        """Sleep ``seconds``, or until :meth:`release` (the feed yielding the loop for this write)."""
        if seconds <= 0.0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        waiter = self._due_wait = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._due_wait = None

    def release(self) -> None:
        """The feed yields the event loop because the pending write is due: run the flusher next.

        Part of the receive loop's turn hint (:class:`streamer.connection.ws.TurnHint`).
        """
        if self._due_wait is not None:
            _resolve(self._due_wait)

    async def _check_health(self) -> None:
        """PING when idle, so a Redis restart is noticed (and the cache rewritten
        on reconnect) even when no book is changing."""
        if time.monotonic() - self._last_round_trip < self.health_interval:
            return
        await self._round_trip(self._client.ping())  # type: ignore[union-attr]
        self._last_round_trip = time.monotonic()
        if not self.connected:
            self.connected = True
            log.info("Redis %s reachable", self.settings.redis.safe_description())

    def _flush_failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.connected or self.last_error is None:
            log.warning("Redis %s unreachable (%s); keeping latest state in memory",
                        self.settings.redis.safe_description(), type(exc).__name__)
        self.connected = False
        self.last_error = describe_error(exc)
        self._resync = True

    async def _flush_once(self) -> None:
        if self._client is None:
            raise RuntimeError("RedisSink.start() has not been called")
        async with self._io_lock:
            # Take what is pending now; producers keep adding while we await.
            resync, self._resync = self._resync, False
            if resync:
                dirty_books = {key: self._dirty_books.get(key, entry[6]) for key, entry in self._books.items()}
                dirty_statuses = set(self._statuses)
                self._dirty_books.clear()
                self._dirty_statuses.clear()
            else:
                dirty_books, self._dirty_books = self._dirty_books, {}
                dirty_statuses, self._dirty_statuses = self._dirty_statuses, set()
            self.due_us = NEVER
            deleted, self._deleted_books = self._deleted_books, set()
            trades, self._trades = self._trades, {}
            try:
                started = time.perf_counter()
                written, executed = await self._write(dirty_books, deleted, dirty_statuses, trades, resync)
                self.last_flush_latency = time.perf_counter() - started
            except BaseException:
                self._restore(dirty_books, deleted, dirty_statuses, trades, resync)
                raise
            if not executed:
                return  # nothing was pending: no round trip, nothing learned about Redis
            self._last_round_trip = time.monotonic()
            self.flushes += 1
            self.books_written += written
            self.trades_written += sum(len(d) for d in trades.values())
            if resync:
                self.resyncs += 1
            if not self.connected:
                log.info("Redis %s reachable; live cache rewritten", self.settings.redis.safe_description())
            self.connected = True

    async def _write(self, dirty_books, deleted, dirty_statuses, trades, resync: bool) -> tuple[int, bool]:
        """One pipeline for everything; returns (books written, whether anything was sent).

        Per flush: every changed book document in one ``MSET``, the books new to
        the ``books`` set in one ``SADD``, then one ``PUBLISH`` per book (after
        the writes, so a subscriber reads what was announced).
        """
        keys = self.keys
        members = self._members
        if resync:
            members.clear()  # a rewrite adds every book to the set again
        pipe = self._client.pipeline(transaction=False)  # type: ignore[union-attr]
        for exchange, symbol in deleted:
            pipe.delete(keys.book(exchange, symbol))
            pipe.srem(keys.books, f"{exchange}:{symbol}")
            members.discard((exchange, symbol))
        documents: dict[str, bytes] = {}
        announced: list[str] = []
        added: list[BookKey] = []
        hook = self.books_visible_hook
        visible: list[tuple[BookKey, int, int]] = []
        for key, first_ts in dirty_books.items():
            args = self._books.get(key)
            if args is None:  # deleted since it was marked dirty
                continue
            if args[8] is not None and not args[8][0].is_synced:
                continue  # left sync; its delete is pending and it is republished once synced again
            exchange, symbol = key
            documents[keys.book(exchange, symbol)] = book_json(*_levels_now(args))
            announced.append(f"{exchange}:{symbol}")
            if key not in members:
                added.append(key)
            if hook is not None:
                visible.append((key, args[6], first_ts))
        if documents:
            pipe.mset(documents)
        if added:
            pipe.sadd(keys.books, *(f"{exchange}:{symbol}" for exchange, symbol in added))
        for member in announced:
            pipe.publish(keys.updates_channel, member)
        for (exchange, symbol), entries in trades.items():
            stream = keys.trades(exchange, symbol)
            for fields in entries:
                pipe.xadd(stream, fields, maxlen=self.stream_maxlen, approximate=True)
        for feed in dirty_statuses:
            status = self._statuses.get(feed)
            if status is not None:
                pipe.hset(keys.status(feed), mapping=status)
        if not len(pipe):
            return 0, False
        await self._round_trip(pipe.execute())
        members.update(added)
        if hook is not None:
            hook(visible)
        return len(documents), True

    async def _round_trip(self, call):
        """Await one Redis round trip; a Redis that does not answer within
        ``socket_timeout`` fails it like a dead connection would (redis-py
        drops a connection whose command was cancelled)."""
        try:
            async with asyncio.timeout(self.socket_timeout):
                return await call
        except TimeoutError as exc:
            raise RedisTimeoutError(f"no reply within {self.socket_timeout:g}s") from exc

    def _restore(self, dirty_books, deleted, dirty_statuses, trades, resync) -> None:
        """Put back what a failed flush did not write, newest state winning."""
        self._resync = self._resync or resync
        for key, first_ts in dirty_books.items():
            if key in self._books:
                # The older first-change time wins: that change has waited longest.
                newer = self._dirty_books.get(key)
                self._dirty_books[key] = first_ts if newer is None else min(first_ts, newer)
        self._dirty_statuses |= dirty_statuses
        # A book deleted before the failed flush stays deleted unless republished since.
        self._deleted_books |= {k for k in deleted if k not in self._books}
        for key, old in trades.items():
            newer = self._trades.get(key)
            merged: deque[dict[str, str]] = deque(maxlen=self.pending_trades_per_stream)
            overflow = len(old) + (len(newer) if newer else 0) - self.pending_trades_per_stream
            if overflow > 0:
                self.trades_dropped += overflow
            merged.extend(old)
            if newer:
                merged.extend(newer)
            self._trades[key] = merged


def _resolve(waiter: asyncio.Future) -> None:
    """End a wait, by its timer or by release(), whichever comes first."""
    if not waiter.done():
        waiter.set_result(None)
