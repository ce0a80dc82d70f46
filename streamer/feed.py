"""One exchange feed: a connection, its journal, a processor, and the outputs.

Flow of a frame::

    WsClient ──raw frame──▶ journal (append) ──record──▶ FeedProcessor (no I/O)
                                                          │ rows ─▶ PostgreSQL (with the checkpoint)
                                                          │ books, trades ─▶ Redis
                                                          └ replies, resyncs ─▶ back to the exchange

Everything the processor sees goes through the journal first, REST snapshots,
connects, disconnects and snapshot ticks included, so the journal alone
reproduces the feed's output (see :mod:`streamer.durability`).

A gap or checksum failure resyncs only that symbol: a REST snapshot for
exchanges that publish one, an unsubscribe/subscribe of that symbol's book for
those that send snapshots in-band. Every gap, resync and disconnect is stored
in ``feed_events`` so the quality scores can count them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

import orjson

from .book.sync import BookSync
from .connection.backoff import Backoff
from .connection.clock import now_us
from .connection.rest import RestClient, RestError
from .connection.ws import FrameRecorder, WsClient, WsOptions
from .contract import STOPPED, feed_name
from .durability import FeedDurability
from .errors import CobyError
from .exchanges.base import Endpoints, ExchangeMapper
from .journal.records import Kind, Record, tick_parts
from .models import ConnectionState, ConnectionStatus, FeedEventKind
from .outputs import Outputs
from .processor import FeedProcessor
from .stats import FeedStats

log = logging.getLogger(__name__)

#: Seconds without a resync after which a symbol's resync backoff starts over.
RESYNC_QUIET_PERIOD = 10.0
#: Longest a frame waits for a crowded (slow but healthy) database before it is processed anyway.
ROOM_WAIT_S = 1.0


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
    #: Levels per side of periodic snapshots, or None with ``snapshot_band_pct``.
    snapshot_depth: int = 50
    snapshot_band_pct: float | None = None
    #: Which of several connections sharing this exchange's symbols this feed is
    #: ("1", "2", ...; see :mod:`streamer.shards`); empty when one connection carries them all.
    shard: str = ""

    @property
    def name(self) -> str:
        """The feed's own name: its journal, checkpoints and Redis status go by it."""
        return feed_name(self.exchange, self.shard)


