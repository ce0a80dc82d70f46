"""RedisSink against real Redis: coalescing, key layout, trade streams, status,
and recovery when its Redis goes away and comes back (on a server of its own)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis

from streamer.book.sync import BookSync, SyncState
from streamer.connection.clock import now_us
from streamer.contract import RedisKeys
from streamer.exchanges.binance.mapper import BinanceSyncRules
from streamer.embedded import free_tcp_port, start_redis
from streamer.models import ConnectionState, ConnectionStatus, TradeEvent
from streamer.sinks.redis_sink import NEVER, RedisSink

T0 = 1_773_156_600_123_456


async def _wait_for(predicate, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until true; the timeout only guards against hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def _sink(settings, **kwargs) -> RedisSink:
    kwargs.setdefault("flush_interval", 0.01)
    return RedisSink(settings, reconnect_base_delay=0.01, reconnect_max_delay=0.1, socket_timeout=0.5, **kwargs)


def _trade(i: int, symbol: str = "BTC-USDT") -> TradeEvent:
    return TradeEvent("binance", symbol, symbol.replace("-", ""), str(i), f"{64000 + i}.5", "0.01", "sell", T0 + i, None)


def _status(frames: int) -> ConnectionStatus:
    return ConnectionStatus("binance", ConnectionState.CONNECTED, T0, T0 + frames, reconnects=1, frames=frames)


def _publish(sink: RedisSink, seq: int, symbol: str = "BTC-USDT") -> None:
    sink.publish_book(
        "binance", symbol, symbol.replace("-", ""),
        [("64000.10", f"{seq}.5"), ("63999.00", "2")], [("64000.20", "1")], seq, T0 + seq, T0 + seq - 100,
    )


@pytest.fixture
def own_redis():
    """A redis-server of this test's own (TCP, fixed port) that the test may stop and restart."""
    directory = Path(tempfile.mkdtemp(prefix="coby-redis-"))
    port = free_tcp_port()
    state = {"server": start_redis(directory, port=port), "port": port, "dir": directory}
    yield state
    state["server"].stop()
    shutil.rmtree(directory, ignore_errors=True)


async def test_many_publishes_coalesce_into_one_write_of_the_latest_book(settings, redis_client):
    keys = RedisKeys(settings.redis.prefix)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.updates_channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    # Flush only when asked: no timer, no wake-up on changes.
    async with _sink(settings, flush_interval=3600, coalesce_delay=None) as sink:
        for seq in range(500):
            _publish(sink, seq)
        await sink.flush()
        assert sink.book_publishes == 500 and sink.books_written == 1
    redis_client.publish(keys.updates_channel, "sentinel")
    messages = []
    while True:
        message = pubsub.get_message(timeout=5)
        assert message is not None
        if message["data"] == "sentinel":
            break
        messages.append(message["data"])
    pubsub.close()
    assert messages == ["binance:BTC-USDT"]
    book = orjson.loads(redis_client.get(keys.book("binance", "BTC-USDT")))
    assert book["seq"] == 499 and book["bids"][0] == ["64000.10", "499.5"]
    assert redis_client.smembers(keys.books) == {"binance:BTC-USDT"}


async def test_a_change_wakes_the_flusher_without_waiting_for_the_timer(settings, redis_client):
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings, flush_interval=3600) as sink:  # the timer alone would never flush
        await asyncio.sleep(0.05)  # the start-up write is done; the flusher sleeps on its timer
        _publish(sink, 7)
        for _ in range(500):
            if redis_client.get(keys.book("binance", "BTC-USDT")) is not None:
                break
            await asyncio.sleep(0.01)
        book = orjson.loads(redis_client.get(keys.book("binance", "BTC-USDT")))
        assert book["seq"] == 7


