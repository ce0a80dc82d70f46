"""Resting liquidity and traded volume per second and price bucket.

For every exchange, symbol and second: the bid and ask size resting in each
price bucket according to the last book snapshot of that second, and the
buy and sell (taker side) volume traded in that bucket during the second.

A bucket is the lower edge ``floor(price / size) * size``, with ``size`` from
:func:`streamer.config.get_bucket_size`: configured per base asset (BTC 10,
ETH 1, ``<BASE>_BUCKET_SIZE``), otherwise derived from the hour's median mid
price of the symbol across exchanges (so all exchanges of a symbol share one
bucket grid and can be added up).

How it is computed (:func:`price_buckets_query`): a cheap scan first
(:class:`HourProfile`: the exchanges, symbols, time span and price range of
the hour), then one lazy Polars query over the replay Parquet in which every
row gets integer keys instead of strings and floats: exchange and symbol
become small codes, the bucket an integer index, and (second, book, bucket)
one integer whose order is the table's order (32 bits when the hour's cells
fit, else 64). Grouping, joining and sorting on one integer column is several
times cheaper than on five columns of timestamps, strings and floats; the
strings and the float bucket edges are only made for the output rows. Data
the keys cannot represent exactly (a non-finite or missing price, a missing
time or name, a symbol without a size, times other than µs UTC, a span too
wide for 64 bits) takes the query over the columns themselves
(:func:`price_buckets_by_columns`), which defines the result: both give the
same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
SUMS = ["bid_size", "ask_size", "buy_volume", "sell_volume"]
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

_PER_SECOND = pl.col("local_ts").dt.truncate("1s").alias("ts_second")


def bucket_index(price: pl.Expr, num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """The bucket a price falls in, as an integer-valued float: ``floor(price * den / num)``
    with the on-edge snap. ``num`` and ``den`` must be columns, not literals: Polars
    divides by a scalar as a multiplication by its reciprocal, which is not
    correctly rounded (1974 / 5000 would give 0.39480000000000004)."""
    quotient = price * den / num
    nearest = quotient.round(0)
    on_edge = (quotient - nearest).abs() <= _ON_EDGE_TOLERANCE * pl.max_horizontal(nearest.abs(), pl.lit(1.0))
    return pl.when(on_edge).then(nearest).otherwise(quotient.floor())


def best_prices(snapshots: pl.LazyFrame) -> pl.LazyFrame:
    """Best bid and best ask of every snapshot (one row per exchange, symbol, local_ts)."""
    # when/then keeps the plain aggregation path (a filter inside agg does not).
    return snapshots.group_by("exchange", "symbol", "local_ts").agg(
        best_bid=pl.when(pl.col("side") == "bid").then("price").max(),
        best_ask=pl.when(pl.col("side") == "ask").then("price").min(),
    )


def reference_prices(snapshots: pl.LazyFrame, trades: pl.LazyFrame) -> dict[str, float]:
    """Median mid price per symbol over the hour (median trade price if no snapshot)."""
    mids = _median_mids(best_prices(snapshots))
    traded = trades.group_by("symbol").agg(reference=pl.col("price").median())
    traded_table, mids_table = pl.collect_all([traded, mids])
    found: dict[str, float] = {}
    for symbol, price in traded_table.iter_rows():
        found[symbol] = price
    for symbol, price in mids_table.iter_rows():  # mids win over trade prices
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
    index = bucket_index(pl.col("price"), pl.col("_num"), pl.col("_den"))
    # index * num is an exact integer and one division rounds correctly, so a
    # bucket edge is the same double as the decimal edge written out (60.15).
    return (
        frame.join(sizes, on="symbol", how="left")
        .with_columns(price_bucket=index * pl.col("_num") / pl.col("_den"))
        .drop("_num", "_den")
    )


# ---------------------------------------------------------------------------
# The general query: over the columns themselves
# ---------------------------------------------------------------------------


def price_buckets_by_columns(
    snapshots: pl.LazyFrame,
    trades: pl.LazyFrame,
    sizes: Mapping[str, Decimal],
) -> pl.LazyFrame:
    """The bucket table grouped by its own columns: any data, and the definition of the result."""
    widths = size_table(sizes)
    book = (
        snapshots.with_columns(_PER_SECOND)
        # The last snapshot of each second: all its levels share its local_ts.
        .filter(pl.col("local_ts") == pl.col("local_ts").max().over("exchange", "symbol", "ts_second"))
        .pipe(with_price_bucket, widths)
        .group_by(KEYS)
        .agg(
            bid_size=pl.when(pl.col("side") == "bid").then("size").sum(),
            ask_size=pl.when(pl.col("side") == "ask").then("size").sum(),
        )
    )
    traded = (
        trades.with_columns(_PER_SECOND)
        .pipe(with_price_bucket, widths)
        .group_by(KEYS)
        .agg(
            buy_volume=pl.when(pl.col("side") == "buy").then("size").sum(),
            sell_volume=pl.when(pl.col("side") == "sell").then("size").sum(),
        )
    )
    return (
        book.join(traded, on=KEYS, how="full", coalesce=True)
        .with_columns(pl.col(SUMS).fill_null(0.0))
        .select(COLUMNS)
        .sort(KEYS)
    )


# ---------------------------------------------------------------------------
# The fast query: over integer keys
# ---------------------------------------------------------------------------

_US_PER_SECOND = 1_000_000
#: Local timestamps the integer keys are made for (the replay contract's).
_TIMESTAMP = pl.Datetime("us", "UTC")
#: Largest key span: below 2**63 with room, so key arithmetic never overflows.
_KEY_SPAN_LIMIT = 2**62
#: Bucket indexes must be exact integers as doubles (and their differences too).
_INDEX_LIMIT = 2**52


@dataclass(frozen=True, eq=False)
class HourProfile:
    """Per exchange and symbol of the hour: first and last ``local_ts`` (µs), lowest and
    highest price, and whether every time and price is there and finite (``clean``).

    What the integer keys are sized from; one scan of four columns (:meth:`scan`), or
    a by-product of the scan for reference prices (:func:`profile_and_reference_prices`).
    """

    table: pl.DataFrame
    timestamp_types: tuple[pl.DataType, ...]

    @classmethod
    def scan(cls, snapshots: pl.LazyFrame, trades: pl.LazyFrame) -> "HourProfile":
        rows = pl.concat([_price_rows(frame) for frame in (snapshots, trades)], how="vertical_relaxed")
        return cls(_per_book(rows).collect(), _timestamp_types(snapshots, trades))

    @property
    def symbols(self) -> list[str]:
        """Distinct symbols, sorted (as :func:`symbols_of` gives them)."""
        return sorted(set(self.table["symbol"].to_list()))

    def fits_keys(self) -> bool:
        """Can every row be keyed by integers (names and times present, prices finite)?"""
        return (
            not self.table.is_empty()
            and all(kind == _TIMESTAMP for kind in self.timestamp_types)
            and self.table.select(
                pl.col("clean").all() & pl.col("exchange").is_not_null().all() & pl.col("symbol").is_not_null().all()
            ).item()
        )


#: The rows :func:`_per_book` takes.
_PROFILE_ROW = ["exchange", "symbol", "local_ts", "low", "high", "clean"]


def _price_rows(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Rows as :func:`_per_book` takes them: one price is its own low and high."""
    return frame.select(
        "exchange",
        "symbol",
        "local_ts",
        low=pl.col("price"),
        high=pl.col("price"),
        clean=pl.col("price").is_finite().fill_null(False),
    )


