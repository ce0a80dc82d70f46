"""Reading the live cache back: what the trading orchestrator sees in Redis."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from .config import RedisSettings
from .contract import RedisKeys


async def read_live_books(redis_settings: RedisSettings, exchange: str | None = None) -> dict[str, dict]:
    """``{"exchange:symbol": book}`` of every live book (one exchange's, if given)."""
    keys = RedisKeys(redis_settings.prefix)
    client = aioredis.Redis(**redis_settings.client_kwargs())
    try:
        members = sorted(m.decode() for m in await client.smembers(keys.books))
        if exchange is not None:
            members = [m for m in members if m.split(":", 1)[0] == exchange]
        books = {}
        for member in members:
            ex, symbol = member.split(":", 1)
            raw = await client.get(keys.book(ex, symbol))
            if raw is not None:
                books[member] = orjson.loads(raw)
        return books
    finally:
        await client.aclose()