async def test_by_default_changes_made_during_a_write_join_the_next_one(settings, redis_client):
    # No coalescing delay: a change is due at once, the flusher writes as soon as
    # the publisher yields, and what changes while that write is on the wire
    # goes out in the next one (never a write per change, never a timer).
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings, flush_interval=3600) as sink:
        assert sink.coalesce_delay == 0.0
        await asyncio.sleep(0.05)  # the start-up write is done
        before = sink.flushes
        _publish(sink, 0)
        assert sink.due_us == T0  # due at its own receipt time
        for seq in range(1, 200):
            await asyncio.sleep(0)  # one turn of the event loop per change
            _publish(sink, seq)

        def latest_seq() -> int | None:
            book = redis_client.get(keys.book("binance", "BTC-USDT"))
            return None if book is None else orjson.loads(book)["seq"]

        await _wait_for(lambda: latest_seq() == 199 and sink.due_us == NEVER)
        writes = sink.flushes - before
        assert 2 <= writes < 200
        assert sink.book_publishes == 200
    # The delay is the configured one unless given: COBY_REDIS_COALESCE_MS, in ms.
    assert _sink(replace(settings, redis_coalesce_ms=2.5)).coalesce_delay == 0.0025


async def test_due_time_is_the_first_change_plus_the_coalescing_delay_until_written(settings, redis_client):
    # The feed's receive loop reads due_us to give the flusher its turn on time.
    async with _sink(settings, flush_interval=3600, coalesce_delay=0.002) as sink:
        await asyncio.sleep(0.05)
        assert sink.due_us == NEVER  # nothing waits
        _publish(sink, 1)  # local_ts T0 + 1
        _publish(sink, 2)  # a later change does not push the due time back
        assert sink.due_us == T0 + 1 + 2_000
        await sink.flush()
        assert sink.due_us == NEVER
        _publish(sink, 3)
        assert sink.due_us == T0 + 3 + 2_000
    async with _sink(settings, flush_interval=3600, coalesce_delay=None) as sink:
        _publish(sink, 4)
        assert sink.due_us == NEVER  # no coalescing flusher: nothing to give a turn to


async def test_release_ends_the_coalescing_wait_so_the_write_happens_now(settings, redis_client):
    # The feed's receive loop calls release() when it yields because the write
    # is due: the flusher then runs next, not after its own timer.
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings, flush_interval=3600, coalesce_delay=3600) as sink:
        await asyncio.sleep(0.05)
        sink.release()  # nothing waits: a no-op
        now = now_us()  # the due time is counted from the change's receipt
        sink.publish_book("binance", "BTC-USDT", "BTCUSDT", [("64000.1", "1")], [("64000.2", "1")], 1, now, now)
        await _wait_for(lambda: sink._due_wait is not None)  # the flusher waits out the coalescing delay
        await asyncio.sleep(0.05)
        assert redis_client.get(keys.book("binance", "BTC-USDT")) is None  # an hour to go
        sink.release()
        await _wait_for(lambda: redis_client.get(keys.book("binance", "BTC-USDT")) is not None)
        assert orjson.loads(redis_client.get(keys.book("binance", "BTC-USDT")))["seq"] == 1
        assert sink.due_us == NEVER and sink._due_wait is None


async def test_a_live_book_is_read_when_written_and_visible_times_are_reported(settings, redis_client):
    """publish_live_book copies nothing: the flush writes the book as it is then,
    and the hook gets the receive times of the last and of the first change."""
    keys = RedisKeys(settings.redis.prefix)
    sync = BookSync("binance", "BTC-USDT", "BTCUSDT", BinanceSyncRules())
    sync.state = SyncState.SYNCED
    sync.last_seq = 10
    seen = []
    async with _sink(settings, flush_interval=3600, coalesce_delay=None) as sink:
        sink.books_visible_hook = seen.extend
        sync.book.apply_levels("bid", [("100.5", "1")])
        sink.publish_live_book(sync, 50, T0 + 1, T0 - 5)
        sync.book.apply_levels("ask", [("101", "2")])
        sync.last_seq = 11
        sink.publish_live_book(sync, 50, T0 + 2, T0 - 4)
        await sink.flush()
        sync.state = SyncState.AWAITING_SNAPSHOT  # left sync without a delete: never written as is
        sink.publish_live_book(sync, 50, T0 + 3, T0 - 3)
        await sink.flush()
    book = orjson.loads(redis_client.get(keys.book("binance", "BTC-USDT")))
    assert (book["bids"], book["asks"], book["seq"]) == ([["100.5", "1"]], [["101", "2"]], 11)
    assert (book["local_ts"], book["exchange_ts"]) == (T0 + 2, T0 - 4)
    assert seen == [(("binance", "BTC-USDT"), T0 + 2, T0 + 1)]


