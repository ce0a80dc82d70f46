"""Smoke test of ``coby bench pipeline``: it produces well-formed figures (speed is never asserted)."""

from __future__ import annotations

import orjson

from streamer.cli import main


def test_bench_pipeline_quick_writes_well_formed_figures(tmp_path, capsys):
    assert main(["bench", "pipeline", "--json", "--quick", "--runs", "2", "--rows", "20000",
                 "--results", str(tmp_path)]) == 0

    printed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = [orjson.loads(line) for line in (tmp_path / "pipeline.quick.jsonl").read_text().splitlines()]
    assert printed == written
    names = {figure["name"] for figure in written}
    assert {
        "pipeline.price_buckets",
        "pipeline.price_buckets_duckdb",
        "pipeline.polars_groupby_floor",
        "pipeline.heatmap",
        "pipeline.quality_scores",
        "pipeline.replay_write",
        "pipeline.duckdb_day",
        "replay.read_back",
        "pipeline.price_buckets_vs_polars_floor",
        "pipeline.price_buckets_vs_duckdb",
    } <= names
    for figure in written:
        assert figure["runs"] == 2 and len(figure["samples"]) == 2
        assert figure["min"] <= figure["median"] <= figure["max"]
        assert figure["value"] == figure["median"] > 0
        assert figure["unit"] in {"rows/s", "events/s", "ratio"}
        assert figure["command"].startswith("coby bench pipeline --json")
        assert figure["machine"]["nproc"] >= 1 and figure["machine"]["cpu"]
        assert figure["date"].endswith("Z")

    by_name = {figure["name"]: figure for figure in written}
    # The DuckDB query is a like-for-like comparison only if it computes the same table.
    assert by_name["pipeline.price_buckets_duckdb"]["agreement"]["same_values"] is True
    # Every update and trade of the hour came back, in time order.
    assert by_name["replay.read_back"]["events"] > 0
    assert by_name["replay.read_back"]["in_time_order"] is True
