"""Resting liquidity and traded volume per second and price bucket.

For every exchange, symbol and second: the bid and ask size resting in each
price bucket according to the last book snapshot of that second, and the
buy and sell (taker side) volume traded in that bucket during the second.

A bucket is the lower edge ``floor(price / size) * size``, with ``size`` from
:func:`streamer.config.get_bucket_size`: configured per base asset (BTC 10,
ETH 1, ``<BASE>_BUCKET_SIZE``), otherwise derived from the hour's median mid
price of the symbol across exchanges (so all exchanges of a symbol share one
bucket grid and can be added up).

The aggregation is one lazy Polars query (:func:`price_buckets_query`) over
the replay Parquet; only the tiny per-symbol bucket-size table is computed
before it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Mapping

import polars as pl

from streamer.config import get_bucket_size
from streamer.errors import ConfigError

#: Output columns, in order.
COLUMNS = [
    "ts_second",
    "exchange",
    "symbol",
    "bucket_size",
    "price_bucket",
    "bid_size",
    "ask_size",
    "buy_volume",
    "sell_volume",
]
KEYS = ["ts_second", "exchange", "symbol", "bucket_size", "price_bucket"]
SCHEMA = pl.Schema(
    {
        "ts_second": pl.Datetime("us", "UTC"),
        "exchange": pl.String,
        "symbol": pl.String,
        "bucket_size": pl.Float64,
        "price_bucket": pl.Float64,
        "bid_size": pl.Float64,
        "ask_size": pl.Float64,
        "buy_volume": pl.Float64,
        "sell_volume": pl.Float64,
    }
)

# A quotient within this relative distance of an integer is that integer: it
# absorbs the binary representation error of decimal prices (60.15 / 0.05 is
# 1202.9999999999998 in floating point) without merging distinct decimal
# prices, which are at least one tick (>> 1e-9 relative) apart.
_ON_EDGE_TOLERANCE = 1e-9


def best_prices(snapshots: pl.LazyFrame) -> pl.LazyFrame:
    """Best bid and best ask of every snapshot (one row per exchange, symbol, local_ts)."""
    return snapshots.group_by("exchange", "symbol", "local_ts").agg(
        best_bid=pl.col("price").filter(pl.col("side") == "bid").max(),
        best_ask=pl.col("price").filter(pl.col("side") == "ask").min(),
    )


def reference_prices(snapshots: pl.LazyFrame, trades: pl.LazyFrame) -> dict[str, float]:
    """Median mid price per symbol over the hour (median trade price if no snapshot)."""
    mids = (
        best_prices(snapshots)
        .drop_nulls(["best_bid", "best_ask"])
        .group_by("symbol")
        .agg(reference=((pl.col("best_bid") + pl.col("best_ask")) / 2).median())
    )
    traded = trades.group_by("symbol").agg(reference=pl.col("price").median())
    found: dict[str, float] = {}
    for symbol, price in traded.collect().iter_rows():
        found[symbol] = price
    for symbol, price in mids.collect().iter_rows():  # mids win over trade prices
        found[symbol] = price
    return found


def symbols_of(*frames: pl.LazyFrame) -> list[str]:
    """Distinct symbols in the frames."""
    found: set[str] = set()
    for frame in frames:
        found.update(frame.select(pl.col("symbol").unique()).collect().to_series().to_list())
    return sorted(found)


def bucket_sizes(
    symbols: list[str],
    configured: Mapping[str, Decimal],
    reference: Mapping[str, float],
) -> dict[str, Decimal]:
    """Bucket size per symbol: configured by base asset, else from ``reference`` price."""
    sizes: dict[str, Decimal] = {}
    for symbol in symbols:
        try:
            sizes[symbol] = get_bucket_size(symbol, None, configured)
        except ConfigError:
            if symbol not in reference:
                raise ConfigError(
                    f"no bucket size configured for {symbol} and no price seen this hour to derive one"
                ) from None
            sizes[symbol] = get_bucket_size(symbol, reference[symbol], configured)
    return sizes


def size_table(sizes: Mapping[str, Decimal]) -> pl.LazyFrame:
    """Bucket sizes as exact fractions ``num / den`` so bucket edges round correctly."""
    symbols, widths, nums, dens = [], [], [], []
    for symbol, size in sorted(sizes.items()):
        num, den = Decimal(size).as_integer_ratio()
        symbols.append(symbol)
        widths.append(float(size))
        nums.append(float(num))
        dens.append(float(den))
    return pl.LazyFrame(
        {"symbol": symbols, "bucket_size": widths, "_num": nums, "_den": dens},
        schema={"symbol": pl.String, "bucket_size": pl.Float64, "_num": pl.Float64, "_den": pl.Float64},
    )


def with_price_bucket(frame: pl.LazyFrame, sizes: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``bucket_size`` and ``price_bucket`` (lower bucket edge) to rows with a ``price``."""
    quotient = pl.col("price") * pl.col("_den") / pl.col("_num")
    nearest = quotient.round(0)
    on_edge = (quotient - nearest).abs() <= _ON_EDGE_TOLERANCE * pl.max_horizontal(nearest.abs(), pl.lit(1.0))
    index = pl.when(on_edge).then(nearest).otherwise(quotient.floor())
    # index * num is an exact integer and one division rounds correctly, so a
    # bucket edge is the same double as the decimal edge written out (60.15).
    return (
        frame.join(sizes, on="symbol", how="left")
        .with_columns(price_bucket=index * pl.col("_num") / pl.col("_den"))
        .drop("_num", "_den")
    )