def _per_book(rows: pl.LazyFrame) -> pl.LazyFrame:
    """The profile table from rows of exchange, symbol, local_ts, low, high, clean."""
    # min and max skip NaN and null: clean says whether there were any.
    return rows.group_by("exchange", "symbol").agg(
        first_us=pl.col("local_ts").dt.epoch("us").min(),
        last_us=pl.col("local_ts").dt.epoch("us").max(),
        low=pl.col("low").min(),
        high=pl.col("high").max(),
        clean=pl.col("clean").all() & pl.col("local_ts").is_not_null().all(),
    )


def _timestamp_types(*frames: pl.LazyFrame) -> tuple[pl.DataType, ...]:
    return tuple(frame.collect_schema()["local_ts"] for frame in frames)


def profile_and_reference_prices(
    snapshots: pl.LazyFrame, trades: pl.LazyFrame
) -> tuple[HourProfile, dict[str, float]]:
    """The hour's profile and :func:`reference_prices` of every symbol, from one scan.

    The snapshots are grouped per snapshot once (best bid and ask, lowest and
    highest price); the profile and the median mids both come from those rows.
    """
    per_snapshot = snapshots.group_by("exchange", "symbol", "local_ts").agg(
        best_bid=pl.when(pl.col("side") == "bid").then("price").max(),
        best_ask=pl.when(pl.col("side") == "ask").then("price").min(),
        low=pl.col("price").min(),
        high=pl.col("price").max(),
        clean=pl.col("price").is_finite().fill_null(False).all(),
    )
    trade_prices = trades.select("exchange", "symbol", "local_ts", "price")
    snapshot_table, trade_table = pl.collect_all([per_snapshot, trade_prices])
    rows = pl.concat(
        [snapshot_table.lazy().select(_PROFILE_ROW), _price_rows(trade_table.lazy())],
        how="vertical_relaxed",
    )
    profile = HourProfile(_per_book(rows).collect(), _timestamp_types(snapshots, trades))
    reference = dict(trade_table.group_by("symbol").agg(pl.col("price").median()).iter_rows())
    reference.update(_median_mids(snapshot_table.lazy()).collect().iter_rows())  # mids win over trade prices
    return profile, reference


