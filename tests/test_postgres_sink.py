"""PostgresSink against a real PostgreSQL: binary COPY round trips, backpressure,
surviving a killed connection, isolating bad rows, spooling at close."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import orjson
import psycopg
import pytest
from psycopg import sql

from streamer.contract import BOOK_SNAPSHOTS, BOOK_UPDATES, FEED_EVENTS, INSTRUMENTS, QUARANTINE, TABLES, TRADES
from streamer.embedded import free_tcp_port
from streamer.errors import SinkError
from streamer.models import BookMessage, FeedEvent, FeedEventKind, Quarantine, TradeEvent
from streamer.sinks import rows
from streamer.sinks.postgres import PostgresSink
from streamer.sinks.schema import apply_schema

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
T0 = 1_773_156_600_123_456  # 2026-03-10 15:30:00.123456 UTC, microseconds matter


def _us(value):
    return (value - EPOCH) // timedelta(microseconds=1) if isinstance(value, datetime) else value


def _read(conn, settings, table) -> list[tuple]:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
    query = sql.SQL("SELECT {} FROM {}.{}").format(cols, sql.Identifier(settings.db.schema), sql.Identifier(table.name))
    return [tuple(_us(v) for v in row) for row in conn.execute(query).fetchall()]


def _count(conn, settings, table) -> int:
    return conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(settings.db.schema), sql.Identifier(table.name))
    ).fetchone()[0]


def _trade(i: int, ts: int = T0) -> TradeEvent:
    return TradeEvent("binance", "BTC-USDT", "BTCUSDT", f"id-{i}", "64000.5", "0.001", "buy", ts + i, ts + i - 500)


async def _wait_for(predicate, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until true; the timeout only guards against hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def _fast(settings, **kwargs) -> PostgresSink:
    kwargs.setdefault("flush_interval", 0.02)
    return PostgresSink(settings, reconnect_base_delay=0.01, reconnect_max_delay=0.2, maintenance_interval=None, **kwargs)


def _sample_rows() -> dict[str, list[tuple]]:
    delta = BookMessage(
        "okx", "BTC-USDT", "BTC-USDT",
        bids=[("64000.1", "0.00012345"), ("63999.9", "0")],
        asks=[("64000.2", "1.5")],
        local_ts=T0, exchange_ts=T0 - 1234, is_snapshot=False, seq=2**62, prev_seq=2**62 - 1,
    )
    snapshot = BookMessage(
        "kraken", "BTC-USD", "XBT/USD", bids=[("0.00000001", "123456789.12345678")], asks=[],
        local_ts=T0 + 1, is_snapshot=True,
    )
    return {
        BOOK_UPDATES.name: rows.book_update_rows(delta) + rows.book_update_rows(snapshot),
        TRADES.name: [rows.trade_row(_trade(1)), rows.trade_row(TradeEvent("okx", "ETH-USDT", "ETH-USDT", "9", "3000", "2", "sell", T0))],
        BOOK_SNAPSHOTS.name: rows.snapshot_rows("binance", "BTC-USDT", T0, 42, [("100.5", "1"), ("100.4", "2")], [("100.6", "3")])
        + rows.snapshot_rows("binance", "ETH-USDT", T0, None, [], [("1.25", "0.5")]),
        FEED_EVENTS.name: [rows.feed_event_row(FeedEvent("okx", FeedEventKind.GAP, T0, "BTC-USDT", "prevSeqId 5 → 7")),
                           rows.feed_event_row(FeedEvent("okx", FeedEventKind.DISCONNECTED, T0 + 9))],
        QUARANTINE.name: [rows.quarantine_row(Quarantine("binance", "not JSON", "{\x00bad ✓", T0, "MAP-002"))],
        INSTRUMENTS.name: [rows.instrument_row("okx", "BTC-USDT", "BTC-USDT", T0)],
    }


async def test_every_table_round_trips_through_binary_copy(settings, pg_conn):
    apply_schema(pg_conn, settings)
    samples = _sample_rows()
    assert set(samples) == {t.name for t in TABLES}
    async with _fast(settings) as sink:
        for table in TABLES:
            await sink.write(table, samples[table.name])
        await sink.flush()
        assert sink.stats()["rows_written"] == {name: len(r) for name, r in samples.items()}
    for table in TABLES:
        assert sorted(_read(pg_conn, settings, table), key=repr) == sorted(samples[table.name], key=repr), table.name
    # Exact microseconds, exact decimals-as-doubles.
    got = {r[5]: r for r in _read(pg_conn, settings, BOOK_UPDATES)}
    assert got[64000.1][0] == T0 and got[64000.1][6] == float("0.00012345")
    assert got[0.00000001][6] == 123456789.12345678
    raw = pg_conn.execute(sql.SQL("SELECT raw FROM {}.quarantine").format(sql.Identifier(settings.db.schema))).fetchone()[0]
    assert raw == "{\\u0000bad ✓"


async def test_datetime_timestamps_are_accepted_too(settings, pg_conn):
    apply_schema(pg_conn, settings)
    when = datetime(2026, 3, 10, 1, 2, 3, 456789, tzinfo=timezone.utc)
    async with _fast(settings) as sink:
        await sink.write(TRADES, [(when, None, "binance", "BTC-USDT", "x", 1.0, 2.0, "sell")])
        await sink.write(INSTRUMENTS, [("binance", "ETH-USDT", "ETHUSDT", when)])
    assert _read(pg_conn, settings, TRADES)[0][0] == _us(when)
    assert _read(pg_conn, settings, INSTRUMENTS)[0][3] == _us(when)


async def test_background_flush_writes_without_an_explicit_flush(settings, pg_conn):
    apply_schema(pg_conn, settings)
    async with _fast(settings) as sink:
        await sink.write(TRADES, [rows.trade_row(_trade(i)) for i in range(7)])
        await _wait_for(lambda: sink.rows_written[TRADES.name] == 7)
    assert _count(pg_conn, settings, TRADES) == 7


async def test_instruments_are_inserted_once(settings, pg_conn):
    apply_schema(pg_conn, settings)
    async with _fast(settings) as sink:
        await sink.write(INSTRUMENTS, [rows.instrument_row("okx", "BTC-USDT", "BTC-USDT", T0)])
        await sink.flush()
        await sink.write(INSTRUMENTS, [rows.instrument_row("okx", "BTC-USDT", "BTC-USDT", T0 + 10**9)])
        await sink.write(INSTRUMENTS, [rows.instrument_row("okx", "ETH-USDT", "ETH-USDT", T0)])
    assert sorted(_read(pg_conn, settings, INSTRUMENTS)) == [
        ("okx", "BTC-USDT", "BTC-USDT", T0),
        ("okx", "ETH-USDT", "ETH-USDT", T0),
    ]


async def test_backpressure_bounds_the_buffer_while_the_database_is_stuck(settings, pg_conn):
    apply_schema(pg_conn, settings)
    settings = replace(settings, batch_write_size=10)
    bound, per_write, writes = 50, 5, 40
    locker = await psycopg.AsyncConnection.connect(settings.db.url())
    async with _fast(settings, max_buffered_rows=bound) as sink:
        # Hold the table: every COPY blocks until we let go.
        await locker.execute(
            sql.SQL("LOCK TABLE {}.trades IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(settings.db.schema))
        )
        peak = 0

        async def produce():
            nonlocal peak
            for w in range(writes):
                batch = [rows.trade_row(_trade(w * per_write + k)) for k in range(per_write)]
                await sink.write(TRADES, batch)
                peak = max(peak, sink.buffered_rows)

        producer = asyncio.create_task(produce())
        await _wait_for(lambda: sink.backpressure_waits > 0)
        assert not producer.done()
        assert sink.buffered_rows <= bound + per_write - 1
        await locker.rollback()  # release the table
        await asyncio.wait_for(producer, 60)
        await sink.flush()
    await locker.close()
    assert peak <= bound + per_write - 1
    assert _count(pg_conn, settings, TRADES) == writes * per_write


async def test_survives_its_connection_being_killed_without_losing_rows(settings, pg_conn):
    apply_schema(pg_conn, settings)
    async with _fast(settings) as sink:
        await sink.write(TRADES, [rows.trade_row(_trade(i)) for i in range(100)])
        await sink.flush()
        first_pid = sink.backend_pid
        pg_conn.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        await sink.write(TRADES, [rows.trade_row(_trade(i)) for i in range(100, 250)])
        await sink.flush()
        assert sink.reconnects >= 1 and sink.write_errors >= 1
        assert sink.backend_pid != first_pid
    ids = [r[4] for r in _read(pg_conn, settings, TRADES)]
    assert sorted(ids) == sorted(f"id-{i}" for i in range(250))


async def test_a_batch_killed_mid_copy_is_retried_exactly_once(settings, pg_conn):
    apply_schema(pg_conn, settings)
    schema = settings.db.schema
    locker = await psycopg.AsyncConnection.connect(settings.db.url())
    async with _fast(settings) as sink:
        await sink.write(TRADES, [rows.trade_row(_trade(0))])
        await sink.flush()
        pid = sink.backend_pid
        await locker.execute(sql.SQL("LOCK TABLE {}.trades IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))
        await sink.write(TRADES, [rows.trade_row(_trade(i)) for i in range(1, 60)])

        def waiting_on_lock() -> bool:
            row = pg_conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            return row is not None and row[0] == "Lock"

        await _wait_for(waiting_on_lock)
        pg_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await locker.rollback()
        await sink.flush()
        assert sink.write_errors >= 1
    await locker.close()
    ids = [r[4] for r in _read(pg_conn, settings, TRADES)]
    assert sorted(ids) == sorted(f"id-{i}" for i in range(60))


async def test_rows_the_database_rejects_are_isolated_and_kept_on_disk(settings, pg_conn):
    apply_schema(pg_conn, settings)
    good = rows.snapshot_rows("binance", "BTC-USDT", T0, 1, [("100", "1")] * 6, [("101", "1")] * 6)
    bad = list(good[3])
    bad[4] = 40_000  # level does not fit a smallint
    batch = good[:3] + [tuple(bad)] + good[3:]
    async with _fast(settings) as sink:
        await sink.write(BOOK_SNAPSHOTS, batch)
        await sink.flush()
        assert sink.rows_rejected == 1
        assert sink.rows_written[BOOK_SNAPSHOTS.name] == len(good)
    assert sorted(_read(pg_conn, settings, BOOK_SNAPSHOTS)) == sorted(good)
    lines = (settings.data_dir / "rejected" / "book_snapshots.jsonl").read_bytes().splitlines()
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["row"][4] == 40_000 and record["error"] and record["columns"] == BOOK_SNAPSHOTS.column_names


async def test_rows_unwritable_at_close_are_spooled_not_dropped(settings, pg_conn):
    apply_schema(pg_conn, settings)
    sink = _fast(settings)
    await sink.start()
    pid = sink.backend_pid
    # The database becomes unreachable: its address now leads nowhere.
    sink.settings = settings.with_db(host="127.0.0.1", port=free_tcp_port())
    pg_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    await sink.write(FEED_EVENTS, [rows.feed_event_row(FeedEvent("okx", FeedEventKind.STALL, T0 + i)) for i in range(5)])
    await sink.close(timeout=0.5)
    assert sink.rows_spooled == 5 and sink.buffered_rows == 0
    spooled = [orjson.loads(line) for line in (settings.data_dir / "spool" / "feed_events.jsonl").read_bytes().splitlines()]
    assert sorted(r["row"][0] for r in spooled) == [T0 + i for i in range(5)]
    assert _count(pg_conn, settings, FEED_EVENTS) == 0


async def test_misuse_is_reported_clearly(settings, pg_conn):
    apply_schema(pg_conn, settings)
    sink = _fast(settings)
    await sink.start()
    with pytest.raises(SinkError, match="columns"):
        await sink.write(TRADES, [(1, 2, 3)])
    await sink.close()
    with pytest.raises(SinkError, match="closed"):
        await sink.write(TRADES, [rows.trade_row(_trade(1))])


class _Hint:
    """A turn hint (``streamer.connection.ws.TurnHint``) due from ``due_us`` on, counting releases."""

    def __init__(self, due_us: int) -> None:
        self.due_us = due_us
        self.releases = 0

    def release(self) -> None:
        self.releases += 1


@pytest.mark.parametrize("due", [True, False])
async def test_a_copy_lets_due_work_through_every_check_and_stores_every_row(settings, pg_conn, due):
    from streamer.sinks.postgres import COPY_CHECK_ROWS, COPY_YIELD_ROWS

    apply_schema(pg_conn, settings)
    count = 4 * COPY_YIELD_ROWS
    hint = _Hint(0 if due else 2**62)
    turns = 0

    async def other_task() -> None:  # counts the loop turns it gets while the COPY runs
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async with _fast(settings) as sink:
        sink.turn_hint = hint
        ticker = asyncio.create_task(other_task())
        await sink.write(TRADES, [rows.trade_row(_trade(i)) for i in range(count)])
        before = turns
        await sink.flush()
        during = turns - before
        ticker.cancel()
    assert _count(pg_conn, settings, TRADES) == count
    if due:
        assert hint.releases == count // COPY_CHECK_ROWS
        assert during >= count // COPY_CHECK_ROWS
    else:
        assert hint.releases == 0
        assert during >= count // COPY_YIELD_ROWS


class _WriteRowOnly:
    """A COPY seen through its documented API only (no formatter): how
    ``_write_rows`` meets a psycopg whose internals have changed."""

    def __init__(self, copy) -> None:
        self.write_row = copy.write_row


@pytest.mark.parametrize("documented_api_only", [False, True])
async def test_copied_level_rows_keep_each_frames_timestamps(settings, pg_conn, documented_api_only):
    # Level rows of one frame share their two timestamp objects, which the
    # encoder remembers: rows of frames that alternate and repeat times must
    # still each be stored with their own.
    from streamer.sinks.postgres import _write_rows

    apply_schema(pg_conn, settings)
    written: list[tuple] = []
    for frame in range(60):
        local_ts = T0 + (frame % 7) * 1_000 + frame  # some frames share a receipt time's value, not its object
        exchange_ts = None if frame % 5 == 0 else T0 - frame * 10
        levels = [(f"{64000 + i}.5", f"{frame}.{i}") for i in range(1 + frame % 4)]
        msg = BookMessage("okx", "BTC-USDT", "BTC-USDT", bids=levels, asks=levels[:1], local_ts=local_ts,
                          exchange_ts=exchange_ts, is_snapshot=False, seq=frame, prev_seq=frame - 1)
        written += rows.book_update_rows(msg)
    async with _fast(settings) as sink:
        conn = await sink._ensure_connection()
        async with conn.transaction(), conn.cursor() as cur:
            async with cur.copy(sink._copy_statement(BOOK_UPDATES)) as copy:
                copy.set_types([c.pg_type for c in BOOK_UPDATES.columns])
                await _write_rows(_WriteRowOnly(copy) if documented_api_only else copy, written)
    assert sorted(_read(pg_conn, settings, BOOK_UPDATES), key=repr) == sorted(written, key=repr)
