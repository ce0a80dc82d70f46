"""Read ``coby-capture/1`` files: recorded exchange sessions, one JSON record a line.

A capture is a gzip-compressed UTF-8 JSONL file. The first line is the ``meta``
header (``format``, ``session``, ``exchange``, ``connections``...); every later
line is one ``connect``, ``send``, ``recv`` or ``http`` record stamped with a
non-decreasing Unix time ``t``. Text payloads are stored verbatim in ``data``;
binary WebSocket frames carry ``binary: true`` and base64 in ``data``.

Every structural problem (not gzip, not JSON, missing fields, wrong types,
time going backwards) raises :class:`CaptureFormatError` naming the file and
line, so a bad capture fails loudly instead of replaying something else.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..errors import CobyError

FORMAT = "coby-capture/1"

META = "meta"
CONNECT = "connect"
SEND = "send"
RECV = "recv"
HTTP = "http"
RECORD_KINDS = frozenset({CONNECT, SEND, RECV, HTTP})

# Which fields each record kind must carry (besides ``dir`` and ``t``).
_CONN_KINDS = frozenset({CONNECT, SEND, RECV})
_URL_KINDS = frozenset({CONNECT, SEND, HTTP})
_DATA_KINDS = frozenset({SEND, RECV, HTTP})


class CaptureFormatError(CobyError):
    """A capture file is not valid ``coby-capture/1`` (the message names file and line)."""

    code = "CAP-001"


def _fail(path: Path | str, line_no: int, reason: str) -> CaptureFormatError:
    return CaptureFormatError(f"{path}: line {line_no}: {reason}")


def _check_meta(path: Path | str, rec: dict) -> None:
    if rec.get("dir") != META:
        raise _fail(path, 1, f"first record must be the 'meta' header, got dir={rec.get('dir')!r}")
    if rec.get("format") != FORMAT:
        raise _fail(path, 1, f"unsupported format {rec.get('format')!r} (expected {FORMAT!r})")
    for key in ("session", "exchange"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise _fail(path, 1, f"meta.{key} must be a non-empty string")
    connections = rec.get("connections", [])
    if not isinstance(connections, list):
        raise _fail(path, 1, "meta.connections must be a list")
    for item in connections:
        if not (isinstance(item, dict) and _is_int(item.get("conn")) and isinstance(item.get("url"), str)):
            raise _fail(path, 1, f"meta.connections entry must be {{conn: int, url: str}}, got {item!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(path: Path | str, line_no: int, rec: dict) -> None:
    kind = rec.get("dir")
    if kind == META:
        raise _fail(path, line_no, "'meta' may only be the first record")
    if kind not in RECORD_KINDS:
        raise _fail(path, line_no, f"unknown record kind dir={kind!r}")
    if kind in _CONN_KINDS and not _is_int(rec.get("conn")):
        raise _fail(path, line_no, f"{kind} record needs an integer 'conn'")
    if kind in _URL_KINDS and not isinstance(rec.get("url"), str):
        raise _fail(path, line_no, f"{kind} record needs a string 'url'")
    if kind in _DATA_KINDS and not isinstance(rec.get("data"), str):
        raise _fail(path, line_no, f"{kind} record needs a string 'data'")
    binary = rec.get("binary", False)
    if not isinstance(binary, bool) or (binary and kind != RECV):
        raise _fail(path, line_no, "'binary' must be a boolean and only appears on recv records")


def _check_time(path: Path | str, line_no: int, rec: dict, previous: float | None) -> float:
    t = rec.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise _fail(path, line_no, f"'t' must be a finite number, got {t!r}")
    if previous is not None and t < previous:
        raise _fail(path, line_no, f"'t' went backwards ({t!r} < {previous!r})")
    return float(t)


def iter_records(path: Path | str, *, skip_meta: bool = False, allow_truncated: bool = False) -> Iterator[dict]:
    """Yield every record of a capture in file order, validating each one.

    The first record is the ``meta`` header unless ``skip_meta`` is true.
    ``allow_truncated`` accepts a file whose gzip stream ends early (a recorder
    killed mid-write): the complete lines before the cut are still yielded.
    """
    previous_t: float | None = None
    line_no = 0
    try:
        with gzip.open(path, "rb") as fp:
            for line_no, raw in enumerate(fp, start=1):
                if not raw.strip():
                    raise _fail(path, line_no, "empty line")
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    if allow_truncated and not raw.endswith(b"\n"):
                        return  # the last, partially written line of a cut-off file
                    raise _fail(path, line_no, f"not valid JSON ({exc})") from None
                if not isinstance(rec, dict):
                    raise _fail(path, line_no, "record is not a JSON object")
                if line_no == 1:
                    _check_meta(path, rec)
                else:
                    _check_record(path, line_no, rec)
                # The meta header repeats the first record's ``t``; it starts the clock.
                previous_t = _check_time(path, line_no, rec, previous_t)
                if line_no == 1 and skip_meta:
                    continue
                yield rec
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise CaptureFormatError(f"{path}: not a gzip file ({exc})") from None
    except EOFError as exc:
        if not allow_truncated:
            raise CaptureFormatError(f"{path}: truncated gzip stream after line {line_no} ({exc})") from None
        return
    except FileNotFoundError:
        raise CaptureFormatError(f"{path}: no such capture file") from None
    if line_no == 0:
        raise CaptureFormatError(f"{path}: empty capture (no meta header)")


def payload(record: dict) -> str | bytes:
    """The payload exactly as it crossed the wire.

    ``str`` for text frames and HTTP bodies, ``bytes`` for binary frames
    (base64-decoded). Raises :class:`CaptureFormatError` on invalid base64 and
    on records that carry no payload (``connect``, ``meta``).
    """
    data = record.get("data")
    if not isinstance(data, str):
        raise CaptureFormatError(f"{record.get('dir')!r} record has no payload")
    if record.get("binary"):
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CaptureFormatError(f"binary {record.get('dir')} record holds invalid base64 ({exc})") from None
    return data


def read_meta(path: Path | str) -> dict:
    """The ``meta`` header of a capture (reads only the first line)."""
    for rec in iter_records(path):
        return rec
    raise CaptureFormatError(f"{path}: empty capture (no meta header)")  # unreachable: iter_records raises


@dataclass(frozen=True)
class Capture:
    """A whole capture in memory: the header plus its records in recorded order.

    Captures are small (tens of thousands of records), so holding them is
    cheaper than re-reading the gzip stream for every view.
    """

    path: Path
    meta: dict
    records: tuple[dict, ...]
    connections: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str, *, allow_truncated: bool = False) -> "Capture":
        path = Path(path)
        records = iter(iter_records(path, allow_truncated=allow_truncated))
        meta = next(records)
        body = tuple(records)
        # meta.connections comes first; connect records fill in (or confirm) the rest,
        # because a live recorder only learns its sockets after writing the header.
        connections = {int(c["conn"]): c["url"] for c in meta.get("connections", [])}
        for rec in body:
            if rec["dir"] == CONNECT:
                connections.setdefault(rec["conn"], rec["url"])
        return cls(path, meta, body, dict(sorted(connections.items())))

    @property
    def exchange(self) -> str:
        return self.meta["exchange"]

    @property
    def session(self) -> str:
        return self.meta["session"]

    def recv_records(self, conn: int | None = None) -> list[dict]:
        """Received frames in recorded order, of one connection or of all of them."""
        return [r for r in self.records if r["dir"] == RECV and (conn is None or r["conn"] == conn)]

    def send_records(self, conn: int | None = None) -> list[dict]:
        """Messages the recorder sent, in order, of one connection or of all of them."""
        return [r for r in self.records if r["dir"] == SEND and (conn is None or r["conn"] == conn)]

    def http_records(self) -> list[dict]:
        """REST responses (GET bodies) in recorded order."""
        return [r for r in self.records if r["dir"] == HTTP]

    def recv_by_conn(self) -> dict[int, list[dict]]:
        """Received frames grouped per connection, each list in recorded order."""
        grouped: dict[int, list[dict]] = {conn: [] for conn in self.connections}
        for rec in self.records:
            if rec["dir"] == RECV:
                grouped.setdefault(rec["conn"], []).append(rec)
        return grouped

    @property
    def span(self) -> float:
        """Seconds from the first to the last record."""
        if not self.records:
            return 0.0
        return self.records[-1]["t"] - self.records[0]["t"]


def load_capture(path: Path | str, *, allow_truncated: bool = False) -> Capture:
    """Load and validate a whole capture file."""
    return Capture.load(path, allow_truncated=allow_truncated)