def price_buckets_query(
    snapshots: pl.LazyFrame,
    trades: pl.LazyFrame,
    sizes: Mapping[str, Decimal],
) -> pl.LazyFrame:
    """The bucket table as one lazy query over book snapshots and trades."""
    widths = size_table(sizes)
    per_second = pl.col("local_ts").dt.truncate("1s").alias("ts_second")
    book = (
        snapshots.with_columns(per_second)
        # The last snapshot of each second: all its levels share its local_ts.
        .filter(pl.col("local_ts") == pl.col("local_ts").max().over("exchange", "symbol", "ts_second"))
        .pipe(with_price_bucket, widths)
        .group_by(KEYS)
        .agg(
            bid_size=pl.col("size").filter(pl.col("side") == "bid").sum(),
            ask_size=pl.col("size").filter(pl.col("side") == "ask").sum(),
        )
    )
    traded = (
        trades.with_columns(per_second)
        .pipe(with_price_bucket, widths)
        .group_by(KEYS)
        .agg(
            buy_volume=pl.col("size").filter(pl.col("side") == "buy").sum(),
            sell_volume=pl.col("size").filter(pl.col("side") == "sell").sum(),
        )
    )
    return (
        book.join(traded, on=KEYS, how="full", coalesce=True)
        .with_columns(pl.col("bid_size", "ask_size", "buy_volume", "sell_volume").fill_null(0.0))
        .select(COLUMNS)
        .sort(KEYS)
    )


def compute_price_buckets(
    snapshots: pl.LazyFrame,
    trades: pl.LazyFrame,
    configured_sizes: Mapping[str, Decimal],
) -> tuple[pl.DataFrame, dict[str, Decimal]]:
    """Bucket sizes for the hour's symbols, then the bucket table."""
    symbols = symbols_of(snapshots, trades)
    needs_reference = []
    for symbol in symbols:
        try:
            get_bucket_size(symbol, None, configured_sizes)
        except ConfigError:
            needs_reference.append(symbol)
    reference = reference_prices(snapshots, trades) if needs_reference else {}
    sizes = bucket_sizes(symbols, configured_sizes, reference)
    table = price_buckets_query(snapshots, trades, sizes).collect()
    return table.cast(dict(SCHEMA)), sizes
