"""The ``coby-capture/1`` format: our reader, our writer, and agreement with the reference reader."""

from __future__ import annotations

import asyncio
import base64
import gzip
import importlib.util
import os
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.capture.reader import (
    FORMAT,
    Capture,
    CaptureFormatError,
    iter_records,
    load_capture,
    payload,
    read_meta,
)
from streamer.capture.writer import CaptureWriteError, CaptureWriter

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ["binance-spot.session1", "kraken-spot.session1", "okx.session1"]


def captures_dir() -> Path:
    configured = os.environ.get("COBY_CAPTURES_DIR", "../shared/fixtures/captures")
    path = Path(configured)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def capture_path(session: str) -> Path:
    path = captures_dir() / f"{session}.jsonl.gz"
    if not path.exists():
        pytest.skip(f"recorded session {path.name} not found in {captures_dir()} (set COBY_CAPTURES_DIR)")
    return path


def all_capture_files() -> list[Path]:
    return sorted(captures_dir().glob("*.jsonl.gz")) if captures_dir().is_dir() else []


def reference_reader():
    """The standard-library reader shipped next to the captures (an independent implementation)."""
    path = captures_dir() / "read_capture.py"
    if not path.exists():
        pytest.skip(f"reference reader not found in {captures_dir()}")
    spec = importlib.util.spec_from_file_location("reference_read_capture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_gz_lines(path: Path, lines: list[bytes | str]) -> Path:
    with gzip.open(path, "wb") as fp:
        for line in lines:
            fp.write(line.encode() if isinstance(line, str) else line)
            fp.write(b"\n")
    return path


META = {"t": 10.0, "dir": "meta", "format": FORMAT, "session": "s1", "exchange": "binance", "connections": []}


def meta_line(**overrides) -> str:
    return orjson.dumps({**META, **overrides}).decode()


# -- reading real captures ------------------------------------------------------


@pytest.mark.captures
@pytest.mark.parametrize("path", all_capture_files(), ids=lambda p: p.name.split(".")[0])
def test_reader_agrees_with_reference_reader_on_every_capture(path):
    ref = reference_reader()
    ours = list(iter_records(path))
    theirs = list(ref.iter_records(str(path)))
    assert ours == theirs
    assert ours[0]["dir"] == "meta" and ours[0]["format"] == FORMAT
    for rec in ours[1:]:
        if "data" in rec:
            assert payload(rec) == ref.payload(rec)


@pytest.mark.captures
@pytest.mark.parametrize("session", SESSIONS)
def test_capture_views_partition_the_records(session):
    path = capture_path(session)
    capture = load_capture(path)
    raw = list(reference_reader().iter_records(str(path), skip_meta=True))

    assert capture.meta == read_meta(path) == next(iter_records(path))
    assert capture.session == session
    assert list(capture.records) == raw
    assert list(iter_records(path, skip_meta=True)) == raw

    recv = capture.recv_records()
    assert recv == [r for r in raw if r["dir"] == "recv"]
    assert capture.send_records() == [r for r in raw if r["dir"] == "send"]
    assert capture.http_records() == [r for r in raw if r["dir"] == "http"]
    by_conn = capture.recv_by_conn()
    assert sum(len(v) for v in by_conn.values()) == len(recv)
    for conn, records in by_conn.items():
        assert records == capture.recv_records(conn)
    # Every socket that carried traffic is known with its URL.
    connect_urls = {r["conn"]: r["url"] for r in raw if r["dir"] == "connect"}
    assert capture.connections == {**{c["conn"]: c["url"] for c in capture.meta["connections"]}, **connect_urls}
    assert set(by_conn) <= set(capture.connections)
    assert capture.span == raw[-1]["t"] - raw[0]["t"] > 0


@pytest.mark.captures
def test_binary_frames_decode_to_the_exact_bytes():
    path = captures_dir() / "huobi-spot.session1.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path.name} not found in {captures_dir()}")
    binary = [r for r in load_capture(path).recv_records() if r.get("binary")]
    assert binary
    for rec in binary:
        frame = payload(rec)
        assert isinstance(frame, bytes)
        assert frame == base64.b64decode(rec["data"])
        # Huobi frames are gzip-compressed JSON: decoding proves the bytes are intact.
        assert isinstance(orjson.loads(gzip.decompress(frame)), dict)


# -- rejecting bad files --------------------------------------------------------


