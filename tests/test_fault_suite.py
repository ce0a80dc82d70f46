"""The ``coby faults`` harness: each scenario end to end with short durations.

Every test starts its own PostgreSQL and Redis server processes under a
temporary directory (never the shared ones), simulated Binance and OKX, and
the streamer as a separate process; the harness stops, slows, kills and
restarts them for real. These tests check that the harness measures
correctly: a fault-free run accounts for every tick, injected losses and
duplicates are detected, and the faults the streamer already survives show
zero loss.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from streamer.faultsuite.accounting import TickLedger, _Windows, native_names
from streamer.faultsuite.runner import SCHEMA, run_scenario
from streamer.faultsuite.scenarios import SCENARIO_NAMES, all_scenarios

REQUIRED_KEYS = {"scenario", "frames_sent", "ticks_stored", "lost", "duplicated", "quarantined",
                 "gaps_recorded", "peak_rss_mb"}


async def _run(name: str, **kwargs) -> dict:
    return await run_scenario(all_scenarios()[name], short=True, **kwargs)


def _assert_consistent(result: dict) -> None:
    """Every tick sent is stored, accounted for, sent while dead, or lost: nothing else."""
    assert "error" not in result, result
    assert result["ticks_sent"] > 0 and result["frames_sent"] > 0
    assert (result["ticks_stored"] + result["accounted_for"] + result["sent_while_dead"] + result["lost"]
            == result["ticks_sent"])
    assert result["peak_rss_mb"] > 0
    assert not result["ledger_overflowed"]
    assert not result["streamer_crashed"], result.get("streamer_log_tail")


def test_cli_runs_a_fault_free_scenario_and_prints_one_json_line(repo_root):
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "faults", "--json", "--short", "--scenario", "baseline"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert REQUIRED_KEYS <= set(result)
    assert result["scenario"] == "baseline"
    _assert_consistent(result)
    # Fault-free: every tick stored exactly once, nothing stored that was not sent.
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["ticks_stored"] == result["ticks_sent"]
    assert result["unmatched_rows"] == 0
    assert result["quarantined"] == 0


def test_cli_rejects_an_unknown_scenario(repo_root):
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "faults", "--scenario", "no_such_thing"],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "no_such_thing" in proc.stderr and "postgres_down" in proc.stderr


async def test_accounting_detects_deleted_and_duplicated_rows():
    deleted, duplicated = 7, 5
    seen = {}

    def tamper(ctx):
        with psycopg.connect(ctx.pg.url(), autocommit=True) as conn:
            ids = conn.execute(f"SELECT exchange, symbol, trade_id FROM {SCHEMA}.trades ORDER BY local_ts LIMIT %s",
                               (deleted,)).fetchall()
            assert len(ids) == deleted
            for exchange, symbol, trade_id in ids:
                conn.execute(f"DELETE FROM {SCHEMA}.trades WHERE exchange = %s AND symbol = %s AND trade_id = %s",
                             (exchange, symbol, trade_id))
            conn.execute(f"INSERT INTO {SCHEMA}.book_updates SELECT * FROM {SCHEMA}.book_updates "
                         f"WHERE NOT is_snapshot LIMIT %s", (duplicated,))
        seen["tampered"] = True

    result = await _run("baseline", before_accounting=tamper)
    assert seen["tampered"]
    _assert_consistent(result)
    assert result["lost"] == deleted
    assert result["duplicated"] == duplicated
    assert len(result["lost_examples"]) == min(5, deleted)


async def test_redis_down_keeps_postgres_whole_and_brings_live_books_back():
    result = await _run("redis_down")
    _assert_consistent(result)
    assert result["lost"] == 0 and result["duplicated"] == 0
    notes = result["notes"]
    assert notes["redis_books_restored"] == notes["redis_books_expected"] == 4, notes


async def test_disconnect_storm_loses_nothing_and_records_every_disconnect():
    result = await _run("disconnect_storm")
    _assert_consistent(result)
    injected = sum(result["notes"]["disconnects_injected"].values())
    assert injected >= 2, result
    # Each injected abort is a recorded disconnect (plus the final stop's one per exchange).
    assert result["feed_events"]["disconnected"] >= injected, result
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["quarantined"] == 0, result


async def test_malformed_flood_is_quarantined_frame_for_frame():
    result = await _run("malformed_flood")
    _assert_consistent(result)
    injected = result["notes"]["malformed_injected"]
    assert injected > 0 and injected == result["injected_frames"]
    assert result["quarantined"] == injected
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["unmatched_rows"] == 0


async def test_gaps_and_checksum_failures_are_recorded_and_cost_no_tick():
    result = await _run("gaps_and_checksums")
    _assert_consistent(result)
    events = result["feed_events"]
    assert events.get("gap", 0) >= 1 and events.get("checksum_failed", 0) >= 1, events
    assert sum(result["notes"]["frames_dropped"].values()) >= 1
    # Ticks sent while a book was unsynced are accounted for by the recorded events.
    assert result["accounted_for"] > 0
    assert result["lost"] == 0 and result["duplicated"] == 0


async def test_postgres_down_harness_stops_and_restarts_a_real_server():
    result = await _run("postgres_down")
    _assert_consistent(result)
    assert result["notes"]["postgres_restarted"] is True
    assert result["notes"]["postgres_stopped_s"] > 0
    # The journal and the checkpoints: nothing lost, nothing stored twice.
    assert result["lost"] == 0 and result["duplicated"] == 0


async def test_postgres_slow_harness_slows_the_connection():
    result = await _run("postgres_slow")
    _assert_consistent(result)
    assert result["notes"]["proxy_latency_s"] > 0


async def test_streamer_sigkill_harness_kills_and_restarts_the_process():
    result = await _run("streamer_sigkill")
    _assert_consistent(result)
    assert result["streamer_starts"] == 2
    assert result["streamer_exit_codes"][0] == -9  # really SIGKILLed
    assert result["notes"]["resynced_after_restart"] is True
    [dead] = result["dead_intervals"]
    assert dead["restarted_us"] > dead["killed_us"]
    assert dead["reconnected"] == ["binance", "okx"]
    # The journal and the checkpoints: nothing lost, nothing stored twice.
    assert result["lost"] == 0 and result["duplicated"] == 0


def test_every_required_scenario_exists():
    required = {"postgres_down", "postgres_slow", "redis_down", "streamer_sigkill", "disconnect_storm",
                "gaps_and_checksums", "malformed_flood"}
    assert required <= set(SCENARIO_NAMES)


def test_windows_merge_and_cover():
    windows = _Windows([(10, 20), (15, 30), (40, 50)])
    assert windows.covers(10) and windows.covers(25) and windows.covers(50)
    assert not windows.covers(35) and not windows.covers(9) and not windows.covers(51)


def test_ledger_counts_a_tick_sent_twice_once_and_is_bounded():
    ledger = TickLedger(max_ticks=2)
    ledger.add_trade("okx", "BTC-USDT", "1", 100)
    ledger.add_trade("okx", "BTC-USDT", "1", 200)
    assert ledger.trades[("okx", "BTC-USDT", "1")] == [100, 200]
    ledger.add_level("okx", "BTC-USDT", 5, "bid", 1.5, 300)
    ledger.add_level("okx", "BTC-USDT", 6, "bid", 1.5, 400)
    assert len(ledger) == 2 and ledger.overflowed


def test_native_names_refuses_unaccounted_protocols():
    assert native_names("binance", ["BTC-USDT"]) == {"BTCUSDT": "BTC-USDT"}
    with pytest.raises(ValueError, match="kraken"):
        native_names("kraken", ["BTC-USD"])