async def test_book_document_follows_the_documented_layout(settings, redis_client):
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings) as sink:
        _publish(sink, 7, "ETH-USDT")
        await sink.flush()
    book = orjson.loads(redis_client.get(keys.book("binance", "ETH-USDT")))
    assert book == {
        "exchange": "binance", "symbol": "ETH-USDT", "native_symbol": "ETHUSDT",
        "local_ts": T0 + 7, "exchange_ts": T0 + 7 - 100, "seq": 7,
        "bids": [["64000.10", "7.5"], ["63999.00", "2"]], "asks": [["64000.20", "1"]],
    }


async def test_delete_book_removes_the_key_and_the_set_member(settings, redis_client):
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings) as sink:
        _publish(sink, 1, "BTC-USDT")
        _publish(sink, 1, "ETH-USDT")
        await sink.flush()
        sink.delete_book("binance", "BTC-USDT")
        await sink.flush()
        assert redis_client.get(keys.book("binance", "BTC-USDT")) is None
        assert redis_client.smembers(keys.books) == {"binance:ETH-USDT"}
        # Published then deleted within one flush: never written.
        _publish(sink, 2, "SOL-USDT")
        sink.delete_book("binance", "SOL-USDT")
        await sink.flush()
        assert redis_client.get(keys.book("binance", "SOL-USDT")) is None
        # Resynchronised again: back.
        _publish(sink, 3, "BTC-USDT")
        await sink.flush()
    assert orjson.loads(redis_client.get(keys.book("binance", "BTC-USDT")))["seq"] == 3
    assert redis_client.smembers(keys.books) == {"binance:ETH-USDT", "binance:BTC-USDT"}


async def test_trades_go_to_a_capped_stream_in_order(settings, redis_client):
    settings = replace(settings, trade_stream_maxlen=10)
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings, pending_trades_per_stream=5000) as sink:
        for i in range(2000):
            sink.add_trade(_trade(i))
        await sink.flush()
        assert sink.trades_written == 2000 and sink.trades_dropped == 0
    stream = keys.trades("binance", "BTC-USDT")
    length = redis_client.xlen(stream)
    assert 10 <= length < 2000  # MAXLEN ~ trims whole nodes: approximately, never below the cap
    entries = redis_client.xrange(stream)
    ids = [int(fields["trade_id"]) for _, fields in entries]
    assert ids == list(range(2000 - length, 2000))
    assert entries[-1][1] == {
        "trade_id": "1999", "price": "65999.5", "size": "0.01", "side": "sell",
        "local_ts": str(T0 + 1999), "exchange_ts": "",
    }


async def test_status_is_a_hash(settings, redis_client):
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings) as sink:
        sink.set_status(_status(5))
        sink.set_status(_status(9))
        await sink.flush()
    assert redis_client.hgetall(keys.status("binance")) == _status(9).as_redis_hash()


async def test_background_flush_needs_no_explicit_flush(settings, redis_client):
    keys = RedisKeys(settings.redis.prefix)
    async with _sink(settings) as sink:
        _publish(sink, 11)
        sink.add_trade(_trade(1))
        await _wait_for(lambda: redis_client.get(keys.book("binance", "BTC-USDT")) is not None)
        await _wait_for(lambda: redis_client.xlen(keys.trades("binance", "BTC-USDT")) == 1)