BAD_FILES = {
    "first line is not meta": [orjson.dumps({"t": 1.0, "dir": "recv", "conn": 0, "data": "x"}).decode()],
    "unsupported format": [meta_line(format="coby-capture/9")],
    "meta without exchange": [meta_line(exchange="")],
    "meta connections not a list": [meta_line(connections={"0": "wss://x"})],
    "invalid JSON": [meta_line(), '{"t": 11.0, "dir": "recv", "conn": 0, "data": '],
    "record not an object": [meta_line(), "[1, 2, 3]"],
    "second meta": [meta_line(), meta_line()],
    "unknown dir": [meta_line(), orjson.dumps({"t": 11.0, "dir": "sent", "conn": 0, "data": "x"}).decode()],
    "recv without conn": [meta_line(), orjson.dumps({"t": 11.0, "dir": "recv", "data": "x"}).decode()],
    "conn is not an integer": [meta_line(), orjson.dumps({"t": 11.0, "dir": "recv", "conn": "0", "data": "x"}).decode()],
    "http without url": [meta_line(), orjson.dumps({"t": 11.0, "dir": "http", "data": "{}"}).decode()],
    "send without data": [meta_line(), orjson.dumps({"t": 11.0, "dir": "send", "conn": 0, "url": "wss://x"}).decode()],
    "binary on a send": [
        meta_line(),
        orjson.dumps({"t": 11.0, "dir": "send", "conn": 0, "url": "u", "data": "AA==", "binary": True}).decode(),
    ],
    "time goes backwards": [
        meta_line(),
        orjson.dumps({"t": 12.0, "dir": "recv", "conn": 0, "data": "a"}).decode(),
        orjson.dumps({"t": 11.5, "dir": "recv", "conn": 0, "data": "b"}).decode(),
    ],
    "time is NaN": [meta_line(), '{"t": NaN, "dir": "recv", "conn": 0, "data": "a"}'],
    "time is a string": [meta_line(), orjson.dumps({"t": "11", "dir": "recv", "conn": 0, "data": "a"}).decode()],
    "blank line": [meta_line(), ""],
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_capture_raises_a_clear_error(tmp_path, case):
    path = write_gz_lines(tmp_path / "bad.jsonl.gz", BAD_FILES[case])
    with pytest.raises(CaptureFormatError) as info:
        list(iter_records(path))
    assert str(path) in str(info.value) and info.value.code == "CAP-001"
    with pytest.raises(CaptureFormatError):
        load_capture(path)


def test_not_gzip_missing_and_empty_files_raise(tmp_path):
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text(meta_line() + "\n")
    with pytest.raises(CaptureFormatError, match="not a gzip file"):
        list(iter_records(plain))
    with pytest.raises(CaptureFormatError, match="no such capture file"):
        read_meta(tmp_path / "missing.jsonl.gz")
    empty = write_gz_lines(tmp_path / "empty.jsonl.gz", [])
    empty.write_bytes(gzip.compress(b""))
    with pytest.raises(CaptureFormatError, match="empty capture"):
        read_meta(empty)


def test_invalid_base64_payload_raises(tmp_path):
    rec = {"t": 11.0, "dir": "recv", "conn": 0, "binary": True, "data": "not*base64"}
    path = write_gz_lines(tmp_path / "b64.jsonl.gz", [meta_line(), orjson.dumps(rec).decode()])
    (record,) = iter_records(path, skip_meta=True)  # structurally valid
    with pytest.raises(CaptureFormatError, match="invalid base64"):
        payload(record)
    with pytest.raises(CaptureFormatError, match="no payload"):
        payload({"dir": "connect", "conn": 0, "url": "wss://x"})


def test_truncated_file_raises_unless_truncation_is_allowed(tmp_path):
    lines = [meta_line()] + [
        orjson.dumps({"t": 11.0 + i, "dir": "recv", "conn": 0, "data": f"frame {i}" * 50}).decode() for i in range(200)
    ]
    whole = write_gz_lines(tmp_path / "whole.jsonl.gz", lines).read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CaptureFormatError, match="truncated"):
        list(iter_records(cut))
    kept = list(iter_records(cut, allow_truncated=True))
    assert 1 < len(kept) < len(lines)
    assert [orjson.dumps(r).decode() for r in kept] == lines[: len(kept)]


# -- writing --------------------------------------------------------------------


