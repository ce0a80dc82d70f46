"""Pre-rendered simulator sessions (``streamer.bench.e2e.prerender``) replay as valid sessions.

The scale benchmark serves these recordings looped, each loop on a fresh
connection, through the real streamer process (PostgreSQL and Redis are
real). Every loop must resync every book from the recorded snapshots: all
frames arrive, no checksum fails, no sequence gap. Speed is never asserted.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from streamer.bench.e2e import serve
from streamer.bench.e2e.prerender import PrerenderError, prerender_many, record_simulated
from streamer.bench.e2e.suite import Harness
from streamer.capture.reader import load_capture
from streamer.capture.replay import session_symbols
from streamer.embedded import export_env

FRAMES = 2_000
#: (protocol, symbols): OKX and Kraken resync in-band, Binance from recorded REST snapshots.
SOURCES = (("okx", 3), ("binance", 2), ("kraken", 3))
LOOPS = 2


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict:
    return prerender_many(SOURCES, tmp_path_factory.mktemp("prerendered"), FRAMES)


def test_recordings_hold_the_session_a_streamer_would_see(recordings):
    assert set(recordings) == set(SOURCES)
    for (protocol, symbols), item in recordings.items():
        capture = load_capture(item.path)
        recv = capture.recv_records()
        assert item.frames == len(recv) >= FRAMES
        assert capture.exchange == protocol and capture.meta["symbols"] == symbols
        assert len(session_symbols(capture, protocol).book) == symbols
        assert [r["dir"] for r in capture.records][:1] == ["http"]  # instruments first, as the feed does
    binance = load_capture(recordings[("binance", 2)].path)
    depth = [r for r in binance.http_records() if "/api/v3/depth" in r["url"]]
    assert len(depth) == 2  # one REST snapshot per symbol, for the replay to answer
    okx = load_capture(recordings[("okx", 3)].path)
    snapshots = [r for r in okx.recv_records() if orjson.loads(r["data"]).get("action") == "snapshot"]
    assert len(snapshots) == 3


def test_looped_replay_through_the_streamer_loses_nothing(recordings, settings):
    harness = Harness({**os.environ, **export_env(settings)})
    files = [str(recordings[source].path) for source in SOURCES]
    result = harness.run_case(["capture", *files, "--loops", str(LOOPS)], expect=True, timeout=120.0)

    assert not result.get("timed_out")
    assert result["ready"]["expect_frames"] == LOOPS * sum(item.frames for item in recordings.values())
    assert result["frames_total"] == result["ready"]["expect_frames"]
    counters = result["counters"]
    assert counters["checksum_failed"] == 0 and counters["sequence_gaps"] == 0
    assert counters["checksum_ok"] > 0
    assert counters["reconnects"] == len(SOURCES) * (LOOPS - 1)  # one reconnect per loop and exchange
    # Each reconnect resets every book once; nothing else asked for a resync.
    assert counters["resyncs"] == (LOOPS - 1) * sum(symbols for _, symbols in SOURCES)
    assert counters["snapshot_requests"] == LOOPS * 2  # Binance: one REST snapshot per symbol and loop
    for source in result["served"]["sources"]:
        assert source["loops_done"] == LOOPS and source["connections"] == LOOPS, source
        assert source["rest_missed"] == 0, source
    binance = next(s for s in result["served"]["sources"] if s["exchange"] == "binance")
    assert binance["rest_served"] == 1 + LOOPS * 2  # instruments once, then both snapshots every loop


def test_serving_two_captures_of_one_exchange_is_refused(recordings):
    path = str(recordings[("okx", 3)].path)
    with pytest.raises(SystemExit, match="at most one capture per exchange"):
        serve.main(["capture", path, path])


def test_record_refuses_what_it_cannot_record(tmp_path: Path):
    with pytest.raises(PrerenderError, match="no simulator"):
        record_simulated("bitfinex", ["BTC-USD"], 10, tmp_path / "x.jsonl.gz")
    with pytest.raises(PrerenderError, match="frames"):
        record_simulated("okx", ["BTC-USDT"], 0, tmp_path / "x.jsonl.gz")
    assert not (tmp_path / "x.jsonl.gz").exists()
