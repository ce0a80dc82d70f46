"""Price buckets and heatmaps, checked against sums recomputed with Decimal."""

from __future__ import annotations

import base64
import statistics
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal

import polars as pl
import pytest

from coby_pipeline.defs.books.assets import heatmap, price_buckets
from coby_pipeline.defs.replay.assets import replay_dataset
from coby_pipeline.lib import datasets
from coby_pipeline.lib.heatmap import CONSOLIDATED, heatmap_data, heatmap_table, load_heatmap_data
from coby_pipeline.lib.hours import HourWindow
from coby_pipeline.lib.price_buckets import SCHEMA as BUCKET_SCHEMA, size_table, with_price_bucket
from streamer.config import get_bucket_size

from .pipeline_data import (  # noqa: F401  (fixtures)
    HOUR_KEY,
    SyntheticHour,
    datasets_root,
    materialization_metadata,
    pipeline_resources,
    raw_tables,
    resources,
    run_assets,
    synthetic_hour,
)

WINDOW = HourWindow.from_key(HOUR_KEY)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _bucket(price: str, size: Decimal) -> Decimal:
    return (Decimal(price) / size).to_integral_value(rounding=ROUND_FLOOR) * size


def expected_sizes(hour: SyntheticHour, configured: dict[str, Decimal]) -> dict[str, Decimal]:
    """Bucket size per symbol, the reference price being the median mid of all snapshots."""
    sizes = {}
    for symbol in hour.books:
        mids = [
            (float(s.bids[0][0]) + float(s.asks[0][0])) / 2 for s in hour.snapshots if s.symbol == symbol
        ]
        sizes[symbol] = get_bucket_size(symbol, statistics.median(mids), configured)
    return sizes


def expected_buckets(hour: SyntheticHour, sizes: dict[str, Decimal]) -> dict[tuple, list[Decimal]]:
    """(second, exchange, symbol, bucket) -> [bid, ask, buy, sell], in exact decimals."""
    last: dict[tuple, object] = {}
    for snap in hour.snapshots:
        key = (_second(snap.local_ts), snap.exchange, snap.symbol)
        if key not in last or snap.local_ts > last[key].local_ts:
            last[key] = snap
    sums: dict[tuple, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 4)
    for (second, exchange, symbol), snap in last.items():
        size = sizes[symbol]
        for column, levels in ((0, snap.bids), (1, snap.asks)):
            for price, qty in levels:
                sums[(second, exchange, symbol, _bucket(price, size))][column] += Decimal(qty)
    for trade in hour.trades:
        size = sizes[trade.symbol]
        key = (_second(trade.local_ts), trade.exchange, trade.symbol, _bucket(trade.price, size))
        sums[key][2 if trade.side == "buy" else 3] += Decimal(trade.size)
    return sums


def _as_dict(table: pl.DataFrame) -> dict[tuple, tuple]:
    return {
        (r["ts_second"], r["exchange"], r["symbol"], r["price_bucket"]): (
            r["bid_size"], r["ask_size"], r["buy_volume"], r["sell_volume"], r["bucket_size"]
        )
        for r in table.iter_rows(named=True)
    }


def test_price_buckets_equal_independently_computed_sums(synthetic_hour, resources, datasets_root):
    result = run_assets([replay_dataset, price_buckets], resources)
    assert result.success
    table = pl.read_parquet(datasets.hour_table(datasets_root, datasets.PRICE_BUCKETS, WINDOW))
    assert table.schema == BUCKET_SCHEMA

    configured = resources["analytics"].configured_bucket_sizes()
    sizes = expected_sizes(synthetic_hour, configured)
    assert sizes["BTC-USDT"] == Decimal("10")  # configured
    assert sizes["SOL-USDT"] == Decimal("0.1")  # derived from a ~151 mid
    metadata = materialization_metadata(result, "price_buckets")
    assert metadata["bucket_sizes"] == {s: str(v) for s, v in sizes.items()}
    assert metadata["dagster/row_count"] == table.height

    expected = expected_buckets(synthetic_hour, sizes)
    got = _as_dict(table)
    # Bucket edges are exactly the decimal edges (151.3, not 151.29999999999998).
    assert set(got) == {(t, e, s, float(b)) for t, e, s, b in expected}
    for (t, e, s, b), sums in expected.items():
        values = got[(t, e, s, float(b))]
        assert values[:4] == pytest.approx([float(x) for x in sums], rel=1e-12, abs=1e-12)
        assert values[4] == float(sizes[s])
    assert table["ts_second"].is_sorted()


