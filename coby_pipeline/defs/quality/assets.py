"""Feed quality per exchange, symbol and hour."""

import dagster as dg
import polars as pl

from streamer.contract import FEED_EVENTS

from ...lib import datasets, replay
from ...lib.hours import HourWindow
from ...lib.parquet_io import remove_stale, write_polars_atomic
from ...lib.pg_extract import connection_state_before, read_hour
from ...lib.quality import quality_scores as compute_quality_scores
from ..partitions import hourly_partitions
from ..raw.assets import raw_key
from ..replay.assets import replay_dataset
from ..resources import AnalyticsSettings, CobyDatabase, DatasetStorage

QUALITY_GROUP = "quality"


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[replay_dataset, raw_key(FEED_EVENTS)],
    group_name=QUALITY_GROUP,
    kinds={"polars", "parquet"},
)
def quality_scores(
    context: dg.AssetExecutionContext,
    database: CobyDatabase,
    storage: DatasetStorage,
    analytics: AnalyticsSettings,
) -> dg.MaterializeResult:
    """Data quality per exchange, symbol and hour, with a 0-100 score.

    Snapshot coverage (distinct snapshots / expected snapshots over the seconds
    the connection was up), gap, resync and checksum-failure counts (feed
    events), disconnects, crossed or locked books (best bid >= best ask in a
    snapshot) and exchange-to-local latency p50/p99 in ms (book updates and
    trades carrying an exchange timestamp, one sample per message).

    An exchange split over several connections (shards) counts as connected
    only while all of its shards are up; its disconnects are those of all
    its shards.

    score = 100 * coverage - 10 * gaps - 10 * checksum_failed - 5 * resyncs
    - 5 * disconnects - (25 if any crossed book) - min(10, max(0, (p99_ms - 1000) / 100)),
    clipped to 0-100.

    Table: `{datasets_root}/quality_scores/date=YYYY-MM-DD/hour=HH/part-0.parquet`.
    """
    window = HourWindow.from_bounds(*context.partition_time_window)
    root = storage.path
    with database.connect() as conn:
        events = pl.from_arrow(read_hour(conn, database.schema_name, FEED_EVENTS, window))
        state_at_start = connection_state_before(conn, database.schema_name, window)
    assert isinstance(events, pl.DataFrame)
    table = compute_quality_scores(
        window=window,
        snapshots=replay.scan_hour(root, "book_snapshots", window),
        updates=replay.scan_hour(root, "book_updates", window),
        trades=replay.scan_hour(root, "trades", window),
        feed_events=events,
        state_at_start=state_at_start,
        snapshot_interval=analytics.snapshot_interval_s,
    )
    target = write_polars_atomic(table, datasets.hour_table(root, datasets.QUALITY_SCORES, window))
    remove_stale(target.parent, {target}, "*.parquet")
    shown = table.select(
        "exchange", "symbol", "score", "coverage", "actual_snapshots", "expected_snapshots",
        "gaps", "resyncs", "checksum_failed", "disconnects", "crossed_books", "latency_p50_ms", "latency_p99_ms",
    )
    metadata: dict[str, dg.MetadataValue] = {
        "dagster/row_count": dg.MetadataValue.int(table.height),
        "path": dg.MetadataValue.path(str(target)),
        "crossed_books": dg.MetadataValue.int(int(table["crossed_books"].sum())),
        "feed_events": dg.MetadataValue.int(events.height),
        "scores": dg.MetadataValue.md(
            datasets.markdown_table(shown, max_rows=50, float_digits=4) if table.height else "No data in this hour."
        ),
    }
    if table.height:
        metadata["min_score"] = dg.MetadataValue.float(float(table["score"].min()))
    return dg.MaterializeResult(metadata=metadata)
