"""The price-bucket query over integer keys gives the table of the query over the columns.

:func:`price_buckets_query` keys rows by integers when the hour's profile allows
it and otherwise runs :func:`price_buckets_by_columns`, which defines the result;
these tests hold the two to the same table (same keys, same order, same sums)
on a synthetic hour and on hand-made edge cases, and check which path unusual
data takes. No database: frames are built in memory.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import polars as pl
import pytest

from coby_pipeline.lib.hours import HourWindow
from coby_pipeline.lib.price_buckets import (
    KEYS,
    SCHEMA,
    SUMS,
    HourProfile,
    _Grid,
    bucket_sizes,
    compute_price_buckets,
    price_buckets_by_columns,
    price_buckets_query,
    profile_and_reference_prices,
    reference_prices,
    symbols_of,
)
from streamer.bench.pipeline_data import HourShape, synthetic_hour
from streamer.config import DEFAULT_BUCKET_SIZES
from streamer.contract import REPLAY_KINDS

START = datetime(2025, 3, 1, tzinfo=timezone.utc)
SNAPSHOT_SCHEMA = pl.Schema(pl.from_arrow(REPLAY_KINDS["book_snapshots"].arrow_schema().empty_table()).schema)
TRADE_SCHEMA = pl.Schema(pl.from_arrow(REPLAY_KINDS["trades"].arrow_schema().empty_table()).schema)


def _at(seconds: float) -> datetime:
    return START + timedelta(microseconds=round(seconds * 1_000_000))


def snapshots_of(rows: list[tuple]) -> pl.LazyFrame:
    """(seconds, exchange, symbol, side, price, size) rows as a replay snapshot frame."""
    return pl.DataFrame(
        {
            "local_ts": [_at(r[0]) for r in rows],
            "exchange": [r[1] for r in rows],
            "symbol": [r[2] for r in rows],
            "side": [r[3] for r in rows],
            "level": [0] * len(rows),
            "price": [r[4] for r in rows],
            "size": [r[5] for r in rows],
            "seq": [1] * len(rows),
        },
        schema_overrides={"local_ts": pl.Datetime("us", "UTC")},
    ).cast(dict(SNAPSHOT_SCHEMA)).lazy()


def trades_of(rows: list[tuple]) -> pl.LazyFrame:
    """(seconds, exchange, symbol, side, price, size) rows as a replay trade frame."""
    return pl.DataFrame(
        {
            "local_ts": [_at(r[0]) for r in rows],
            "exchange_ts": [_at(r[0]) for r in rows],
            "exchange": [r[1] for r in rows],
            "symbol": [r[2] for r in rows],
            "trade_id": [str(i) for i in range(len(rows))],
            "price": [r[4] for r in rows],
            "size": [r[5] for r in rows],
            "side": [r[3] for r in rows],
        },
        schema_overrides={"local_ts": pl.Datetime("us", "UTC"), "exchange_ts": pl.Datetime("us", "UTC")},
    ).cast(dict(TRADE_SCHEMA)).lazy()


def assert_same_table(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Same rows in the same order with the same keys; sums equal up to summation order."""
    got, expected = got.cast(dict(SCHEMA)), expected.cast(dict(SCHEMA))
    assert got.columns == expected.columns
    assert got.select(KEYS).equals(expected.select(KEYS))
    for column in SUMS:
        close = (got[column] - expected[column]).abs() <= 1e-12 * expected[column].abs().clip(1.0)
        assert close.all(), column


def uses_integer_keys(snapshots: pl.LazyFrame, trades: pl.LazyFrame, sizes) -> bool:
    return _Grid.fit(HourProfile.scan(snapshots, trades), sizes) is not None


