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
    # The paced case ran at its offered load and measured latency and the loop.
    for name in ("paced.okx.rate10000.frames_per_s", "paced.okx.rate10000.latency_p99_ms",
                 "paced.okx.rate10000.loop_lag_p99_ms", "paced.okx.rate10000.gc_pause_max_ms"):
        assert name in by_name, name


def test_several_streamer_processes_combine_into_one_run():
    from streamer.bench.e2e.suite import _spread, combine_results

    feeds = [{"exchange": e} for e in ("binance", "kraken", "okx")]
    assert _spread(feeds, 3) == [[feeds[0]], [feeds[1]], [feeds[2]]]
    assert _spread(feeds, 2) == [[feeds[0], feeds[2]], [feeds[1]]]
    assert _spread(feeds, 1) == [feeds]
    runs = [
        {"frames": 100, "level_updates": 160, "window_unix": [1000.0, 1002.0], "cpu_s": 1.0,
         "peak_rss_mb": 100.0, "latency_latest_p99_ms": 3.0, "loop_lag_p99_ms": 1.0,
         "counters": {"checksum_ok": 10, "checksum_failed": 0, "sequence_gaps": 0}},
        {"frames": 300, "level_updates": 40, "window_unix": [1001.0, 1004.0], "cpu_s": 3.0,
         "peak_rss_mb": 120.0, "latency_latest_p99_ms": 9.0, "loop_lag_p99_ms": 4.0,
         "counters": {"checksum_ok": 5, "checksum_failed": 1, "sequence_gaps": 2}},
    ]
    combined = combine_results(runs)
    # Rates over the joined window, 1000.0 to 1004.0: not the sum of each process's own rate.
    assert (combined["frames"], combined["frames_per_s"], combined["level_updates_per_s"]) == (400, 100.0, 50.0)
    assert combined["cpu_s_per_100k_frames"] == 1000.0 and combined["cpu_utilisation"] == 1.0
    assert combined["peak_rss_mb"] == 220.0 and combined["peak_rss_mb_per_process"] == [100.0, 120.0]
    assert combined["latency_latest_p99_ms"] == 9.0 and combined["loop_lag_p99_ms"] == 4.0  # the worst process
    assert combined["counters"]["checksum_ok"] == 15 and combined["counters"]["sequence_gaps"] == 2


def test_the_steady_paced_case_holds_one_connection_at_its_offered_rate(settings):
    # One pre-rendered connection: every book synced once, then updates only
    # (no reconnect, hence no resync, inside the run). Speed is never asserted.
    import os

    from streamer.bench.e2e.suite import Harness, paced_steady_case
    from streamer.embedded import export_env

    harness = Harness({**os.environ, **export_env(settings)})
    figures = paced_steady_case(harness, runs=1, duration=0.5, command="coby bench streamer --json", rate=1_500)
    by_name = {f["name"]: f for f in figures}
    rate = by_name["paced.sim-kraken.10sym.rate1500.frames_per_s"]
    assert rate["offered_frames_per_s"] == 1_500 and rate["symbols"] == 10
    assert rate["connections_per_run"] == [1]
    assert rate["checksum_failed"] == [0] and rate["checksum_ok"][0] > 0 and rate["sequence_gaps"] == [0]
    assert rate["frames_measured"][0] > 0 and rate["timed_out"] == [False]
    assert "paced.sim-kraken.10sym.rate1500.latency_p99_ms" in by_name
