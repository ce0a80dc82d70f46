"""`coby capture replay` end to end: capture server -> streamer -> PostgreSQL and Redis."""

from __future__ import annotations

import argparse
from decimal import Decimal

import orjson
import psycopg
import pytest
from psycopg import sql

from streamer import commands
from streamer.contract import RedisKeys

from .reference_books import CAPTURE_FILES, REFERENCE

EXPECTED_CHECKSUMS = {"kraken": 4269, "okx": 290}


def _args(path, exchange=None):
    return argparse.Namespace(file=str(path), exchange=exchange, speed=None, timeout=120.0)


def _count(conn, settings, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(settings.db.schema), sql.Identifier(table))
    return conn.execute(query).fetchone()[0]


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
async def test_replay_stores_every_tick_and_matches_reference_books(protocol, settings, captures_dir, redis_client):
    path = captures_dir / CAPTURE_FILES[protocol]
    result = await commands.capture_replay(_args(path), settings)

    assert result["timed_out"] is False
    assert result["frames"] == result["frames_served"] > 0
    assert result["sequence_gaps"] == 0
    assert result["checksum_failed"] == 0
    assert result["rejected"] == 0
    if protocol in EXPECTED_CHECKSUMS:
        assert result["checksum_ok"] == EXPECTED_CHECKSUMS[protocol]
    # The last stdout line is one JSON object: it must serialize.
    assert orjson.loads(orjson.dumps(result))["exchange"]

    reference = REFERENCE[protocol](path)
    books = result["books"]
    assert len(books) == len(reference)
    from streamer.exchanges.registry import get_mapper

    mapper = get_mapper(protocol)
    for native, (bid, ask) in reference.items():
        got = books[mapper.normalize_symbol(native)]
        assert (Decimal(got["bid"][0]), Decimal(got["bid"][1])) == bid, native
        assert (Decimal(got["ask"][0]), Decimal(got["ask"][1])) == ask, native

    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        assert _count(conn, settings, "book_updates") == result["book_updates"] > 0
        assert _count(conn, settings, "trades") == result["trades"]
        assert _count(conn, settings, "quarantine") == 0
        assert _count(conn, settings, "book_snapshots") > 0
        synced = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.feed_events WHERE event = 'synced'").format(
                sql.Identifier(settings.db.schema))
        ).fetchone()[0]
        assert synced >= len(reference)

    # Redis held every book at the end of the session, equal to the reference...
    assert set(result["redis_books"]) == set(books)
    for native, (bid, ask) in reference.items():
        live = result["redis_books"][mapper.normalize_symbol(native)]
        assert Decimal(live["bid"][0]) == bid[0] and Decimal(live["ask"][0]) == ask[0]
    # ...and, once the streamer stopped, no longer serves books nobody maintains.
    keys = RedisKeys(settings.redis.prefix)
    assert redis_client.scard(keys.books) == 0
    assert redis_client.hget(keys.status(protocol), "state") == "stopped"


async def test_replay_with_protocol_alias_and_memory_alarm(settings, captures_dir):
    """``--exchange`` names the protocol (Binance.US speaks Binance's); a memory
    budget below the process size raises the alarm without stopping the stream."""
    from dataclasses import replace

    small = replace(settings, max_memory_mb=64)
    path = captures_dir / CAPTURE_FILES["binance"]
    result = await commands.capture_replay(_args(path, exchange="binance.us"), small)
    assert result["protocol"] == "binance"
    assert result["sequence_gaps"] == 0 and len(result["books"]) == 4
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        details = [row[0] for row in conn.execute(
            sql.SQL("SELECT detail FROM {}.feed_events WHERE event = 'error'").format(
                sql.Identifier(settings.db.schema))
        ).fetchall()]
    assert any("MAX_MEMORY_USAGE 64 MB" in d for d in details), details


async def test_replay_rejects_unknown_protocol(settings, captures_dir):
    from streamer.errors import UnknownExchangeError

    with pytest.raises(UnknownExchangeError, match="supported"):
        await commands.capture_replay(_args(captures_dir / CAPTURE_FILES["okx"], exchange="nasdaq"), settings)
