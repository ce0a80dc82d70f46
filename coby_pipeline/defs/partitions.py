"""The pipeline's one partitioning: UTC hours.

The first hour comes from ``COBY_PARTITIONS_START`` (``YYYY-MM-DD-HH:MM`` or
``YYYY-MM-DD``; default ``2025-01-01-00:00``). ``end_offset=0``: the newest
partition is the last closed hour, so the schedule never processes an hour
that is still being written (``coby_pipeline.materialize`` can still do a
preliminary run of the current hour on request).
"""

from __future__ import annotations

import os
from datetime import datetime

import dagster as dg

from streamer.errors import ConfigError

DEFAULT_START = "2025-01-01-00:00"
_START_FORMATS = ("%Y-%m-%d-%H:%M", "%Y-%m-%d")


def partitions_start(env: dict[str, str] | None = None) -> str:
    """The first hour, normalized to Dagster's ``YYYY-MM-DD-HH:MM``."""
    raw = ((env if env is not None else os.environ).get("COBY_PARTITIONS_START") or "").strip() or DEFAULT_START
    for fmt in _START_FORMATS:
        try:
            start = datetime.strptime(raw, fmt)
        except ValueError:
            continue
        if start.minute or start.second:
            raise ConfigError(f"COBY_PARTITIONS_START must be on the hour, got {raw!r}")
        return start.strftime("%Y-%m-%d-%H:%M")
    raise ConfigError(f"COBY_PARTITIONS_START must look like 2025-01-01-00:00 or 2025-01-01, got {raw!r}")


hourly_partitions = dg.HourlyPartitionsDefinition(start_date=partitions_start(), timezone="UTC", end_offset=0)
