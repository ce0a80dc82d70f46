"""Liquidity heatmaps: time x price-bucket matrices of resting bid and ask size.

The table (long format, one row per second, symbol, exchange and bucket with
resting size) comes from the price-bucket table. Per exchange it is the
bucketed last snapshot of each second. The consolidated view
(``exchange = "all"``) adds the exchanges up at every second any of them has
a snapshot, carrying each exchange's latest snapshot forward for up to
``stale_after`` so one exchange's snapshot landing a second late does not
make its liquidity blink out of the sum.
"""

from __future__ import annotations

import base64
import io
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl

from streamer.models import HeatmapData

from .datasets import HEATMAP, read_hour_table
from .hours import HourWindow

CONSOLIDATED = "all"
COLUMNS = ["ts", "symbol", "exchange", "bucket_size", "price_bucket", "bid_size", "ask_size"]
SCHEMA = pl.Schema(
    {
        "ts": pl.Datetime("us", "UTC"),
        "symbol": pl.String,
        "exchange": pl.String,
        "bucket_size": pl.Float64,
        "price_bucket": pl.Float64,
        "bid_size": pl.Float64,
        "ask_size": pl.Float64,
    }
)
#: Rows of the rendered image at most; the window is centred on the liquidity.
MAX_RENDERED_BUCKETS = 400


def heatmap_table(price_buckets: pl.LazyFrame, *, stale_after: timedelta) -> pl.DataFrame:
    """The long heatmap table (per exchange and consolidated) from the price-bucket table."""
    book = (
        price_buckets.filter((pl.col("bid_size") > 0) | (pl.col("ask_size") > 0))
        .select(
            pl.col("ts_second").alias("ts"),
            "symbol",
            "exchange",
            "bucket_size",
            "price_bucket",
            "bid_size",
            "ask_size",
        )
    )
    snapshot_times = book.select("symbol", "exchange", "ts").unique()
    # Every (symbol, second with any snapshot, exchange quoting that symbol)...
    grid = (
        snapshot_times.select("symbol", "ts")
        .unique()
        .join(snapshot_times.select("symbol", "exchange").unique(), on="symbol")
        .sort("ts")
    )
    # ...mapped to that exchange's latest snapshot second, if fresh enough.
    sources = snapshot_times.with_columns(source_ts=pl.col("ts")).sort("ts")
    # Both sides are sorted by ts just above; Polars cannot verify that per group.
    carried = grid.join_asof(
        sources,
        on="ts",
        by=["symbol", "exchange"],
        strategy="backward",
        tolerance=stale_after,
        check_sortedness=False,
    ).drop_nulls("source_ts")
    consolidated = (
        carried.join(
            book.rename({"ts": "source_ts"}), on=["symbol", "exchange", "source_ts"], how="inner"
        )
        .group_by("ts", "symbol", "bucket_size", "price_bucket")
        .agg(pl.col("bid_size").sum(), pl.col("ask_size").sum())
        .with_columns(exchange=pl.lit(CONSOLIDATED))
        .select(COLUMNS)
    )
    table = pl.concat([book.select(COLUMNS), consolidated], how="vertical_relaxed")
    return table.sort("symbol", "exchange", "ts", "price_bucket").collect().cast(dict(SCHEMA))


def heatmap_data(
    table: pl.DataFrame,
    symbol: str,
    exchange: str = CONSOLIDATED,
    *,
    price_range: tuple[float, float] | None = None,
    max_buckets: int = 5000,
) -> HeatmapData:
    """The matrix of one symbol and exchange (``"all"``: consolidated) as HeatmapData.

    Times are the seconds with a snapshot, ascending; price buckets run
    contiguously from the lowest to the highest bucket with liquidity (or
    within ``price_range``), so the matrix is a regular grid (empty cells are
    0). More than ``max_buckets`` rows is refused (a stray far-away level would
    otherwise make a huge matrix): pass a ``price_range``.
    """
    rows = table.filter((pl.col("symbol") == symbol) & (pl.col("exchange") == exchange))
    if price_range is not None:
        rows = rows.filter(pl.col("price_bucket").is_between(*price_range))
    if rows.is_empty():
        return HeatmapData(symbol, exchange, 0.0, [], [], [], [])
    size = float(rows["bucket_size"][0])
    times = rows["ts"].unique().sort()
    low = float(rows["price_bucket"].min())
    high = float(rows["price_bucket"].max())
    edges = bucket_grid(low, high, size)
    if len(edges) > max_buckets:
        raise ValueError(
            f"{symbol}/{exchange} spans {len(edges)} price buckets of {size:g} ({low:g} to {high:g}), "
            f"more than max_buckets={max_buckets}: pass a narrower price_range"
        )
    bids, asks = _dense(rows, times, low, size, len(edges))
    return HeatmapData(
        symbol=symbol,
        exchange=exchange,
        bucket_size=size,
        times=times.to_list(),
        price_buckets=edges,
        bid_size=bids.tolist(),
        ask_size=asks.tolist(),
    )


def bucket_grid(low: float, high: float, size: float) -> list[float]:
    """Every bucket edge from ``low`` to ``high``, as the same doubles the bucket table holds."""
    num, den = Decimal(repr(size)).as_integer_ratio()
    first = round(low * den / num)
    count = int(round((high - low) / size)) + 1
    # index * num / den: the formula of the bucket table, hence identical doubles.
    return [(first + i) * num / den for i in range(count)]


