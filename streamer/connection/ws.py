"""One exchange WebSocket connection, kept alive.

The adapter knows nothing about any exchange: it connects, hands every frame
with its receive time to ``on_frame``, sends what it is told to, answers the
protocol's application-level pings on a timer, detects stalls (no frame for
``stall_timeout`` seconds) and reconnects with capped, jittered backoff. What
to subscribe to, and what frames mean, belongs to the mapper and the feed.

Frame sizes have two limits. The transport cap (``transport_max_bytes``) is
what the WebSocket library accepts at all; a larger frame closes the
connection (1009), because it has to be buffered whole. Below it, frames
larger than the logical limit (``max_frame_bytes``, ``COBY_MAX_FRAME_BYTES``)
are delivered as usual and the feed quarantines them (:func:`frame_exceeds`,
:func:`oversized_quarantine`) without dropping the connection.

A handshake refused with HTTP 429 or 418 waits at least the server's
``Retry-After`` before the next attempt. Every reconnect delay is kept in
:attr:`WsClient.delays` for the operator and the tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..models import Quarantine
from .backoff import Backoff
from .clock import now_us
from .rest import parse_retry_after

log = logging.getLogger(__name__)


class FrameRecorder(Protocol):
    """Receives every frame in both directions (see :mod:`streamer.capture.writer`)."""

    def connect(self, conn: int, url: str) -> None: ...
    def send(self, conn: int, url: str, data: str) -> None: ...
    def recv(self, conn: int, data: str | bytes) -> None: ...


#: Default logical frame limit (``COBY_MAX_FRAME_BYTES``): larger frames are quarantined.
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
#: Default transport cap: larger frames cannot be received at all (the connection closes).
DEFAULT_TRANSPORT_MAX_BYTES = 64 * 1024 * 1024
#: Quarantine code of a frame above the logical limit.
OVERSIZED_CODE = "MAP-006"
#: Characters of an oversized frame kept in its quarantine record.
OVERSIZED_PREFIX_CHARS = 4096
#: Reconnect delays kept in :attr:`WsClient.delays`.
DELAYS_KEPT = 256


@dataclass
class WsOptions:
    stall_timeout: float = 30.0
    open_timeout: float = 10.0
    #: Frames larger than this are quarantined (the connection stays up).
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    #: Frames larger than this are refused by the WebSocket library (close 1009): memory stays bounded.
    transport_max_bytes: int = DEFAULT_TRANSPORT_MAX_BYTES
    #: Protocol-level (RFC 6455) ping interval; exchanges also answer those.
    ws_ping_interval: float | None = 20.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0


def frame_exceeds(raw: str | bytes, limit: int) -> bool:
    """True if the frame is larger than ``limit`` bytes (UTF-8 for text frames).

    Cheap on the hot path: exchange JSON is ASCII, where the length is the
    byte count; a text frame is encoded only when it could be over the limit.
    """
    n = len(raw)
    if n > limit:
        return True
    if isinstance(raw, bytes) or raw.isascii() or n * 4 <= limit:
        return False
    return len(raw.encode("utf-8", "surrogatepass")) > limit


def oversized_quarantine(exchange: str, raw: str | bytes, limit: int, local_ts: int) -> Quarantine:
    """The quarantine record of a frame above the logical limit: a bounded prefix and the size."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    head = raw[:OVERSIZED_PREFIX_CHARS]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    return Quarantine(
        exchange,
        f"oversized frame: {size} bytes > limit {limit} bytes",
        f"{text}...[truncated: {size} bytes in all]",
        local_ts,
        code=OVERSIZED_CODE,
    )


#: Longest the receive loop runs through queued frames before it lets other tasks run.
YIELD_AFTER_US = 1_000
#: ... or, once its turn has lasted this long, as soon as the ``turn_hint``'s work is due.
YIELD_WHEN_DUE_AFTER_US = 200

OnFrame = Callable[[str | bytes, int], Awaitable[None]]


class TurnHint(Protocol):
    """Work of another task that waits for the event loop: when it falls due (``now_us`` clock).

    The live cache's flusher is one: its write of the books these frames
    changed is due a coalescing delay after the first change. Yielding at
    that moment, rather than at the end of a fixed turn, is what keeps the
    receipt-to-Redis latency short while frames queue up.
    """

    due_us: int

    def release(self) -> None:
        """Called when the loop is yielded because the work fell due: wake it now.

        A task whose sleep timer expired runs only one loop iteration after
        the timer fires, behind the yielding task's next turn; woken here, it
        runs before that turn.
        """


OnConnect = Callable[["WsClient"], Awaitable[None]]
OnDisconnect = Callable[["WsClient", str], Awaitable[None]]


