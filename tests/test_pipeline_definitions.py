"""The ``coby`` code location loads, and declares what the rest of COBY relies on."""

from __future__ import annotations

import tomllib
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
import yaml

from coby_pipeline.defs.jobs import HOURLY_JOB_NAME
from coby_pipeline.defs.partitions import hourly_partitions, partitions_start
from coby_pipeline.defs.resources import (
    AnalyticsSettings,
    CobyDatabase,
    DatasetStorage,
    datasets_root,
    warn_score_from_env,
)
from coby_pipeline.definitions import defs as load_defs
from streamer.contract import BOOK_SNAPSHOTS, BOOK_UPDATES, FEED_EVENTS, TRADES
from streamer.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DERIVED = {"replay_dataset", "price_buckets", "heatmap", "quality_scores"}
RAW = {f"raw/{t.name}": t for t in (BOOK_UPDATES, BOOK_SNAPSHOTS, TRADES, FEED_EVENTS)}


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return load_defs()


def test_definitions_are_loadable_and_complete(definitions):
    dg.Definitions.validate_loadable(definitions)
    graph = definitions.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == DERIVED | set(RAW)
    assert {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys} == {
        ("replay_dataset", "replay_rows_match_postgres"),
        ("quality_scores", "no_crossed_books"),
        ("quality_scores", "scores_above_threshold"),
    }
    assert set(definitions.resources) >= {"database", "storage", "analytics"}
    for name in DERIVED:
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def == hourly_partitions
        assert node.description and len(node.description) > 40, f"{name} needs a docstring for the UI"


def test_lineage_starts_at_the_raw_tables(definitions):
    graph = definitions.resolve_asset_graph()
    parents = {k: {p.to_user_string() for p in graph.get(dg.AssetKey(k)).parent_keys} for k in DERIVED}
    assert parents["replay_dataset"] == {"raw/book_updates", "raw/book_snapshots", "raw/trades"}
    assert parents["price_buckets"] == {"replay_dataset"}
    assert parents["heatmap"] == {"price_buckets"}
    assert parents["quality_scores"] == {"replay_dataset", "raw/feed_events"}
    for key, table in RAW.items():
        node = graph.get(dg.AssetKey.from_user_string(key))
        assert not node.is_materializable
        assert node.group_name == "raw"
        assert "postgres" in node.kinds
        assert table.doc in node.description
        columns = node.metadata["dagster/column_schema"].columns
        assert [c.name for c in columns] == table.column_names


def test_hourly_job_and_schedule(definitions):
    job = definitions.resolve_job_def(HOURLY_JOB_NAME)
    assert HOURLY_JOB_NAME == "coby_hourly"
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == DERIVED
    assert job.partitions_def == hourly_partitions

    schedule = definitions.resolve_schedule_def("coby_hourly_schedule")
    assert schedule.cron_schedule == "5 * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == HOURLY_JOB_NAME
    # At 06:05 the schedule asks for the hour that closed at 06:00.
    tick = datetime(2025, 3, 4, 6, 5, tzinfo=timezone.utc)
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2025-03-04-05:00"]


def test_partitions_are_utc_hours_from_the_configured_start():
    assert hourly_partitions.timezone == "UTC"
    assert hourly_partitions.end_offset == 0
    assert partitions_start({}) == "2025-01-01-00:00"
    assert partitions_start({"COBY_PARTITIONS_START": "2026-11-20"}) == "2026-11-20-00:00"
    assert partitions_start({"COBY_PARTITIONS_START": "2026-11-20-07:00"}) == "2026-11-20-07:00"
    for bad in ("2026-11-20 07:00", "yesterday", "2026-11-20-07:30"):
        with pytest.raises(ConfigError, match="COBY_PARTITIONS_START"):
            partitions_start({"COBY_PARTITIONS_START": bad})
    with dg.partition_loading_context(effective_dt=datetime(2025, 1, 1, 3, 30, tzinfo=timezone.utc)):
        # Only closed hours are partitions.
        assert hourly_partitions.get_last_partition_key() == "2025-01-01-02:00"


def test_resources_are_bound_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DB_HOST", "db.internal")
    monkeypatch.setenv("DB_PASSWORD", "not-for-the-ui")
    monkeypatch.setenv("COBY_DB_SCHEMA", "market")
    monkeypatch.setenv("COBY_DATASETS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SOL_BUCKET_SIZE", "0.25")
    monkeypatch.setenv("COBY_QUALITY_WARN_SCORE", "70")
    monkeypatch.delenv("DB_PORT", raising=False)
    definitions = load_defs()
    database = definitions.resources["database"]
    assert isinstance(database, CobyDatabase)
    # Values stay environment references (the UI shows the variable, never the secret).
    assert isinstance(database.host, dg.EnvVar) and database.host.env_var_name == "DB_HOST"
    assert isinstance(database.password, dg.EnvVar) and database.password.env_var_name == "DB_PASSWORD"
    assert database.port == 5432
    storage = definitions.resources["storage"]
    assert isinstance(storage, DatasetStorage) and storage.root.env_var_name == "COBY_DATASETS_DIR"
    analytics = definitions.resources["analytics"]
    assert isinstance(analytics, AnalyticsSettings)
    assert analytics.configured_bucket_sizes()["SOL"] == Decimal("0.25")
    assert analytics.configured_bucket_sizes()["BTC"] == 10
    assert analytics.quality_warn_score == 70.0


def test_database_description_never_includes_the_password():
    database = CobyDatabase(host="/run/sockets", password="hunter2", db_schema="coby")
    assert "hunter2" not in database.describe()
    assert "/run/sockets" in database.describe()
    with pytest.raises(ValueError):
        CobyDatabase(host="x", db_schema="bad; drop").schema_name


def test_settings_from_the_environment_are_validated():
    assert warn_score_from_env({}) == 80.0
    assert warn_score_from_env({"COBY_QUALITY_WARN_SCORE": "92.5"}) == 92.5
    for bad in ("high", "101", "-1"):
        with pytest.raises(ConfigError, match="COBY_QUALITY_WARN_SCORE"):
            warn_score_from_env({"COBY_QUALITY_WARN_SCORE": bad})
    assert datasets_root({"COBY_DATA_DIR": "/srv/coby"}) == Path("/srv/coby/datasets")
    assert datasets_root({"COBY_DATA_DIR": "/srv/coby", "COBY_DATASETS_DIR": "/data/sets"}) == Path("/data/sets")


def test_workspace_and_instance_files():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "coby_pipeline.definitions"
    assert entry["python_module"]["location_name"] == "coby"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["dg"]["project"]["code_location_name"] == "coby"

    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert instance["telemetry"]["enabled"] is False
    assert instance["run_queue"]["max_concurrent_runs"] == 2
