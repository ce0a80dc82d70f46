"""Normalized events to row tuples, in the column order of :mod:`streamer.contract`.

Pure functions, on the hot path (one call per frame, one tuple per level),
so they do as little as possible:

- Timestamps stay **integer microseconds since the Unix epoch** (UTC). The
  PostgreSQL sink's binary COPY turns them into ``timestamptz`` directly
  (:class:`streamer.sinks.postgres.MicrosTimestamptzDumper`); building a
  ``datetime`` per row would cost more than the COPY itself, and float
  seconds would round microseconds. Use :func:`streamer.models.us_to_datetime`
  when a row is needed elsewhere.
- Prices and sizes become ``float`` with ``float(str)``, which is exact to the
  nearest double: every exchange decimal with up to 15 significant digits
  round-trips (see the contract).
"""

from __future__ import annotations

from ..models import BookMessage, FeedEvent, Quarantine, RawLevel, TradeEvent

# Sides as stored (the contract's ``side`` column of book tables).
BID = "bid"
ASK = "ask"


def book_update_rows(msg: BookMessage) -> list[tuple]:
    """One ``book_updates`` row per level of the frame: bids first, then asks.

    A message the book sync applied carries its levels' floats
    (``level_values``, converted once by the book); others are converted here.
    """
    # Every field a local: a third faster than unpacking a shared head tuple per row.
    local_ts, exchange_ts, exchange, symbol = msg.local_ts, msg.exchange_ts, msg.exchange, msg.symbol
    snapshot, seq, prev_seq = msg.is_snapshot, msg.seq, msg.prev_seq
    values = msg.level_values
    if values is None:
        rows = [(local_ts, exchange_ts, exchange, symbol, BID, float(p), float(s), snapshot, seq, prev_seq)
                for p, s in msg.bids]
        rows += [(local_ts, exchange_ts, exchange, symbol, ASK, float(p), float(s), snapshot, seq, prev_seq)
                 for p, s in msg.asks]
        return rows
    (bid_prices, bid_sizes), (ask_prices, ask_sizes) = values
    rows = [(local_ts, exchange_ts, exchange, symbol, BID, p, s, snapshot, seq, prev_seq)
            for p, s in zip(bid_prices, bid_sizes)]
    rows += [(local_ts, exchange_ts, exchange, symbol, ASK, p, s, snapshot, seq, prev_seq)
             for p, s in zip(ask_prices, ask_sizes)]
    return rows


def trade_row(trade: TradeEvent) -> tuple:
    return (
        trade.local_ts,
        trade.exchange_ts,
        trade.exchange,
        trade.symbol,
        trade.trade_id,
        float(trade.price),
        float(trade.size),
        trade.side,
    )


def snapshot_rows(
    exchange: str,
    symbol: str,
    local_ts_us: int,
    seq: int | None,
    bids: list[RawLevel],
    asks: list[RawLevel],
) -> list[tuple]:
    """``book_snapshots`` rows; ``bids``/``asks`` best first, so level 0 is the best."""
    rows = [(local_ts_us, exchange, symbol, BID, i, float(p), float(s), seq) for i, (p, s) in enumerate(bids)]
    rows += [(local_ts_us, exchange, symbol, ASK, i, float(p), float(s), seq) for i, (p, s) in enumerate(asks)]
    return rows


def feed_event_row(event: FeedEvent) -> tuple:
    kind = event.kind.value if hasattr(event.kind, "value") else str(event.kind)
    return (event.local_ts, event.exchange, event.symbol or "", kind, storable_text(event.detail or ""))


def storable_text(text: str) -> str:
    """``text`` made storable in a PostgreSQL ``text`` column, which rejects NUL
    characters and lone surrogates: both are written as backslash escapes, so
    a malformed frame can still be quarantined (and read) instead of failing
    its whole COPY batch."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def quarantine_row(item: Quarantine) -> tuple:
    reason = item.reason if item.symbol is None else f"{item.reason} (symbol {item.symbol})"
    return (item.local_ts, item.exchange, item.code, storable_text(reason), storable_text(item.raw))


def instrument_row(exchange: str, symbol: str, native_symbol: str, first_seen_us: int) -> tuple:
    return (exchange, symbol, native_symbol, first_seen_us)
