"""Materialize the whole asset graph for given hours, in this process.

Used after a streamer run (``coby demo``) and by ``coby materialize``: the
same job the schedule runs (``coby_hourly``, checks included), one run per
hour, recorded in the Dagster instance so the runs show up in the UI.
Resources come from the environment exactly as in the code location.

The current, still-open hour may be named too: it is materialized with the
data stored so far (a preliminary result that the schedule replaces after
the hour closes). Hours in the future are refused.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Any

import dagster as dg

from streamer.contract import REPLAY_KINDS
from streamer.errors import ConfigError

from .lib.hours import HourWindow

log = logging.getLogger(__name__)

#: Assets whose row counts are reported, in graph order.
ASSET_NAMES = ("replay_dataset", "price_buckets", "heatmap", "quality_scores")


def _instance(stack: ExitStack, instance: dg.DagsterInstance | None) -> dg.DagsterInstance:
    if instance is not None:
        return instance
    if os.environ.get("DAGSTER_HOME"):
        return stack.enter_context(dg.DagsterInstance.get())
    return stack.enter_context(dg.DagsterInstance.ephemeral())


def _hours(partition_keys: list[str], now: datetime) -> list[HourWindow]:
    windows = sorted({HourWindow.from_key(key) for key in partition_keys}, key=lambda w: w.start)
    for window in windows:
        if window.start > now:
            raise ConfigError(f"hour {window.key} has not started yet")
    return windows


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The first failed step and the error that failed it (the innermost cause)."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        detail = error.message.strip() if error is not None else "no error recorded"
        return f"step {event.step_key} failed: {detail}"
    return "run failed before any step failed"


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


def materialize_hours(partition_keys: list[str], *, instance: dg.DagsterInstance | None = None) -> dict:
    """Run the hourly job for each key (``YYYY-MM-DD-HH:00``, UTC) and summarize.

    Returns::

        {
          "partitions": [...],                  # the hours, sorted, deduplicated
          "success": bool,                      # every run succeeded
          "replay_dataset": "<datasets_root>/replay",
          "datasets_root": "<datasets_root>",
          "rows": {"replay_dataset": n, "replay_book_updates": n, "replay_book_snapshots": n,
                   "replay_trades": n, "price_buckets": n, "heatmap": n, "quality_scores": n},
          "checks": {"<asset>:<check>": {"passed": k, "failed": m}},
          "runs": [{"partition": key, "run_id": ..., "success": bool, "error": str | None}],
        }

    Row counts are summed over the hours. Raises ConfigError for a malformed
    key or a future hour; a failing run is reported, not raised.
    """
    from .defs.jobs import HOURLY_JOB_NAME
    from .defs.resources import datasets_root
    from .definitions import defs as load_defs

    now = datetime.now(timezone.utc)
    windows = _hours(list(partition_keys), now)
    definitions = load_defs()
    job = definitions.resolve_job_def(HOURLY_JOB_NAME)
    root = datasets_root()

    rows: dict[str, int] = {name: 0 for name in ASSET_NAMES}
    rows.update({f"replay_{kind}": 0 for kind in REPLAY_KINDS})
    checks: dict[str, dict[str, int]] = {}
    runs: list[dict] = []
    with ExitStack() as stack:
        dagster_instance = _instance(stack, instance)
        for window in windows:
            # With end_offset=0 the open hour is not a partition yet; evaluate the
            # partitions as of the hour's end so it is (only on explicit request).
            effective = max(now, window.end)
            with dg.partition_loading_context(effective_dt=effective):
                result = job.execute_in_process(
                    partition_key=window.key, instance=dagster_instance, raise_on_error=False
                )
            error = None if result.success else _failure_message(result)
            if error is not None:
                log.error("hour %s failed: %s", window.key, error)
            runs.append({"partition": window.key, "run_id": result.run_id, "success": result.success, "error": error})
            for event in result.get_asset_materialization_events():
                materialization = event.step_materialization_data.materialization
                name = materialization.asset_key.to_user_string()
                metadata = {k: _metadata_value(v) for k, v in materialization.metadata.items()}
                rows[name] = rows.get(name, 0) + int(metadata.get("dagster/row_count", 0))
                for kind in REPLAY_KINDS:
                    rows[f"replay_{kind}"] += int(metadata.get(f"rows_{kind}", 0))
            for evaluation in result.get_asset_check_evaluations():
                name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                tally = checks.setdefault(name, {"passed": 0, "failed": 0})
                tally["passed" if evaluation.passed else "failed"] += 1
    return {
        "partitions": [w.key for w in windows],
        "success": all(run["success"] for run in runs),
        "replay_dataset": str(root / "replay"),
        "datasets_root": str(root),
        "rows": rows,
        "checks": checks,
        "runs": runs,
    }
