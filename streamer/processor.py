"""One feed's processing, with no I/O: journal records in, rows and live-cache actions out.

The live feed and recovery run the same code: the live feed turns each frame
into a journal record and processes it here; after a crash or a database
outage, recovery re-processes the journal's records through a fresh
processor and gets exactly the rows the live feed would have written.

Everything the output depends on is in the records (frames, REST bodies,
connects and disconnects, snapshot ticks, local events) with their receive
times, so processing is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import blake2b
from itertools import islice
from typing import Iterable

import orjson

from .book.sync import BookSync
from .contract import (
    BOOK_SNAPSHOTS, BOOK_UPDATES, FEED_EVENTS, INSTRUMENTS, QUARANTINE, TRADES, Table, connection_label,
)
from .errors import CobyError
from .exchanges.base import ExchangeMapper, raw_text
from .journal.records import Kind, Record, tick_part
from .models import BookMessage, ControlEvent, FeedEvent, FeedEventKind, Quarantine, TradeEvent
from .sinks import rows
from .book.orderbook import OrderBook
from .connection.ws import DEFAULT_MAX_FRAME_BYTES, frame_exceeds, oversized_quarantine
from .stats import FeedStats


def _digest(text: str) -> bytes:
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def select_levels(
    book: OrderBook, depth: int, band_pct: float | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The levels of a periodic snapshot: the top ``depth`` per side, or with
    ``band_pct`` every level within that percentage of the mid price."""
    if band_pct is None:
        return book.top("bid", depth), book.top("ask", depth)
    best_bid, best_ask = book.best_bid(), book.best_ask()
    if best_bid is None or best_ask is None:
        return book.top("bid", depth), book.top("ask", depth)
    mid = (float(best_bid[0]) + float(best_ask[0])) / 2
    low, high = mid * (1 - band_pct / 100), mid * (1 + band_pct / 100)
    return list(book.band("bid", low, high)), list(book.band("ask", low, high))


@dataclass(slots=True)
class Output:
    """What processing one record produced."""

    #: Rows for PostgreSQL, per table, in the order they were produced.
    rows: dict[Table, list[tuple]] = field(default_factory=dict)
    #: Receive time of the record.
    local_ts: int = 0
    #: Synced books whose content changed, with the exchange time of their last
    #: applied message (publish to the live cache).
    changed: dict[str, tuple[BookSync, int | None]] = field(default_factory=dict)
    #: Books that stopped being synced (remove from the live cache).
    unsynced: list[BookSync] = field(default_factory=list)
    trades: list[TradeEvent] = field(default_factory=list)
    #: Text the connection must send back (pongs).
    replies: list[str] = field(default_factory=list)
    #: Books that need a fresh snapshot (REST request or resubscription).
    resyncs: list[BookSync] = field(default_factory=list)

    def add_rows(self, table: Table, new: list[tuple]) -> None:
        if new:
            self.rows.setdefault(table, []).extend(new)

    @property
    def row_count(self) -> int:
        return sum(len(r) for r in self.rows.values())


#: An unsynced book asks for a snapshot again when none came this long (µs) after asking.
SNAPSHOT_RETRY_US = 5_000_000