def _median_mids(per_snapshot: pl.LazyFrame) -> pl.LazyFrame:
    """Median mid per symbol over snapshots with both a best bid and a best ask."""
    return (
        per_snapshot.drop_nulls(["best_bid", "best_ask"])
        .group_by("symbol")
        .agg(reference=((pl.col("best_bid") + pl.col("best_ask")) / 2).median())
    )


@dataclass(frozen=True, eq=False)
class _Grid:
    """How a row becomes integers, and back.

    - book: ``exchange_code * symbol_slots + symbol_code``, codes in sorted name
      order, so book order is (exchange, symbol) order;
    - bucket: ``bucket_index - low[symbol]``, in ``[0, width)``; edges increase
      with the index, so bucket order is price_bucket order;
    - micros: ``local_ts - origin`` in µs, origin the whole second at or before
      the first row, so ``micros // 10**6`` is the second (``dt.truncate``);
    - snapshot bucket key: ``(micros * books + book) * width + bucket``;
    - cell key: ``(second * books + book) * width + bucket``, one per output
      row, ordered as (ts_second, exchange, symbol, bucket_size, price_bucket).

    Every part is below its multiplier, so the keys are exact and distinct.
    The multipliers (``symbol_slots``, ``books``, ``width``) are powers of
    two: taking a key apart is then a shift and a mask, where a division by
    any other number costs several times more per row. Cell keys are held as
    UInt32 when the hour's cells fit (``cell_type``): sorting the output by a
    32-bit key is about a third cheaper than by a 64-bit one.
    """

    exchanges: list[str]
    symbols: list[str]
    origin_us: int
    width: int
    symbol_slots: int
    books: int
    cell_type: pl.DataType
    low: pl.Series
    num: pl.Series
    den: pl.Series
    size: pl.Series

    @classmethod
    def fit(cls, profile: HourProfile, sizes: Mapping[str, Decimal]) -> "_Grid | None":
        """The grid for the hour, or None if its keys would not be exact (then use the columns)."""
        if not profile.fits_keys():
            return None
        table = profile.table
        exchanges = sorted(set(table["exchange"].to_list()))
        symbols = sorted(set(table["symbol"].to_list()))
        if any(symbol not in sizes or not _is_positive(sizes[symbol]) for symbol in symbols):
            return None
        prices = table.group_by("symbol").agg(pl.col("low").min(), pl.col("high").max())
        ranges = {symbol: (low, high) for symbol, low, high in prices.iter_rows()}
        lows, nums, dens, indexes_wide = [], [], [], 1
        for symbol in symbols:
            num, den = Decimal(sizes[symbol]).as_integer_ratio()
            indexes = _index_range(*ranges[symbol], num, den)
            if indexes is None:
                return None
            lows.append(float(indexes[0]))
            nums.append(float(num))
            dens.append(float(den))
            indexes_wide = max(indexes_wide, indexes[1] - indexes[0] + 1)
        symbol_slots = _power_of_two_at_least(len(symbols))
        books = _power_of_two_at_least(len(exchanges)) * symbol_slots
        width = _power_of_two_at_least(indexes_wide)
        origin_us = table["first_us"].min() // _US_PER_SECOND * _US_PER_SECOND
        micros = table["last_us"].max() - origin_us + 1
        if micros * books * width >= _KEY_SPAN_LIMIT:
            return None
        cells = ((micros - 1) // _US_PER_SECOND + 1) * books * width
        cell_type = pl.UInt32 if cells <= 2**32 else pl.Int64
        return cls(
            exchanges=exchanges,
            symbols=symbols,
            origin_us=origin_us,
            width=width,
            symbol_slots=symbol_slots,
            books=books,
            cell_type=cell_type,
            low=pl.Series(lows, dtype=pl.Float64),
            num=pl.Series(nums, dtype=pl.Float64),
            den=pl.Series(dens, dtype=pl.Float64),
            size=pl.Series([float(sizes[symbol]) for symbol in symbols], dtype=pl.Float64),
        )

    def keyed(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Add ``_micros``, ``_book`` and ``_bucket`` (Int64) to rows with local_ts, exchange, symbol, price."""
        symbol = pl.col("symbol").cast(pl.Enum(self.symbols)).to_physical().cast(pl.Int64)
        exchange = pl.col("exchange").cast(pl.Enum(self.exchanges)).to_physical().cast(pl.Int64)
        # Gathered per row into columns first: num and den must be columns for
        # the division to round correctly, and a gather written inside the
        # index expression would be evaluated once per use of the quotient.
        index = bucket_index(pl.col("price"), pl.col("_num"), pl.col("_den"))
        return (
            frame.with_columns(_symbol=symbol)
            .with_columns(**self._size_columns())
            .with_columns(
                _micros=pl.col("local_ts").dt.epoch("us") - self.origin_us,
                _book=exchange * self.symbol_slots + pl.col("_symbol"),
                _bucket=(index - pl.col("_low")).cast(pl.Int64),
            )
            .drop("_num", "_den", "_low")
        )

    def snapshot_bucket_key(self) -> pl.Expr:
        return (pl.col("_micros") * self.books + pl.col("_book")) * self.width + pl.col("_bucket")

    def trade_cell_key(self) -> pl.Expr:
        second = pl.col("_micros") // _US_PER_SECOND
        return (second * self.books + pl.col("_book")) * self.width + pl.col("_bucket")

    def snapshot_of(self, snapshot_bucket: pl.Expr) -> pl.Expr:
        """``micros * books + book``: one value per snapshot (exchange, symbol, local_ts)."""
        return snapshot_bucket // self.width

    def book_second_of(self, snapshot: pl.Expr) -> pl.Expr:
        """``second * books + book`` of a snapshot."""
        second = snapshot // self.books // _US_PER_SECOND
        return second * self.books + (snapshot & (self.books - 1))

    def cell_of(self, snapshot_bucket: pl.Expr) -> pl.Expr:
        bucket = snapshot_bucket & (self.width - 1)
        return self.book_second_of(self.snapshot_of(snapshot_bucket)) * self.width + bucket

    def decoded(self, cells: pl.LazyFrame) -> pl.LazyFrame:
        """The output columns from ``_cell`` and the sums (missing sums are 0)."""
        cells = cells.with_columns(pl.col("_cell").cast(pl.Int64))
        book = pl.col("_cell") // self.width & (self.books - 1)
        symbol = pl.col("_symbol")
        index = (pl.col("_cell") & (self.width - 1)).cast(pl.Float64) + pl.col("_low")
        second_us = pl.col("_cell") // (self.width * self.books) * _US_PER_SECOND + self.origin_us
        return (
            cells.with_columns(_book=book, _symbol=book & (self.symbol_slots - 1))
            .with_columns(**self._size_columns())
            .select(
                second_us.cast(_TIMESTAMP).alias("ts_second"),
                pl.lit(pl.Series(self.exchanges, dtype=pl.String))
                .gather(pl.col("_book") // self.symbol_slots)
                .alias("exchange"),
                pl.lit(pl.Series(self.symbols, dtype=pl.String)).gather(symbol).alias("symbol"),
                self._of_symbol(self.size).alias("bucket_size"),
                # The same edge arithmetic as with_price_bucket: the same doubles.
                (index * pl.col("_num") / pl.col("_den")).alias("price_bucket"),
                *[pl.col(column).fill_null(0.0) for column in SUMS],
            )
        )

    def _of_symbol(self, values: pl.Series) -> pl.Expr:
        return pl.lit(values).gather("_symbol")

    def _size_columns(self) -> dict[str, pl.Expr]:
        """``_num``, ``_den`` (the bucket size as a fraction) and ``_low`` (the index
        offset) of each row's symbol, to add as columns after ``_symbol``."""
        return {"_num": self._of_symbol(self.num), "_den": self._of_symbol(self.den),
                "_low": self._of_symbol(self.low)}


def _power_of_two_at_least(count: int) -> int:
    return 1 << max(0, count - 1).bit_length()


def _is_positive(size: Decimal) -> bool:
    size = Decimal(size)
    return size.is_finite() and size > 0


def _index_range(low: float, high: float, num: int, den: int) -> tuple[int, int] | None:
    """Bucket indexes prices in ``[low, high]`` can have (one spare each side: the
    on-edge snap moves an index up by at most one), or None if not exact integers."""
    quotients = (low * den / num, high * den / num)
    if not all(math.isfinite(q) and abs(q) < _INDEX_LIMIT for q in quotients):
        return None
    return math.floor(quotients[0]) - 1, math.floor(quotients[1]) + 1


def _resting(snapshots: pl.LazyFrame, grid: _Grid) -> pl.LazyFrame:
    """Bid and ask size per cell from the last snapshot of each second (``_cell``, sums)."""
    per_snapshot_bucket = _sizes_by_side(
        snapshots.pipe(grid.keyed), grid.snapshot_bucket_key(), "_key", {"bid": "bid_size", "ask": "ask_size"}
    ).with_columns(_snapshot=grid.snapshot_of(pl.col("_key")))
    # Grouped per snapshot first, then only the last snapshot of each second
    # kept: a semi-join on one integer over the few grouped rows instead of a
    # window over every level. The latest snapshot has the largest key.
    last_snapshots = (
        per_snapshot_bucket.select("_snapshot")
        .unique()
        .group_by(grid.book_second_of(pl.col("_snapshot")).alias("_book_second"))
        .agg(pl.col("_snapshot").max())
        .select("_snapshot")
    )
    return per_snapshot_bucket.join(last_snapshots, on="_snapshot", how="semi").select(
        grid.cell_of(pl.col("_key")).cast(grid.cell_type).alias("_cell"), "bid_size", "ask_size"
    )


def _traded(trades: pl.LazyFrame, grid: _Grid) -> pl.LazyFrame:
    """Buy and sell volume per cell (``_cell``, sums)."""
    return _sizes_by_side(trades.pipe(grid.keyed), grid.trade_cell_key().cast(grid.cell_type), "_cell",
                          {"buy": "buy_volume", "sell": "sell_volume"})


def _sizes_by_side(keyed: pl.LazyFrame, key: pl.Expr, key_name: str, sides: dict[str, str]) -> pl.LazyFrame:
    """Sum of ``size`` per ``key``, one column per side: ``{side value: output column}``.

    Conditional sums in one group-by on one integer key, rather than ``side``
    as a second key and a pivot afterwards."""
    return (
        keyed.select(key.alias(key_name),
                     *(pl.when(pl.col("side") == side).then("size").alias(f"_{side}") for side in sides))
        .group_by(key_name)
        .agg(*(pl.col(f"_{side}").sum().alias(column) for side, column in sides.items()))
    )


def _price_buckets_by_keys(snapshots: pl.LazyFrame, trades: pl.LazyFrame, grid: _Grid) -> pl.LazyFrame:
    """The bucket table over integer keys (see :class:`_Grid`); same result as by columns."""
    cells = _resting(snapshots, grid).join(_traded(trades, grid), on="_cell", how="full", coalesce=True)
    # Sorting by the cell key is sorting by KEYS, on one integer column.
    return cells.sort("_cell").pipe(grid.decoded)


def price_buckets_query(
    snapshots: pl.LazyFrame,
    trades: pl.LazyFrame,
    sizes: Mapping[str, Decimal],
    profile: HourProfile | None = None,
) -> pl.LazyFrame:
    """The bucket table as one lazy query over book snapshots and trades, sorted by KEYS.

    Scans the hour's profile first unless given one (:func:`compute_price_buckets` has it).
    """
    if profile is None:
        profile = HourProfile.scan(snapshots, trades)
    grid = _Grid.fit(profile, sizes)
    if grid is None:
        return price_buckets_by_columns(snapshots, trades, sizes)
    return _price_buckets_by_keys(snapshots, trades, grid)


def compute_price_buckets(
    snapshots: pl.LazyFrame,
    trades: pl.LazyFrame,
    configured_sizes: Mapping[str, Decimal],
) -> tuple[pl.DataFrame, dict[str, Decimal]]:
    """Bucket sizes for the hour's symbols, then the bucket table.

    One scan gives the symbols, their reference prices and the profile the query's
    keys are sized from; then the query.
    """
    profile, reference = profile_and_reference_prices(snapshots, trades)
    sizes = bucket_sizes(profile.symbols, configured_sizes, reference)
    table = price_buckets_query(snapshots, trades, sizes, profile).collect()
    return table.cast(dict(SCHEMA)), sizes