@pytest.fixture(scope="module")
def hour() -> tuple[pl.LazyFrame, pl.LazyFrame, dict[str, Decimal]]:
    """A synthetic hour of nine books, one of which snapshots twice a second for a minute."""
    window = HourWindow.from_key("2025-03-01-00:00")
    tables = synthetic_hour(window, HourShape(books=9, seconds=400), seed=11)
    snapshots = pl.from_arrow(tables["book_snapshots"]).lazy()
    trades = pl.from_arrow(tables["trades"]).lazy()
    # A second snapshot 1 ms after the first (same second: offsets are below 21 ms),
    # other prices and sizes, for the first minute of binance BTC-USDT.
    first_minute = pl.col("local_ts") < window.start + timedelta(minutes=1)
    later = snapshots.filter(
        (pl.col("exchange") == "binance") & (pl.col("symbol") == "BTC-USDT") & first_minute
    ).with_columns(pl.col("local_ts") + timedelta(milliseconds=1), pl.col("price") + 17.0, pl.col("size") * 2)
    snapshots = pl.concat([snapshots, later]).collect().lazy()
    sizes = bucket_sizes(symbols_of(snapshots, trades), DEFAULT_BUCKET_SIZES, reference_prices(snapshots, trades))
    return snapshots, trades, sizes


def test_synthetic_hour_gives_the_same_table_by_keys_and_by_columns(hour):
    snapshots, trades, sizes = hour
    assert uses_integer_keys(snapshots, trades, sizes)
    got = price_buckets_query(snapshots, trades, sizes).collect()
    assert got.height > 0
    assert_same_table(got, price_buckets_by_columns(snapshots, trades, sizes).collect())
    # Seconds where a book has two snapshots are in the data (only the later one counts).
    snapshots_per_second = (
        snapshots.select("exchange", "symbol", "local_ts")
        .unique()
        .group_by("exchange", "symbol", pl.col("local_ts").dt.truncate("1s"))
        .len()
    )
    assert snapshots_per_second.select((pl.col("len") > 1).any()).collect().item()


def test_narrow_buckets_and_odd_sizes_give_the_same_table(hour):
    snapshots, trades, sizes = hour
    odd = {symbol: Decimal("0.05") if i % 2 else Decimal("2.5") for i, symbol in enumerate(sorted(sizes))}
    assert uses_integer_keys(snapshots, trades, odd)
    assert_same_table(
        price_buckets_query(snapshots, trades, odd).collect(),
        price_buckets_by_columns(snapshots, trades, odd).collect(),
    )


def test_cell_keys_wider_than_32_bits_give_the_same_table(hour):
    """Keys are held as UInt32 when the hour's cells fit, else Int64: both give the table."""
    snapshots, trades, sizes = hour
    profile = HourProfile.scan(snapshots, trades)
    assert _Grid.fit(profile, sizes).cell_type == pl.UInt32
    # Buckets of a ten-thousandth: millions of buckets per symbol, cells past 2**32.
    tiny = {symbol: Decimal("0.0001") for symbol in sizes}
    grid = _Grid.fit(profile, tiny)
    assert grid is not None and grid.cell_type == pl.Int64
    assert_same_table(
        price_buckets_query(snapshots, trades, tiny).collect(),
        price_buckets_by_columns(snapshots, trades, tiny).collect(),
    )