def _own_settings(settings, port: int):
    return settings.with_redis(host="127.0.0.1", port=port, unix_socket=None)


async def test_redis_outage_keeps_latest_state_and_rewrites_it_after_restart(settings, own_redis):
    settings = _own_settings(settings, own_redis["port"])
    keys = RedisKeys(settings.redis.prefix)
    client = redis.Redis(host="127.0.0.1", port=own_redis["port"], decode_responses=True)
    async with _sink(settings, pending_trades_per_stream=10) as sink:
        _publish(sink, 1, "BTC-USDT")
        _publish(sink, 1, "ETH-USDT")
        sink.set_status(_status(1))
        assert await sink.flush()

        own_redis["server"].stop()
        # Redis is down: producers neither block nor fail.
        for seq in range(2, 200):
            _publish(sink, seq, "BTC-USDT")
        for i in range(30):
            sink.add_trade(_trade(i))
        sink.set_status(_status(200))
        assert await sink.flush() is False
        assert sink.errors >= 1 and not sink.connected
        assert sink.trades_dropped == 20  # only the newest 10 are kept for the live cache

        own_redis["server"] = start_redis(own_redis["dir"], port=own_redis["port"])
        await _wait_for(lambda: client.get(keys.book("binance", "ETH-USDT")) is not None)
        await _wait_for(lambda: sink.connected)
    # Every live book rewritten (even the unchanged one), with its latest state.
    assert orjson.loads(client.get(keys.book("binance", "BTC-USDT")))["seq"] == 199
    assert orjson.loads(client.get(keys.book("binance", "ETH-USDT")))["seq"] == 1
    assert client.smembers(keys.books) == {"binance:BTC-USDT", "binance:ETH-USDT"}
    assert client.hgetall(keys.status("binance")) == _status(200).as_redis_hash()
    ids = [fields["trade_id"] for _, fields in client.xrange(keys.trades("binance", "BTC-USDT"))]
    assert ids == [str(i) for i in range(20, 30)]
    client.close()


async def test_idle_sink_notices_a_restart_and_repopulates_redis(settings, own_redis):
    settings = _own_settings(settings, own_redis["port"])
    keys = RedisKeys(settings.redis.prefix)
    client = redis.Redis(host="127.0.0.1", port=own_redis["port"], decode_responses=True)
    async with _sink(settings, health_interval=0.05) as sink:
        _publish(sink, 5)
        sink.set_status(_status(5))
        assert await sink.flush()
        own_redis["server"].stop()
        own_redis["server"] = start_redis(own_redis["dir"], port=own_redis["port"])
        assert client.get(keys.book("binance", "BTC-USDT")) is None  # a restarted cache is empty
        # No new publish: the health check notices the new server and the sink rewrites.
        # The key is visible to this client as soon as Redis ran the write, before the
        # sink has read the reply and counted the resync: wait for both.
        await _wait_for(lambda: client.get(keys.book("binance", "BTC-USDT")) is not None and sink.resyncs >= 2)
        assert sink.resyncs >= 2
    assert orjson.loads(client.get(keys.book("binance", "BTC-USDT")))["seq"] == 5
    assert client.hgetall(keys.status("binance")) == _status(5).as_redis_hash()
    client.close()


async def test_sink_started_while_redis_is_down_catches_up(settings, own_redis):
    settings = _own_settings(settings, own_redis["port"])
    keys = RedisKeys(settings.redis.prefix)
    own_redis["server"].stop()
    async with _sink(settings) as sink:
        _publish(sink, 3)
        await _wait_for(lambda: sink.errors >= 1)
        own_redis["server"] = start_redis(own_redis["dir"], port=own_redis["port"])
        client = redis.Redis(host="127.0.0.1", port=own_redis["port"], decode_responses=True)
        await _wait_for(lambda: client.get(keys.book("binance", "BTC-USDT")) is not None)
        client.close()
