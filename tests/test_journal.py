"""The durability journal: append, read back, torn tails, reclaiming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from streamer.journal.log import Journal
from streamer.journal.records import Kind, Record, decode_from, encode


def test_records_round_trip_with_meta_and_binary_payload():
    record = Record(7, 1_700_000_000_123_456, Kind.HTTP, "BTCUSDT", b'{"lastUpdateId":1}\x00\xff')
    data = encode(record)
    decoded, end = decode_from(memoryview(data), 0)
    assert decoded == record and end == len(data)


def test_append_then_read_in_order_across_segments(tmp_path):
    journal = Journal(tmp_path, segment_bytes=1024)
    seqs = [journal.append(1000 + i, Kind.WS_TEXT, f'{{"i":{i}}}' * 5) for i in range(200)]
    assert seqs == list(range(1, 201))
    assert len(journal.segments()) > 5
    assert [r.seq for r in journal.read()] == seqs
    assert [r.seq for r in journal.read(from_seq=150)] == list(range(150, 201))
    assert [r.text() for r in journal.read(from_seq=200)] == ['{"i":199}' * 5]
    journal.close()
    # Reopening continues the numbering.
    again = Journal(tmp_path, segment_bytes=1024)
    assert again.append(5, Kind.WS_TEXT, "x") == 201


def test_torn_tail_is_cut_on_open(tmp_path):
    journal = Journal(tmp_path)
    for i in range(10):
        journal.append(i, Kind.WS_TEXT, f"frame {i}")
    journal.close()
    (_, path), = journal.segments()
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # a crash in the middle of the last write
        fh.truncate(size - 3)
    reopened = Journal(tmp_path)
    assert [r.text() for r in reopened.read()] == [f"frame {i}" for i in range(9)]
    assert reopened.truncated_bytes > 0
    assert reopened.append(0, Kind.WS_TEXT, "after") == 10
    assert [r.seq for r in reopened.read()][-2:] == [9, 10]


def test_a_flipped_byte_stops_reading_at_the_bad_record(tmp_path):
    journal = Journal(tmp_path)
    for i in range(5):
        journal.append(i, Kind.WS_TEXT, f"frame {i}")
    journal.close()
    (_, path), = journal.segments()
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [r.seq for r in Journal(tmp_path).read()] == [1, 2, 3, 4]


def test_reclaim_deletes_only_whole_segments_before_the_base(tmp_path):
    journal = Journal(tmp_path, segment_bytes=600)
    for i in range(100):
        journal.append(i, Kind.WS_TEXT, "y" * 50)
    before = journal.segments()
    freed = journal.reclaim(base_seq=60)
    after = journal.segments()
    assert freed > 0 and len(after) < len(before)
    remaining = [r.seq for r in journal.read()]
    assert remaining[0] <= 60 and remaining[-1] == 100
    assert journal.reclaim(base_seq=10**9) >= 0
    assert journal.segments()[-1] == after[-1]  # the segment being written is never deleted


def test_records_survive_kill_9_of_the_writer(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        from streamer.journal.log import Journal
        from streamer.journal.records import Kind
        j = Journal({str(tmp_path)!r}, fsync_interval=3600)
        for i in range(1000):
            j.append(i, Kind.WS_TEXT, "frame %d" % i)
        print("written", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [r.text() for r in Journal(tmp_path).read()][-1] == "frame 999"