def test_last_snapshot_of_the_second_edges_and_trades_by_hand():
    sizes = {"SOL-USDT": Decimal("0.05"), "BTC-USDT": Decimal("10")}
    snapshots = snapshots_of(
        [
            # SOL at 0.2 s: replaced by the snapshot at 0.9 s of the same second.
            (0.2, "okx", "SOL-USDT", "bid", 60.10, 5.0),
            (0.2, "okx", "SOL-USDT", "ask", 60.40, 5.0),
            (0.9, "okx", "SOL-USDT", "bid", 60.15, 1.0),  # on the 60.15 edge
            (0.9, "okx", "SOL-USDT", "bid", 60.1499, 2.0),  # just below it
            (0.9, "okx", "SOL-USDT", "ask", 60.16, 3.0),  # the bid's bucket, ask side
            (0.9, "okx", "SOL-USDT", "ask", 60.20, 4.0),
            (1.5, "okx", "SOL-USDT", "bid", 60.10, 6.0),
            (0.5, "binance", "BTC-USDT", "bid", 64009.99, 0.5),
            (0.5, "binance", "BTC-USDT", "ask", 64010.0, 0.25),
        ]
    )
    trades = trades_of(
        [
            (0.1, "okx", "SOL-USDT", "buy", 60.15, 0.5),
            (0.7, "okx", "SOL-USDT", "sell", 60.15, 0.25),
            (2.3, "okx", "SOL-USDT", "buy", 61.0, 1.0),  # a second without a snapshot
            (0.5, "binance", "BTC-USDT", "sell", 64000.0, 0.125),
        ]
    )
    assert uses_integer_keys(snapshots, trades, sizes)
    got = price_buckets_query(snapshots, trades, sizes).collect().cast(dict(SCHEMA))
    assert_same_table(got, price_buckets_by_columns(snapshots, trades, sizes).collect())
    rows = [(r[0].second, r[1], r[4], *r[5:]) for r in got.iter_rows()]
    assert rows == [
        (0, "binance", 64000.0, 0.5, 0.0, 0.0, 0.125),
        (0, "binance", 64010.0, 0.0, 0.25, 0.0, 0.0),
        (0, "okx", 60.1, 2.0, 0.0, 0.0, 0.0),
        (0, "okx", 60.15, 1.0, 3.0, 0.5, 0.25),
        (0, "okx", 60.2, 0.0, 4.0, 0.0, 0.0),
        (1, "okx", 60.1, 6.0, 0.0, 0.0, 0.0),
        (2, "okx", 61.0, 0.0, 0.0, 1.0, 0.0),
    ]


def _where(column: str, value, condition: pl.Expr) -> pl.Expr:
    return pl.when(condition).then(value).otherwise(column).alias(column)


def _to_nanoseconds(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(pl.col("local_ts").cast(pl.Datetime("ns", "UTC")))


#: (snapshots, trades) -> (snapshots, trades) with something the integer keys cannot hold.
UNUSUAL = {
    "a NaN price": lambda s, t: (s.with_columns(_where("price", float("nan"), pl.col("level") == 3)), t),
    "a missing price": lambda s, t: (s, t.with_columns(_where("price", None, pl.col("trade_id") == "5"))),
    "a missing time": lambda s, t: (s, t.with_columns(_where("local_ts", None, pl.col("trade_id") == "7"))),
    "a symbol without a size": lambda s, t: (
        s,
        t.with_columns(_where("symbol", pl.lit("NEW-USDT"), pl.col("trade_id") == "9")),
    ),
    "nanosecond times": lambda s, t: (_to_nanoseconds(s), _to_nanoseconds(t)),
    "a price far away": lambda s, t: (s, t.with_columns(_where("price", 1e300, pl.col("trade_id") == "3"))),
}


@pytest.mark.parametrize("case", sorted(UNUSUAL))
def test_unusual_data_takes_the_query_by_columns(hour, case):
    snapshots, trades, sizes = UNUSUAL[case](*hour[:2]) + (hour[2],)
    assert not uses_integer_keys(snapshots, trades, sizes)
    assert_same_table(
        price_buckets_query(snapshots, trades, sizes).collect(),
        price_buckets_by_columns(snapshots, trades, sizes).collect(),
    )


def test_profile_and_reference_prices_come_from_one_scan(hour):
    snapshots, trades, _ = hour
    profile, reference = profile_and_reference_prices(snapshots, trades)
    assert reference == reference_prices(snapshots, trades)
    scanned = HourProfile.scan(snapshots, trades)
    keys = ["exchange", "symbol"]
    assert profile.table.sort(keys).select(scanned.table.columns).equals(scanned.table.sort(keys))
    assert profile.symbols == symbols_of(snapshots, trades)


def test_compute_price_buckets_sizes_from_reference_prices(hour):
    snapshots, trades, sizes = hour
    table, got_sizes = compute_price_buckets(snapshots, trades, DEFAULT_BUCKET_SIZES)
    assert got_sizes == sizes
    assert table.schema == SCHEMA
    assert_same_table(table, price_buckets_by_columns(snapshots, trades, sizes).collect())
    assert table["ts_second"].is_sorted()
    assert not math.isnan(table["price_bucket"].sum())
