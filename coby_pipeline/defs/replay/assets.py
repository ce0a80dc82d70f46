"""The replay dataset asset: an hour of raw ticks as Hive-partitioned Parquet."""

import dagster as dg

from streamer.contract import REPLAY_KINDS

from ...lib import replay
from ...lib.hours import HourWindow
from ...lib.pg_extract import read_hour
from ..partitions import hourly_partitions
from ..raw.assets import raw_key
from ..resources import CobyDatabase, DatasetStorage

REPLAY_GROUP = "replay"


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[raw_key(table) for table in REPLAY_KINDS.values()],
    group_name=REPLAY_GROUP,
    kinds={"parquet", "postgres"},
)
def replay_dataset(
    context: dg.AssetExecutionContext, database: CobyDatabase, storage: DatasetStorage
) -> dg.MaterializeResult:
    """Every book update, book snapshot and trade of the hour, as Parquet for replay and research.

    Layout: `{datasets_root}/replay/{kind}/exchange=X/symbol=Y/date=YYYY-MM-DD/hour=HH/part-0.parquet`
    with kind `book_updates`, `book_snapshots` or `trades`; the contract's Arrow
    schema, zstd, rows sorted by `local_ts`. Re-materializing an hour replaces
    its files. Query it with DuckDB:

        SELECT * FROM read_parquet('<datasets_root>/replay/book_updates/**/*.parquet', hive_partitioning=true)
    """
    window = HourWindow.from_bounds(*context.partition_time_window)
    root = storage.path
    context.log.info("reading hour %s from %s", window.key, database.describe())
    written = replay.ReplayHour()
    with database.connect() as conn:
        # One kind at a time: only one kind's hour is held in memory at once.
        for kind, table in REPLAY_KINDS.items():
            written.merge(replay.write_hour(root, window, {kind: read_hour(conn, database.schema_name, table, window)}))
    total = sum(written.rows.values())
    context.log.info(
        "hour %s: %s rows written under %s",
        window.key,
        ", ".join(f"{kind} {n}" for kind, n in written.rows.items()),
        replay.replay_root(root),
    )
    if written.removed:
        context.log.info("removed %d stale file(s) of this hour", len(written.removed))
    metadata: dict[str, object] = {
        "dagster/row_count": dg.MetadataValue.int(total),
        "dataset_path": dg.MetadataValue.path(str(replay.replay_root(root))),
        "files": dg.MetadataValue.int(sum(len(f) for f in written.files.values())),
        "rows_per_pair": dg.MetadataValue.json(written.pairs),
        "duckdb": dg.MetadataValue.md(
            "```sql\n" + replay.duckdb_query(root, "book_updates", window) + "\n```"
        ),
    }
    for kind, count in written.rows.items():
        metadata[f"rows_{kind}"] = dg.MetadataValue.int(count)
        metadata[f"path_{kind}"] = dg.MetadataValue.path(str(replay.replay_root(root) / kind))
    return dg.MaterializeResult(metadata=metadata)
