"""Simulated exchanges over real loopback sockets: a websockets client per protocol
gets a snapshot and valid updates; REST snapshots bridge the Binance stream;
reconnects, speed modes, slow clients and shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from streamer.errors import ConfigError, InvalidSymbolError, UnknownExchangeError
from streamer.local.server import LocalExchangeServer
from streamer.simulator import (
    DEMO_SYMBOLS,
    SimSymbol,
    SimulatorBackend,
    resolve_symbols,
    run_simulated_exchanges,
)

from .test_simulator_reference import RefBinanceBook, RefKrakenBook, RefOkxBook

RECV_TIMEOUT = 5.0


async def recv_json(ws) -> object:
    return json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))


async def http_get(url: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            return response.status, json.loads(await response.text())


async def kraken_client(url: str, depth: int, updates: int) -> RefKrakenBook:
    ref = RefKrakenBook(depth)
    async with websockets.connect(url) as ws:
        status = await recv_json(ws)
        assert status["event"] == "systemStatus"
        await ws.send(json.dumps({"event": "subscribe", "pair": ["XBT/USD"],
                                  "subscription": {"name": "book", "depth": depth}}))
        ack = await recv_json(ws)
        assert ack["status"] == "subscribed" and ack["channelName"] == f"book-{depth}"
        snapshot = await recv_json(ws)
        assert isinstance(snapshot, list) and set(snapshot[1]) == {"as", "bs"}
        ref.apply(snapshot)
        while ref.updates < updates:
            msg = await recv_json(ws)
            if isinstance(msg, list):
                assert msg[0] == ack["channelID"]
                ref.apply(msg)
    return ref


async def test_kraken_clients_of_different_depths_get_valid_books():
    async with SimulatorBackend("kraken", ["XBT/USD"], seed=1, rate=400) as backend:
        async with LocalExchangeServer(backend) as server:
            refs = await asyncio.gather(kraken_client(server.ws_base_url, 10, 100),
                                        kraken_client(server.ws_base_url, 100, 100))
    assert all(ref.checksums_ok >= 100 for ref in refs)
    assert backend.connections == 2 and backend.frames_sent > 200


async def test_okx_client_gets_snapshot_and_chained_updates_and_pong():
    async with SimulatorBackend("okx", ["BTC-USDT", "ETH-USDT"], seed=2, rate=400) as backend:
        async with LocalExchangeServer(backend) as server:
            async with websockets.connect(server.ws_base_url + "/ws/v5/public") as ws:
                await ws.send('{"op":"subscribe","args":[{"channel":"books","instId":"ETH-USDT"},'
                              '{"channel":"trades","instId":"ETH-USDT"}]}')
                ref, trades, pongs = RefOkxBook(), 0, 0
                await ws.send("ping")
                while ref.updates < 15 or trades < 5 or not pongs:
                    raw = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
                    if raw == "pong":
                        pongs += 1
                        continue
                    msg = json.loads(raw)
                    if msg.get("event"):
                        assert msg["event"] == "subscribe" and msg["connId"]
                    elif msg["arg"]["channel"] == "books":
                        ref.apply(msg)
                    else:
                        trades += 1
    assert ref.checksums_ok == ref.updates + 1


async def test_okx_zero_checksum_mode_still_chains():
    async with SimulatorBackend("okx", None, seed=3, rate=400, okx_zero_checksum=True) as backend:
        async with LocalExchangeServer(backend) as server:
            async with websockets.connect(server.ws_base_url + "/ws/v5/public") as ws:
                await ws.send('{"op":"subscribe","args":[{"channel":"books","instId":"SOL-USDT"}]}')
                ref = RefOkxBook()
                while ref.updates < 20:
                    msg = await recv_json(ws)
                    if "action" in msg:
                        assert msg["data"][0]["checksum"] == 0
                        ref.apply(msg)
    assert ref.checksums_ok == 0 and ref.seq is not None


async def test_binance_rest_snapshot_bridges_the_live_stream():
    async with SimulatorBackend("binance", ["BTC-USDT", "ETH-USDT"], seed=4, rate=400) as backend:
        async with LocalExchangeServer(backend) as server:
            url = server.ws_base_url + "/stream?streams=btcusdt@depth@100ms/btcusdt@trade"
            async with websockets.connect(url) as ws:
                ref = RefBinanceBook()
                trades = 0
                # Let some events queue up, then fetch the snapshot while they keep coming.
                while len(ref.buffer) < 3:
                    msg = await recv_json(ws)
                    if msg["data"]["e"] == "depthUpdate":
                        ref.on_event(msg["data"])
                status, body = await http_get(server.rest_base_url + "/api/v3/depth?symbol=BTCUSDT&limit=1000")
                assert status == 200
                ref.on_snapshot(body)
                while ref.applied < 15 or trades < 5:
                    msg = await recv_json(ws)
                    if msg["data"]["e"] == "depthUpdate":
                        ref.on_event(msg["data"])
                    else:
                        trades += 1
                status, info = await http_get(server.rest_base_url + "/api/v3/exchangeInfo")
    assert status == 200 and [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    assert ref.applied >= 15


async def test_binance_subscribe_method_and_bad_stream_close():
    async with SimulatorBackend("binance", None, seed=5, rate=200) as backend:
        async with LocalExchangeServer(backend) as server:
            async with websockets.connect(server.ws_base_url + "/ws") as ws:
                await ws.send('{"method":"SUBSCRIBE","params":["solusdt@trade"],"id":1}')
                assert await recv_json(ws) == {"result": None, "id": 1}
                trade = await recv_json(ws)
                assert trade["e"] == "trade" and trade["s"] == "SOLUSDT"
            async with websockets.connect(server.ws_base_url + "/stream?streams=xrpusdt@trade") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
                assert closed.value.rcvd.code == 1008


async def test_reconnect_gets_a_fresh_snapshot_and_own_channel_ids():
    async with SimulatorBackend("kraken", None, seed=6, rate=300) as backend:
        async with LocalExchangeServer(backend) as server:
            channel_ids = []
            for _ in range(2):
                async with websockets.connect(server.ws_base_url) as ws:
                    await recv_json(ws)
                    await ws.send('{"event":"subscribe","pair":["ETH/USD"],"subscription":{"name":"book","depth":25}}')
                    ack = await recv_json(ws)
                    channel_ids.append(ack["channelID"])
                    ref = RefKrakenBook(25)
                    ref.apply(await recv_json(ws))
                    while ref.updates < 20:
                        ref.apply(await recv_json(ws))
            await asyncio.sleep(0.05)
            assert backend.clients == 0
    assert backend.connections == 2


async def test_as_fast_as_possible_runs_ahead_of_the_clock_and_finishes():
    backend = SimulatorBackend("kraken", ["BTC-USD"], seed=7, rate=200, speed=None, duration=30.0)
    async with backend, LocalExchangeServer(backend) as server:
        async with websockets.connect(server.ws_base_url) as ws:
            await recv_json(ws)
            await ws.send('{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}')
            await recv_json(ws)
            ref = RefKrakenBook(10)
            ref.apply(await recv_json(ws))
            loop = asyncio.get_running_loop()
            started = loop.time()
            while not backend.finished.is_set():
                msg = await recv_json(ws)
                if isinstance(msg, list):
                    ref.apply(msg)
            elapsed = loop.time() - started
            assert elapsed < 30.0  # 30 simulated seconds, much faster than real time
            assert backend.market.now_us - backend.market.start_us == 30_000_000
            # The market has stopped; the connection stays up with heartbeats.
            while True:
                msg = await recv_json(ws)
                if isinstance(msg, dict):
                    assert msg == {"event": "heartbeat"}
                    break
                ref.apply(msg)
    assert ref.checksums_ok > 100
    assert sum(backend.market.action_counts().values()) > 4000


async def _stuck_client(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so the window stays small
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await loop.sock_sendall(sock, request.encode())
    head = await asyncio.wait_for(loop.sock_recv(sock, 1024), RECV_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


@pytest.mark.parametrize("speed", [10.0, None], ids=["real-time-x10", "as-fast-as-possible"])
async def test_a_client_that_stops_reading_is_dropped_and_others_continue(speed):
    # Real time: the market never waits, the stuck client is cut off at its buffer cap.
    # As fast as possible: the market waits for it (backpressure) until the timeout.
    backend = SimulatorBackend("binance", ["BTC-USDT"], seed=8, rate=2000, speed=speed,
                               slow_client_timeout=0.5, max_buffered_bytes=64 * 1024)
    path = "/stream?streams=btcusdt@depth@100ms/btcusdt@trade/btcusdt@aggTrade"
    async with backend, LocalExchangeServer(backend) as server:
        stuck = await _stuck_client(server.port, path)
        try:
            async with websockets.connect(server.ws_base_url + path) as healthy:
                received = 0

                async def drain() -> None:
                    nonlocal received
                    async for _ in healthy:
                        received += 1

                reader = asyncio.create_task(drain())
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while backend.slow_clients_dropped == 0 and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                assert backend.slow_clients_dropped == 1
                assert backend.clients == 1
                before = received
                await asyncio.sleep(0.5)
                assert received > before + 10, "the healthy client keeps streaming"
                # Keep reading while closing, or the close handshake waits behind unread frames.
                await healthy.close()
                await asyncio.wait_for(reader, RECV_TIMEOUT)
        finally:
            stuck.close()


async def test_run_simulated_exchanges_serves_every_protocol_and_stops():
    async with run_simulated_exchanges(["binance", "kraken", "okx"], DEMO_SYMBOLS, rate=100) as urls:
        assert set(urls) == {"binance", "kraken", "okx"}
        assert urls["okx"].ws_url.endswith("/ws/v5/public")
        status, pairs = await http_get(urls["kraken"].rest_url + "/0/public/AssetPairs")
        assert status == 200 and sorted(p["wsname"] for p in pairs["result"].values()) == \
            ["ETH/USD", "SOL/USD", "XBT/USD"]
        status, instruments = await http_get(urls["okx"].rest_url + "/api/v5/public/instruments?instType=SPOT")
        assert [i["instId"] for i in instruments["data"]] == ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
        # One start time and seed: the same asset is quoted at about the same price everywhere.
        mids = [urls.backends[p].market.book(s).mid_ticks() for p, s in
                (("binance", "BTC-USDT"), ("okx", "BTC-USDT"))]
        assert abs(mids[0] - mids[1]) / mids[0] < 0.002
        rest_url = urls["binance"].rest_url
    with pytest.raises(aiohttp.ClientConnectionError):
        await http_get(rest_url + "/api/v3/ping")


def test_backend_configuration_errors():
    with pytest.raises(UnknownExchangeError):
        SimulatorBackend("coinbase")
    with pytest.raises(InvalidSymbolError, match="ADA-USDT"):
        SimulatorBackend("binance", ["ADA-USDT"])
    with pytest.raises(ConfigError):
        SimulatorBackend("okx", rate=-1)
    with pytest.raises(ConfigError):
        SimulatorBackend("okx", speed=0)
    with pytest.raises(ConfigError, match="8 decimals"):
        SimulatorBackend("binance", [SimSymbol("PEPE", "USDT", "0.000001", "0.0000000001", "1", 10)])
    with pytest.raises(ConfigError, match="8 volume decimals"):
        SimulatorBackend("kraken", [SimSymbol("BTC", "USD", "60000", "0.1", "1E-10", 1)])
    custom = SimSymbol("ADA", "USDT", "0.5", "0.0001", "0.1", 4)
    assert resolve_symbols("binance", [custom, "btc-usdt"])[0] is custom
    assert [s.symbol for s in resolve_symbols("kraken", ["XBT/USD", "ETH-USD"])] == ["BTC-USD", "ETH-USD"]


async def test_a_failing_renderer_costs_its_connection_not_the_market():
    async with SimulatorBackend("kraken", ["XBT/USD"], seed=9, rate=300) as backend:
        async with LocalExchangeServer(backend) as server:
            async with websockets.connect(server.ws_base_url) as broken, \
                    websockets.connect(server.ws_base_url) as healthy:
                for ws in (broken, healthy):
                    await recv_json(ws)
                while backend.clients < 2:
                    await asyncio.sleep(0.01)

                def boom(events, now_us):
                    raise RuntimeError("renderer bug")

                backend._clients[0].renderer.on_market = boom
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(broken.recv(), RECV_TIMEOUT)
                await healthy.send('{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book"}}')
                ref = RefKrakenBook(10)
                await recv_json(healthy)
                ref.apply(await recv_json(healthy))
                while ref.updates < 10:
                    ref.apply(await recv_json(healthy))
            assert backend.slow_clients_dropped == 0