def test_configured_bucket_size_applies(settings, synthetic_hour, datasets_root):
    resources = pipeline_resources(settings, datasets_root, bucket_sizes={"BTC": "25", "SOL": "0.5"})
    assert run_assets([replay_dataset, price_buckets], resources).success
    table = pl.read_parquet(datasets.hour_table(datasets_root, datasets.PRICE_BUCKETS, WINDOW))
    sizes = {"BTC-USDT": Decimal("25"), "SOL-USDT": Decimal("0.5")}
    expected = expected_buckets(synthetic_hour, sizes)
    assert set(_as_dict(table)) == {(t, e, s, float(b)) for t, e, s, b in expected}
    for symbol, size in sizes.items():
        edges = table.filter(pl.col("symbol") == symbol)["price_bucket"].to_list()
        assert all((Decimal(repr(edge)) / size) % 1 == 0 for edge in edges)


def test_bucket_edges_are_exact_for_decimal_prices():
    # 60.15 / 0.05 is 1202.9999999999998 in binary floating point: the edge
    # must still be 60.15 (the price sits exactly on it), and 60.1499 below it.
    prices = ["60.15", "60.1499", "0.3", "0.29999", "64010", "64009.99", "1e-7"]
    sizes = {"A-USD": Decimal("0.05"), "B-USD": Decimal("0.1"), "C-USD": Decimal("10"), "D-USD": Decimal("0.00000005")}
    rows = [(symbol, float(p)) for p in prices for symbol in sizes]
    frame = pl.LazyFrame(rows, schema={"symbol": pl.String, "price": pl.Float64}, orient="row")
    got = with_price_bucket(frame, size_table(sizes)).collect()
    for symbol, price, bucket in got.select("symbol", "price", "price_bucket").iter_rows():
        text = next(p for p in prices if float(p) == price)
        assert bucket == float(_bucket(text, sizes[symbol])), (symbol, text)


def test_heatmap_table_image_and_heatmap_data(synthetic_hour, resources, datasets_root):
    result = run_assets([replay_dataset, price_buckets, heatmap], resources)
    assert result.success
    buckets = pl.read_parquet(datasets.hour_table(datasets_root, datasets.PRICE_BUCKETS, WINDOW))
    table = pl.read_parquet(datasets.hour_table(datasets_root, datasets.HEATMAP, WINDOW))
    assert set(table.columns) >= {"ts", "symbol", "exchange", "price_bucket", "bid_size", "ask_size"}

    # Per exchange: exactly the bucket rows with resting size.
    per_exchange = table.filter(pl.col("exchange") != CONSOLIDATED).sort("ts", "exchange", "symbol", "price_bucket")
    resting = (
        buckets.filter((pl.col("bid_size") > 0) | (pl.col("ask_size") > 0))
        .select(pl.col("ts_second").alias("ts"), "exchange", "symbol", "price_bucket", "bid_size", "ask_size")
        .sort("ts", "exchange", "symbol", "price_bucket")
    )
    assert per_exchange.select(resting.columns).equals(resting)

    # Consolidated: every exchange snapshots every second here, so "all" is the plain sum.
    summed = (
        resting.group_by("ts", "symbol", "price_bucket")
        .agg(pl.col("bid_size").sum(), pl.col("ask_size").sum())
        .sort("ts", "symbol", "price_bucket")
    )
    consolidated = table.filter(pl.col("exchange") == CONSOLIDATED).sort("ts", "symbol", "price_bucket")
    keys = ["ts", "symbol", "price_bucket"]
    assert consolidated.select(keys).equals(summed.select(keys))
    for column in ("bid_size", "ask_size"):
        assert consolidated[column].to_list() == pytest.approx(summed[column].to_list(), rel=1e-12)

    metadata = materialization_metadata(result, "heatmap")
    assert set(metadata["images"]) == set(synthetic_hour.books)
    for symbol, path in metadata["images"].items():
        png = open(path, "rb").read()
        assert png.startswith(PNG_SIGNATURE)
        # The UI shows the same image, inline as a data URI.
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in metadata["heatmap"]

    data = load_heatmap_data(datasets_root, HOUR_KEY, "BTC-USDT", "okx")
    rows = table.filter((pl.col("symbol") == "BTC-USDT") & (pl.col("exchange") == "okx"))
    assert data.shape == (rows["ts"].n_unique(), len(data.price_buckets))
    assert data.bucket_size == 10.0
    assert data.price_buckets == sorted(data.price_buckets)
    assert data.price_buckets[0] == rows["price_bucket"].min() and data.price_buckets[-1] == rows["price_bucket"].max()
    for row in rows.sample(20, seed=1).iter_rows(named=True):
        t = data.times.index(row["ts"])
        b = data.price_buckets.index(row["price_bucket"])
        assert data.bid_size[t][b] == row["bid_size"]
        assert data.ask_size[t][b] == row["ask_size"]
    assert sum(map(sum, data.bid_size)) == pytest.approx(rows["bid_size"].sum())


