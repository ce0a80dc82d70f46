"""Materializing hours in-process (``materialize_hours``) and backfilling from the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from coby_pipeline.lib.hours import HOUR_KEY_FORMAT
from coby_pipeline.materialize import materialize_hours
from streamer.errors import ConfigError

from .pipeline_data import (  # noqa: F401  (fixtures)
    HOUR_KEY,
    datasets_root,
    pipeline_env,
    raw_tables,
    synthetic_hour,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pipeline_environment(monkeypatch, settings, datasets_root) -> dict[str, str]:
    env = pipeline_env(settings, datasets_root)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return env


def test_materialize_hours_runs_the_whole_graph(synthetic_hour, pipeline_environment, datasets_root):
    summary = materialize_hours([HOUR_KEY, HOUR_KEY], instance=dg.DagsterInstance.ephemeral())
    assert summary["success"], summary["runs"]
    assert summary["partitions"] == [HOUR_KEY]
    assert summary["replay_dataset"] == str(datasets_root / "replay")
    assert (datasets_root / "replay" / "book_updates").is_dir()

    rows = summary["rows"]
    assert rows["replay_book_snapshots"] == sum(len(s.bids) + len(s.asks) for s in synthetic_hour.snapshots)
    assert rows["replay_book_updates"] == len(synthetic_hour.updates)
    assert rows["replay_trades"] == len(synthetic_hour.trades)
    assert rows["replay_dataset"] == rows["replay_book_snapshots"] + rows["replay_book_updates"] + rows["replay_trades"]
    assert rows["quality_scores"] == len(synthetic_hour.exchanges) * len(synthetic_hour.books)
    assert rows["price_buckets"] > 0 and rows["heatmap"] > 0
    assert summary["checks"] == {
        "replay_dataset:replay_rows_match_postgres": {"passed": 1, "failed": 0},
        "quality_scores:no_crossed_books": {"passed": 1, "failed": 0},
        "quality_scores:scores_above_threshold": {"passed": 1, "failed": 0},
    }


def test_runs_are_recorded_in_the_dagster_home_instance(raw_tables, pipeline_environment, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the shipped instance config must load
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    summary = materialize_hours(["2025-03-04-06:00", "2025-03-04-07:00"])
    assert summary["success"]
    assert all(count == 0 for count in summary["rows"].values())  # nothing stored in those hours
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="coby_hourly"))
        assert sorted(r.tags["dagster/partition"] for r in runs) == ["2025-03-04-06:00", "2025-03-04-07:00"]
        assert {r.run_id for r in runs} == {r["run_id"] for r in summary["runs"]}


def test_the_current_hour_can_be_materialized_but_not_a_future_one(raw_tables, pipeline_environment):
    now = datetime.now(timezone.utc)
    current = now.replace(minute=0, second=0, microsecond=0)
    summary = materialize_hours([current.strftime(HOUR_KEY_FORMAT)], instance=dg.DagsterInstance.ephemeral())
    assert summary["success"], summary["runs"]
    with pytest.raises(ConfigError, match="has not started"):
        materialize_hours([(current + timedelta(hours=2)).strftime(HOUR_KEY_FORMAT)])
    for bad in ("2025-03-04", "2025-03-04-05:30", "05:00"):
        with pytest.raises(ConfigError):
            materialize_hours([bad])


def test_failed_runs_are_reported_not_raised(pipeline_environment, monkeypatch):
    # The schema has no tables: the replay step fails with PostgreSQL's error.
    summary = materialize_hours([HOUR_KEY], instance=dg.DagsterInstance.ephemeral())
    assert summary["success"] is False
    (run,) = summary["runs"]
    assert run["success"] is False and "does not exist" in run["error"]


def test_backfill_from_the_command_line(raw_tables, pipeline_environment, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, **pipeline_environment, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    # Importable from any directory, as after `pip install -e .`, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    command = [
        sys.executable, "-m", "dagster", "job", "backfill",
        "-w", str(REPO / "workspace.yaml"), "-l", "coby", "-j", "coby_hourly",
        "--from", "2025-03-04-05:00", "--to", "2025-03-04-07:00", "--noprompt",
    ]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (backfill,) = instance.get_backfills()
        assert backfill.job_name == "coby_hourly"
        assert sorted(backfill.partition_names) == ["2025-03-04-05:00", "2025-03-04-06:00", "2025-03-04-07:00"]
