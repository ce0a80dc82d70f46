"""Naive reference clients for the simulator tests, checked against real captures.

The simulator's frames are verified by rebuilding books the way an exchange's
documentation says a client must, with code that shares nothing with COBY
(plain dicts, ``zlib.crc32``, ``Decimal`` keys). The tests in this file prove
the reference clients themselves reproduce the recorded Kraken and OKX
sessions, so a passing simulator test means "a documented client would accept
these frames", not "COBY agrees with itself".
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from decimal import Decimal
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def captures_dir() -> Path:
    configured = Path(os.environ.get("COBY_CAPTURES_DIR", "../shared/fixtures/captures"))
    return configured if configured.is_absolute() else (REPO_ROOT / configured).resolve()


def capture_records(name: str):
    path = captures_dir() / name
    if not path.exists():
        pytest.skip(f"capture {name} not found under {captures_dir()} (set COBY_CAPTURES_DIR)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


# ---------------------------------------------------------------------------
# Reference checksums (from the exchanges' documentation)
# ---------------------------------------------------------------------------


def ref_kraken_checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """Top 10 asks ascending then top 10 bids descending; '.' removed, leading zeros stripped."""
    text = ""
    for price, volume in list(asks[:10]) + list(bids[:10]):
        text += price.replace(".", "").lstrip("0") + volume.replace(".", "").lstrip("0")
    return zlib.crc32(text.encode())


def ref_okx_checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """Top 25 interleaved bid:ask; signed 32-bit."""
    parts: list[str] = []
    for i in range(25):
        if i < len(bids):
            parts += [bids[i][0], bids[i][1]]
        if i < len(asks):
            parts += [asks[i][0], asks[i][1]]
    value = zlib.crc32(":".join(parts).encode())
    return value - (1 << 32) if value >= (1 << 31) else value


# ---------------------------------------------------------------------------
# Reference clients
# ---------------------------------------------------------------------------


class RefSide:
    """One book side: Decimal price -> (price string, size string)."""

    def __init__(self, descending: bool) -> None:
        self.levels: dict[Decimal, tuple[str, str]] = {}
        self.descending = descending

    def set(self, price: str, size: str) -> None:
        key = Decimal(price)
        if Decimal(size) == 0:
            self.levels.pop(key, None)
        else:
            self.levels[key] = (price, size)

    def sorted(self) -> list[tuple[str, str]]:
        return [self.levels[k] for k in sorted(self.levels, reverse=self.descending)]

    def truncate(self, depth: int) -> None:
        for key in sorted(self.levels, reverse=self.descending)[depth:]:
            del self.levels[key]


class RefKrakenBook:
    """A Kraken v1 ``book-N`` client: snapshot, updates in order, truncation, checksum."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.asks = RefSide(descending=False)
        self.bids = RefSide(descending=True)
        self.updates = 0
        self.checksums_ok = 0

    def apply(self, frame: list) -> None:
        checksum = None
        for payload in frame[1:-2]:
            for key, side in (("as", self.asks), ("bs", self.bids), ("a", self.asks), ("b", self.bids)):
                for level in payload.get(key, []):
                    assert 3 <= len(level) <= 4 and all(isinstance(x, str) for x in level), level
                    if len(level) == 4:
                        assert level[3] == "r", level
                    side.set(level[0], level[1])
            if "c" in payload:
                checksum = int(payload["c"])
        self.asks.truncate(self.depth)
        self.bids.truncate(self.depth)
        is_snapshot = any("as" in p or "bs" in p for p in frame[1:-2])
        if is_snapshot:
            assert checksum is None, "Kraken snapshots carry no checksum"
            return
        self.updates += 1
        assert checksum is not None, f"update without checksum: {frame}"
        assert ref_kraken_checksum(self.asks.sorted(), self.bids.sorted()) == checksum, frame
        self.checksums_ok += 1


class RefOkxBook:
    """An OKX ``books`` client: snapshot, seqId chain, checksum when non-zero. Never truncates."""

    def __init__(self) -> None:
        self.asks = RefSide(descending=False)
        self.bids = RefSide(descending=True)
        self.seq: int | None = None
        self.updates = 0
        self.checksums_ok = 0

    def apply(self, msg: dict) -> None:
        assert len(msg["data"]) == 1
        data = msg["data"][0]
        if msg["action"] == "snapshot":
            self.asks = RefSide(descending=False)
            self.bids = RefSide(descending=True)
            if "prevSeqId" in data:
                assert data["prevSeqId"] == -1
        else:
            assert msg["action"] == "update"
            self.updates += 1
            if "prevSeqId" in data and self.seq is not None:
                assert data["prevSeqId"] == self.seq, f"seqId chain broken: {self.seq} -> {data['prevSeqId']}"
        for key, side in (("asks", self.asks), ("bids", self.bids)):
            for level in data[key]:
                assert len(level) == 4 and all(isinstance(x, str) for x in level), level
                side.set(level[0], level[1])
        self.seq = data.get("seqId")
        if data["checksum"] != 0:
            assert ref_okx_checksum(self.bids.sorted(), self.asks.sorted()) == data["checksum"], msg
            self.checksums_ok += 1


