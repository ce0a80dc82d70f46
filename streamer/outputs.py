"""Where a processed record's output goes: PostgreSQL (system of record) and Redis (live cache).

PostgreSQL gets the record's rows in one piece with the journal position
(:meth:`streamer.sinks.postgres.PostgresSink.accept`); Redis gets the books
that changed, the books that left sync, and the trades. Neither call waits:
the sinks are bounded and catch up on their own.
"""

from __future__ import annotations

from .models import ConnectionStatus
from .processor import Output
from .sinks.postgres import PostgresSink
from .sinks.redis_sink import RedisSink


class Outputs:
    def __init__(self, pg: PostgresSink, redis: RedisSink, *, redis_depth: int = 50) -> None:
        self.pg = pg
        self.redis = redis
        self.redis_depth = redis_depth

    def commit(self, stream: str, seq: int, out: Output) -> None:
        self.pg.accept(stream, seq, out.rows)  # False when spilled: recovery re-derives the rows
        redis = self.redis
        for sync in out.unsynced:
            redis.delete_book(sync.exchange, sync.symbol)  # no stale book may stay visible
        depth = self.redis_depth
        for sync, exchange_ts in out.changed.values():
            if sync.is_synced:
                # The sink reads the top levels when it writes (once per flush, not per record).
                redis.publish_live_book(sync, depth, out.local_ts, exchange_ts)
        for trade in out.trades:
            redis.add_trade(trade)

    def status(self, status: ConnectionStatus) -> None:
        self.redis.set_status(status)

