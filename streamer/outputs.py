"""Where normalized events go: PostgreSQL (system of record) and Redis (live cache).

The feed calls these methods with events; this module turns them into rows
of the contract's tables and Redis updates, so neither the feed nor the
sinks know about each other.
"""

from __future__ import annotations

from .book.orderbook import OrderBook
from .contract import BOOK_SNAPSHOTS, BOOK_UPDATES, FEED_EVENTS, INSTRUMENTS, QUARANTINE, TRADES
from .models import BookMessage, ConnectionStatus, FeedEvent, Quarantine, TradeEvent
from .sinks import rows
from .sinks.postgres import PostgresSink
from .sinks.redis_sink import RedisSink


class Outputs:
    def __init__(self, pg: PostgresSink, redis: RedisSink, *, redis_depth: int = 50) -> None:
        self.pg = pg
        self.redis = redis
        self.redis_depth = redis_depth

    async def book_applied(self, msg: BookMessage) -> int:
        level_rows = rows.book_update_rows(msg)
        if level_rows:
            await self.pg.write(BOOK_UPDATES, level_rows)
        return len(level_rows)

    def book_changed(self, exchange: str, symbol: str, native_symbol: str, book: OrderBook,
                     seq: int | None, local_ts: int, exchange_ts: int | None) -> None:
        self.redis.publish_book(
            exchange, symbol, native_symbol,
            book.top("bid", self.redis_depth), book.top("ask", self.redis_depth),
            seq, local_ts, exchange_ts,
        )

    def book_unsynced(self, exchange: str, symbol: str) -> None:
        """The book is resynchronising: no stale book may stay visible."""
        self.redis.delete_book(exchange, symbol)

    async def trade(self, trade: TradeEvent) -> None:
        await self.pg.write(TRADES, [rows.trade_row(trade)])
        self.redis.add_trade(trade)

    async def feed_event(self, event: FeedEvent) -> None:
        await self.pg.write(FEED_EVENTS, [rows.feed_event_row(event)])

    async def quarantine(self, item: Quarantine) -> None:
        await self.pg.write(QUARANTINE, [rows.quarantine_row(item)])

    async def book_snapshot(self, exchange: str, symbol: str, local_ts: int, seq: int | None,
                            bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        await self.pg.write(BOOK_SNAPSHOTS, rows.snapshot_rows(exchange, symbol, local_ts, seq, bids, asks))

    async def instrument(self, exchange: str, symbol: str, native_symbol: str, local_ts: int) -> None:
        await self.pg.write(INSTRUMENTS, [rows.instrument_row(exchange, symbol, native_symbol, local_ts)])

    def status(self, status: ConnectionStatus) -> None:
        self.redis.set_status(status)
