"""The ``pipeline`` benchmark suite: the Dagster assets' computations on a synthetic hour.

What it measures (one figure each, median of ``runs`` interleaved runs, so
drift on the machine hits every case alike and ratios compare like with like):

- ``pipeline.price_buckets``: the asset's own lazy query
  (:func:`coby_pipeline.lib.price_buckets.price_buckets_query`) over the
  hour's replay Parquet, input rows (snapshot levels + trades) per second;
  bucket sizes are resolved before timing, as the asset does before its query.
  Timed with the query's own profile scan (the times, names and price ranges
  its integer keys are sized from), which the asset gets from its first scan.
- ``pipeline.price_buckets_asset``: :func:`compute_price_buckets`, all the
  asset computes: one scan for the symbols, the reference prices that size the
  buckets of unconfigured symbols and the query's profile, then the query.
- ``pipeline.price_buckets_duckdb``: the same computation (last snapshot of
  each second, the same exact bucket-edge rule, the trade volumes, the full
  join and the sort) as one DuckDB SQL query over the same files.
- ``pipeline.polars_groupby_floor``: a bare Polars group-by over the same
  files (bucket and second per row, summed size per side): the floor the
  asset's query is compared with.
- ``pipeline.heatmap``: :func:`coby_pipeline.lib.heatmap.heatmap_table` from
  the hour's price-bucket table (read from Parquet, as the asset does; the
  PNG rendering is not included), input bucket rows per second.
- ``pipeline.quality_scores``: :func:`coby_pipeline.lib.quality.quality_scores`
  over the hour's snapshots, updates and trades, input rows per second.
- ``pipeline.replay_write``: :func:`coby_pipeline.lib.replay.write_hour` (the
  ``replay_dataset`` asset's writer: sort, split per exchange/symbol, zstd
  Parquet, atomic rename) of the hour's Arrow tables, rows per second.
- ``pipeline.duckdb_day``: one aggregate DuckDB query over a day (24
  synthetic hours) of replay ``book_snapshots``, rows scanned per second.
- ``replay.read_back``: events per second read back from the hour's replay
  Parquet into Python in time order. An *event* is one row of
  ``book_updates`` (a level change) or ``trades`` (a trade), delivered as a
  Python tuple ``(kind, local_ts_us, exchange, symbol, side, price, size)``,
  merged across every exchange and symbol in ``local_ts`` order.

The parquet files are read from the page cache after the first run (the
data was just written): these are compute rates, not disk rates.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import duckdb
import polars as pl
import pyarrow as pa

from coby_pipeline.lib import datasets, replay
from coby_pipeline.lib.heatmap import heatmap_table
from coby_pipeline.lib.hours import HourWindow
from coby_pipeline.lib.parquet_io import write_polars_atomic
from coby_pipeline.lib.price_buckets import (
    SCHEMA as BUCKET_SCHEMA,
    bucket_sizes,
    compute_price_buckets,
    price_buckets_query,
    reference_prices,
    size_table,
    symbols_of,
)
from coby_pipeline.lib.quality import quality_scores
from streamer.config import DEFAULT_BUCKET_SIZES

from .e2e.figures import figure, figure_line, write_results
from .pipeline_data import HourShape, feed_events, synthetic_hour

SUITE = "pipeline"
DEFAULT_ROWS = 10_000_000
QUICK_ROWS = 200_000
#: Snapshot rows per hour of the day-long dataset (24 of them).
DAY_HOUR_ROWS = 1_000_000
QUICK_DAY_HOUR_ROWS = 20_000
HOUR_KEY = "2025-03-01-00:00"
#: Seconds an exchange's last snapshot is carried in the consolidated heatmap
#: (the asset's default: 3 x a 1 s snapshot interval, at least 5).
STALE_AFTER = timedelta(seconds=5)
SNAPSHOT_INTERVAL_S = 1.0


@dataclass
class Workspace:
    """The datasets written once and read by every measurement."""

    root: Path
    window: HourWindow
    tables: dict[str, pa.Table]
    sizes: dict[str, Decimal]
    events: pl.DataFrame

    def files(self, kind: str) -> list[Path]:
        return replay.hour_files(self.root, kind, self.window)

    def rows(self, *kinds: str) -> int:
        return sum(self.tables[kind].num_rows for kind in kinds)


# ---------------------------------------------------------------------------
# The computations
# ---------------------------------------------------------------------------


def run_price_buckets(ws: Workspace) -> pl.DataFrame:
    """The asset's query, exactly as the asset runs it (sizes resolved before)."""
    snapshots = replay.scan_hour(ws.root, "book_snapshots", ws.window)
    trades = replay.scan_hour(ws.root, "trades", ws.window)
    return price_buckets_query(snapshots, trades, ws.sizes).collect().cast(dict(BUCKET_SCHEMA))


