"""Synthetic replay data for the pipeline benchmark.

One synthetic hour has the shape the streamer produces: every book
(exchange x symbol) writes a snapshot of ``LEVELS`` levels per side once a
second (``book_snapshots``), plus level updates (``book_updates``) and trades
(``trades``). Prices are integer tick counts divided by a power of ten, so each
is the nearest double to a decimal price, as the streamer stores them. Sizes
are decimals with the symbol's lot precision. Everything is built with numpy
in a few vectorised steps (the generator must not dominate the benchmark's
wall time) and is deterministic for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coby_pipeline.lib import replay
from coby_pipeline.lib.hours import HourWindow
from streamer.contract import FEED_EVENTS, REPLAY_KINDS

#: Levels per side in a snapshot (the default HEATMAP_DEPTH).
LEVELS = 50
EXCHANGES = ("binance", "kraken", "okx")
#: (symbol, reference price, price decimals, size decimals).
SYMBOLS = (
    ("BTC-USDT", 60_000.0, 1, 5),
    ("ETH-USDT", 3_000.0, 2, 4),
    ("SOL-USDT", 150.0, 2, 3),
    ("XRP-USDT", 0.5, 4, 1),
    ("ADA-USDT", 0.4, 4, 1),
    ("DOGE-USDT", 0.12, 5, 0),
    ("LTC-USDT", 80.0, 2, 3),
    ("BNB-USDT", 550.0, 1, 3),
    ("AVAX-USDT", 30.0, 3, 2),
    ("DOT-USDT", 6.0, 3, 2),
    ("LINK-USDT", 14.0, 3, 2),
    ("TRX-USDT", 0.11, 5, 0),
)
#: Book updates and trades per snapshot row of the hour.
UPDATES_PER_SNAPSHOT_ROW = 0.25
TRADES_PER_SNAPSHOT_ROW = 0.10


@dataclass(frozen=True)
class HourShape:
    """How many books and seconds make up ``rows`` snapshot rows."""

    books: int
    seconds: int

    @classmethod
    def for_rows(cls, rows: int) -> "HourShape":
        if rows < 2 * LEVELS:
            raise ValueError(f"an hour needs at least {2 * LEVELS} snapshot rows, got {rows}")
        books = max(1, round(rows / (3600 * 2 * LEVELS)))
        if books > len(EXCHANGES) * len(SYMBOLS):
            raise ValueError(f"{rows} snapshot rows need more books than the {len(EXCHANGES) * len(SYMBOLS)} defined")
        seconds = min(3600, math.ceil(rows / (books * 2 * LEVELS)))
        return cls(books, seconds)

    @property
    def snapshot_rows(self) -> int:
        return self.books * self.seconds * 2 * LEVELS

    def pairs(self) -> list[tuple[str, tuple[str, float, int, int]]]:
        """(exchange, symbol spec) of each book: exchanges first, so symbols are shared."""
        return [(EXCHANGES[i % len(EXCHANGES)], SYMBOLS[i // len(EXCHANGES)]) for i in range(self.books)]


def _strings(values: list[str], index: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(index, pa.int32()))


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def synthetic_hour(window: HourWindow, shape: HourShape, *, seed: int = 7) -> dict[str, pa.Table]:
    """The three replay tables of one hour, with the contract's Arrow schemas."""
    rng = np.random.default_rng(seed)
    pairs = shape.pairs()
    books, seconds = shape.books, shape.seconds
    exchanges = [p[0] for p in pairs]
    symbols = [p[1][0] for p in pairs]
    scale = np.array([10.0 ** p[1][2] for p in pairs])  # ticks per unit price
    lot = np.array([p[1][3] for p in pairs])
    # Levels spread over about 0.5 % of the price on each side, whatever the tick.
    gap = np.array([max(1, round(0.005 * p[1][1] * 10 ** p[1][2] / LEVELS)) for p in pairs], dtype=np.int64)
    start = np.array([round(p[1][1] * 10 ** p[1][2]) for p in pairs], dtype=np.int64)
    # Mid price in ticks: a random walk per book, one step a second.
    steps = rng.normal(0.0, 2e-4, size=(books, seconds))
    mid = np.maximum((start[:, None] * np.exp(np.cumsum(steps, axis=1))).round().astype(np.int64), 4 * gap[:, None] * LEVELS)
    # Each book snapshots at its own offset within the second.
    offset_us = (np.arange(books) * 37_003 % 1_000_000)[:, None] + rng.integers(0, 20_000, size=(books, seconds))
    second_us = window.start_us + np.arange(seconds, dtype=np.int64)[None, :] * 1_000_000
    snap_ts = second_us + offset_us  # (books, seconds)

    level = np.arange(LEVELS, dtype=np.int64)
    away = 1 + level[None, :] * gap[:, None]  # (books, LEVELS) ticks from mid
    bid_ticks = mid[:, :, None] - away[:, None, :]
    ask_ticks = mid[:, :, None] + away[:, None, :]
    ticks = np.concatenate([bid_ticks, ask_ticks], axis=2)  # (books, seconds, 2 * LEVELS)
    price = ticks / scale[:, None, None]
    size = _sizes(rng, ticks.shape, lot)
    n = ticks.size
    book_index = np.repeat(np.arange(books), seconds * 2 * LEVELS)
    sides = np.tile(np.repeat(np.array([0, 1], dtype=np.int32), LEVELS), books * seconds)
    seq = np.broadcast_to(np.arange(seconds, dtype=np.int64)[None, :, None] * 10 + 1, ticks.shape)
    snapshots = pa.table(
        {
            "local_ts": _timestamps(np.broadcast_to(snap_ts[:, :, None], ticks.shape).reshape(n)),
            "exchange": _strings(exchanges, book_index),
            "symbol": _strings(symbols, book_index),
            "side": _strings(["bid", "ask"], sides),
            "level": pa.array(np.tile(np.concatenate([level, level]), books * seconds).astype(np.int16)),
            "price": pa.array(price.reshape(n)),
            "size": pa.array(size.reshape(n)),
            "seq": pa.array(seq.reshape(n)),
        }
    ).cast(REPLAY_KINDS["book_snapshots"].arrow_schema())

    n_snap = shape.snapshot_rows
    return {
        "book_snapshots": snapshots,
        "book_updates": _updates(rng, window, shape, mid, gap, scale, lot, int(n_snap * UPDATES_PER_SNAPSHOT_ROW)),
        "trades": _trades(rng, window, shape, mid, scale, lot, int(n_snap * TRADES_PER_SNAPSHOT_ROW)),
    }


