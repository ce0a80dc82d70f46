"""Order-book analytics: price buckets and liquidity heatmaps."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from ...lib import datasets, heatmap as heatmaps, replay
from ...lib.hours import HourWindow
from ...lib.parquet_io import hive_value, remove_stale, write_bytes_atomic, write_polars_atomic
from ...lib.price_buckets import SCHEMA as BUCKET_SCHEMA, compute_price_buckets
from ..partitions import hourly_partitions
from ..replay.assets import replay_dataset
from ..resources import AnalyticsSettings, DatasetStorage

BOOKS_GROUP = "books"


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[replay_dataset],
    group_name=BOOKS_GROUP,
    kinds={"polars", "parquet"},
)
def price_buckets(
    context: dg.AssetExecutionContext, storage: DatasetStorage, analytics: AnalyticsSettings
) -> dg.MaterializeResult:
    """Resting bid/ask size and traded buy/sell volume per exchange, symbol, second and price bucket.

    Resting size comes from the last book snapshot of each second, traded volume
    from the trades of that second (taker side). Bucket = floor(price / size) * size,
    size from `get_bucket_size` (BTC 10, ETH 1, `<BASE>_BUCKET_SIZE`, else about
    1/1000 of the hour's median mid price). One lazy Polars query over the hour's
    replay Parquet. Table: `{datasets_root}/price_buckets/date=YYYY-MM-DD/hour=HH/part-0.parquet`
    with columns ts_second, exchange, symbol, bucket_size, price_bucket, bid_size,
    ask_size, buy_volume, sell_volume.
    """
    window = HourWindow.from_bounds(*context.partition_time_window)
    root = storage.path
    table, sizes = compute_price_buckets(
        replay.scan_hour(root, "book_snapshots", window),
        replay.scan_hour(root, "trades", window),
        analytics.configured_bucket_sizes(),
    )
    target = write_polars_atomic(table, datasets.hour_table(root, datasets.PRICE_BUCKETS, window))
    remove_stale(target.parent, {target}, "*.parquet")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(table.height),
            "path": dg.MetadataValue.path(str(target)),
            "bucket_sizes": dg.MetadataValue.json({s: str(v) for s, v in sizes.items()}),
            "preview": dg.MetadataValue.md(datasets.markdown_table(table, max_rows=10)),
        }
    )


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[price_buckets],
    group_name=BOOKS_GROUP,
    kinds={"polars", "parquet", "matplotlib"},
)
def heatmap(
    context: dg.AssetExecutionContext, storage: DatasetStorage, analytics: AnalyticsSettings
) -> dg.MaterializeResult:
    """Liquidity heatmap per symbol: resting bid and ask size over time and price bucket.

    Per exchange and consolidated across exchanges (exchange = `all`, each
    exchange's latest snapshot carried forward a few seconds). Stored as a long
    table (ts, symbol, exchange, bucket_size, price_bucket, bid_size, ask_size) in
    `{datasets_root}/heatmap/date=YYYY-MM-DD/hour=HH/part-0.parquet` and drawn as
    one PNG per symbol next to it (bids green, asks red, log colour scale).
    """
    window = HourWindow.from_bounds(*context.partition_time_window)
    root = storage.path
    buckets = datasets.read_hour_table(root, datasets.PRICE_BUCKETS, window, BUCKET_SCHEMA)
    table = heatmaps.heatmap_table(
        buckets.lazy(), stale_after=timedelta(seconds=analytics.heatmap_stale_after_s())
    )
    folder = datasets.hour_folder(root, datasets.HEATMAP, window)
    target = write_polars_atomic(table, folder / datasets.PART_NAME)
    images: dict[str, Path] = {}
    markdown: list[str] = []
    for symbol in table["symbol"].unique().sort().to_list():
        png = heatmaps.render_png(table, symbol, window)
        images[symbol] = write_bytes_atomic(png, folder / f"heatmap-{hive_value(symbol, 'symbol')}.png")
        markdown.append(f"### {symbol}\n\n" + heatmaps.png_markdown(png, f"{symbol} liquidity heatmap"))
    # Images of symbols no longer in this hour (re-materialized with less data).
    remove_stale(folder, set(images.values()), "heatmap-*.png")
    remove_stale(folder, {target}, "*.parquet")
    consolidated = table.filter(pl.col("exchange") == heatmaps.CONSOLIDATED)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(table.height),
            "path": dg.MetadataValue.path(str(target)),
            "images": dg.MetadataValue.json({symbol: str(path) for symbol, path in images.items()}),
            "symbols": dg.MetadataValue.int(len(images)),
            "consolidated_rows": dg.MetadataValue.int(consolidated.height),
            "heatmap": dg.MetadataValue.md("\n\n".join(markdown) if markdown else "No book snapshots in this hour."),
        }
    )