def test_consolidated_heatmap_carries_a_late_exchange_forward():
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = [
        # binance snapshots every second; okx misses second 1 and stops after second 2.
        (t0, "binance", 1.0), (t0 + timedelta(seconds=1), "binance", 2.0), (t0 + timedelta(seconds=2), "binance", 3.0),
        (t0 + timedelta(seconds=9), "binance", 4.0),
        (t0, "okx", 10.0), (t0 + timedelta(seconds=2), "okx", 20.0),
    ]
    frame = pl.DataFrame(
        [(t, e, "BTC-USDT", 10.0, 100.0, size, 0.0, 0.0, 0.0) for t, e, size in rows],
        schema=BUCKET_SCHEMA,
        orient="row",
    )
    table = heatmap_table(frame.lazy(), stale_after=timedelta(seconds=5))
    consolidated = dict(
        table.filter(pl.col("exchange") == CONSOLIDATED).select("ts", "bid_size").iter_rows()
    )
    assert consolidated == {
        t0: 11.0,
        t0 + timedelta(seconds=1): 12.0,  # okx's second-0 book carried forward
        t0 + timedelta(seconds=2): 23.0,
        t0 + timedelta(seconds=9): 4.0,  # okx's book is 7 s old: too stale to count
    }
    data = heatmap_data(table, "BTC-USDT")
    assert data.shape == (4, 1) and [row[0] for row in data.bid_size] == [11.0, 12.0, 23.0, 4.0]


def test_heatmap_data_refuses_a_huge_matrix_unless_given_a_range():
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    # One stray level 5,000 buckets away from the rest.
    rows = [(t0, "okx", "SOL-USDT", 0.1, price, 1.0, 0.0, 0.0, 0.0) for price in (150.0, 150.1, 650.1)]
    table = heatmap_table(pl.DataFrame(rows, schema=BUCKET_SCHEMA, orient="row").lazy(), stale_after=timedelta(seconds=5))
    with pytest.raises(ValueError, match="price_range"):
        heatmap_data(table, "SOL-USDT", "okx", max_buckets=1000)
    data = heatmap_data(table, "SOL-USDT", "okx", price_range=(149.0, 151.0))
    assert data.price_buckets == [150.0, 150.1] and data.bid_size == [[1.0, 1.0]]


def test_empty_hour_gives_empty_tables(raw_tables, resources, datasets_root):
    result = run_assets([replay_dataset, price_buckets, heatmap], resources)
    assert result.success
    assert materialization_metadata(result, "price_buckets")["dagster/row_count"] == 0
    assert materialization_metadata(result, "heatmap")["dagster/row_count"] == 0
    assert pl.read_parquet(datasets.hour_table(datasets_root, datasets.PRICE_BUCKETS, WINDOW)).schema == BUCKET_SCHEMA
