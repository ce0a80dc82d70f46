"""Fault plans of the local exchange server, seen by a real client over loopback.

A small backend numbers its frames, so every test can tell exactly which
frames were dropped, doubled, reordered or damaged. The spec parser, the
control endpoint (``/_coby/faults``) and the REST client's rate-limit
handling (Retry-After, the 418 gate) are checked here too.
"""

from __future__ import annotations

import asyncio
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
import pytest
import websockets

from streamer.connection.rest import RestClient, RestError, parse_retry_after
from streamer.connection.ws import frame_exceeds, oversized_quarantine
from streamer.exchanges.base import RestRequest
from streamer.local.faults import (
    CorruptFrames,
    DisconnectAfter,
    DropFrames,
    DuplicateFrames,
    FaultPlans,
    FaultSpecError,
    ReorderFrames,
    RestFailures,
    StallAfter,
    parse_fault_spec,
)
from streamer.local.server import FAULTS_PATH, LocalExchangeServer

FRAMES = 30


def frame(n: int) -> str:
    symbol = "BTCUSDT" if n % 2 else "ETHUSDT"
    return orjson.dumps({"n": n, "s": symbol, "p": f"{100 + n}.25", "q": "1.5"}).decode()


class NumberedBackend:
    """Each connection gets frames 1..FRAMES, then stays open until the client leaves."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle_rest(self, path, query):
        return 200, orjson.dumps({"ok": True, "path": path}).decode(), "application/json"

    async def handle_ws(self, session):
        self.connections += 1
        for n in range(1, FRAMES + 1):
            await session.send(frame(n))
        await session.send('{"end": true}')
        while await session.receive() is not None:
            pass


async def receive_all(url: str) -> tuple[list[str], bool]:
    """Every frame until the end marker; the flag says whether the connection broke first."""
    frames: list[str] = []
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        try:
            async for message in ws:
                if message == '{"end": true}':
                    return frames, False
                frames.append(message)
        except websockets.ConnectionClosedError:
            return frames, True
    return frames, True


def numbers(frames: list[str]) -> list[int]:
    return [orjson.loads(f)["n"] for f in frames]


async def served(plan) -> tuple[list[str], bool]:
    async with LocalExchangeServer(NumberedBackend(), faults=plan) as server:
        return await receive_all(server.ws_base_url)


# -- the spec parser -----------------------------------------------------------


def test_parser_builds_every_kind_with_its_parameters():
    plans = parse_fault_spec(
        "drop:every=500; duplicate:every=7,symbol=ETH-USDT; reorder:every=9,hold=3;"
        "corrupt:every=300,mode=nan; disconnect:after=1000,times=5; stall:after=200,seconds=40;"
        "rest:status=429,count=3,retry_after=1,match=/api/v3/depth"
    )
    kinds = [type(p) for p in plans.plans]
    assert kinds == [DropFrames, DuplicateFrames, ReorderFrames, CorruptFrames, DisconnectAfter, StallAfter,
                     RestFailures]
    drop, dup, reorder, corrupt, disconnect, stall, rest = plans.plans
    assert drop.every == 500 and dup.filter.symbol == "ETH-USDT" and reorder.hold == 3
    assert corrupt.mode == "nan" and (disconnect.after, disconnect.times) == (1000, 5)
    assert (stall.after, stall.seconds) == (200, 40.0)
    assert (rest.status, rest.count, rest.retry_after, rest.filter.match) == (429, 3, 1, "/api/v3/depth")
    # A plan's own spec parses back into the same plan.
    again = parse_fault_spec(plans.spec())
    assert again.spec() == plans.spec()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty fault spec"),
        (" ; ", "no fault"),
        ("explode:every=1", "unknown fault kind 'explode'"),
        ("drop:every=0", "every must be >= 1"),
        ("drop:every=often", "every must be an integer"),
        ("drop:bogus=1", "unknown key 'bogus'"),
        ("drop:every", "expected key=value"),
        ("drop:every=1,every=2", "every given twice"),
        ("corrupt:mode=zap", "mode must be one of truncate, flip, nan"),
        ("rest:status=200", "status must be between 400 and 599"),
        ("reorder:hold=1", "hold must be >= 2"),
        ("stall:after=1,seconds=-1", "seconds must be a positive number"),
        ("stall:after=1,seconds=nan", "seconds must be a positive number"),
        ("drop:symbol=BTC", "symbol must look like BASE-QUOTE"),
    ],
)
def test_parser_rejects_bad_specs_with_a_clear_error(spec, message):
    with pytest.raises(FaultSpecError) as info:
        parse_fault_spec(spec)
    assert message in str(info.value)
    assert info.value.code.startswith("CFG-")


# -- frame faults on a live connection -----------------------------------------


async def test_drop_every_third_frame():
    plan = DropFrames(every=3)
    frames, broken = await served(plan)
    assert not broken
    assert numbers(frames) == [n for n in range(1, FRAMES + 1) if n % 3]
    assert (plan.seen, plan.applied) == (FRAMES + 1, FRAMES // 3)  # the end marker is a frame too


async def test_duplicate_only_the_filtered_symbol_after_a_head_start():
    plan = DuplicateFrames(every=1, after=4, count=3, symbol="ETH-USDT")
    frames, _ = await served(plan)
    got = numbers(frames)
    # ETH frames are the even ones: 2, 4, 6, 8 pass, then 10, 12, 14 are doubled, then no more.
    expected = []
    for n in range(1, FRAMES + 1):
        expected += [n, n] if n in (10, 12, 14) else [n]
    assert got == expected
    assert plan.applied == 3 and plan.seen == FRAMES // 2


async def test_reorder_releases_held_frames_reversed():
    plan = ReorderFrames(every=10, hold=3, count=2)  # a third would hold the end marker
    frames, _ = await served(plan)
    got = numbers(frames)
    assert sorted(got) == list(range(1, FRAMES + 1))
    assert got[9:12] == [12, 11, 10] and got[19:22] == [22, 21, 20]
    assert plan.released == 6 and plan.counters()["held"] == 0


@pytest.mark.parametrize("mode", ["truncate", "flip", "nan"])
async def test_corrupt_modes_damage_exactly_the_chosen_frames(mode):
    plan = CorruptFrames(every=5, mode=mode, count=2)
    frames, _ = await served(plan)
    assert len(frames) == FRAMES
    for n, text in enumerate(frames, start=1):
        if n in (5, 10):
            assert text != frame(n)
            if mode == "truncate":
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(text)
            elif mode == "nan":
                assert orjson.loads(text)["p"] == "NaN"
        else:
            assert text == frame(n)
    assert plan.applied == 2


async def test_disconnect_storm_aborts_each_connection_after_n_frames():
    plan = DisconnectAfter(after=7, times=2)
    async with LocalExchangeServer(NumberedBackend(), faults=plan) as server:
        first = await receive_all(server.ws_base_url)
        second = await receive_all(server.ws_base_url)
        third = await receive_all(server.ws_base_url)
    assert first == second
    assert numbers(first[0]) == list(range(1, 8)) and first[1] is True  # broken, no close frame
    assert numbers(third[0]) == list(range(1, FRAMES + 1)) and third[1] is False
    assert plan.applied == 2


async def test_stall_holds_the_stream_without_closing_it():
    plan = StallAfter(after=4, seconds=0.3)
    async with LocalExchangeServer(NumberedBackend(), faults=plan) as server:
        async with websockets.connect(server.ws_base_url) as ws:
            got = [orjson.loads(await ws.recv())["n"] for _ in range(4)]
            # The fifth frame is held: the connection is open and silent.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), timeout=0.05)
            assert plan.stalling
            rest = [await ws.recv() for _ in range(FRAMES - 4)]
    assert got == [1, 2, 3, 4]
    assert numbers(rest) == list(range(5, FRAMES + 1))
    assert plan.applied == 1 and not plan.stalling


async def test_plans_compose_in_order():
    plans = FaultPlans([DuplicateFrames(every=2), DropFrames(every=3)])
    frames, _ = await served(plans)
    # Frame n: duplicated when even; then the drop plan removes every third frame it sees.
    doubled = [m for n in range(1, FRAMES + 1) for m in ([n, n] if n % 2 == 0 else [n])]
    expected = [n for i, n in enumerate(doubled, start=1) if i % 3]
    assert numbers(frames) == expected


# -- REST faults and the client's rate-limit handling ---------------------------


async def test_rest_fault_answers_429_with_retry_after_then_lets_the_backend_answer():
    plan = RestFailures(status=429, count=2, retry_after=3, match="/api/v3/depth")
    async with LocalExchangeServer(NumberedBackend(), faults=plan) as server:
        async with aiohttp.ClientSession() as http:
            answers = []
            for path in ("/api/v3/exchangeInfo", "/api/v3/depth", "/api/v3/depth", "/api/v3/depth"):
                async with http.get(server.rest_base_url + path) as resp:
                    answers.append((resp.status, resp.headers.get("Retry-After")))
    assert answers == [(200, None), (429, "3"), (429, "3"), (200, None)]
    assert (plan.seen, plan.applied) == (2, 2)


async def test_rest_client_waits_at_least_retry_after_then_succeeds():
    plan = RestFailures(status=429, count=2, retry_after=1)
    async with LocalExchangeServer(NumberedBackend(), faults=plan) as server:
        client = RestClient(server.rest_base_url)
        try:
            body = await client.get(RestRequest("/api/v3/depth", {"symbol": "BTCUSDT"}))
        finally:
            await client.close()
    assert orjson.loads(body)["ok"] is True
    assert client.rate_limited == 2 and client.requests == 3
    limited = [w for w in client.waits if w.status == 429]
    assert len(limited) == 2
    assert all(w.retry_after == 1 and w.seconds >= 1 for w in limited)


async def test_a_418_ban_closes_the_gate_for_every_request_of_the_client():
    plan = RestFailures(status=418, count=1, retry_after=1)
    async with LocalExchangeServer(NumberedBackend(), faults=plan) as server:
        client = RestClient(server.rest_base_url)
        try:
            await client.get(RestRequest("/api/v3/depth", {"symbol": "BTCUSDT"}))  # banned, then served
            requests_after_ban = server.rest_requests
            client._close_gate(0.2)  # as another 418 would: the next request must wait first
            await client.get(RestRequest("/api/v3/depth", {"symbol": "ETHUSDT"}))
        finally:
            await client.close()
    assert client.banned == 1
    assert [w.seconds >= 1 for w in client.waits if w.status == 418] == [True]
    gate_waits = [w for w in client.waits if w.reason == "rate-limit gate"]
    assert gate_waits and all(w.seconds > 0 for w in gate_waits)
    assert server.rest_requests == requests_after_ban + 1  # the gated request was sent once, after the wait


async def test_rest_client_gives_up_on_other_4xx_at_once():
    plan = RestFailures(status=404, count=5)
    async with LocalExchangeServer(NumberedBackend(), faults=plan) as server:
        client = RestClient(server.rest_base_url)
        try:
            with pytest.raises(RestError) as info:
                await client.get(RestRequest("/api/v3/depth", {}))
        finally:
            await client.close()
    assert info.value.status == 404 and client.requests == 1 and not client.waits


def test_retry_after_parsing():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) == 1.0  # a rate-limited client still pauses
    assert parse_retry_after("soon") == 1.0
    assert parse_retry_after("nan") == 1.0
    assert parse_retry_after("99999") == 300.0
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    assert 100 < parse_retry_after(later) <= 120


# -- the control endpoint ---------------------------------------------------------


async def test_control_endpoint_switches_faults_on_and_off_on_a_running_server():
    async with LocalExchangeServer(NumberedBackend()) as server:
        url = server.rest_base_url + FAULTS_PATH
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data="drop:every=2") as resp:
                assert resp.status == 200
                assert (await resp.json())["faults"][0]["kind"] == "drop"
            frames, _ = await receive_all(server.ws_base_url)
            assert numbers(frames) == list(range(1, FRAMES + 1, 2))
            async with http.get(url) as resp:
                counters = (await resp.json())["faults"]
            assert counters[0]["applied"] == FRAMES // 2
            async with http.post(url, data="explode:every=1") as resp:
                assert resp.status == 400
                assert "unknown fault kind" in (await resp.json())["error"]
            assert server.faults is not None  # a bad spec leaves the running plan alone
            async with http.delete(url) as resp:
                assert (await resp.json())["cleared"][0]["applied"] == FRAMES // 2
            assert server.faults is None
            frames, _ = await receive_all(server.ws_base_url)
            assert numbers(frames) == list(range(1, FRAMES + 1))
            async with http.post(url, json={"spec": "rest:status=503,count=1"}) as resp:
                assert resp.status == 200
            async with http.get(server.rest_base_url + "/api/v3/ping") as resp:
                assert resp.status == 503
            async with http.put(url) as resp:
                assert resp.status == 405


async def test_control_endpoint_can_be_disabled():
    async with LocalExchangeServer(NumberedBackend(), control=False) as server:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.rest_base_url + FAULTS_PATH, data="drop:every=1") as resp:
                assert resp.status == 405
    assert server.faults is None


# -- oversized frames ---------------------------------------------------------------


def test_oversized_frames_are_measured_in_utf8_bytes_and_quarantined_bounded():
    assert not frame_exceeds("a" * 100, 100)
    assert frame_exceeds("a" * 101, 100)
    assert frame_exceeds("é" * 60, 100)  # 120 bytes in UTF-8
    assert not frame_exceeds(b"x" * 100, 100)
    big = '{"data":"' + "x" * 100_000 + '"}'
    record = oversized_quarantine("okx", big, 65_536, 123)
    assert record.code == "MAP-006"
    assert record.reason == f"oversized frame: {len(big)} bytes > limit 65536 bytes"
    assert len(record.raw) < 5000 and record.raw.startswith('{"data":"xxx')
    assert str(len(big)) in record.raw
