"""Smoke test of the ``streamer`` benchmark suite: well-formed figures (speed is never asserted)."""

from __future__ import annotations

from streamer.bench.e2e.suite import Options, run_suite


def test_streamer_bench_quick_produces_well_formed_figures(settings, captures_dir):
    emitted: list[dict] = []
    figures = run_suite(
        Options(runs=1, quick=True, captures=("okx",), simulated=False, captures_dir=captures_dir,
                settings=settings, db_name=settings.db.name, schema=settings.db.schema,
                prefix=settings.redis.prefix),
        emitted.append,
    )
    assert figures == emitted
    by_name = {f["name"]: f for f in figures}
    for name in ("e2e.okx.frames_per_s", "e2e.okx.level_updates_per_s", "e2e.okx.cpu_s_per_100k_frames",
                 "e2e.okx.peak_rss_mb", "e2e.okx.latency_p99_ms", "floor.parse.okx.frames_per_s",
                 "floor.processor.okx.frames_per_s", "floor.copy.okx.rows_per_s", "ratio.e2e_over_parse.okx"):
        assert name in by_name, name
    for f in figures:
        assert f["runs"] == len(f["samples"]) >= 1
        assert f["min"] <= f["median"] <= f["max"]
        assert f["machine"]["nproc"] >= 1 and f["machine"]["cpu"]
        assert f["command"].startswith("coby bench streamer") and f["date"].endswith("Z")
    rate = by_name["e2e.okx.frames_per_s"]
    # The looped capture arrived whole, every checksum held, no gap.
    assert rate["timed_out"] == [False]
    assert rate["checksum_failed"] == [0] and rate["checksum_ok"][0] > 0 and rate["sequence_gaps"] == [0]
