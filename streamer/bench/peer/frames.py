"""The frames of a recorded session, looped, for feeding COBY and cryptofeed the same input.

Looping is plain concatenation on one connection: the session's ``recv``
frames N times, in recorded order. Kraken and OKX send their book snapshots
in-band at the start of a session, so each loop resets every book and the
recorded checksums stay valid. Binance's diffs carry update ids that the
first loop already passed, so from the second loop on both implementations
parse them and drop them as stale (``u <= lastUpdateId``): on Binance the
loops measure parsing and dispatch more than book work. That is said next to
the figures.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import orjson

from ...capture.reader import HTTP, RECV, Capture, payload
from ...capture.replay import IDENTIFYING_PARAMS


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
    written = 0
    with gzip.open(target, "wb", compresslevel=1) as out:
        out.write(orjson.dumps(capture.meta) + b"\n")
        for loop in range(loops):
            for rec in _loop_records(records, loop):
                if loop:
                    rec = {**rec, "t": rec["t"] + loop * span}
                written += rec["dir"] == RECV
                out.write(orjson.dumps(rec) + b"\n")
    return written


def _loop_records(records: list[dict], loop: int) -> Iterable[dict]:
    # The first loop is the whole session; later loops repeat only what the
    # exchange sent, on connections the client already has open.
    return records if loop == 0 else (rec for rec in records if rec["dir"] == RECV)
