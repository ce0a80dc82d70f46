"""The peer suite's looped captures: repeated frames that still form a valid session."""

from __future__ import annotations

import orjson
import pytest

from streamer.bench.e2e.floors import capture_records
from streamer.bench.peer.frames import binance_id_shifter, recv_frames, write_looped_capture
from streamer.capture.reader import load_capture
from streamer.exchanges.registry import get_mapper
from streamer.processor import FeedProcessor

LOOPS = 4


def _capture(captures_dir, name):
    path = captures_dir / f"{name}.session1.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path.name} not in {captures_dir}")
    return load_capture(path)


def _process(path):
    protocol, natives, records = capture_records(path)
    processor = FeedProcessor(protocol, get_mapper(protocol), natives)
    for record in records:
        processor.process(record)
    return processor


def test_looped_binance_session_continues_its_update_ids(captures_dir, tmp_path):
    capture = _capture(captures_dir, "binance-spot")
    looped = tmp_path / "binance.looped.jsonl.gz"
    frames = write_looped_capture(capture, LOOPS, looped)
    assert frames == LOOPS * len(recv_frames(capture))

    write_looped_capture(capture, 1, tmp_path / "once.jsonl.gz")
    once = _process(tmp_path / "once.jsonl.gz")
    processor = _process(looped)
    # Every loop after the first applies every diff of the session on top of the
    # same book: no gap, no resync, and (loops - 1) whole sessions more applied.
    diffs = sum(1 for frame in recv_frames(capture) if '"depthUpdate"' in frame)
    applied = {s.symbol: s.applied_messages for s in processor.books.values()}
    applied_once = {s.symbol: s.applied_messages for s in once.books.values()}
    assert processor.stats.sequence_gaps == 0 and processor.stats.resyncs == 0
    assert all(sync.is_synced for sync in processor.books.values())
    assert sum(applied.values()) - sum(applied_once.values()) == (LOOPS - 1) * diffs
    assert processor.stats.frames == frames


def test_binance_shifter_moves_each_symbols_ids_by_its_span():
    frames = [
        '{"stream":"a@depth","data":{"e":"depthUpdate","E":1,"s":"AAA","U":10,"u":12,"b":[],"a":[]}}',
        '{"stream":"a@depth","data":{"e":"depthUpdate","E":2,"s":"AAA","U":13,"u":19,"b":[["1.0","2"]],"a":[]}}',
        '{"stream":"b@depth","data":{"e":"depthUpdate","E":3,"s":"BBB","U":500,"u":500,"b":[],"a":[]}}',
        '{"stream":"a@bookTicker","data":{"u":19,"s":"AAA","b":"1.0","B":"2","a":"1.1","A":"3"}}',
        '{"stream":"a@aggTrade","data":{"e":"aggTrade","s":"AAA","a":77,"p":"1.0"}}',
        'not json',
    ]
    shift = binance_id_shifter(frames)
    shifted = [shift(frame, 2) for frame in frames]
    data = [orjson.loads(frame)["data"] for frame in shifted[:5]]
    # AAA spans ids 10..19 (10 ids): loop 2 starts at 30, right after loop 1's last (29).
    assert (data[0]["U"], data[0]["u"], data[1]["U"], data[1]["u"]) == (30, 32, 33, 39)
    assert (data[2]["U"], data[2]["u"]) == (502, 502)  # BBB spans one id
    assert data[3]["u"] == 39 and data[3]["b"] == "1.0"
    assert shifted[4] == frames[4] and shifted[5] == frames[5]  # not sequenced, not JSON: unchanged
    assert [shift(frame, 0) for frame in frames] == frames


@pytest.mark.parametrize("name", ["kraken-spot", "okx"])
def test_looped_in_band_snapshot_sessions_repeat_frames_unchanged(captures_dir, tmp_path, name):
    capture = _capture(captures_dir, name)
    looped = tmp_path / f"{name}.looped.jsonl.gz"
    write_looped_capture(capture, 2, looped)
    frames = recv_frames(capture)
    assert recv_frames(load_capture(looped)) == frames + frames
    write_looped_capture(capture, 1, tmp_path / "once.jsonl.gz")
    once, processor = _process(tmp_path / "once.jsonl.gz"), _process(looped)
    # Each loop resets the books with its in-band snapshots: every checksum holds, twice over.
    checks = sum(s.checksum_ok for s in processor.books.values())
    assert checks == 2 * sum(s.checksum_ok for s in once.books.values()) > 0
    assert sum(s.checksum_failed for s in processor.books.values()) == 0
    assert processor.stats.book_messages == 2 * once.stats.book_messages
