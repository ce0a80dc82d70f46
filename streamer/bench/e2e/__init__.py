"""The ``streamer`` benchmark suite: COBY end to end, its floors, and its scale.

* :mod:`.figures`: one figure record (median, min, max of several runs, machine, date).
* :mod:`.looped`: a capture replayed N times over N consecutive connections.
* :mod:`.serve`: the exchange side, a separate process (capture loop or simulator).
* :mod:`.shards`: a capture split by symbol, one part per shard of an exchange.
* :mod:`.worker`: the streamer side, a separate process per run (its CPU and peak RSS alone).
* :mod:`.floors`: the same frames through orjson alone; the same rows through a bare COPY.
* :mod:`.suite`: runs every case and writes the figures.
"""