def _sizes(rng: np.random.Generator, shape: tuple[int, ...], lot: np.ndarray) -> np.ndarray:
    """Positive sizes rounded to each book's lot precision (first axis = book)."""
    raw = rng.exponential(2.0, size=shape)
    units = 10.0 ** lot.reshape((-1,) + (1,) * (len(shape) - 1))
    return (np.floor(raw * units) + 1) / units


def _events(rng: np.random.Generator, window: HourWindow, shape: HourShape, count: int):
    """Book index, local_ts and second of ``count`` events, sorted by time within each book."""
    book = np.sort(rng.integers(0, shape.books, size=count))
    span_us = shape.seconds * 1_000_000
    local = window.start_us + rng.integers(0, span_us, size=count)
    order = np.lexsort((local, book))
    book, local = book[order], local[order]
    second = (local - window.start_us) // 1_000_000
    return book, local, second


def _updates(rng, window, shape, mid, gap, scale, lot, count: int) -> pa.Table:
    book, local, second = _events(rng, window, shape, count)
    ask = rng.integers(0, 2, size=count)
    away = 1 + rng.integers(0, LEVELS, size=count) * gap[book]
    ticks = mid[book, second] + np.where(ask == 1, away, -away)
    size = _sizes(rng, (count,), lot[book])
    size[rng.random(count) < 0.1] = 0.0  # a tenth of the updates delete a level
    seq = np.arange(1, count + 1, dtype=np.int64)
    return pa.table(
        {
            **_event_columns(rng, local, shape, book, count),
            "side": _strings(["bid", "ask"], ask),
            "price": pa.array(ticks / scale[book]),
            "size": pa.array(size),
            "is_snapshot": pa.array(np.zeros(count, dtype=bool)),
            "seq": pa.array(seq),
            "prev_seq": pa.array(seq - 1),
        }
    ).cast(REPLAY_KINDS["book_updates"].arrow_schema())


def _event_columns(rng, local, shape, book, count: int) -> dict[str, pa.Array]:
    """The columns every event table starts with: receive and exchange times (2-60 ms
    earlier), exchange and symbol of each event's book."""
    pairs = shape.pairs()
    return {
        "local_ts": _timestamps(local),
        "exchange_ts": _timestamps(local - rng.integers(2_000, 60_000, size=count)),
        "exchange": _strings([p[0] for p in pairs], book),
        "symbol": _strings([p[1][0] for p in pairs], book),
    }


def _trades(rng, window, shape, mid, scale, lot, count: int) -> pa.Table:
    book, local, second = _events(rng, window, shape, count)
    buy = rng.integers(0, 2, size=count)
    ticks = mid[book, second] + np.where(buy == 1, 1, -1)
    return pa.table(
        {
            **_event_columns(rng, local, shape, book, count),
            "trade_id": pc.cast(pa.array(np.arange(1, count + 1, dtype=np.int64)), pa.string()),
            "price": pa.array(ticks / scale[book]),
            "size": pa.array(_sizes(rng, (count,), lot[book])),
            "side": _strings(["sell", "buy"], buy),
        }
    ).cast(REPLAY_KINDS["trades"].arrow_schema())


def feed_events(window: HourWindow, shape: HourShape) -> pa.Table:
    """A connection event per exchange at the start of the hour and a few gaps and resyncs."""
    rows = {"local_ts": [], "exchange": [], "symbol": [], "event": [], "detail": []}
    exchanges = sorted({e for e, _ in shape.pairs()})
    for exchange in exchanges:
        rows["local_ts"].append(window.start)
        rows["exchange"].append(exchange)
        rows["symbol"].append("")
        rows["event"].append("connected")
        rows["detail"].append("")
    for i, (exchange, spec) in enumerate(shape.pairs()[:3]):
        for event in ("gap", "resync"):
            rows["local_ts"].append(window.start + timedelta(seconds=60 * (i + 1)))
            rows["exchange"].append(exchange)
            rows["symbol"].append(spec[0])
            rows["event"].append(event)
            rows["detail"].append("synthetic")
    return pa.table(rows).cast(FEED_EVENTS.arrow_schema())


def write_synthetic_hour(datasets_root: Path, window: HourWindow, shape: HourShape, *, seed: int = 7) -> dict[str, int]:
    """Write one synthetic hour as replay Parquet with the asset's writer; rows per kind."""
    tables = synthetic_hour(window, shape, seed=seed)
    return replay.write_hour(datasets_root, window, tables).rows
