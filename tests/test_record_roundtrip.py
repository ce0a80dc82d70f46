"""`coby stream --record`: a recorded session replays to the same books."""

from __future__ import annotations

import argparse
from dataclasses import replace
from decimal import Decimal

import pytest

from streamer import commands
from streamer.capture.reader import load_capture, payload
from streamer.capture.replay import CaptureReplayBackend, session_symbols
from streamer.connection.ws import WsOptions
from streamer.exchanges.base import Endpoints
from streamer.feed import FeedConfig
from streamer.local.server import LocalExchangeServer

from .reference_books import CAPTURE_FILES, REFERENCE


@pytest.mark.parametrize("protocol", ["okx", "binance"])
async def test_recorded_session_replays_to_the_same_books(protocol, settings, captures_dir, tmp_path):
    original = load_capture(captures_dir / CAPTURE_FILES[protocol])
    backend = CaptureReplayBackend(original)
    record_dir = tmp_path / "recorded"
    async with LocalExchangeServer(backend) as server:
        ws_path = "/ws/v5/public" if protocol == "okx" else ""
        feed = FeedConfig(
            protocol, [], Endpoints(server.ws_base_url + ws_path, server.rest_base_url),
            ws=WsOptions(stall_timeout=60), native_symbols=list(session_symbols(original, protocol)),
        )
        summary = await commands._run_streamer(settings, [feed], duration=3.0, record_dir=record_dir)
    assert backend.finished.is_set()
    assert summary[protocol]["frames"] == backend.frames_sent

    files = sorted(record_dir.glob("*.jsonl.gz"))
    assert len(files) == 1
    recorded = load_capture(files[0])
    assert recorded.meta["exchange"] == protocol
    # Every frame received was recorded byte-exact, in order.
    assert [payload(r) for r in recorded.recv_records()] == [payload(r) for r in original.recv_records()]
    assert any("depth" in r["url"] for r in recorded.http_records()) == (protocol == "binance")

    replay_settings = replace(settings, data_dir=tmp_path / "second")
    result = await commands.capture_replay(
        argparse.Namespace(file=str(files[0]), exchange=None, speed=None, timeout=120.0), replay_settings
    )
    reference = REFERENCE[protocol](captures_dir / CAPTURE_FILES[protocol])
    for native, (bid, ask) in reference.items():
        symbol = next(s for s in result["books"] if s.replace("-", "") == native.replace("-", ""))
        assert Decimal(result["books"][symbol]["bid"][0]) == bid[0]
        assert Decimal(result["books"][symbol]["ask"][0]) == ask[0]