class RefBinanceBook:
    """Binance spot: REST snapshot + diff events with the documented bridging rules."""

    def __init__(self) -> None:
        self.asks = RefSide(descending=False)
        self.bids = RefSide(descending=True)
        self.last_id: int | None = None
        self._bridged = False
        self.buffer: list[dict] = []
        self.applied = 0
        self.dropped = 0

    def on_event(self, data: dict) -> None:
        assert data["e"] == "depthUpdate"
        assert data["U"] <= data["u"]
        if self.last_id is None:
            self.buffer.append(data)
            return
        self._apply(data)

    def on_snapshot(self, body: dict) -> None:
        for price, size in body["bids"]:
            self.bids.set(price, size)
        for price, size in body["asks"]:
            self.asks.set(price, size)
        self.last_id = body["lastUpdateId"]
        self._bridged = False
        buffered, self.buffer = self.buffer, []
        for data in buffered:
            self._apply(data)

    def _apply(self, data: dict) -> None:
        if data["u"] <= self.last_id:
            self.dropped += 1
            return
        if not self._bridged:
            assert data["U"] <= self.last_id + 1 <= data["u"], (self.last_id, data["U"], data["u"])
            self._bridged = True
        else:
            assert data["U"] == self.last_id + 1, f"gap: last u {self.last_id}, next U {data['U']}"
        for price, size in data["b"]:
            self.bids.set(price, size)
        for price, size in data["a"]:
            self.asks.set(price, size)
        self.last_id = data["u"]
        self.applied += 1


# ---------------------------------------------------------------------------
# The reference clients reproduce the recorded sessions
# ---------------------------------------------------------------------------


@pytest.mark.captures
def test_reference_kraken_client_reproduces_the_recorded_checksums():
    books: dict[int, RefKrakenBook] = {}
    for rec in capture_records("kraken-spot.session1.jsonl.gz"):
        if rec["dir"] != "recv":
            continue
        msg = json.loads(rec["data"])
        if isinstance(msg, list) and str(msg[-2]).startswith("book-"):
            book = books.setdefault(msg[0], RefKrakenBook(int(msg[-2][5:])))
            book.apply(msg)
    assert sum(b.checksums_ok for b in books.values()) == 4269


@pytest.mark.captures
def test_reference_okx_client_reproduces_the_recorded_checksums():
    books: dict[str, RefOkxBook] = {}
    for rec in capture_records("okx.session1.jsonl.gz"):
        if rec["dir"] != "recv":
            continue
        msg = json.loads(rec["data"])
        if isinstance(msg, dict) and msg.get("arg", {}).get("channel") == "books" and "data" in msg:
            books.setdefault(msg["arg"]["instId"], RefOkxBook()).apply(msg)
    assert sum(b.checksums_ok for b in books.values()) == 290


@pytest.mark.captures
def test_reference_binance_client_bridges_the_recorded_session():
    books: dict[str, RefBinanceBook] = {}
    for rec in capture_records("binance-spot.session1.jsonl.gz"):
        if rec["dir"] == "http" and "/api/v3/depth" in rec["url"]:
            symbol = rec["url"].split("symbol=")[1].split("&")[0]
            books.setdefault(symbol, RefBinanceBook()).on_snapshot(json.loads(rec["data"]))
        elif rec["dir"] == "recv":
            data = json.loads(rec["data"])["data"]
            if data.get("e") == "depthUpdate":
                books.setdefault(data["s"], RefBinanceBook()).on_event(data)
    assert len(books) == 4
    assert sum(b.applied for b in books.values()) == 172


def test_reference_checksums_detect_a_changed_level():
    asks = [("100.1", "1.5"), ("100.2", "0.25")]
    bids = [("99.9", "2"), ("99.8", "3")]
    assert ref_kraken_checksum(asks, bids) != ref_kraken_checksum(asks, [("99.9", "2.1"), ("99.8", "3")])
    assert ref_okx_checksum(bids, asks) != ref_okx_checksum(bids, asks[:1])
