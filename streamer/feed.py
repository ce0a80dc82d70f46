"""One exchange feed: a connection, a mapper, one book per symbol, and the outputs.

Flow of a frame::

    WsClient ──raw frame──▶ mapper.map_message ──events──▶ ExchangeFeed
        BookMessage  ─▶ BookSync (per symbol) ─applied─▶ book_updates, Redis book
        TradeEvent   ─▶ trades, Redis trade stream
        Quarantine   ─▶ quarantine table (with the reason)
        ControlEvent ─▶ replies (pongs), exchange error counts

A gap or checksum failure resyncs only that symbol: a REST snapshot for
exchanges that publish one, an unsubscribe/subscribe of that symbol's book for
those that send snapshots in-band. Every gap, resync and disconnect is stored
in ``feed_events`` so the quality scores can count them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .book.sync import BookSync
from .connection.backoff import Backoff
from .connection.clock import now_us
from .connection.rest import RestClient, RestError
from .connection.ws import FrameRecorder, WsClient, WsOptions
from .errors import CobyError
from .exchanges.base import Endpoints, ExchangeMapper
from .models import (
    BookMessage,
    ConnectionState,
    ConnectionStatus,
    ControlEvent,
    FeedEvent,
    FeedEventKind,
    Quarantine,
    TradeEvent,
)
from .outputs import Outputs
from .stats import FeedStats

log = logging.getLogger(__name__)

#: Seconds without a resync after which a symbol's resync backoff starts over.
RESYNC_QUIET_PERIOD = 10.0


@dataclass
class FeedConfig:
    exchange: str
    #: Normalized symbols (BTC-USDT); converted to native names by the mapper.
    symbols: list[str]
    endpoints: Endpoints
    ws: WsOptions = field(default_factory=WsOptions)
    #: Bound on deltas buffered per symbol while waiting for a snapshot.
    max_buffered_deltas: int = 10_000
    #: Explicit native names (used by capture replay, which knows them from the session).
    native_symbols: list[str] | None = None


class ExchangeFeed:
    def __init__(
        self,
        config: FeedConfig,
        mapper: ExchangeMapper,
        outputs: Outputs,
        *,
        recorder: FrameRecorder | None = None,
        http_recorder=None,
    ) -> None:
        self.config = config
        self.exchange = config.exchange
        self.mapper = mapper
        self.outputs = outputs
        self.stats = FeedStats()
        self._recorder = recorder
        self.rest = (
            RestClient(config.endpoints.rest_url, recorder=http_recorder) if config.endpoints.rest_url else None
        )
        self.books: dict[str, BookSync] = {}  # by native symbol
        self._resync_tasks: dict[str, asyncio.Task] = {}
        self._client: WsClient | None = None
        self.status = ConnectionStatus(self.exchange, ConnectionState.CONNECTING, now_us())
        self._native_symbols: list[str] = []
        # Frames and REST snapshots are processed one at a time so that the rows
        # of one symbol reach the sinks in the order they were applied.
        self._lock = asyncio.Lock()
        self._stopping = False
        self._resync_backoff: dict[str, tuple[Backoff | None, float]] = {}

    # -- lifecycle ------------------------------------------------------------
    async def prepare(self) -> None:
        """Load instrument metadata (for symbol normalization) and create the books."""
        request = self.mapper.instruments_request()
        if request is not None and self.rest is not None:
            try:
                body = await self.rest.get(request)
                self.mapper.load_instruments(self.mapper.map_instruments(body))
            except (CobyError, ValueError) as exc:
                # Symbols still normalize by the mapper's fallback rules.
                log.warning("%s: instrument metadata unavailable (%s)", self.exchange, exc)
        natives = self.config.native_symbols or [self.mapper.native_symbol(s) for s in self.config.symbols]
        self._native_symbols = list(dict.fromkeys(natives))
        ts = now_us()
        for native in self._native_symbols:
            symbol = self.mapper.normalize_symbol(native)
            self.books[native] = BookSync(
                self.exchange, symbol, native, self.mapper.sync_rules(), max_buffer=self.config.max_buffered_deltas
            )
            await self.outputs.instrument(self.exchange, symbol, native, ts)

    async def run(self) -> None:
        await self.prepare()
        self._client = WsClient(
            self.exchange,
            lambda: self.mapper.ws_url(self.config.endpoints.ws_url, self._native_symbols),
            on_frame=self.on_frame,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            options=self.config.ws,
            ping_message=self.mapper.ping_message,
            ping_interval=self.mapper.ping_interval,
            recorder=self._recorder,
        )
        try:
            await self._client.run()
        finally:
            for task in self._resync_tasks.values():
                task.cancel()
            if self.rest is not None:
                await self.rest.close()

    async def stop(self) -> None:
        self._stopping = True
        if self._client is not None:
            await self._client.stop()
        self.status.state = ConnectionState.STOPPED
        self.outputs.status(self.status)

    def summary(self) -> dict:
        """Counters, with the checksum results of every book, and the final best levels."""
        stats = self.stats.as_dict()
        stats["checksum_ok"] = sum(sync.checksum_ok for sync in self.books.values())
        stats["checksum_failed"] = sum(sync.checksum_failed for sync in self.books.values())
        books = {}
        for sync in self.books.values():
            if sync.is_synced:
                bid, ask = sync.book.best_bid(), sync.book.best_ask()
                books[sync.symbol] = {"bid": list(bid) if bid else None, "ask": list(ask) if ask else None}
        stats["books"] = books
        return stats

    @property
    def pending_resyncs(self) -> int:
        return sum(1 for t in self._resync_tasks.values() if not t.done())

    # -- connection events ----------------------------------------------------
    async def _on_connect(self, client: WsClient) -> None:
        ts = now_us()
        if client.connects > 1:
            self.stats.reconnects += 1
            self.status.reconnects += 1
        self.status.state = ConnectionState.CONNECTED
        self.status.since_us = ts
        self.outputs.status(self.status)
        await self._record(FeedEvent(self.exchange, FeedEventKind.CONNECTED, ts, detail=client.url))
        # A new connection means new snapshots for every book.
        async with self._lock:
            for sync in self.books.values():
                await self._reset_book(sync, "new connection", ts, count_resync=client.connects > 1)
        for message in self.mapper.subscribe_messages(self._native_symbols):
            await client.send(message)
        for native in self._native_symbols:
            if self.mapper.snapshot_request(native) is not None:
                self._schedule_rest_snapshot(native)

    async def _on_disconnect(self, client: WsClient, reason: str) -> None:
        ts = now_us()
        self.status.state = ConnectionState.STOPPED if self._stopping else ConnectionState.DISCONNECTED
        self.status.since_us = ts
        self.status.detail = "stopped" if self._stopping else reason
        self.outputs.status(self.status)
        kind = FeedEventKind.STALL if reason.startswith("stall") else FeedEventKind.DISCONNECTED
        await self._record(FeedEvent(self.exchange, kind, ts, detail=reason))
        for native, task in list(self._resync_tasks.items()):
            task.cancel()
        self._resync_tasks.clear()
        for sync in self.books.values():
            if sync.is_synced:
                self.outputs.book_unsynced(self.exchange, sync.symbol)

    # -- frames ---------------------------------------------------------------
    async def on_frame(self, raw: str | bytes, local_ts: int) -> None:
        self.stats.frames += 1
        self.status.frames += 1
        self.status.last_frame_us = local_ts
        async with self._lock:
            await self._dispatch(self.mapper.map_message(raw, local_ts))

    async def _dispatch(self, events: list) -> None:
        for event in events:
            if isinstance(event, BookMessage):
                await self._on_book(event)
            elif isinstance(event, TradeEvent):
                await self._on_trade(event)
            elif isinstance(event, Quarantine):
                self.stats.rejected += 1
                await self.outputs.quarantine(event)
            elif isinstance(event, ControlEvent):
                await self._on_control(event)

    async def _on_book(self, msg: BookMessage) -> None:
        sync = self.books.get(msg.native_symbol)
        if sync is None:
            await self._reject_unknown(msg.native_symbol, msg.local_ts, "book")
            return
        self.stats.book_messages += 1
        was_synced = sync.is_synced
        outcome = sync.on_message(msg)
        for applied in outcome.applied:
            self.stats.book_updates += await self.outputs.book_applied(applied)
        for event in outcome.events:
            await self._record(event)
        if outcome.book_changed and sync.is_synced:
            last = outcome.applied[-1] if outcome.applied else msg
            self.outputs.book_changed(
                self.exchange, sync.symbol, sync.native_symbol, sync.book, last.seq, last.local_ts, last.exchange_ts
            )
        elif was_synced and not sync.is_synced:
            self.outputs.book_unsynced(self.exchange, sync.symbol)
        if outcome.needs_resync:
            await self._resync(sync)

    async def _on_trade(self, trade: TradeEvent) -> None:
        if trade.native_symbol not in self.books:
            await self._reject_unknown(trade.native_symbol, trade.local_ts, "trade")
            return
        self.stats.trades += 1
        await self.outputs.trade(trade)

    async def _on_control(self, event: ControlEvent) -> None:
        self.stats.control += 1
        if event.reply is not None and self._client is not None and self._client.connected:
            await self._client.send(event.reply)
        if event.kind == "error":
            self.stats.exchange_errors += 1
            await self._record(FeedEvent(self.exchange, FeedEventKind.ERROR, event.local_ts,
                                         symbol=event.symbol or "", detail=event.detail[:500]))

    async def _reject_unknown(self, native: str, local_ts: int, what: str) -> None:
        self.stats.rejected += 1
        await self.outputs.quarantine(
            Quarantine(self.exchange, f"{what} for unsubscribed symbol {native!r}", native, local_ts, code="MAP-004")
        )

    async def _record(self, event: FeedEvent) -> None:
        kind = event.kind
        if kind is FeedEventKind.GAP:
            self.stats.sequence_gaps += 1
        elif kind is FeedEventKind.RESYNC:
            self.stats.resyncs += 1
        elif kind is FeedEventKind.CROSSED:
            self.stats.crossed += 1
        await self.outputs.feed_event(event)

    # -- resync ---------------------------------------------------------------
    async def _reset_book(self, sync: BookSync, reason: str, ts: int, *, count_resync: bool) -> None:
        was_synced = sync.is_synced
        for event in sync.reset(reason, ts, record=count_resync):
            await self._record(event)
        if was_synced:
            self.outputs.book_unsynced(self.exchange, sync.symbol)

    async def _resync(self, sync: BookSync) -> None:
        """Ask for a fresh snapshot of one symbol, backing off when resyncs repeat
        quickly (a snapshot that never bridges must not become a request storm)."""
        native = sync.native_symbol
        delay = self._resync_delay(native)
        if self.mapper.snapshot_request(native) is not None:
            self._schedule_rest_snapshot(native, delay)
            return
        task = self._resync_tasks.get(native)
        if task is not None and not task.done():
            return
        self._resync_tasks[native] = asyncio.create_task(self._resubscribe(native, delay), name=f"resub-{native}")

    def _resync_delay(self, native: str) -> float:
        loop = asyncio.get_running_loop()
        backoff, last = self._resync_backoff.get(native, (None, 0.0))
        if backoff is None or loop.time() - last > RESYNC_QUIET_PERIOD:
            backoff = Backoff(base=0.5, cap=30.0)
            delay = 0.0
        else:
            delay = backoff.next_delay()
        self._resync_backoff[native] = (backoff, loop.time())
        return delay

    async def _resubscribe(self, native: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        client = self._client
        if client is None or not client.connected:
            return  # the next connection resubscribes everything
        for message in self.mapper.resubscribe_messages(native):
            await client.send(message)

    def _schedule_rest_snapshot(self, native: str, delay: float = 0.0) -> None:
        task = self._resync_tasks.get(native)
        if task is not None and not task.done():
            return
        self._resync_tasks[native] = asyncio.create_task(
            self._fetch_snapshot(native, delay), name=f"snapshot-{native}"
        )

    async def _fetch_snapshot(self, native: str, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        request = self.mapper.snapshot_request(native)
        assert request is not None and self.rest is not None
        sync = self.books[native]
        backoff = Backoff(base=1.0, cap=60.0)
        while True:
            self.stats.snapshot_requests += 1
            try:
                body = await self.rest.get(request)
                break
            except RestError as exc:
                for event in sync.on_snapshot_failed(str(exc), now_us()):
                    await self._record(event)
                await asyncio.sleep(backoff.next_delay())
        async with self._lock:
            await self._dispatch(self.mapper.map_snapshot(native, body, now_us()))