def _dense(
    rows: pl.DataFrame, times: pl.Series, low: float, size: float, n_buckets: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter long rows into [time, bucket] matrices."""
    # Both are microsecond integers underneath; every row time is one of ``times``.
    t_idx = np.searchsorted(times.to_physical().to_numpy(), rows["ts"].to_physical().to_numpy())
    b_idx = np.rint((rows["price_bucket"].to_numpy() - low) / size).astype(np.int64)
    bids = np.zeros((len(times), n_buckets))
    asks = np.zeros((len(times), n_buckets))
    np.add.at(bids, (t_idx, b_idx), rows["bid_size"].to_numpy())
    np.add.at(asks, (t_idx, b_idx), rows["ask_size"].to_numpy())
    return bids, asks


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _render_window(rows: pl.DataFrame, size: float) -> tuple[float, float]:
    """Lowest and highest bucket to draw: all of them, or a window around the median."""
    low = float(rows["price_bucket"].min())
    high = float(rows["price_bucket"].max())
    if (high - low) / size + 1 <= MAX_RENDERED_BUCKETS:
        return low, high
    centre = float(rows["price_bucket"].median())
    half = (MAX_RENDERED_BUCKETS // 2) * size
    return centre - half, centre + half


def render_png(table: pl.DataFrame, symbol: str, window: HourWindow, *, dpi: int = 72) -> bytes:
    """One PNG per symbol: the consolidated heatmap on top, then one panel per exchange.

    Time runs along x (one column per second, from the first to the last
    second with data in the hour), price buckets along y; bids in greens,
    asks in reds, colour on a log scale. Drawn with matplotlib's Agg canvas
    and no pyplot state, so it is safe in any worker thread or process.
    """
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    rows = table.filter(pl.col("symbol") == symbol)
    if rows.is_empty():
        raise ValueError(f"no heatmap rows for {symbol}")
    exchanges = sorted(e for e in rows["exchange"].unique().to_list() if e != CONSOLIDATED)
    panels = [CONSOLIDATED, *exchanges] if (rows["exchange"] == CONSOLIDATED).any() else exchanges
    size = float(rows["bucket_size"][0])
    low, high = _render_window(rows, size)
    n_buckets = int(round((high - low) / size)) + 1
    first, last = rows["ts"].min(), rows["ts"].max()
    seconds = pl.datetime_range(first, last, interval="1s", eager=True, time_zone="UTC").dt.cast_time_unit("us")

    shown = rows.filter((pl.col("price_bucket") >= low) & (pl.col("price_bucket") <= high))
    bid_norm = _log_norm(LogNorm, shown["bid_size"])
    ask_norm = _log_norm(LogNorm, shown["ask_size"])

    height = 1.0 + 2.2 * len(panels)
    fig = Figure(figsize=(11, height))
    FigureCanvasAgg(fig)
    # A fixed layout (no constrained layout): drawing once is most of the cost.
    fig.subplots_adjust(left=0.09, right=0.84, top=1 - 0.35 / height, bottom=0.6 / height, hspace=0.35)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    extent = (
        mdates.date2num(first),
        mdates.date2num(last + timedelta(seconds=1)),
        low - size / 2,
        high + size / 2,
    )
    for ax, exchange in zip(axes, panels):
        bids, asks = _dense(shown.filter(pl.col("exchange") == exchange), seconds, low, size, n_buckets)
        # imshow wants [row = price, column = time]; empty cells stay transparent.
        bid_image = ax.imshow(
            np.ma.masked_less_equal(bids.T, 0), aspect="auto", origin="lower", extent=extent,
            cmap="Greens", norm=bid_norm, interpolation="nearest",
        )
        ask_image = ax.imshow(
            np.ma.masked_less_equal(asks.T, 0), aspect="auto", origin="lower", extent=extent,
            cmap="Reds", norm=ask_norm, interpolation="nearest",
        )
        label = "all exchanges" if exchange == CONSOLIDATED else exchange
        ax.set_title(f"{symbol} - {label}", fontsize=10, loc="left")
        ax.set_ylabel(f"price (bucket {size:g})")
    axes[-1].xaxis_date(tz="UTC")
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=window.start.tzinfo))
    axes[-1].set_xlabel(f"time (UTC), hour {window.date} {window.hour}:00")
    bottom, top = 0.6 / height, 1 - 0.35 / height
    fig.colorbar(bid_image, cax=fig.add_axes((0.86, bottom, 0.015, top - bottom)), label="bid size (log)")
    fig.colorbar(ask_image, cax=fig.add_axes((0.93, bottom, 0.015, top - bottom)), label="ask size (log)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _log_norm(norm_class, sizes: pl.Series):
    """Log colour scale over the positive sizes (a valid scale even if there are none)."""
    positive = sizes.filter(sizes > 0)
    if positive.is_empty():
        return norm_class(vmin=1e-9, vmax=1.0)
    low, high = float(positive.min()), float(positive.max())
    return norm_class(vmin=low, vmax=high if high > low else low * 10)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown embedding a PNG as a data URI (how the Dagster UI shows images)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def load_heatmap_data(
    datasets_root: Path, partition_key: str, symbol: str, exchange: str = CONSOLIDATED
) -> HeatmapData:
    """HeatmapData of one symbol and exchange from the materialized ``heatmap`` asset of an hour."""
    table = read_hour_table(datasets_root, HEATMAP, HourWindow.from_key(partition_key), SCHEMA)
    return heatmap_data(table, symbol, exchange)
