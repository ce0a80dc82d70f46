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

The WebSocket protocol itself is picows's (frames parsed in C as they
arrive): a receive with the ``websockets`` library's asyncio client costs
several microseconds of Python per frame (its frame parser, message
assembler and queue), a large share of a small exchange frame's whole cost.
:class:`_FrameQueue` collects the frames picows delivers into a bounded
queue and stops reading the socket while it is full, so the receive loop
below keeps its turns and its backpressure reaches the exchange's TCP
window. No compression is negotiated (picows has no permessage-deflate):
exchanges then send plain frames, which cost more bandwidth and less CPU
than inflating them would.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import picows
from picows import WSCloseCode, WSMsgType

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

#: Frames queued between the socket and the receive loop: reading the socket
#: stops while this many wait (the exchange then meets a closed TCP window) ...
MAX_QUEUED_FRAMES = 256
#: ... and starts again once the receive loop has taken the queue down to this many.
RESUME_QUEUED_FRAMES = 64
#: Close codes (RFC 6455) this side sends.
_CLOSE_TOO_BIG = WSCloseCode.MESSAGE_TOO_BIG
_CLOSE_PROTOCOL = WSCloseCode.PROTOCOL_ERROR
_CLOSE_BAD_DATA = WSCloseCode.INVALID_TEXT
#: Reserved close codes that must never be sent (RFC 6455, 7.4.1): 1004, no status (1005),
#: abnormal closure (1006), TLS failure (1015).
_NOT_SENDABLE = frozenset({1004, 1005, 1006, 1015})