class FeedProcessor:
    #: Digest of the instrument body the mapper has loaded (b"": none). A class
    #: attribute, so that a processor pickled before it existed unpickles with it.
    _instruments_digest = b""
    #: Connection label of this feed's connection events: "" for a whole
    #: exchange, "@2" for its second shard (see :mod:`streamer.shards`). A class
    #: attribute for the same reason as the digest above.
    connection_label = ""

    def __init__(
        self,
        exchange: str,
        mapper: ExchangeMapper,
        native_symbols: list[str],
        *,
        snapshot_depth: int = 50,
        snapshot_band_pct: float | None = None,
        max_buffered_deltas: int = 10_000,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        shard: str = "",
    ) -> None:
        self.exchange = exchange
        if shard:
            # Connection events go in the ``symbol`` column, where nothing starting
            # with "@" can be a symbol: the quality scores track each connection.
            self.connection_label = connection_label(shard)
        self.mapper = mapper
        self.native_symbols = list(dict.fromkeys(native_symbols))
        self.snapshot_depth = snapshot_depth
        self.snapshot_band_pct = snapshot_band_pct
        self.max_buffered_deltas = max_buffered_deltas
        self.max_frame_bytes = max_frame_bytes
        self.stats = FeedStats()
        #: One book per native symbol, created at the first connect (after the
        #: instrument metadata that names them has been loaded).
        self.books: dict[str, BookSync] = {}
        self.connections = 0
        self.connected = False
        self.last_ts: int | None = None
        self._raw: bytes = b""  # payload of the record being processed (for quarantine rows)
        #: When each unsynced book last asked for a snapshot (record time, so recovery agrees).
        self._snapshot_asked_at: dict[str, int] = {}

    def _make_books(self, natives: list[str]) -> None:
        """One book per subscribed symbol; a connect with another symbol set
        (a restart with a new configuration) replaces the set."""
        if list(self.books) == natives:
            return
        self.native_symbols = natives
        self.books = {}
        for native in natives:
            symbol = self.mapper.normalize_symbol(native)
            self.books[native] = BookSync(
                self.exchange, symbol, native, self.mapper.sync_rules(), max_buffer=self.max_buffered_deltas
            )

    # -- records -----------------------------------------------------------------
    def process(self, record: Record) -> Output:
        out = Output(local_ts=record.local_ts)
        kind = record.kind
        self._raw = record.payload
        if kind is Kind.WS_TEXT or kind is Kind.WS_BINARY:
            self.stats.frames += 1
            payload = record.payload if kind is Kind.WS_BINARY else record.payload.decode("utf-8", "replace")
            if frame_exceeds(payload, self.max_frame_bytes):  # quarantined unparsed; the connection stays up
                self._dispatch([oversized_quarantine(self.exchange, payload, self.max_frame_bytes, record.local_ts)], out)
            else:
                self._dispatch(self.mapper.map_message(payload, record.local_ts), out)
        elif kind is Kind.HTTP:
            self._on_http(record, out)
        elif kind is Kind.CONNECT:
            self._on_connect(record, out)
        elif kind is Kind.DISCONNECT:
            self._on_disconnect(record.local_ts, record.meta, out)
        elif kind is Kind.SNAPSHOT_TICK:
            self._on_snapshot_tick(record.local_ts, record.meta, out)
        elif kind is Kind.LOCAL_EVENT:
            event = orjson.loads(record.payload)
            self._record(FeedEvent(self.exchange, FeedEventKind(event["kind"]), record.local_ts,
                                   event.get("symbol", ""), event.get("detail", "")), out)
        self.last_ts = record.local_ts
        return out

    def _on_http(self, record: Record, out: Output) -> None:
        """A REST book snapshot of the symbol named in ``meta``."""
        self.stats.snapshot_requests += 1
        self._dispatch(self.mapper.map_snapshot(record.meta, record.text(), record.local_ts), out)

    def _on_connect(self, record: Record, out: Output) -> None:
        ts = record.local_ts
        if self.connected:
            # The previous connection has no end record: the process stopped
            # without closing it (a crash). Everything after its last record
            # is a gap.
            self._on_disconnect(self.last_ts or ts, "streamer stopped unexpectedly", out)
        # The subscribed symbols and the exchange's instrument metadata travel
        # with every connect, so that processing can start at any connect record.
        natives, instruments = self.native_symbols, ""
        if record.payload:
            info = orjson.loads(record.payload)
            natives, instruments = list(info["natives"]), info.get("instruments", "")
        digest = _digest(instruments) if instruments else b""
        if digest and digest != self._instruments_digest:
            # The same body on every reconnect (a large one: Binance lists every
            # instrument in 1.8 MB) is mapped once.
            try:
                self.mapper.load_instruments(self.mapper.map_instruments(instruments))
                self._instruments_digest = digest
            except (CobyError, ValueError) as exc:
                self._instruments_digest = b""
                self._record(FeedEvent(self.exchange, FeedEventKind.ERROR, ts,
                                       detail=f"instrument metadata unusable: {exc}"[:500]), out)
        self._make_books(natives)
        self.connections += 1
        if self.connections > 1:
            self.stats.reconnects += 1
        self.connected = True
        self._record(FeedEvent(self.exchange, FeedEventKind.CONNECTED, ts, self.connection_label,
                               detail=record.meta), out)
        out.add_rows(INSTRUMENTS, [rows.instrument_row(self.exchange, s.symbol, n, ts) for n, s in self.books.items()])
        for sync in self.books.values():
            was_synced = sync.is_synced
            self._snapshot_asked_at[sync.native_symbol] = ts  # the subscription brings (or asks for) one
            for event in sync.reset("new connection", ts, record=self.connections > 1):
                self._record(event, out)
            if was_synced:
                out.unsynced.append(sync)

    def _on_disconnect(self, ts: int, reason: str, out: Output) -> None:
        self.connected = False
        kind = FeedEventKind.STALL if reason.startswith("stall") else FeedEventKind.DISCONNECTED
        self._record(FeedEvent(self.exchange, kind, ts, self.connection_label, detail=reason), out)
        for sync in self.books.values():
            if sync.is_synced:
                out.unsynced.append(sync)

    def _on_snapshot_tick(self, ts: int, part: str, out: Output) -> None:
        """Snapshot rows of every synced book, or with ``part`` ("start:stop") of that slice of the books.

        A feed with many books journals one tick in parts (see
        :meth:`streamer.feed.ExchangeFeed.snapshot_tick`), so that building
        100,000 rows does not hold the event loop in one piece.
        """
        books: Iterable[BookSync] = self.books.values()
        if part:
            try:
                start, stop = tick_part(part)
            except ValueError as exc:  # not written by this code: say so, and snapshot every book
                self._record(FeedEvent(self.exchange, FeedEventKind.ERROR, ts, detail=str(exc)[:500]), out)
            else:
                books = islice(books, start, stop)
        for sync in books:
            if not sync.is_synced:
                continue
            bids, asks = select_levels(sync.book, self.snapshot_depth, self.snapshot_band_pct)
            if bids or asks:
                out.add_rows(BOOK_SNAPSHOTS, rows.snapshot_rows(self.exchange, sync.symbol, ts, sync.last_seq, bids, asks))
                self.stats.snapshots_written += 1

    # -- mapped events -------------------------------------------------------------
    def _dispatch(self, events: list, out: Output) -> None:
        for event in events:
            if isinstance(event, BookMessage):
                self._on_book(event, out)
            elif isinstance(event, TradeEvent):
                self._on_trade(event, out)
            elif isinstance(event, Quarantine):
                self.stats.rejected += 1
                out.add_rows(QUARANTINE, [rows.quarantine_row(event)])
                if event.book is not None:
                    self._on_rejected_book_frame(event, out)
            elif isinstance(event, ControlEvent):
                self._on_control(event, out)

    def _on_book(self, msg: BookMessage, out: Output) -> None:
        sync = self.books.get(msg.native_symbol)
        if sync is None:
            self._reject_unknown(msg.native_symbol, msg.local_ts, "book", out)
            return
        self.stats.book_messages += 1
        was_synced = sync.is_synced
        outcome = sync.on_message(msg)
        for applied in outcome.applied:
            level_rows = rows.book_update_rows(applied)
            self.stats.book_updates += len(level_rows)
            out.add_rows(BOOK_UPDATES, level_rows)
        for event in outcome.events:
            self._record(event, out)
            if event.kind is FeedEventKind.CROSSED:
                # Kept (a checksum-verified crossed book is the exchange's own
                # state), but the frame that crossed it goes to quarantine for
                # inspection, with the reason.
                self.stats.rejected += 1
                out.add_rows(QUARANTINE, [rows.quarantine_row(Quarantine(
                    self.exchange, event.detail, raw_text(self._raw), msg.local_ts, code="SYN-004", symbol=sync.symbol))])
        if outcome.book_changed and sync.is_synced:
            last = outcome.applied[-1] if outcome.applied else msg
            out.changed[sync.native_symbol] = (sync, last.exchange_ts)
        elif was_synced and not sync.is_synced:
            out.changed.pop(sync.native_symbol, None)
            out.unsynced.append(sync)
        if outcome.needs_resync:
            out.resyncs.append(sync)
            self._snapshot_asked_at[sync.native_symbol] = msg.local_ts
        elif not sync.is_synced and not msg.is_snapshot:
            asked = self._snapshot_asked_at.get(sync.native_symbol, msg.local_ts)
            if msg.local_ts - asked > SNAPSHOT_RETRY_US:
                # Updates keep coming but the snapshot asked for never did (lost,
                # or rejected as malformed): ask again rather than wait forever.
                out.resyncs.append(sync)
                self._snapshot_asked_at[sync.native_symbol] = msg.local_ts

    def _on_rejected_book_frame(self, item: Quarantine, out: Output) -> None:
        """A book frame was quarantined: its book missed an update and resyncs now."""
        sync = self.books.get(item.book or "")
        if sync is None:  # not a subscribed symbol: the quarantine record says so
            return
        outcome = sync.on_frame_rejected(f"{item.code} {item.reason}", item.local_ts)
        for event in outcome.events:
            self._record(event, out)
        if outcome.needs_resync:
            out.changed.pop(sync.native_symbol, None)
            out.unsynced.append(sync)
            out.resyncs.append(sync)
            self._snapshot_asked_at[sync.native_symbol] = item.local_ts

    def _on_trade(self, trade: TradeEvent, out: Output) -> None:
        if trade.native_symbol not in self.books:
            self._reject_unknown(trade.native_symbol, trade.local_ts, "trade", out)
            return
        self.stats.trades += 1
        out.add_rows(TRADES, [rows.trade_row(trade)])
        out.trades.append(trade)

    def _on_control(self, event: ControlEvent, out: Output) -> None:
        self.stats.control += 1
        if event.reply is not None:
            out.replies.append(event.reply)
        if event.kind == "error":
            self.stats.exchange_errors += 1
            self._record(FeedEvent(self.exchange, FeedEventKind.ERROR, event.local_ts,
                                   symbol=event.symbol or "", detail=event.detail[:500]), out)

    def _reject_unknown(self, native: str, local_ts: int, what: str, out: Output) -> None:
        self.stats.rejected += 1
        item = Quarantine(self.exchange, f"{what} for unsubscribed symbol {native!r}", native, local_ts, code="MAP-004")
        out.add_rows(QUARANTINE, [rows.quarantine_row(item)])

    def _record(self, event: FeedEvent, out: Output) -> None:
        kind = event.kind
        if kind is FeedEventKind.GAP:
            self.stats.sequence_gaps += 1
        elif kind is FeedEventKind.RESYNC:
            self.stats.resyncs += 1
        elif kind is FeedEventKind.CROSSED:
            self.stats.crossed += 1
        out.add_rows(FEED_EVENTS, [rows.feed_event_row(event)])
