"""The hourly job: every derived asset of one hour, with its checks."""

from __future__ import annotations

import dagster as dg

from .books.assets import heatmap, price_buckets
from .partitions import hourly_partitions
from .quality.assets import quality_scores
from .replay.assets import replay_dataset

#: Stable name: used by the schedule, ``dagster job backfill -j`` and the CLI.
HOURLY_JOB_NAME = "coby_hourly"

coby_hourly = dg.define_asset_job(
    name=HOURLY_JOB_NAME,
    selection=dg.AssetSelection.assets(replay_dataset, price_buckets, heatmap, quality_scores),
    partitions_def=hourly_partitions,
    description="Replay dataset, price buckets, heatmaps and quality scores of one UTC hour.",
    # Four small sequential steps: a process per step would cost more than the
    # work on a small host, so run them in the run's own process.
    executor_def=dg.in_process_executor,
    tags={"coby/pipeline": "hourly"},
)