class _FrameQueue(picows.WSListener):
    """One connection's received messages in arrival order, bounded.

    picows calls :meth:`on_ws_frame` for every frame as it parses the
    socket's data; data messages (text decoded, fragments joined) go to
    :attr:`frames`, which the receive loop drains. While :data:`MAX_QUEUED_FRAMES`
    wait, the socket is not read. Pings are answered by picows itself.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.frames: deque[str | bytes] = deque()
        self.max_message_bytes = max_message_bytes
        self.transport: picows.WSTransport | None = None
        self.closed = False
        self.paused = False
        #: How often reading stopped because the queue was full (backpressure at work).
        self.pauses = 0
        #: Close code of the exchange's close frame, if one came.
        self.peer_close_code: int | None = None
        #: Why this side closed the connection (a message too big, invalid UTF-8), and the code it sent.
        self.error: str | None = None
        self.error_code: WSCloseCode | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: A fragmented message being assembled: its parts, whether it is text, its size.
        self._parts: list[bytes] | None = None
        self._parts_text = False
        self._parts_size = 0

    # -- picows callbacks --------------------------------------------------------
    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT or kind == WSMsgType.BINARY:
            if self.error is not None:
                return  # this side is failing the connection: nothing more is taken
            if frame.payload_size > self.max_message_bytes:
                # picows refuses the frame too but may still hand it over while it disconnects.
                self._fail(_CLOSE_TOO_BIG, f"message over {self.max_message_bytes} bytes")
                return
            if self._parts is not None:
                self._fail(_CLOSE_PROTOCOL, "new message before the fragmented one ended")
                return
            if not frame.fin:
                self._parts, self._parts_text = [frame.get_payload_as_bytes()], kind == WSMsgType.TEXT
                self._parts_size = frame.payload_size
                return
            if kind == WSMsgType.TEXT:
                try:
                    self._push(frame.get_payload_as_utf8_text())
                except UnicodeDecodeError:
                    self._fail(_CLOSE_BAD_DATA, "invalid UTF-8 in a text frame")
            else:
                self._push(frame.get_payload_as_bytes())
        elif kind == WSMsgType.CONTINUATION:
            self._continue(frame)
        elif kind == WSMsgType.CLOSE:
            code = frame.get_close_code()
            number = int(code) if code is not None else 0
            # A close frame may carry no code (picows reads 0): RFC 6455 reports that as 1005.
            self.peer_close_code = number or 1005
            # Echo the peer's code unless it is one that must never be sent.
            echo = code if 1000 <= number < 5000 and number not in _NOT_SENDABLE else WSCloseCode.OK
            transport.send_close(echo)
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.closed = True
        self._wake()

    # -- the receive loop's side -------------------------------------------------
    async def wait(self) -> None:
        """Until a message is queued or the connection is gone."""
        if self.frames or self.closed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def resume(self) -> None:
        """Read the socket again (the receive loop took the queue down)."""
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.underlying_transport.resume_reading()

    # -- internals ---------------------------------------------------------------
    def _push(self, message: str | bytes) -> None:
        frames = self.frames
        frames.append(message)
        if len(frames) >= MAX_QUEUED_FRAMES and not self.paused and self.transport is not None:
            self.paused = True
            self.pauses += 1
            self.transport.underlying_transport.pause_reading()
        waiter = self._waiter  # _wake(), inlined: this runs once per frame
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _continue(self, frame: picows.WSFrame) -> None:
        if self.error is not None:
            return
        parts = self._parts
        if parts is None:
            self._fail(_CLOSE_PROTOCOL, "continuation frame without a message to continue")
            return
        self._parts_size += frame.payload_size
        if self._parts_size > self.max_message_bytes:
            self._fail(_CLOSE_TOO_BIG, f"message over {self.max_message_bytes} bytes")
            return
        parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        self._parts = None
        data = b"".join(parts)
        if not self._parts_text:
            self._push(data)
            return
        try:
            self._push(data.decode("utf-8"))
        except UnicodeDecodeError:
            self._fail(_CLOSE_BAD_DATA, "invalid UTF-8 in a text message")

    def _fail(self, code: WSCloseCode, reason: str) -> None:
        self.error, self.error_code = reason, code
        self._parts = None
        if self.transport is not None:
            self.transport.send_close(code, reason.encode()[:120])
            self.transport.disconnect()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _close_reason(queue: _FrameQueue, error: BaseException | None) -> str:
    """The disconnect reason once a connection's queue is drained."""
    too_big = isinstance(error, picows.WSProtocolError) and error.code == _CLOSE_TOO_BIG
    if too_big or queue.error_code == _CLOSE_TOO_BIG:
        return "closed: frame too big"
    if queue.error is not None:
        return f"closed: {queue.error}"
    if queue.peer_close_code is not None:
        return f"closed: {queue.peer_close_code}"
    if error is not None:
        return f"closed: {type(error).__name__}: {error}"[:300]
    return "closed: no close frame"


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
        self._ws: picows.WSTransport | None = None
        #: The current connection's frame queue (None between connections).
        self.queue: _FrameQueue | None = None
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
        if ws is None or ws.is_disconnected:
            raise ConnectionError(f"{self.name}: not connected")
        if self._recorder is not None:
            self._recorder.send(self.conn_id, self.url, text)
        ws.send(WSMsgType.TEXT, text.encode("utf-8"))

    async def stop(self) -> None:
        self._stopping.set()
        self._close(WSCloseCode.OK, "")

    async def reconnect(self, reason: str) -> None:
        """Drop the current connection; :meth:`run` reconnects."""
        if self._ws is not None:
            log.info("%s: reconnecting (%s)", self.name, reason)
            self._close(WSCloseCode.OK, reason[:100])

    def _close(self, code: WSCloseCode, reason: str) -> None:
        ws = self._ws
        if ws is not None and not ws.is_disconnected:
            ws.send_close(code, reason.encode("utf-8")[:120])
            ws.disconnect()

    async def _connect(self) -> tuple[picows.WSTransport, _FrameQueue]:
        options = self.options
        ping = options.ws_ping_interval
        async with asyncio.timeout(options.open_timeout):
            transport, queue = await picows.ws_connect(
                lambda: _FrameQueue(options.transport_max_bytes),
                self.url,
                websocket_handshake_timeout=options.open_timeout,
                # Protocol-level pings when the connection is quiet; no pong in time closes it.
                enable_auto_ping=ping is not None,
                auto_ping_idle_timeout=ping or 20.0,
                auto_ping_reply_timeout=ping or 20.0,
                max_frame_size=options.transport_max_bytes,
                # asyncio's own transports, as every other connection of the process.
                use_aiofastnet=False,
            )
        assert isinstance(queue, _FrameQueue)
        return transport, queue

    async def run(self) -> None:
        while not self._stopping.is_set():
            reason = "closed"
            retry_after = 0.0
            self.url = self._url_factory()
            transport: picows.WSTransport | None = None
            try:
                transport, queue = await self._connect()
                self._ws, self.queue = transport, queue
                self.connects += 1
                self._backoff.reset()
                if self._recorder is not None:
                    self._recorder.connect(self.conn_id, self.url)
                await self._on_connect(self)
                reason = await self._receive_loop(transport, queue)
            except asyncio.CancelledError:
                raise
            except picows.WSHandshakeError as exc:
                status = int(exc.response.status) if exc.response is not None else None
                reason = f"handshake rejected: HTTP {status}" if status else f"handshake failed: {exc}"[:300]
                if status in (429, 418):
                    # Rate limited or banned: reconnecting sooner would prolong the ban.
                    self.rate_limited += 1
                    retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
            except (OSError, picows.WSError, TimeoutError, ConnectionError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = self.queue = None
                if transport is not None and not transport.is_disconnected:
                    transport.disconnect(graceful=False)
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

    async def _receive_loop(self, transport: picows.WSTransport, queue: _FrameQueue) -> str:
        pinger = asyncio.create_task(self._ping_loop(transport)) if self._ping_interval else None
        # Start of the current quiet interval: the stall's gap begins here, not when it is detected.
        quiet_since = now_us()
        stall = _StallWatch(lambda: transport.disconnect(graceful=False), self.options.stall_timeout)
        watchdog = asyncio.create_task(stall.run())
        frames = queue.frames
        pop = frames.popleft
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
                    # Queued frames are taken without suspending, so a burst would
                    # hold the loop: give the sinks (the live cache's latency) a
                    # turn at least every millisecond.
                    if hint is not None and now >= hint.due_us:
                        hint.release()
                    await asyncio.sleep(0)
                    now = turn_started = now_us()
                if not frames:
                    if queue.closed:
                        return await self._closed_reason(transport, queue, stall, quiet_since)
                    # Only time spent waiting for the exchange counts towards a stall,
                    # not time the feed itself holds a frame (a paused journal, say).
                    stall.waiting_since = now
                    await queue.wait()
                    stall.waiting_since = None
                    continue
                frame = pop()
                if queue.paused and len(frames) <= RESUME_QUEUED_FRAMES:
                    queue.resume()
                # Receive time: ``now`` was read just before the frame was taken from the queue.
                ts = now
                self.frames += 1
                self.last_frame_us = ts
                if self._recorder is not None:
                    self._recorder.recv(self.conn_id, frame)
                await on_frame(frame, ts)
        finally:
            watchdog.cancel()
            if pinger is not None:
                pinger.cancel()

    async def _closed_reason(self, transport: picows.WSTransport, queue: _FrameQueue,
                             stall: "_StallWatch", quiet_since: int) -> str:
        if stall.detected:
            last = self.last_frame_us if self.last_frame_us is not None else quiet_since
            return (f"stall: no frame for {self.options.stall_timeout:g}s; "
                    f"last frame local_ts={max(last, quiet_since)}")
        error: BaseException | None = None
        try:
            await transport.wait_disconnected()  # raises what made picows disconnect, if anything
        except Exception as exc:
            error = exc
        return _close_reason(queue, error)

    async def _ping_loop(self, transport: picows.WSTransport) -> None:
        assert self._ping_interval is not None
        while True:
            await asyncio.sleep(self._ping_interval)
            message = self._ping_message()
            if message is None or transport.is_disconnected:
                return
            transport.send(WSMsgType.TEXT, message.encode("utf-8"))


class _StallWatch:
    """Closes a connection on which no frame arrived for ``timeout`` seconds.

    One timer task per connection instead of a timeout around every wait for
    a frame: a timeout per frame costs a timer handle and a task switch per
    frame, a measurable share of the hot path. Detection happens within a
    quarter of the timeout after it passed.
    """

    def __init__(self, abort: Callable[[], None], timeout: float) -> None:
        self.abort = abort
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
                self.abort()
                return