class ExchangeFeed:
    def __init__(
        self,
        config: FeedConfig,
        make_mapper: Callable[[], ExchangeMapper],
        outputs: Outputs,
        durability: FeedDurability,
        *,
        recorder: FrameRecorder | None = None,
        http_recorder=None,
    ) -> None:
        self.config = config
        self.exchange = config.exchange
        #: ``okx``, or ``okx@2`` for a shard: the journal stream, checkpoints and status go by it.
        self.name = config.name
        self._make_mapper = make_mapper
        self.mapper = make_mapper()
        self.outputs = outputs
        self.durability = durability
        self._recorder = recorder
        self.rest = (
            RestClient(config.endpoints.rest_url, recorder=http_recorder) if config.endpoints.rest_url else None
        )
        self.processor: FeedProcessor | None = None
        self._resync_tasks: dict[str, asyncio.Task] = {}
        self._client: WsClient | None = None
        self.status = ConnectionStatus(self.exchange, ConnectionState.CONNECTING, now_us(), shard=config.shard)
        self._native_symbols: list[str] = []
        self._stopping = False
        self._resync_backoff: dict[str, tuple[Backoff | None, float]] = {}
        self._instruments_body = ""
        self._sends: set[asyncio.Task] = set()

    # -- state -----------------------------------------------------------------
    @property
    def books(self) -> dict[str, BookSync]:
        return self.processor.books if self.processor is not None else {}

    @property
    def stats(self) -> FeedStats:
        return self.processor.stats if self.processor is not None else FeedStats()

    def new_processor(self) -> FeedProcessor:
        """A processor in its initial state (recovery starts from one too)."""
        return FeedProcessor(
            self.exchange,
            self._make_mapper(),
            self._native_symbols,
            snapshot_depth=self.config.snapshot_depth,
            snapshot_band_pct=self.config.snapshot_band_pct,
            max_buffered_deltas=self.config.max_buffered_deltas,
            max_frame_bytes=self.config.ws.max_frame_bytes,
            shard=self.config.shard,
        )

    # -- lifecycle ---------------------------------------------------------------
    async def prepare(self) -> None:
        """Load instrument metadata (for symbol normalization) and start the processor."""
        natives = self.config.native_symbols or [self.mapper.native_symbol(s) for s in self.config.symbols]
        self._native_symbols = list(dict.fromkeys(natives))
        self.processor = self.new_processor()
        if self.durability.needs_recovery():
            # A previous run ended before PostgreSQL had all its rows: re-derive
            # them from the journal while the live feed starts.
            self.outputs.pg.spill(self.name)
            self.durability.ensure_recovery(self.new_processor)
        if self.durability.ended_unexpectedly():
            # Close the previous run's connection in the journal, at its last
            # record: everything from there to the new connection is a gap.
            last = self.durability.last_record
            assert last is not None
            self._record_and_process(last.local_ts, Kind.DISCONNECT, meta="streamer stopped unexpectedly")
        request = self.mapper.instruments_request()
        if request is not None and self.rest is not None:
            try:
                self._instruments_body = await self.rest.get(request)
                self.mapper.load_instruments(self.mapper.map_instruments(self._instruments_body))
            except (CobyError, ValueError) as exc:
                # Symbols still normalize by the mapper's naming rules.
                log.warning("%s: instrument metadata unavailable (%s)", self.name, exc)
                self._instruments_body = ""

    async def run(self) -> None:
        await self.prepare()
        if self._stopping:  # stopped while preparing: never connect
            if self.rest is not None:
                await self.rest.close()
            return
        self._client = WsClient(
            self.name,
            lambda: self.mapper.ws_url(self.config.endpoints.ws_url, self._native_symbols),
            on_frame=self.on_frame,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            options=self.config.ws,
            ping_message=self.mapper.ping_message,
            ping_interval=self.mapper.ping_interval,
            recorder=self._recorder,
            turn_hint=self.outputs.redis,
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

    # -- records -----------------------------------------------------------------
    def _record_and_process(self, local_ts: int, kind: Kind, payload: bytes | str = b"", meta: str = "") -> None:
        # Records are processed one at a time, so rows reach the sinks in journal
        # order: nothing here awaits between appending a record and processing
        # it, so no other task can run in between (no lock needed).
        self._process(self.durability.append(local_ts, kind, payload, meta))
        if self.durability.state_due() and self.processor is not None:
            self._process(self.durability.write_state(self.processor, local_ts))

    def _process(self, record: Record) -> None:
        """Process one journaled record and act on the output (no awaits: one record is atomic)."""
        assert self.processor is not None
        out = self.processor.process(record)
        self.outputs.commit(self.name, record.seq, out)
        self.durability.processed(record.seq)
        if self.outputs.pg.is_spilled(self.name):
            self.durability.ensure_recovery(self.new_processor)
        client = self._client
        for reply in out.replies:
            if client is not None and client.connected:
                # Sent in the background: processing one record never waits on the socket.
                task = asyncio.get_running_loop().create_task(client.send(reply))
                self._sends.add(task)
                task.add_done_callback(self._sent)
        for sync in out.resyncs:
            self._resync(sync)

    def _sent(self, task: asyncio.Task) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The connection closed under the reply; the reconnect handles it.
            log.debug("%s: reply not sent: %s", self.name, task.exception())

    async def snapshot_tick(self, local_ts: int) -> None:
        """Write a periodic snapshot of every synced book (journaled like a frame).

        With more than ``TICK_BOOKS`` books the tick is journaled in parts, a
        slice of the books each, with a turn for the frames and the sinks in
        between: a thousand books' snapshot rows built in one piece would hold
        the event loop for tens of milliseconds. Every part carries the tick's
        time; a book's rows show it as its part found it. Between parts a
        crowded database gets its turn, as between frames: a thousand books
        at 50 levels a side are 100,000 rows, more than the PostgreSQL sink
        buffers before it spills them to be re-derived from the journal.
        """
        if self.processor is None:
            return
        parts = tick_parts(len(self.processor.books))
        pg = self.outputs.pg
        for index, part in enumerate(parts):
            if index:
                if pg.crowded():
                    await pg.wait_for_room(ROOM_WAIT_S)
                else:
                    await asyncio.sleep(0)
                if self.processor is None:
                    return
            self._record_and_process(local_ts, Kind.SNAPSHOT_TICK, meta=part)

    def local_event(self, local_ts: int, kind: FeedEventKind, detail: str, symbol: str = "") -> None:
        """Record an event raised here (memory or spool alarm) with the feed's data."""
        payload = orjson.dumps({"kind": kind.value, "detail": detail, "symbol": symbol})
        self._record_and_process(local_ts, Kind.LOCAL_EVENT, payload)

    # -- connection events ---------------------------------------------------------
    async def _on_connect(self, client: WsClient) -> None:
        ts = now_us()
        if client.connects > 1:
            self.status.reconnects += 1
        self.status.state = ConnectionState.CONNECTED
        self.status.since_us = ts
        self.outputs.status(self.status)
        # A new connection means new snapshots for every book (the processor resets them).
        connect = orjson.dumps({"natives": self._native_symbols, "instruments": self._instruments_body})
        self._record_and_process(ts, Kind.CONNECT, connect, meta=client.url)
        for message in self.mapper.subscribe_messages(self._native_symbols):
            await client.send(message)
        for native in self._native_symbols:
            if self.mapper.snapshot_request(native) is not None:
                self._schedule_rest_snapshot(native)

    async def _on_disconnect(self, client: WsClient, reason: str) -> None:
        ts = now_us()
        self.status.state = ConnectionState.STOPPED if self._stopping else ConnectionState.DISCONNECTED
        self.status.since_us = ts
        self.status.detail = STOPPED if self._stopping else reason
        self.outputs.status(self.status)
        for task in self._resync_tasks.values():
            task.cancel()
        self._resync_tasks.clear()
        self._record_and_process(ts, Kind.DISCONNECT, meta=STOPPED if self._stopping else reason)

    # -- frames --------------------------------------------------------------------
    async def on_frame(self, raw: str | bytes, local_ts: int) -> None:
        status = self.status
        status.frames += 1
        status.last_frame_us = local_ts
        pg = self.outputs.pg
        if pg.crowded():
            # The database is up but behind: let it catch up rather than spill.
            await pg.wait_for_room(ROOM_WAIT_S)
        durability = self.durability
        if durability.alarm or durability.near_budget():
            await self._watch_budget(local_ts)  # near, at or coming back from the spool budget
        # Every frame passes here: journaled and processed in one synchronous call.
        self._record_and_process(local_ts, Kind.WS_BINARY if isinstance(raw, bytes) else Kind.WS_TEXT, raw)

    async def _watch_budget(self, local_ts: int) -> None:
        alarm, full = self.durability.budget_state()
        if alarm != self.durability.alarm:
            self.durability.alarm = alarm
            size_mb = self.durability.journal.total_bytes / 2**20
            budget_mb = self.durability.budget_bytes / 2**20
            detail = (f"spool alarm: journal {size_mb:.0f} MB of {budget_mb:.0f} MB (COBY_SPOOL_BUDGET_MB)"
                      if alarm else f"spool back under 80 %: journal {size_mb:.0f} MB")
            (log.error if alarm else log.warning)("%s: %s", self.name, detail)
            self.status.detail = detail if alarm else ""
            self.outputs.status(self.status)
            self.local_event(local_ts, FeedEventKind.ERROR, detail)
        if full:
            # Stop reading the exchange until PostgreSQL catches up and space is
            # reclaimed: the TCP window closes, and the exchange may disconnect
            # us, which is recorded as a gap. Nothing already received is lost.
            # A STATE record now lets everything before it be reclaimed as soon
            # as PostgreSQL has it.
            log.error("%s: journal full; pausing reception", self.name)
            if self.processor is not None:
                self._process(self.durability.write_state(self.processor, local_ts))
            await self.durability.wait_for_space()

    # -- resync --------------------------------------------------------------------
    def _resync(self, sync: BookSync) -> None:
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
        self._resync_tasks[native] = asyncio.get_running_loop().create_task(
            self._resubscribe(native, delay), name=f"resub-{native}"
        )

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
        self._resync_tasks[native] = asyncio.get_running_loop().create_task(
            self._fetch_snapshot(native, delay), name=f"snapshot-{native}"
        )

    async def _fetch_snapshot(self, native: str, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        request = self.mapper.snapshot_request(native)
        assert request is not None and self.rest is not None
        backoff = Backoff(base=1.0, cap=60.0)
        while True:
            try:
                body = await self.rest.get(request)
                break
            except RestError as exc:
                symbol = self.books[native].symbol if native in self.books else ""
                self.local_event(now_us(), FeedEventKind.ERROR, f"snapshot request failed: {exc}", symbol)
                await asyncio.sleep(backoff.next_delay())
        self._record_and_process(now_us(), Kind.HTTP, body, meta=native)
