"""Checks on the replay dataset."""

import warnings

import dagster as dg
import pyarrow.parquet as pq

from streamer.contract import REPLAY_KINDS

from ...lib import replay
from ...lib.hours import HourWindow
from ...lib.pg_extract import count_hour
from ..partitions import hourly_partitions
from ..resources import CobyDatabase, DatasetStorage
from .assets import replay_dataset

# Per-partition checks are a preview feature in Dagster 1.13; they work as documented.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def.*")


@dg.asset_check(asset=replay_dataset, partitions_def=hourly_partitions)
def replay_rows_match_postgres(
    context: dg.AssetCheckExecutionContext, database: CobyDatabase, storage: DatasetStorage
) -> dg.AssetCheckResult:
    """The hour's Parquet files hold exactly the rows PostgreSQL has for that hour.

    Warns when they differ: rows arrived after the hour was materialized (late
    writes) or files were removed; re-materialize the hour to fix it. Reads only
    Parquet footers and one `count(*)` per table, so it is cheap.
    """
    window = HourWindow.from_key(context.partition_key)
    root = storage.path
    in_files: dict[str, dict[str, int]] = {}
    for kind in REPLAY_KINDS:
        per_pair: dict[str, int] = {}
        for path in replay.hour_files(root, kind, window):
            pair = "/".join(replay.pair_of(path))
            per_pair[pair] = per_pair.get(pair, 0) + pq.read_metadata(path).num_rows
        in_files[kind] = per_pair
    with database.connect() as conn:
        in_db = {
            kind: {f"{e}/{s}": n for (e, s), n in count_hour(conn, database.schema_name, table, window).items()}
            for kind, table in REPLAY_KINDS.items()
        }
    mismatches = {
        kind: {
            pair: {"parquet": in_files[kind].get(pair, 0), "postgres": in_db[kind].get(pair, 0)}
            for pair in sorted(set(in_files[kind]) | set(in_db[kind]))
            if in_files[kind].get(pair, 0) != in_db[kind].get(pair, 0)
        }
        for kind in REPLAY_KINDS
    }
    mismatches = {kind: pairs for kind, pairs in mismatches.items() if pairs}
    return dg.AssetCheckResult(
        passed=not mismatches,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if not mismatches else "Parquet and PostgreSQL row counts differ: re-materialize the hour.",
        metadata={
            "parquet_rows": dg.MetadataValue.int(sum(sum(p.values()) for p in in_files.values())),
            "postgres_rows": dg.MetadataValue.int(sum(sum(p.values()) for p in in_db.values())),
            "mismatches": dg.MetadataValue.json(mismatches),
        },
    )
