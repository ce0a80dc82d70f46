"""Checks on the quality scores of an hour."""

import warnings

import dagster as dg
import polars as pl

from ...lib import datasets
from ...lib.hours import HourWindow
from ...lib.quality import SCHEMA as QUALITY_SCHEMA
from ..partitions import hourly_partitions
from ..resources import AnalyticsSettings, DatasetStorage
from .assets import quality_scores

# Per-partition checks are a preview feature in Dagster 1.13; they work as documented.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def.*")


def _scores(storage: DatasetStorage, partition_key: str) -> pl.DataFrame:
    return datasets.read_hour_table(
        storage.path, datasets.QUALITY_SCORES, HourWindow.from_key(partition_key), QUALITY_SCHEMA
    )


def _offenders(table: pl.DataFrame, columns: list[str]) -> list[dict]:
    return table.select("exchange", "symbol", *columns).to_dicts()


@dg.asset_check(asset=quality_scores, partitions_def=hourly_partitions)
def no_crossed_books(context: dg.AssetCheckExecutionContext, storage: DatasetStorage) -> dg.AssetCheckResult:
    """Fails (ERROR) when any book snapshot of the hour was crossed or locked (best bid >= best ask).

    A synchronised book is never crossed on a healthy feed: a crossed snapshot
    means a missed update or a bug, and the hour's book data cannot be trusted.
    """
    table = _scores(storage, context.partition_key)
    crossed = table.filter(pl.col("crossed_books") > 0)
    return dg.AssetCheckResult(
        passed=crossed.is_empty(),
        severity=dg.AssetCheckSeverity.ERROR,
        description=None
        if crossed.is_empty()
        else f"{int(crossed['crossed_books'].sum())} crossed or locked snapshot(s) in {crossed.height} book(s)",
        metadata={
            "crossed_snapshots": dg.MetadataValue.int(int(table["crossed_books"].sum())),
            "books": dg.MetadataValue.json(_offenders(crossed, ["crossed_books"])),
        },
    )


@dg.asset_check(asset=quality_scores, partitions_def=hourly_partitions)
def scores_above_threshold(
    context: dg.AssetCheckExecutionContext, storage: DatasetStorage, analytics: AnalyticsSettings
) -> dg.AssetCheckResult:
    """Warns when any exchange/symbol scored below COBY_QUALITY_WARN_SCORE (default 80) in the hour."""
    table = _scores(storage, context.partition_key)
    threshold = analytics.quality_warn_score
    low = table.filter(pl.col("score") < threshold)
    return dg.AssetCheckResult(
        passed=low.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        description=None if low.is_empty() else f"{low.height} book(s) scored below {threshold:g}",
        metadata={
            "threshold": dg.MetadataValue.float(threshold),
            "min_score": (
                dg.MetadataValue.float(float(table["score"].min())) if table.height else dg.MetadataValue.null()
            ),
            "below_threshold": dg.MetadataValue.json(_offenders(low, ["score", "coverage"])),
        },
    )