#: The bucket-edge rule of ``with_price_bucket`` as a DuckDB macro: the
#: quotient snaps to an integer within 1e-9 relative, else floors; then
#: ``index * num / den`` gives the same double as the Polars query.
BUCKET_EDGE_MACRO = """
CREATE OR REPLACE MACRO bench_bucket_edge(price, num, den) AS
    (CASE WHEN abs(price * den / num - round(price * den / num))
               <= 1e-9 * greatest(abs(round(price * den / num)), 1.0)
          THEN round(price * den / num) ELSE floor(price * den / num) END) * num / den
"""

#: The price-bucket table as one DuckDB query (same rules as the Polars query).
#: ``$snapshots`` and ``$trades`` are the file lists; ``bench_bucket_sizes`` is a
#: registered Arrow table (symbol, bucket_size, num, den).
PRICE_BUCKETS_SQL = """
WITH snap AS (
    SELECT *, date_trunc('second', local_ts) AS ts_second FROM read_parquet($snapshots)
),
last_snap AS (
    SELECT * FROM snap
    QUALIFY local_ts = max(local_ts) OVER (PARTITION BY exchange, symbol, ts_second)
),
book AS (
    SELECT ts_second, exchange, symbol, bucket_size, bench_bucket_edge(price, num, den) AS price_bucket,
           sum(size) FILTER (WHERE side = 'bid') AS bid_size,
           sum(size) FILTER (WHERE side = 'ask') AS ask_size
    FROM last_snap JOIN bench_bucket_sizes USING (symbol)
    GROUP BY ALL
),
traded AS (
    SELECT date_trunc('second', local_ts) AS ts_second, exchange, symbol, bucket_size,
           bench_bucket_edge(price, num, den) AS price_bucket,
           sum(size) FILTER (WHERE side = 'buy') AS buy_volume,
           sum(size) FILTER (WHERE side = 'sell') AS sell_volume
    FROM read_parquet($trades) JOIN bench_bucket_sizes USING (symbol)
    GROUP BY ALL
)
SELECT ts_second, exchange, symbol, bucket_size, price_bucket,
       coalesce(bid_size, 0.0) AS bid_size, coalesce(ask_size, 0.0) AS ask_size,
       coalesce(buy_volume, 0.0) AS buy_volume, coalesce(sell_volume, 0.0) AS sell_volume
FROM book FULL JOIN traded USING (ts_second, exchange, symbol, bucket_size, price_bucket)
ORDER BY ts_second, exchange, symbol, bucket_size, price_bucket
"""

#: An aggregate over a day of replay ``book_snapshots`` (``$files``: a glob).
DUCKDB_DAY_SQL = """
SELECT exchange, symbol, hour, side,
       count(*) AS levels, sum(size) AS total_size, min(price) AS low, max(price) AS high,
       count(DISTINCT local_ts) AS snapshots
FROM read_parquet($files, hive_partitioning = true)
GROUP BY ALL
ORDER BY ALL
"""