class RecordedClock:
    """Returns the recorded ``t`` of the record about to be written."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rewrite(capture: Capture, path: Path) -> None:
    """Write every record of ``capture`` through :class:`CaptureWriter`, keeping its times."""
    clock = RecordedClock()
    clock.now = capture.records[0]["t"]
    writer = CaptureWriter(
        path,
        exchange=capture.exchange,
        session=capture.session,
        connections=capture.connections,
        clock=clock,
        flush_every=7,
    )
    with writer:
        for rec in capture.records:
            clock.now = rec["t"]
            kind = rec["dir"]
            if kind == "connect":
                writer.connect(rec["conn"], rec["url"])
            elif kind == "send":
                writer.send(rec["conn"], rec["url"], rec["data"])
            elif kind == "recv":
                writer.recv(rec["conn"], payload(rec))
            else:
                writer.http(rec["url"], rec["data"])
    assert writer.records_written == len(capture.records)


@pytest.mark.captures
@pytest.mark.parametrize("session", [*SESSIONS, "huobi-spot.session1"])
def test_writer_round_trips_a_real_session(tmp_path, session):
    original = load_capture(capture_path(session))
    out = tmp_path / "copy.jsonl.gz"
    rewrite(original, out)

    copy = load_capture(out)
    assert list(copy.records) == list(original.records)
    assert copy.connections == original.connections
    assert (copy.exchange, copy.session) == (original.exchange, original.session)
    assert copy.meta["t"] == original.records[0]["t"]

    ref = reference_reader()
    theirs = list(ref.iter_records(str(out)))
    assert theirs[0] == copy.meta
    assert theirs[1:] == list(original.records)
    for mine, orig in zip(theirs[1:], original.records):
        if "data" in orig:
            assert ref.payload(mine) == payload(orig)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frames=st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), max_size=30),
    bodies=st.lists(st.text(max_size=200), max_size=5),
)
def test_any_payload_round_trips_exactly(tmp_path_factory, frames, bodies):
    path = tmp_path_factory.mktemp("rt") / "c.jsonl.gz"
    with CaptureWriter(path, exchange="okx", session="prop", connections={0: "wss://example/ws"}) as writer:
        writer.connect(0, "wss://example/ws")
        writer.send(0, "wss://example/ws", '{"op":"subscribe"}')
        for frame in frames:
            writer.recv(0, frame)
        for body in bodies:
            writer.http("https://example/api?x=1", body)
    capture = load_capture(path)
    assert [payload(r) for r in capture.recv_records()] == frames
    assert [r["data"] for r in capture.http_records()] == bodies
    assert capture.connections == {0: "wss://example/ws"}
    times = [capture.meta["t"]] + [r["t"] for r in capture.records]
    assert times == sorted(times)


def test_writer_keeps_time_monotonic_when_the_clock_steps_back(tmp_path):
    ticks = iter([100.0, 99.0, 101.0, 50.0])
    path = tmp_path / "c.jsonl.gz"
    with CaptureWriter(path, exchange="kraken", session="s", clock=lambda: next(ticks)) as writer:
        for i in range(4):
            writer.recv(0, f"m{i}")
    assert [r["t"] for r in load_capture(path).records] == [100.0, 100.0, 101.0, 101.0]


def test_writer_refuses_to_overwrite_and_to_write_after_close(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    writer = CaptureWriter(path, exchange="binance", session="s")
    writer.http("https://example/api/v3/depth?symbol=X", '{"lastUpdateId":1}')
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(CaptureWriteError, match="closed"):
        writer.recv(0, "late frame")
    with pytest.raises(CaptureWriteError, match="already exists"):
        CaptureWriter(path, exchange="binance", session="s")
    assert [r["dir"] for r in iter_records(path)] == ["meta", "http"]


def test_writer_rejects_payloads_it_cannot_store_exactly(tmp_path):
    with CaptureWriter(tmp_path / "c.jsonl.gz", exchange="binance", session="s") as writer:
        with pytest.raises(CaptureWriteError):
            writer.recv(0, 12345)
        with pytest.raises(CaptureWriteError, match="UTF-8"):
            writer.http("https://example/x", b"\xff\xfe")
        with pytest.raises(CaptureWriteError):
            writer.recv(0, "\ud800")  # a lone surrogate cannot be UTF-8 text
        writer.recv(0, "ok")
    assert [payload(r) for r in load_capture(tmp_path / "c.jsonl.gz").recv_records()] == ["ok"]
    with pytest.raises(CaptureWriteError, match="override"):
        CaptureWriter(tmp_path / "d.jsonl.gz", exchange="x", session="s", meta={"format": "other"})


def test_empty_session_still_has_a_readable_header(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    CaptureWriter(path, exchange="okx", session="quiet", meta={"note": "nothing traded"}).close()
    capture = load_capture(path)
    assert capture.records == ()
    assert capture.meta["session"] == "quiet" and capture.meta["note"] == "nothing traded"


def test_flushed_records_are_readable_while_the_writer_is_open(tmp_path):
    path = tmp_path / "live.jsonl.gz"
    writer = CaptureWriter(path, exchange="okx", session="live", flush_every=10_000, flush_interval=3600)
    try:
        for i in range(5):
            writer.recv(0, f"frame {i}")
        writer.flush()
        with pytest.raises(CaptureFormatError, match="truncated"):
            list(iter_records(path))
        live = list(iter_records(path, allow_truncated=True, skip_meta=True))
        assert [r["data"] for r in live] == [f"frame {i}" for i in range(5)]
    finally:
        writer.close()
    assert len(load_capture(path).records) == 5


async def test_writer_closed_from_a_cancelled_task_leaves_a_valid_file(tmp_path):
    path = tmp_path / "cancelled.jsonl.gz"
    writer = CaptureWriter(path, exchange="kraken", session="cancel")
    written = asyncio.Event()

    async def record_forever() -> None:
        try:
            i = 0
            while True:
                writer.recv(0, f"frame {i}")
                i += 1
                if i == 3:
                    written.set()
                await asyncio.sleep(0)
        finally:
            writer.close()

    task = asyncio.create_task(record_forever())
    await written.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = load_capture(path).recv_records()
    assert len(records) == writer.records_written >= 3
    assert [r["data"] for r in records] == [f"frame {i}" for i in range(len(records))]
