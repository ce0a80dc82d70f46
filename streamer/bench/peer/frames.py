"""The frames of a recorded session, looped, for feeding COBY and cryptofeed the same input.

Looping is concatenation on one connection: the session's ``recv`` frames
N times, in recorded order. Kraken and OKX send their book snapshots in-band
at the start of a session, so each loop resets every book and the recorded
checksums stay valid; their frames are repeated byte for byte.

Binance's book comes from one REST snapshot per connection, and its diffs
carry update ids (``U``/``u``) that must continue the chain: repeated as
recorded, the second loop's diffs would all be older than the book, and a
client would drop them unread (a benchmark of the stale-drop path, not of
book work). So loop k shifts every id of a symbol by k times the session's
span of that symbol's ids (last ``u`` - first ``U`` + 1): the loops form one
continuous session whose diffs all apply on top of the first loop's book, as
a live connection's would. The levels are the recorded ones (absolute sizes,
so the book stays a plausible one); only the ids change.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import orjson

from ...capture.reader import HTTP, RECV, Capture, payload
from ...capture.replay import IDENTIFYING_PARAMS, protocol_of
from ...errors import UnknownExchangeError


def recv_frames(capture: Capture) -> list[str | bytes]:
    """Every received WebSocket frame of the session (all connections), in recorded order."""
    return [payload(rec) for rec in capture.records if rec["dir"] == RECV]


def resource_key(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What identifies a REST resource: its path and the parameters that select it (not ``limit``)."""
    parts = urlsplit(url)
    params = tuple(sorted((k, v) for k, v in parse_qsl(parts.query) if k in IDENTIFYING_PARAMS))
    return parts.path.rstrip("/"), params


def http_bodies(capture: Capture) -> dict[tuple, str]:
    """Recorded REST bodies by :func:`resource_key` (the last recording of a resource wins)."""
    return {resource_key(rec["url"]): rec["data"] for rec in capture.records if rec["dir"] == HTTP}


def write_looped_capture(capture: Capture, loops: int, target: Path) -> int:
    """Write ``capture`` with its ``recv`` frames repeated ``loops`` times to ``target``.

    Everything before the first ``recv`` (connects, subscriptions, REST) is
    kept once; the ``recv`` records are repeated on their own connections with
    ``t`` shifted by the session span per loop, so time never goes backwards.
    Returns the number of ``recv`` frames written.
    """
    if loops < 1:
        raise ValueError(f"loops must be at least 1, got {loops}")
    records = list(capture.records)
    span = (records[-1]["t"] - records[0]["t"]) + 1.0 if records else 0.0
    shift_ids = _id_shifter(capture)
    written = 0
    with gzip.open(target, "wb", compresslevel=1) as out:
        out.write(orjson.dumps(capture.meta) + b"\n")
        for loop in range(loops):
            for rec in _loop_records(records, loop):
                if loop:
                    rec = {**rec, "t": rec["t"] + loop * span}
                    if rec["dir"] == RECV and shift_ids is not None and not rec.get("binary"):
                        rec["data"] = shift_ids(rec["data"], loop)
                written += rec["dir"] == RECV
                out.write(orjson.dumps(rec) + b"\n")
    return written


#: Shifts a frame's sequence ids for loop k (see the module docstring).
IdShifter = Callable[[str, int], str]


def _id_shifter(capture: Capture) -> IdShifter | None:
    """How a capture's frames continue their sequence across loops (None: they need not)."""
    try:
        protocol = protocol_of(capture)
    except UnknownExchangeError:
        return None
    return binance_id_shifter(recv_frames(capture)) if protocol == "binance" else None


def _binance_event(frame: str) -> tuple[dict, dict] | None:
    """(message, its event) of a Binance frame (combined-stream or raw), None if it is not JSON."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    data = message.get("data", message)
    return (message, data) if isinstance(data, dict) else None


def binance_id_shifter(frames: Iterable[str | bytes]) -> IdShifter:
    """Shifts the update ids of Binance ``depthUpdate`` and ``bookTicker`` frames per loop.

    The span of each symbol is taken from the session's diffs; a symbol
    without diffs keeps its ids. Frames of other kinds pass unchanged.
    """
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for frame in frames:
        parsed = _binance_event(frame) if isinstance(frame, str) else None
        if parsed is None or parsed[1].get("e") != "depthUpdate":
            continue
        data = parsed[1]
        symbol, low, high = data.get("s"), data.get("U"), data.get("u")
        if isinstance(symbol, str) and type(low) is int and type(high) is int:
            first.setdefault(symbol, low)
            last[symbol] = max(high, last.get(symbol, high))
    spans = {symbol: last[symbol] - first[symbol] + 1 for symbol in first}

    def shift(frame: str, loop: int) -> str:
        parsed = _binance_event(frame)
        if parsed is None:
            return frame
        message, data = parsed
        offset = spans.get(str(data.get("s")), 0) * loop
        # A diff carries its first and last id; a bookTicker (b, B, a, A) the book's last id.
        keys = ("U", "u") if data.get("e") == "depthUpdate" else ("u",) if "B" in data and "A" in data else ()
        if not keys or not offset or not all(type(data.get(key)) is int for key in keys):
            return frame
        for key in keys:
            data[key] += offset
        return orjson.dumps(message).decode()

    return shift


def _loop_records(records: list[dict], loop: int) -> Iterable[dict]:
    # The first loop is the whole session; later loops repeat only what the
    # exchange sent, on connections the client already has open.
    return records if loop == 0 else (rec for rec in records if rec["dir"] == RECV)
