"""Storage sinks: the PostgreSQL schema and writer (system of record) and the
Redis live cache.

- :mod:`.schema`: versioned, idempotent DDL generated from :mod:`streamer.contract`;
  TimescaleDB hypertables when the extension exists, else native daily partitions.
- :mod:`.rows`: events to row tuples in contract column order (pure functions).
- :mod:`.postgres`: :class:`~.postgres.PostgresSink`, buffered binary COPY with backpressure.
- :mod:`.redis_sink`: :class:`~.redis_sink.RedisSink`, coalesced latest books, trade streams, status.
"""