def duckdb_connection(sizes: dict[str, Decimal]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with the bucket macro and the bucket-size table."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(BUCKET_EDGE_MACRO)
    # The same exact fractions the Polars query uses (size_table), so both compute the same edges.
    table = size_table(sizes).rename({"_num": "num", "_den": "den"}).collect().to_arrow()
    con.register("bench_bucket_sizes", table)
    return con


def run_price_buckets_duckdb(ws: Workspace, con: duckdb.DuckDBPyConnection) -> pa.Table:
    files = {kind: [p.as_posix() for p in ws.files(kind)] for kind in ("book_snapshots", "trades")}
    return con.sql(PRICE_BUCKETS_SQL, params={"snapshots": files["book_snapshots"], "trades": files["trades"]}).to_arrow_table()


def run_duckdb_day(con: duckdb.DuckDBPyConnection, day_root: Path) -> pa.Table:
    glob = (replay.replay_root(day_root) / "book_snapshots" / "**" / "*.parquet").as_posix()
    return con.sql(DUCKDB_DAY_SQL, params={"files": glob}).to_arrow_table()


def run_polars_floor(ws: Workspace) -> list[pl.DataFrame]:
    """The least a price-bucket table could cost: one group-by per input, nothing else."""
    widths = {symbol: float(size) for symbol, size in ws.sizes.items()}

    def grouped(kind: str) -> pl.LazyFrame:
        width = pl.col("symbol").replace_strict(widths, return_dtype=pl.Float64)
        return (
            pl.scan_parquet(ws.files(kind), hive_partitioning=False)
            .with_columns(
                ts_second=pl.col("local_ts").dt.truncate("1s"),
                price_bucket=(pl.col("price") / width).floor() * width,
            )
            .group_by("exchange", "symbol", "ts_second", "price_bucket", "side")
            .agg(pl.col("size").sum())
        )

    return pl.collect_all([grouped("book_snapshots"), grouped("trades")])


def run_heatmap(ws: Workspace) -> pl.DataFrame:
    buckets = datasets.read_hour_table(ws.root, datasets.PRICE_BUCKETS, ws.window, BUCKET_SCHEMA)
    return heatmap_table(buckets.lazy(), stale_after=STALE_AFTER)


def run_quality(ws: Workspace) -> pl.DataFrame:
    return quality_scores(
        window=ws.window,
        snapshots=replay.scan_hour(ws.root, "book_snapshots", ws.window),
        updates=replay.scan_hour(ws.root, "book_updates", ws.window),
        trades=replay.scan_hour(ws.root, "trades", ws.window),
        feed_events=ws.events,
        state_at_start={},
        snapshot_interval=SNAPSHOT_INTERVAL_S,
    )


def run_replay_write(ws: Workspace, target: Path) -> int:
    written = replay.write_hour(target, ws.window, ws.tables)
    return sum(written.rows.values())


READ_BACK_COLUMNS = ["local_ts", "exchange", "symbol", "side", "price", "size"]


def replay_events(root: Path, window: HourWindow, *, batch_rows: int = 65_536):
    """Yield the hour's book updates and trades as tuples, merged in ``local_ts`` order.

    ``(kind, local_ts_us, exchange, symbol, side, price, size)``; ties keep
    updates before trades and each file's own order (the sort is stable).
    Timestamps stay integer microseconds: building a datetime per event would
    cost more than everything else together.
    """
    frames = []
    for kind in ("book_updates", "trades"):
        frames.append(
            replay.scan_hour(root, kind, window)
            .select(READ_BACK_COLUMNS)
            .with_columns(pl.lit(kind).alias("kind"), pl.col("local_ts").dt.epoch("us"))
        )
    merged = pl.concat(frames).sort("local_ts", maintain_order=True).collect()
    ordered = merged.select("kind", *READ_BACK_COLUMNS).to_arrow()
    for batch in ordered.to_batches(max_chunksize=batch_rows):
        yield from zip(*(column.to_pylist() for column in batch.columns))


def run_read_back(ws: Workspace) -> int:
    count = 0
    for _ in replay_events(ws.root, ws.window):
        count += 1
    return count


# ---------------------------------------------------------------------------
# Setup and the run
# ---------------------------------------------------------------------------


def prepare(root: Path, rows: int, seed: int = 7) -> Workspace:
    """Write the synthetic hour (replay layout) and its price-bucket table."""
    window = HourWindow.from_key(HOUR_KEY)
    shape = HourShape.for_rows(rows)
    tables = synthetic_hour(window, shape, seed=seed)
    replay.write_hour(root, window, tables)
    snapshots = replay.scan_hour(root, "book_snapshots", window)
    trades = replay.scan_hour(root, "trades", window)
    # The default sizes (BTC 10, ETH 1, others from the price), whatever the environment says.
    sizes = bucket_sizes(symbols_of(snapshots, trades), DEFAULT_BUCKET_SIZES, reference_prices(snapshots, trades))
    events = pl.from_arrow(feed_events(window, shape))
    assert isinstance(events, pl.DataFrame)
    ws = Workspace(root, window, tables, sizes, events)
    write_polars_atomic(run_price_buckets(ws), datasets.hour_table(root, datasets.PRICE_BUCKETS, window))
    return ws


def prepare_day(root: Path, hour_rows: int) -> int:
    """24 synthetic hours of ``book_snapshots`` in the replay layout; total rows."""
    first = HourWindow.from_key(HOUR_KEY)
    shape = HourShape.for_rows(hour_rows)
    total = 0
    for hour in range(24):
        start = first.start + timedelta(hours=hour)
        window = HourWindow(start, start + timedelta(hours=1))
        tables = synthetic_hour(window, shape, seed=100 + hour)
        total += replay.write_hour(root, window, {"book_snapshots": tables["book_snapshots"]}).rows["book_snapshots"]
    return total


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def run(
    *,
    runs: int = 5,
    rows: int = DEFAULT_ROWS,
    day_hour_rows: int = DAY_HOUR_ROWS,
    command: str = "coby bench pipeline --json",
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """Measure every figure of the suite; returns the figures (see the module docstring)."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    base = Path(tempfile.mkdtemp(prefix="coby-bench-pipeline-", dir=workdir))
    try:
        return _measure(base, runs=runs, rows=rows, day_hour_rows=day_hour_rows, command=command, progress=progress)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _measure(base: Path, *, runs: int, rows: int, day_hour_rows: int, command: str, progress) -> list[dict[str, Any]]:
    progress(f"writing a synthetic hour of {rows} snapshot rows")
    ws = prepare(base / "hour", rows)
    snapshot_rows = ws.rows("book_snapshots")
    bucket_input = ws.rows("book_snapshots", "trades")
    quality_input = ws.rows("book_snapshots", "book_updates", "trades")
    read_back_events = ws.rows("book_updates", "trades")
    bucket_rows = datasets.read_hour_table(ws.root, datasets.PRICE_BUCKETS, ws.window, BUCKET_SCHEMA).height
    con = duckdb_connection(ws.sizes)
    check = _agreement(run_price_buckets(ws), run_price_buckets_duckdb(ws, con))
    ordered = _read_back_in_order(ws)

    cases: dict[str, Callable[[], Any]] = {
        "price_buckets": lambda: run_price_buckets(ws),
        "price_buckets_asset": lambda: compute_price_buckets(
            replay.scan_hour(ws.root, "book_snapshots", ws.window),
            replay.scan_hour(ws.root, "trades", ws.window),
            DEFAULT_BUCKET_SIZES,
        ),
        "price_buckets_duckdb": lambda: run_price_buckets_duckdb(ws, con),
        "polars_groupby_floor": lambda: run_polars_floor(ws),
        "heatmap": lambda: run_heatmap(ws),
        "quality_scores": lambda: run_quality(ws),
        "read_back": lambda: run_read_back(ws),
        "replay_write": lambda: run_replay_write(ws, base / "write"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for attempt in range(runs):
        progress(f"run {attempt + 1}/{runs}")
        for name, function in cases.items():  # interleaved: drift hits every case alike
            elapsed, result = _timed(function)
            seconds[name].append(elapsed)
            if name == "read_back" and result != read_back_events:
                raise AssertionError(f"read back {result} events, expected {read_back_events}")

    progress(f"writing a synthetic day of 24 x {day_hour_rows} snapshot rows")
    day_rows = prepare_day(base / "day", day_hour_rows)
    day_seconds = [_timed(lambda: run_duckdb_day(con, base / "day"))[0] for _ in range(runs)]
    con.close()

    def rate(name: str, count: int) -> list[float]:
        return [count / s for s in seconds[name]]

    hour = {"snapshot_rows": snapshot_rows, "trades": ws.rows("trades"), "book_updates": ws.rows("book_updates"),
            "books": HourShape.for_rows(rows).books}
    figures = [
        figure("pipeline.price_buckets", rate("price_buckets", bucket_input), "rows/s", command,
               input_rows=bucket_input, output_rows=bucket_rows, hour=hour,
               what="price_buckets_query (the asset's query, with its profile scan) over the hour's replay Parquet"),
        figure("pipeline.price_buckets_asset", rate("price_buckets_asset", bucket_input), "rows/s", command,
               input_rows=bucket_input,
               what="compute_price_buckets (what the asset calls): one scan for symbols, reference prices and "
                    "the key profile, then the query"),
        figure("pipeline.price_buckets_duckdb", rate("price_buckets_duckdb", bucket_input), "rows/s", command,
               input_rows=bucket_input, agreement=check,
               what="the same price-bucket computation as one DuckDB SQL query over the same Parquet"),
        figure("pipeline.polars_groupby_floor", rate("polars_groupby_floor", bucket_input), "rows/s", command,
               input_rows=bucket_input,
               what="bare Polars group-by (second, bucket, side; sum size) over the same Parquet"),
        figure("pipeline.heatmap", rate("heatmap", bucket_rows), "rows/s", command, input_rows=bucket_rows,
               what="heatmap_table from the hour's price-bucket Parquet (PNG rendering excluded)"),
        figure("pipeline.quality_scores", rate("quality_scores", quality_input), "rows/s", command,
               input_rows=quality_input, what="quality_scores over the hour's snapshots, updates and trades"),
        figure("pipeline.replay_write", rate("replay_write", quality_input), "rows/s", command,
               input_rows=quality_input, what="replay.write_hour (replay_dataset's writer) from Arrow to Hive Parquet"),
        figure("pipeline.duckdb_day", [day_rows / s for s in day_seconds], "rows/s", command, input_rows=day_rows,
               what="one aggregate DuckDB query over 24 hours of replay book_snapshots"),
        figure("replay.read_back", rate("read_back", read_back_events), "events/s", command,
               events=read_back_events, in_time_order=ordered,
               what="book_updates + trades of the hour as Python tuples in local_ts order"),
    ]
    # Ratios per run (each pair measured back to back), then their median.
    figures += [
        figure("pipeline.price_buckets_vs_polars_floor",
               [f / p for f, p in zip(seconds["polars_groupby_floor"], seconds["price_buckets"])], "ratio", command,
               target=">= 0.70", what="price_buckets rate / bare Polars group-by rate"),
        figure("pipeline.price_buckets_vs_duckdb",
               [d / p for d, p in zip(seconds["price_buckets_duckdb"], seconds["price_buckets"])], "ratio", command,
               target="> 1.0", what="price_buckets rate / DuckDB SQL rate"),
    ]
    load = os.getloadavg()
    for item in figures:
        item["loadavg_after"] = [round(x, 2) for x in load]
    return figures


def _read_back_in_order(ws: Workspace) -> bool:
    """Did the read-back yield every event, in non-decreasing ``local_ts``? (not timed)"""
    previous, count = -1, 0
    for event in replay_events(ws.root, ws.window):
        if event[1] < previous:
            return False
        previous, count = event[1], count + 1
    return count == ws.rows("book_updates", "trades")


def _agreement(polars_table: pl.DataFrame, duckdb_table: pa.Table) -> dict[str, Any]:
    """Do the Polars asset query and the DuckDB query produce the same table? (not timed)"""
    other = pl.from_arrow(duckdb_table)
    assert isinstance(other, pl.DataFrame)
    other = other.with_columns(pl.col("ts_second").dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    keys = ["ts_second", "exchange", "symbol", "bucket_size", "price_bucket"]
    joined = polars_table.join(other, on=keys, how="full", coalesce=True, suffix="_duckdb")
    matched = joined.drop_nulls(["bid_size", "bid_size_duckdb"]).height
    tolerance = 1e-9
    same = all(
        joined.select(((pl.col(c) - pl.col(f"{c}_duckdb")).abs() <= tolerance * pl.col(c).abs().clip(1.0)).all()).item()
        for c in ("bid_size", "ask_size", "buy_volume", "sell_volume")
    )
    return {"polars_rows": polars_table.height, "duckdb_rows": other.height, "matched_rows": matched,
            "same_values": bool(same and matched == polars_table.height == other.height)}


# ---------------------------------------------------------------------------
# ``coby bench pipeline``
# ---------------------------------------------------------------------------


def main(args) -> int:
    """``coby bench pipeline [--json] [--runs N] [--quick] [--rows N] [--results DIR]``.

    Prints one JSON object per figure (``--json``: nothing else on stdout) and
    writes them to ``{results}/pipeline.jsonl`` (``pipeline.quick.jsonl`` with
    ``--quick``, so a quick check never replaces the recorded figures).
    """
    import sys

    quick = bool(getattr(args, "quick", False))
    given_rows = getattr(args, "rows", None)
    rows = given_rows if given_rows is not None else (QUICK_ROWS if quick else DEFAULT_ROWS)
    runs = getattr(args, "runs", None)
    runs = 5 if runs is None else runs
    command = "coby bench pipeline --json" + (" --quick" if quick else "") + (
        f" --runs {runs}" if runs != 5 else "") + (f" --rows {rows}" if given_rows is not None else "")
    try:
        figures = run(
            runs=runs,
            rows=rows,
            day_hour_rows=QUICK_DAY_HOUR_ROWS if quick else DAY_HOUR_ROWS,
            command=command,
            progress=lambda message: print(f"bench pipeline: {message}", file=sys.stderr, flush=True),
        )
    except ValueError as exc:  # --runs or --rows out of range: say so, no traceback
        print(f"coby bench pipeline: {exc}", file=sys.stderr)
        return 2
    write_results(figures, getattr(args, "results", None), SUITE, quick)
    for item in figures:
        print(figure_line(item, bool(getattr(args, "json", False))))
    return 0