class WsClient:
    """Keeps one WebSocket open until :meth:`stop`; reconnects after any failure."""

    def __init__(
        self,
        name: str,
        url_factory: Callable[[], str],
        *,
        on_frame: OnFrame,
        on_connect: OnConnect,
        on_disconnect: OnDisconnect,
        options: WsOptions | None = None,
        ping_message: Callable[[], str | None] = lambda: None,
        ping_interval: float | None = None,
        recorder: FrameRecorder | None = None,
        conn_id: int = 0,
        turn_hint: TurnHint | None = None,
    ) -> None:
        self.name = name
        #: Something that waits for the loop (the live cache's flusher): its ``due_us``.
        self.turn_hint = turn_hint
        self._url_factory = url_factory
        self._on_frame = on_frame
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.options = options or WsOptions()
        self._ping_message = ping_message
        self._ping_interval = ping_interval
        self._recorder = recorder
        self.conn_id = conn_id
        self._ws: ClientConnection | None = None
        self._stopping = asyncio.Event()
        self._backoff = Backoff(self.options.backoff_base, self.options.backoff_cap)
        self.connects = 0
        self.frames = 0
        self.last_frame_us: int | None = None
        self.url = ""
        #: Recent reconnect delays in seconds, newest last.
        self.delays: deque[float] = deque(maxlen=DELAYS_KEPT)
        #: Handshakes refused with HTTP 429/418 (rate limit / ban).
        self.rate_limited = 0

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionError(f"{self.name}: not connected")
        if self._recorder is not None:
            self._recorder.send(self.conn_id, self.url, text)
        await ws.send(text)

    async def stop(self) -> None:
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def reconnect(self, reason: str) -> None:
        """Drop the current connection; :meth:`run` reconnects."""
        ws = self._ws
        if ws is not None:
            log.info("%s: reconnecting (%s)", self.name, reason)
            await ws.close(code=1000, reason=reason[:100])

    async def run(self) -> None:
        while not self._stopping.is_set():
            reason = "closed"
            retry_after = 0.0
            self.url = self._url_factory()
            try:
                async with connect(
                    self.url,
                    open_timeout=self.options.open_timeout,
                    max_size=self.options.transport_max_bytes,
                    ping_interval=self.options.ws_ping_interval,
                    close_timeout=2,
                    max_queue=256,  # bounded: backpressure reaches the exchange's TCP window
                ) as ws:
                    self._ws = ws
                    self.connects += 1
                    self._backoff.reset()
                    if self._recorder is not None:
                        self._recorder.connect(self.conn_id, self.url)
                    await self._on_connect(self)
                    reason = await self._receive_loop(ws)
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = f"handshake rejected: HTTP {status}"
                if status in (429, 418):
                    # Rate limited or banned: reconnecting sooner would prolong the ban.
                    self.rate_limited += 1
                    retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
            except (OSError, ConnectionClosed, websockets.exceptions.WebSocketException, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
            await self._on_disconnect(self, reason)
            if self._stopping.is_set():
                break
            delay = self._backoff.next_delay(minimum=retry_after)
            self.delays.append(delay)
            log.warning("%s: disconnected (%s); reconnecting in %.1fs", self.name, reason, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _receive_loop(self, ws: ClientConnection) -> str:
        pinger = asyncio.create_task(self._ping_loop(ws)) if self._ping_interval else None
        # Start of the current quiet interval: the stall's gap begins here, not when it is detected.
        quiet_since = now_us()
        stall = _StallWatch(ws, self.options.stall_timeout)
        watchdog = asyncio.create_task(stall.run())
        recv = ws.recv
        on_frame = self._on_frame
        hint = self.turn_hint
        turn_started = quiet_since
        try:
            while True:
                # The turn is measured after the last frame's processing, so one
                # long frame (a snapshot of thousands of levels) ends it too.
                now = now_us()
                turn = now - turn_started
                if turn >= YIELD_AFTER_US or (hint is not None and turn >= YIELD_WHEN_DUE_AFTER_US
                                              and now >= hint.due_us):
                    # recv() returns without suspending while frames are queued, so a
                    # burst would hold the loop: give the sinks (the live cache's
                    # latency) a turn at least every millisecond.
                    if hint is not None and now >= hint.due_us:
                        hint.release()
                    await asyncio.sleep(0)
                    now = turn_started = now_us()
                # Only time spent waiting for the exchange counts towards a stall,
                # not time the feed itself holds a frame (a paused journal, say).
                stall.waiting_since = now
                try:
                    frame = await recv()
                except ConnectionClosed as exc:
                    if stall.detected:
                        last = self.last_frame_us if self.last_frame_us is not None else quiet_since
                        return (f"stall: no frame for {self.options.stall_timeout:g}s; "
                                f"last frame local_ts={max(last, quiet_since)}")
                    if exc.rcvd is not None and exc.rcvd.code == 1009:
                        return "closed: frame too big"
                    return f"closed: {exc.rcvd.code if exc.rcvd else 'no close frame'}"
                stall.waiting_since = None
                ts = now_us()
                self.frames += 1
                self.last_frame_us = ts
                if self._recorder is not None:
                    self._recorder.recv(self.conn_id, frame)
                await on_frame(frame, ts)
        finally:
            watchdog.cancel()
            if pinger is not None:
                pinger.cancel()

    async def _ping_loop(self, ws: ClientConnection) -> None:
        assert self._ping_interval is not None
        while True:
            await asyncio.sleep(self._ping_interval)
            message = self._ping_message()
            if message is None:
                return
            try:
                await ws.send(message)
            except ConnectionClosed:
                return


class _StallWatch:
    """Closes a connection on which no frame arrived for ``timeout`` seconds.

    One timer task per connection instead of a timeout around every
    ``recv()``: wrapping each receive in ``asyncio.wait_for`` costs a timer
    handle and a task switch per frame, a measurable share of the hot path.
    Detection happens within a quarter of the timeout after it passed.
    """

    def __init__(self, ws: ClientConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout_us = int(timeout * 1_000_000)
        self.check_s = min(max(timeout / 4, 0.01), 1.0)
        #: When the receive loop started waiting for the next frame (None while it handles one).
        self.waiting_since: int | None = None
        self.detected = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            since = self.waiting_since
            if since is not None and now_us() - since >= self.timeout_us:
                self.detected = True
                # Abort rather than close: a stalled peer would not answer a close handshake.
                self.ws.transport.abort()
                return
