"""Materialize each hour a few minutes after it closes."""

from __future__ import annotations

import dagster as dg

from .jobs import coby_hourly

#: Minutes after the hour: late frames and the streamer's last batch are in by then.
MINUTE_OF_HOUR = 5

coby_hourly_schedule = dg.build_schedule_from_partitioned_job(
    coby_hourly,
    name="coby_hourly_schedule",
    minute_of_hour=MINUTE_OF_HOUR,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs coby_hourly for the hour that just closed, at minute 5 of the next hour (UTC).",
)
