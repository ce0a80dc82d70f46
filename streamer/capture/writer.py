"""Write ``coby-capture/1`` files while streaming, so live sessions can be replayed later.

The writer is synchronous on purpose: the connection layer calls it inline
for every frame, and a gzip write of one short line is cheaper than a hop
through a queue. The output is append-only and opened exclusively (an
existing capture is never overwritten). The compressor is sync-flushed every
``flush_every`` records or ``flush_interval`` seconds, whichever comes first,
so a process that dies mid-session leaves a file whose complete lines are
readable (``iter_records(..., allow_truncated=True)``). :meth:`CaptureWriter.close`
is idempotent and does no awaiting, so it is safe in ``finally`` blocks of
cancelled tasks.
"""

from __future__ import annotations

import base64
import gzip
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import orjson

from .. import __version__
from ..errors import CobyError
from .reader import CONNECT, FORMAT, HTTP, RECV, SEND


class CaptureWriteError(CobyError):
    """A record could not be written (writer closed, payload not encodable, file exists)."""

    code = "CAP-002"


class CaptureWriter:
    """Append WebSocket and REST traffic of one session to a ``coby-capture/1`` file.

    ``connections`` pre-declares sockets for the header (``{conn: url}`` or an
    iterable of ``(conn, url)``); sockets opened later are still described by
    their ``connect`` records, which readers merge with the header.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        exchange: str,
        session: str,
        connections: Mapping[int, str] | Iterable[tuple[int, str]] = (),
        meta: Mapping[str, object] | None = None,
        flush_every: int = 1000,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not exchange or not session:
            raise CaptureWriteError("a capture needs a non-empty exchange and session name")
        self.path = Path(path)
        pairs = connections.items() if isinstance(connections, Mapping) else connections
        self._meta: dict[str, object] = {
            "format": FORMAT,
            "session": session,
            "exchange": exchange,
            "connections": [{"conn": int(conn), "url": str(url)} for conn, url in pairs],
            "recorder": f"coby {__version__}",
        }
        if meta:
            reserved = {"dir", "t", "format", "session", "exchange", "connections"} & set(meta)
            if reserved:
                raise CaptureWriteError(f"meta may not override {sorted(reserved)}")
            self._meta.update(meta)
        self._clock = clock
        self._flush_every = max(1, flush_every)
        self._flush_interval = flush_interval
        try:
            # "x": a capture is evidence; never overwrite an existing one.
            self._raw = open(self.path, "xb")
        except FileExistsError:
            raise CaptureWriteError(f"{self.path}: capture already exists; refusing to overwrite") from None
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=6, mtime=0)
        self._last_t: float | None = None
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._meta_written = False
        self.records_written = 0
        self.closed = False

    # -- record kinds -------------------------------------------------------

    def connect(self, conn: int, url: str) -> None:
        """A WebSocket connection ``conn`` was opened to ``url``."""
        self._write({"dir": CONNECT, "conn": conn, "url": url})

    def send(self, conn: int, url: str, data: str) -> None:
        """The client sent text message ``data`` on connection ``conn``."""
        self._write({"dir": SEND, "conn": conn, "url": url, "data": _text(data, "send")})

    def recv(self, conn: int, data: str | bytes) -> None:
        """Frame ``data`` arrived on ``conn``: ``str`` for text frames, ``bytes`` for binary."""
        if isinstance(data, str):
            self._write({"dir": RECV, "conn": conn, "data": data})
        elif isinstance(data, (bytes, bytearray, memoryview)):
            self._write({"dir": RECV, "conn": conn, "binary": True, "data": base64.b64encode(data).decode("ascii")})
        else:
            raise CaptureWriteError(f"recv payload must be str or bytes, got {type(data).__name__}")

    def http(self, url: str, data: str | bytes) -> None:
        """The body of a GET to ``url`` (full URL including the query)."""
        self._write({"dir": HTTP, "url": url, "data": _text(data, "http")})

    # -- plumbing -----------------------------------------------------------

    def _now(self) -> float:
        # Readers require non-decreasing ``t``; a wall clock stepping back must not break that.
        t = self._clock()
        if self._last_t is not None and t < self._last_t:
            t = self._last_t
        self._last_t = t
        return t

    def _write(self, record: dict) -> None:
        if self.closed:
            raise CaptureWriteError(f"{self.path}: writer is closed; {record['dir']} record not written")
        t = self._now()
        line = self._encode({"t": t, **record})  # encode first: a bad payload writes nothing
        if not self._meta_written:
            # The header repeats the first record's time, as in every capture.
            self._gz.write(self._encode({"t": t, "dir": "meta", **self._meta}))
            self._meta_written = True
        self._gz.write(line)
        self.records_written += 1
        self._unflushed += 1
        if self._unflushed >= self._flush_every or time.monotonic() - self._last_flush >= self._flush_interval:
            self.flush()

    def _encode(self, record: dict) -> bytes:
        try:
            return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:  # orjson.JSONEncodeError: e.g. a lone surrogate in a str
            raise CaptureWriteError(f"{self.path}: cannot encode {record.get('dir')} record: {exc}") from None

    def flush(self) -> None:
        """Make every record written so far readable from the file (gzip sync flush)."""
        if self.closed:
            return
        self._gz.flush(zlib.Z_SYNC_FLUSH)
        self._raw.flush()
        self._unflushed = 0
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Finish the gzip stream and close the file. Idempotent; never awaits."""
        if self.closed:
            return
        try:
            if not self._meta_written:
                self._gz.write(self._encode({"t": self._now(), "dir": "meta", **self._meta}))
                self._meta_written = True
            self._gz.close()
        finally:
            self._raw.close()
            self.closed = True

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _text(data: str | bytes, kind: str) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CaptureWriteError(f"{kind} payload is not UTF-8 text: {exc}") from None
    raise CaptureWriteError(f"{kind} payload must be str, got {type(data).__name__}")
