"""A local exchange: WebSocket and REST on one loopback port, driven by a backend.

The server knows nothing about any exchange. A backend (capture replay, the
market simulator) decides what each client sees:

* every WebSocket upgrade, on any path, runs ``backend.handle_ws(session)``
  for the life of that connection (Binance ``/stream?streams=...`` and
  ``/ws``, Kraken ``/``, OKX ``/ws/v5/public`` all land there);
* every other GET is answered by ``backend.handle_rest(path, query)``.

WebSocket control frames (ping/pong/close) are answered by aiohttp. A reader
task drains client messages all the time, so control frames get answered even
while a backend only streams and never calls :meth:`WsSession.receive`.
Application-level text pings are the backend's business; it can answer them
without a round trip through its own loop via :attr:`WsSession.auto_replies`.

Fault injection has one seam: a :class:`FaultPlan` set on the server (and
replaceable at any time) sees every outgoing WebSocket frame and every REST
request before the backend's answer goes out. The default server has none,
so the hot path is one attribute check.

Faults can also be switched on command while the server runs, over HTTP on
the same port (``control=True``, the default; the server listens on loopback
only unless told otherwise):

* ``POST /_coby/faults`` with a spec in the body (``drop:every=500;stall:after=200,seconds=40``,
  see :func:`streamer.local.faults.parse_fault_spec`) installs those plans;
* ``GET /_coby/faults`` returns the installed plans with their counters;
* ``DELETE /_coby/faults`` removes them and returns their final counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import orjson
from aiohttp import WSMsgType, web

from ..errors import ServerError

log = logging.getLogger(__name__)

JSON = "application/json"
#: Path of the fault-control endpoint (see the module docstring).
FAULTS_PATH = "/_coby/faults"
#: Largest fault spec the control endpoint reads.
MAX_SPEC_BYTES = 16 * 1024

# Close codes used by the server itself (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


class WsSessionClosed(ServerError):
    """The client is gone: raised by :meth:`WsSession.send` so backend loops end cleanly."""

    code = "SRV-002"


@runtime_checkable
class ExchangeBackend(Protocol):
    """What a local exchange serves. Implementations must not block the event loop."""

    async def handle_rest(self, path: str, query: Mapping[str, str]) -> tuple[int, str | bytes, str]:
        """Answer one GET: ``(status, body, content_type)``."""
        ...

    async def handle_ws(self, session: "WsSession") -> None:
        """Serve one WebSocket client; returning closes the connection."""
        ...


class FaultPlan:
    """Fault-injection seam. The base class injects nothing.

    Subclasses override the hooks; both are consulted on every frame or
    request while the plan is installed on the server, so a plan can be
    switched on and off at runtime (``server.faults = plan``).

    * :meth:`ws_frames` turns one outgoing frame into the frames actually
      written: ``()`` drops it, ``(d, d)`` duplicates it, a held frame
      released later reorders, a modified copy corrupts; awaiting inside
      stalls the stream; ``await session.abort()`` disconnects.
    * :meth:`rest_response` can replace a REST answer (429, 5xx, garbage)
      by returning ``(status, body, content_type)`` or
      ``(status, body, content_type, headers)`` (e.g. ``Retry-After``);
      ``None`` lets the backend answer.

    Ready-made plans and a spec parser live in :mod:`streamer.local.faults`.
    """

    async def ws_frames(self, session: "WsSession", data: str | bytes) -> Sequence[str | bytes]:
        return (data,)

    async def rest_response(self, path: str, query: Mapping[str, str]) -> tuple | None:
        return None


def json_error(status: int, message: str) -> tuple[int, str, str]:
    """A REST error answer in the common ``{"error": ...}`` shape."""
    return status, orjson.dumps({"error": message, "status": status}).decode(), JSON


class WsSession:
    """One connected WebSocket client, as seen by a backend."""

    def __init__(self, server: "LocalExchangeServer", request: web.Request, ws: web.WebSocketResponse) -> None:
        self._server = server
        self._request = request
        self._ws = ws
        self.path: str = request.path
        self.query: Mapping[str, str] = request.query
        self.headers: Mapping[str, str] = request.headers
        #: Client text messages answered immediately by the reader task and never
        #: queued (e.g. ``{"ping": "pong"}`` for OKX-style application pings).
        self.auto_replies: dict[str, str] = {}
        self.frames_sent = 0
        self.messages_received = 0
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._closing = False  # close() stopped the reader itself

    @property
    def closed(self) -> bool:
        """True once the WebSocket is closed or its TCP connection is going away."""
        transport = self._request.transport
        return self._ws.closed or transport is None or transport.is_closing()

    def _start_reader(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name=f"ws-reader{self.path}")

    async def _read_loop(self) -> None:
        """Drain client frames so control frames are answered and closes are noticed."""
        try:
            while True:
                msg = await self._ws.receive()  # answers pings itself
                if msg.type is WSMsgType.TEXT:
                    text = msg.data
                elif msg.type is WSMsgType.BINARY:
                    text = msg.data.decode("utf-8", "replace")
                elif msg.type is WSMsgType.CLOSE:
                    # The client is leaving: answer its close, bounded (see close()).
                    await self.close(CLOSE_NORMAL)
                    break
                else:  # CLOSING, CLOSED, ERROR: the connection is over
                    break
                self.messages_received += 1
                reply = self.auto_replies.get(text)
                if reply is not None:
                    with contextlib.suppress(WsSessionClosed):
                        await self.send(reply)
                    continue
                self._inbox.put_nowait(text)
        except (ConnectionError, RuntimeError) as exc:  # transport torn down under us
            log.debug("websocket reader on %s ended: %s", self.path, exc)
        finally:
            if not self._closing:  # else close() says so once its close frame is out
                self._inbox.put_nowait(None)

    async def send(self, data: str | bytes) -> None:
        """Write one frame: ``str`` as a text frame, ``bytes`` as a binary frame.

        Waits while the client is slow to read (aiohttp drains its buffer), so
        a fast backend cannot grow memory without bound. Raises
        :class:`WsSessionClosed` once the client has gone.
        """
        faults = self._server.faults
        if faults is None:
            await self._write(data)
        else:
            for frame in await faults.ws_frames(self, data):
                await self._write(frame)

    async def _write(self, data: str | bytes) -> None:
        if self._ws.closed:
            raise WsSessionClosed(f"client on {self.path} disconnected")
        try:
            if isinstance(data, str):
                await self._ws.send_str(data)
            else:
                await self._ws.send_bytes(data)
        except (ConnectionError, RuntimeError) as exc:
            raise WsSessionClosed(f"client on {self.path} disconnected: {exc}") from None
        self.frames_sent += 1

    async def receive(self, timeout: float | None = None) -> str | None:
        """The next client text message, or ``None`` once the client has closed.

        Raises :class:`TimeoutError` when ``timeout`` seconds pass without one.
        """
        if timeout is None:
            message = await self._inbox.get()
        else:
            message = await asyncio.wait_for(self._inbox.get(), timeout)
        if message is None:
            self._inbox.put_nowait(None)  # every later call also sees the close
        return message

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every frame written so far has left the process (the socket buffer is empty).

        Raises :class:`TimeoutError` if the client reads too slowly for that
        within ``timeout`` seconds; returns at once when the client is gone.
        """
        transport = self._request.transport
        if transport is None or transport.is_closing():
            return
        if not await self._wait_written(asyncio.get_running_loop().time() + timeout):
            raise TimeoutError(f"client on {self.path} did not read its last frames within {timeout}s")

    async def _wait_written(self, deadline: float) -> bool:
        """Poll until the socket buffer is empty (True) or ``deadline`` passes (False)."""
        transport = self._request.transport
        loop = asyncio.get_running_loop()
        # asyncio has no "buffer empty" notification; poll briefly (only at stream ends and closes).
        while transport is not None and transport.get_write_buffer_size() > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def close(self, code: int = CLOSE_NORMAL, timeout: float = 2.0) -> None:
        """Close with a close frame (a clean, client-visible close).

        The close frame queues behind frames the client has not read yet; a
        client that stopped reading (e.g. it closed first and paused its
        socket) would hold the connection open forever, so after ``timeout``
        seconds the TCP connection is dropped and its backlog discarded.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task() and not reader.done():
            # With our reader waiting in receive(), aiohttp's close() cannot read
            # the client's answer itself: a client message still in flight (a
            # second subscribe) then resets the connection, and the frames the
            # client has not read yet are lost. Without the reader, close()
            # reads (and discards) up to the client's close frame. The backend
            # hears of the close only once it is sent (it would close with its own code).
            self._closing = True
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        try:
            await asyncio.wait_for(self._ws.close(code=code), timeout)
        except TimeoutError:
            self._abort_transport()
            return
        except (ConnectionError, RuntimeError):
            pass
        finally:
            if self._closing:
                self._inbox.put_nowait(None)
        if not await self._wait_written(deadline):
            self._abort_transport()

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame (an abrupt disconnect)."""
        self._abort_transport()
        await self.close(CLOSE_GOING_AWAY)  # marks the response closed; nothing reaches the client

    def _abort_transport(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()


class LocalExchangeServer:
    """Serves one backend over WebSocket and REST on one port (127.0.0.1, port 0 = any free)."""

    def __init__(
        self,
        backend: ExchangeBackend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        ws_compress: bool = False,
        control: bool = True,
    ) -> None:
        self.backend = backend
        self.host = host
        self.faults = faults
        self._control = control
        self._requested_port = port
        # Compression costs CPU on both ends and changes nothing a client must handle.
        self._ws_compress = ws_compress
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sessions: set[WsSession] = set()
        self._handlers: set[asyncio.Task] = set()
        self.ws_connections = 0
        self.rest_requests = 0

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("local exchange server is not started")
        return self._port

    @property
    def ws_base_url(self) -> str:
        return f"ws://{self._url_host}:{self.port}"

    @property
    def rest_base_url(self) -> str:
        return f"http://{self._url_host}:{self.port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def sessions(self) -> list[WsSession]:
        """The clients connected right now."""
        return list(self._sessions)

    async def start(self) -> None:
        if self._runner is not None:
            raise ServerError("local exchange server already started")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ServerError(f"cannot listen on {self.host}:{self._requested_port}: {exc}") from exc
        self._runner = runner
        self._port = runner.addresses[0][1]
        log.info("local exchange listening on %s", self.rest_base_url)

    async def stop(self) -> None:
        """Close every client (1001 going away), then the listener. Idempotent."""
        if self._runner is None:
            return
        # Concurrently: each close may wait (bounded) on a client that stopped reading.
        await asyncio.gather(*(s.close(CLOSE_GOING_AWAY) for s in list(self._sessions)))
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2.0)
        for task in list(self._handlers):
            task.cancel()
        runner, self._runner = self._runner, None
        self._port = None  # the old URLs no longer lead anywhere
        await runner.cleanup()

    async def __aenter__(self) -> "LocalExchangeServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        # timeout bounds how long a close waits for the client's close frame;
        # autoclose is off because the session answers client closes itself (bounded).
        if self._control and request.path == FAULTS_PATH:
            return await self._serve_fault_control(request)
        ws = web.WebSocketResponse(compress=self._ws_compress, timeout=2.0, autoclose=False)
        if ws.can_prepare(request).ok:
            return await self._serve_ws(request, ws)
        if request.method not in ("GET", "HEAD"):
            status, body, ctype = json_error(405, f"method {request.method} not allowed")
            return web.Response(status=status, body=body, content_type=ctype)
        return await self._serve_rest(request)

    async def _serve_rest(self, request: web.Request) -> web.Response:
        self.rest_requests += 1
        path, query = request.path, request.query
        try:
            answer = None
            if self.faults is not None:
                answer = await self.faults.rest_response(path, query)
            if answer is None:
                answer = await self.backend.handle_rest(path, query)
            status, body, ctype = answer[:3]
            extra = answer[3] if len(answer) > 3 else {}
        except Exception:  # a backend bug must not kill the server; the client sees a 500
            log.exception("REST backend failed on %s", request.path_qs)
            status, body, ctype = json_error(500, "internal error in local exchange backend")
            extra = {}
        if isinstance(body, str):
            body = body.encode()
        # content_type must not carry a charset parameter; pass it raw as a header.
        return web.Response(status=status, body=body, headers={**extra, "Content-Type": ctype})

    async def _serve_fault_control(self, request: web.Request) -> web.Response:
        """``GET``/``POST``/``DELETE /_coby/faults``: inspect, install, clear fault plans."""
        from .faults import FaultSpecError, describe_plan, parse_fault_spec  # faults builds on this module

        if request.method == "POST":
            raw = await request.content.read(MAX_SPEC_BYTES + 1)
            if len(raw) > MAX_SPEC_BYTES:
                return _json_response(*json_error(413, f"fault spec larger than {MAX_SPEC_BYTES} bytes")[:2])
            text = raw.decode("utf-8", "replace").strip()
            if text.startswith("{"):  # also accept {"spec": "..."}
                try:
                    text = str(orjson.loads(text).get("spec", ""))
                except (orjson.JSONDecodeError, AttributeError):
                    return _json_response(*json_error(400, "body must be a fault spec or {\"spec\": ...}")[:2])
            try:
                plan = parse_fault_spec(text)
            except FaultSpecError as exc:
                return _json_response(*json_error(400, str(exc))[:2])
            self.faults = plan
            log.warning("fault injection on %s: %s", self.rest_base_url, plan.spec())
            return _json_response(200, orjson.dumps({"faults": describe_plan(plan)}))
        if request.method == "DELETE":
            plan, self.faults = self.faults, None
            if plan is not None:
                log.warning("fault injection on %s cleared", self.rest_base_url)
            return _json_response(200, orjson.dumps({"cleared": describe_plan(plan)}))
        if request.method in ("GET", "HEAD"):
            return _json_response(200, orjson.dumps({"faults": describe_plan(self.faults)}))
        return _json_response(*json_error(405, f"method {request.method} not allowed on {FAULTS_PATH}")[:2])

    async def _serve_ws(self, request: web.Request, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        await ws.prepare(request)
        self.ws_connections += 1
        session = WsSession(self, request, ws)
        self._sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        session._start_reader()
        try:
            await self.backend.handle_ws(session)
        except WsSessionClosed:
            pass  # the client left first: the normal end of a session
        except Exception:
            log.exception("WebSocket backend failed on %s", request.path_qs)
            await session.close(CLOSE_INTERNAL_ERROR)
        finally:
            await session.close()
            if session._reader is not None:
                session._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session._reader
            self._sessions.discard(session)
            if task is not None:
                self._handlers.discard(task)
        return ws


def _json_response(status: int, body: str | bytes) -> web.Response:
    return web.Response(status=status, body=body if isinstance(body, bytes) else body.encode(),
                        headers={"Content-Type": JSON})
