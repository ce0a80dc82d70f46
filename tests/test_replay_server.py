"""The local exchange server and capture replay, over real loopback sockets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson
import pytest
import websockets

from streamer.capture.reader import Capture, load_capture, payload
from streamer.capture.replay import (
    CaptureReplayBackend,
    SessionSymbols,
    frame_offsets,
    protocol_of,
    session_symbols,
)
from streamer.errors import ConfigError, ServerError, UnknownExchangeError
from streamer.local.server import FaultPlan, LocalExchangeServer, WsSession, json_error

REPO_ROOT = Path(__file__).resolve().parents[1]

#: How each protocol's client reaches the replay: URL path and subscribe message (None: the URL subscribes).
CLIENTS = {
    "binance-spot.session1": ("/stream?streams=nknusdt@depth@100ms/blzeth@depth@100ms", None),
    "kraken-spot.session1": ("/", '{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book"}}'),
    "okx.session1": ("/ws/v5/public", '{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}'),
}


def captures_dir() -> Path:
    configured = Path(os.environ.get("COBY_CAPTURES_DIR", "../shared/fixtures/captures"))
    return configured if configured.is_absolute() else (REPO_ROOT / configured).resolve()


def capture(session: str) -> Capture:
    path = captures_dir() / f"{session}.jsonl.gz"
    if not path.exists():
        pytest.skip(f"recorded session {path.name} not found in {captures_dir()} (set COBY_CAPTURES_DIR)")
    return load_capture(path)


async def receive_all(ws, count: int) -> list[str | bytes]:
    return [await asyncio.wait_for(ws.recv(), 30) for _ in range(count)]


async def rest_get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text(), response.content_type


# -- replaying recorded sessions -------------------------------------------------


@pytest.mark.captures
@pytest.mark.parametrize("session", sorted(CLIENTS))
async def test_client_receives_exactly_the_recorded_frames(session):
    cap = capture(session)
    path, subscribe = CLIENTS[session]
    expected = [payload(r) for r in cap.recv_records()]
    backend = CaptureReplayBackend(cap)
    async with LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url + path, max_size=None) as ws:
            if subscribe is not None:
                await ws.send(subscribe)
            got = await receive_all(ws, len(expected))
            await asyncio.wait_for(backend.finished.wait(), 30)
            # The exchange keeps the socket open after the last frame: nothing more arrives.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
    assert got == expected  # byte-exact and in recorded order, all connections merged
    assert backend.frames_sent == backend.frame_count == len(expected)
    assert backend.connections == 1


@pytest.mark.captures
async def test_nothing_streams_before_subscribe_and_kraken_pings_are_answered():
    cap = capture("kraken-spot.session1")
    # Paced, so the client can leave after one frame without thousands queued behind its close.
    backend = CaptureReplayBackend(cap, speed=1.0)
    async with LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url, max_size=None) as ws:
            await ws.send('{"event":"ping","reqid":42}')
            # The pong is the first frame: nothing of the capture was sent before subscribing.
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10)) == {"event": "pong", "reqid": 42}
            assert backend.frames_sent == 0
            await ws.send(CLIENTS["kraken-spot.session1"][1])
            first = await asyncio.wait_for(ws.recv(), 10)
    assert first == payload(cap.recv_records()[0])


@pytest.mark.captures
async def test_okx_text_ping_is_answered_during_the_replay():
    cap = capture("okx.session1")
    backend = CaptureReplayBackend(cap)
    frames = [payload(r) for r in cap.recv_records()]
    async with LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url + "/ws/v5/public", max_size=None) as ws:
            await ws.send(CLIENTS["okx.session1"][1])
            await ws.send("ping")
            got = await receive_all(ws, len(frames) + 1)
    assert "pong" in got
    got.remove("pong")
    assert got == frames
    assert backend.frames_sent == len(frames)  # the pong is not a capture frame


@pytest.mark.captures
async def test_binance_subscribe_message_starts_the_stream_and_is_acknowledged():
    cap = capture("binance-spot.session1")
    backend = CaptureReplayBackend(cap)
    frames = [payload(r) for r in cap.recv_records()]
    async with LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url + "/ws", max_size=None) as ws:
            await ws.send('{"method":"SUBSCRIBE","params":["nknusdt@depth@100ms"],"id":7}')
            ack = await asyncio.wait_for(ws.recv(), 10)
            got = await receive_all(ws, len(frames))
    assert orjson.loads(ack) == {"result": None, "id": 7}
    assert got == frames


@pytest.mark.captures
async def test_binary_frames_are_sent_as_binary():
    cap = capture("huobi-spot.session1")
    backend = CaptureReplayBackend(cap)
    assert backend.protocol is None  # no COBY connector: any message subscribes
    frames = [payload(r) for r in cap.recv_records()]
    assert any(isinstance(f, bytes) for f in frames)
    async with LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url + "/ws", max_size=None) as ws:
            await ws.send('{"sub":"market.trioeth.depth.step0","id":1}')
            got = await receive_all(ws, len(frames))
    assert got == frames
    assert [type(f) for f in got] == [type(f) for f in frames]


@pytest.mark.captures
async def test_each_connection_gets_the_whole_session():
    cap = capture("okx.session1")
    backend = CaptureReplayBackend(cap)
    frames = [payload(r) for r in cap.recv_records()]
    async with LocalExchangeServer(backend) as server:
        for _ in range(2):
            async with websockets.connect(server.ws_base_url + "/ws/v5/public", max_size=None) as ws:
                await ws.send(CLIENTS["okx.session1"][1])
                assert await receive_all(ws, len(frames)) == frames
    assert backend.connections == 2
    assert backend.frames_sent == 2 * len(frames)


@pytest.mark.captures
async def test_client_leaving_mid_replay_ends_its_session_cleanly():
    cap = capture("kraken-spot.session1")
    backend = CaptureReplayBackend(cap, speed=1.0)  # paced, so the client leaves long before the end
    async with LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url, max_size=None) as ws:
            await ws.send(CLIENTS["kraken-spot.session1"][1])
            await asyncio.wait_for(ws.recv(), 10)
        for _ in range(500):
            if not server.sessions:
                break
            await asyncio.sleep(0.01)
        assert server.sessions == []
    assert not backend.finished.is_set()
    assert 0 < backend.frames_sent < backend.frame_count


# -- REST --------------------------------------------------------------------------


@pytest.mark.captures
async def test_binance_depth_snapshot_is_the_recorded_body_whatever_the_limit():
    cap = capture("binance-spot.session1")
    depth = [r for r in cap.http_records() if urlsplit(r["url"]).path == "/api/v3/depth"]
    assert depth
    backend = CaptureReplayBackend(cap)
    async with LocalExchangeServer(backend) as server:
        for rec in depth:
            symbol = dict(parse_qsl(urlsplit(rec["url"]).query))["symbol"]
            for query in (f"symbol={symbol}&limit=5000", f"limit=100&symbol={symbol}", f"symbol={symbol}"):
                status, body, ctype = await rest_get(f"{server.rest_base_url}/api/v3/depth?{query}")
                assert (status, body, ctype) == (200, rec["data"], "application/json")
        status, body, _ = await rest_get(f"{server.rest_base_url}/api/v3/depth?symbol=NOTLISTED&limit=1000")
        assert status == 404 and "NOTLISTED" in orjson.loads(body)["error"]
    assert backend.rest_served == 3 * len(depth)
    assert backend.rest_missed == 1


@pytest.mark.captures
async def test_rest_matches_identifying_parameters_and_404s_the_rest():
    cap = capture("okx.session1")
    backend = CaptureReplayBackend(cap)
    recorded = {urlsplit(r["url"]).path + "?" + urlsplit(r["url"]).query: r["data"] for r in cap.http_records()}
    async with LocalExchangeServer(backend) as server:
        for path_query, body in recorded.items():
            status, got, _ = await rest_get(server.rest_base_url + path_query)
            assert status == 200 and got == body
        # instType/uly select the resource: a different one is not served from another's body.
        status, _, _ = await rest_get(server.rest_base_url + "/api/v5/public/instruments?instType=MARGIN")
        assert status == 404
        status, body, ctype = await rest_get(server.rest_base_url + "/no/such/path")
        assert status == 404 and ctype == "application/json"
        assert orjson.loads(body)["status"] == 404
    assert backend.rest_served == len(recorded)
    assert backend.rest_missed == 2


# -- pacing --------------------------------------------------------------------------


def test_frame_offsets_follow_recorded_time_divided_by_speed():
    times = [100.0, 100.5, 100.5, 103.0]
    assert frame_offsets(times, None) is None
    assert frame_offsets(times, 1) == [0.0, 0.5, 0.5, 3.0]
    assert frame_offsets(times, 10) == pytest.approx([0.0, 0.05, 0.05, 0.3])
    assert frame_offsets([], 2) == []
    for bad in (0, -1, float("nan"), float("inf"), "fast"):
        with pytest.raises(ConfigError):
            frame_offsets(times, bad)


@pytest.mark.captures
@pytest.mark.parametrize("speed", [1, 4])
def test_backend_schedule_matches_the_recorded_spacing(speed):
    cap = capture("okx.session1")
    recv_times = [r["t"] for r in cap.recv_records()]
    offsets = CaptureReplayBackend(cap, speed=speed).offsets
    assert len(offsets) == len(recv_times)
    assert offsets[0] == 0.0
    assert offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx((recv_times[-1] - recv_times[0]) / speed)
    gaps = [b - a for a, b in zip(recv_times, recv_times[1:])]
    assert [b - a for a, b in zip(offsets, offsets[1:])] == pytest.approx([g / speed for g in gaps])
    assert CaptureReplayBackend(cap).offsets is None


@pytest.mark.captures
async def test_paced_replay_delivers_in_order_and_finishes():
    cap = capture("okx.session1")
    backend = CaptureReplayBackend(cap, speed=200.0)  # ~12 s session in ~60 ms
    frames = [payload(r) for r in cap.recv_records()]
    async with LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url + "/ws/v5/public", max_size=None) as ws:
            await ws.send(CLIENTS["okx.session1"][1])
            got = await receive_all(ws, len(frames))
            await asyncio.wait_for(backend.finished.wait(), 30)
    assert got == frames


# -- what the CLI reads from a session ----------------------------------------------


@pytest.mark.parametrize(
    ("exchange", "protocol"),
    [
        ("Binance (spot)", "binance"),
        ("Binance.US", "binance"),
        ("Binance TR", "binance"),
        ("binance", "binance"),
        ("Kraken (spot, WS v1)", "kraken"),
        ("kraken", "kraken"),
        ("OKX (v5)", "okx"),
        ("OKEx", "okx"),
        ("Okcoin", "okx"),
    ],
)
def test_protocol_of_maps_venues_to_connectors(exchange, protocol):
    assert protocol_of({"exchange": exchange}) == protocol


@pytest.mark.parametrize("exchange", ["Binance USD-M futures", "Kraken Futures", "Huobi / HTX (spot)", ""])
def test_protocol_of_rejects_venues_without_a_connector(exchange):
    with pytest.raises(UnknownExchangeError):
        protocol_of({"exchange": exchange})


@pytest.mark.captures
def test_session_symbols_binance_match_the_snapshot_requests():
    cap = capture("binance-spot.session1")
    symbols = session_symbols(cap)
    snapshot_symbols = {
        dict(parse_qsl(urlsplit(r["url"]).query))["symbol"]
        for r in cap.http_records()
        if urlsplit(r["url"]).path == "/api/v3/depth"
    }
    frame_trades = {
        orjson.loads(r["data"])["data"]["s"]
        for r in cap.recv_records()
        if orjson.loads(r["data"])["data"].get("e") == "aggTrade"
    }
    assert isinstance(symbols, SessionSymbols) and isinstance(symbols, list)
    assert set(symbols.book) == snapshot_symbols
    assert frame_trades <= set(symbols.trades)
    assert list(symbols) == list(dict.fromkeys(symbols.book + symbols.trades))
    assert symbols.as_dict() == {"book": symbols.book, "trades": symbols.trades}


@pytest.mark.captures
def test_session_symbols_kraken_and_okx_match_the_book_frames():
    kraken = capture("kraken-spot.session1")
    kraken_book_pairs = set()
    for rec in kraken.recv_records():
        msg = orjson.loads(rec["data"])
        if isinstance(msg, list) and msg[-2].startswith("book"):
            kraken_book_pairs.add(msg[-1])
    assert set(session_symbols(kraken).book) == kraken_book_pairs

    okx = capture("okx.session1")
    okx_books = set()
    okx_trades = set()
    for rec in okx.recv_records():
        msg = orjson.loads(rec["data"])
        if "data" in msg and msg["arg"]["channel"] == "books":
            okx_books.add(msg["arg"]["instId"])
        if "data" in msg and msg["arg"]["channel"] == "trades":
            okx_trades.add(msg["arg"]["instId"])
    symbols = session_symbols(okx, "okx")
    assert set(symbols.book) == okx_books
    assert okx_trades <= set(symbols.trades)


@pytest.mark.captures
def test_session_symbols_fall_back_to_frames_when_no_subscription_was_recorded():
    original = capture("okx.session1")
    without_sends = Capture(
        original.path, original.meta, tuple(r for r in original.records if r["dir"] != "send"), original.connections
    )
    assert set(session_symbols(without_sends).book) == set(session_symbols(original).book)


# -- the generic server ----------------------------------------------------------------


class EchoBackend:
    """Answers REST with the path and query; echoes WebSocket text in upper case."""

    def __init__(self) -> None:
        self.sessions: list[WsSession] = []

    async def handle_rest(self, path: str, query: Mapping[str, str]) -> tuple[int, str | bytes, str]:
        if path == "/boom":
            raise RuntimeError("backend bug")
        if path == "/bytes":
            return 200, b"\x00\x01", "application/octet-stream"
        return 200, orjson.dumps({"path": path, "query": dict(query)}).decode(), "application/json"

    async def handle_ws(self, session: WsSession) -> None:
        self.sessions.append(session)
        session.auto_replies["hb"] = "hb-ack"
        await session.send(orjson.dumps({"path": session.path, "query": dict(session.query)}).decode())
        while (message := await session.receive()) is not None:
            if message == "bytes":
                await session.send(b"\x00\xff")
            elif message == "bye":
                await session.close()
            elif message == "drop":
                await session.abort()
            else:
                await session.send(message.upper())


async def test_server_routes_every_ws_path_and_every_get():
    backend = EchoBackend()
    async with LocalExchangeServer(backend) as server:
        assert server.ws_base_url == f"ws://127.0.0.1:{server.port}"
        assert server.rest_base_url == f"http://127.0.0.1:{server.port}"
        for path in ("/", "/ws", "/stream?streams=a@depth/b@trade", "/ws/v5/public"):
            async with websockets.connect(server.ws_base_url + path) as ws:
                hello = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                expected = urlsplit(path)
                assert hello == {"path": expected.path, "query": dict(parse_qsl(expected.query))}
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), 10) == "HELLO"
                await ws.send("hb")  # auto reply, not seen by the backend
                assert await asyncio.wait_for(ws.recv(), 10) == "hb-ack"
                await ws.send("bytes")
                assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\xff"
                await asyncio.wait_for(ws.ping(), 10)  # control pings answered by the server
        status, body, _ = await rest_get(server.rest_base_url + "/api/v3/depth?symbol=BTCUSDT&limit=10")
        assert status == 200
        assert orjson.loads(body) == {"path": "/api/v3/depth", "query": {"symbol": "BTCUSDT", "limit": "10"}}
        async with aiohttp.ClientSession() as http:
            async with http.get(server.rest_base_url + "/bytes") as response:
                assert await response.read() == b"\x00\x01"
            async with http.post(server.rest_base_url + "/api") as response:
                assert response.status == 405
        assert server.ws_connections == 4
        assert server.rest_requests == 2  # the 405 never reached the REST handler


async def test_backend_errors_become_500_and_the_server_keeps_serving():
    async with LocalExchangeServer(EchoBackend()) as server:
        status, body, ctype = await rest_get(server.rest_base_url + "/boom")
        assert status == 500 and ctype == "application/json" and "error" in orjson.loads(body)
        status, _, _ = await rest_get(server.rest_base_url + "/fine")
        assert status == 200


async def test_session_close_abort_and_server_stop_reach_the_client():
    backend = EchoBackend()
    server = LocalExchangeServer(backend)
    await server.start()
    try:
        async with websockets.connect(server.ws_base_url) as ws:
            await ws.recv()
            await ws.send("bye")
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 10)
        async with websockets.connect(server.ws_base_url) as ws:
            await ws.recv()
            await ws.send("drop")
            with pytest.raises(websockets.ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), 10)
        ws = await websockets.connect(server.ws_base_url)
        await ws.recv()
    finally:
        await server.stop()
    with pytest.raises(websockets.ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert all(s.closed for s in backend.sessions)
    assert await backend.sessions[-1].receive() is None  # a closed session keeps answering None
    await server.stop()  # idempotent
    with pytest.raises(ServerError):
        server.ws_base_url


async def test_port_in_use_is_a_clear_server_error():
    async with LocalExchangeServer(EchoBackend()) as first:
        with pytest.raises(ServerError, match="cannot listen"):
            await LocalExchangeServer(EchoBackend(), port=first.port).start()


class DuplicateAndThrottle(FaultPlan):
    """Duplicates text frames, drops binary ones, and answers REST with 429."""

    async def ws_frames(self, session, data):
        return () if isinstance(data, bytes) else (data, data)

    async def rest_response(self, path, query):
        return json_error(429, "too many requests") if path.startswith("/api") else None


async def test_fault_plan_sees_every_frame_and_request_and_can_be_switched_at_runtime():
    async with LocalExchangeServer(EchoBackend(), faults=DuplicateAndThrottle()) as server:
        async with websockets.connect(server.ws_base_url) as ws:
            hello = await asyncio.wait_for(ws.recv(), 10)
            assert await asyncio.wait_for(ws.recv(), 10) == hello  # duplicated
            await ws.send("bytes")  # dropped by the plan
            await ws.send("x")
            assert [await asyncio.wait_for(ws.recv(), 10) for _ in range(2)] == ["X", "X"]
            server.faults = None
            await ws.send("y")
            assert await asyncio.wait_for(ws.recv(), 10) == "Y"
            await ws.send("z")
            assert await asyncio.wait_for(ws.recv(), 10) == "Z"  # no duplicate any more
        status, body, _ = await rest_get(server.rest_base_url + "/api/x")
        assert status == 200
        server.faults = DuplicateAndThrottle()
        status, body, _ = await rest_get(server.rest_base_url + "/api/x")
        assert status == 429 and orjson.loads(body)["error"] == "too many requests"
        status, _, _ = await rest_get(server.rest_base_url + "/other")
        assert status == 200


class Flood:
    """Streams large frames until the client is gone."""

    def __init__(self) -> None:
        self.blocked = asyncio.Event()
        self.ended = asyncio.Event()

    async def handle_rest(self, path, query):
        return json_error(404, "no REST here")

    async def handle_ws(self, session: WsSession) -> None:
        chunk = "x" * 65536
        try:
            while True:
                sent = asyncio.ensure_future(session.send(chunk))
                done, _ = await asyncio.wait({sent}, timeout=0.5)
                if not done:
                    self.blocked.set()  # backpressure: the client is not reading
                await sent
        finally:
            self.ended.set()


async def test_stop_does_not_hang_on_a_client_that_stopped_reading():
    backend = Flood()
    server = LocalExchangeServer(backend)
    await server.start()
    # A tiny receive queue: the client stops reading from its socket almost at once.
    ws = await websockets.connect(server.ws_base_url, max_queue=1, max_size=None)
    try:
        await asyncio.wait_for(backend.blocked.wait(), 60)
        await asyncio.wait_for(server.stop(), 30)  # guard only: stop must not wait for the client
        assert backend.ended.is_set()
        assert server.sessions == []
    finally:
        ws.transport.abort()
