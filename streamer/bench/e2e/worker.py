"""The streamer side of a benchmark run, as its own process (fresh per run).

    python -m streamer.bench.e2e.worker FEEDS_JSON (--expect-frames N | --duration S) [--warmup S]

Runs the real :class:`~streamer.app.Streamer` (journal, book sync with
checksums, PostgreSQL COPY, Redis) from the PostgreSQL/Redis settings in the
environment, against the feeds in ``FEEDS_JSON`` (what ``serve`` printed),
and prints one JSON line of measurements:

* the measurement window opens when the first frame has arrived (after
  ``--warmup`` seconds for paced runs) and closes when every expected frame
  was received (or the duration is over) *and* PostgreSQL and Redis have
  been flushed, so the rate covers the whole path, COPY included;
* CPU seconds are this process's user + system time over the window
  (PostgreSQL's and Redis's own server CPU is not included);
* peak RSS is this process's high-water mark (``VmHWM``); ``rss_mb`` is sampled each
  half second for drift;
* event-loop lag (how late a 1 ms sleeper wakes) and garbage-collector
  pauses, which show what holds frames up besides the sinks;
* latency: for every book Redis acknowledged, the time from the receipt of
  the frame that last changed it (``latest``) and of the oldest frame that
  changed it since the previous flush (``oldest``) to the acknowledgement.

The schema and Redis prefix in the environment are wiped at start (unless
``--keep``: another worker of the same run did it): they
belong to the benchmark alone.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import sys
import time
from array import array

import orjson
import psutil
import psycopg
import redis
from psycopg import sql

from ...app import Streamer
from ...commands import ws_options
from ...config import Settings, load_settings
from ...connection.clock import now_us
from ...exchanges.base import Endpoints
from ...feed import FeedConfig
from .figures import percentile

POLL_S = 0.005


def wipe(settings: Settings) -> None:
    """Drop the benchmark's schema and Redis keys (a fresh journal needs fresh checkpoints)."""
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db.schema)))
    client = redis.Redis(**settings.redis.client_kwargs())
    try:
        keys = list(client.scan_iter(match=settings.redis.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    finally:
        client.close()


class Samples:
    """A uniform sample of at most ``cap`` values (reservoir sampling), in 8-byte slots.

    A 10-minute run measures millions of latencies and loop wake-ups; kept
    whole they would grow the very RSS the run measures. Below ``cap`` (every
    ordinary run) all values are kept; above, percentiles come from a uniform
    sample of them.
    """

    def __init__(self, cap: int = 200_000, seed: int = 7) -> None:
        self.values = array("q")
        self.count = 0
        self.max: int | None = None  # exact, whatever the sample keeps
        self.cap = cap
        self._random = random.Random(seed)

    def append(self, value: int) -> None:
        self.count += 1
        if self.max is None or value > self.max:
            self.max = value
        if len(self.values) < self.cap:
            self.values.append(value)
        else:
            slot = self._random.randrange(self.count)
            if slot < self.cap:
                self.values[slot] = value

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(self.values)


class LatencyProbe:
    """Receipt-to-visible latencies of Redis books, through ``RedisSink.books_visible_hook``."""

    def __init__(self, sink) -> None:
        self.latest_us = Samples()
        self.oldest_us = Samples()
        self.active = False
        sink.books_visible_hook = self._visible

    def _visible(self, written) -> None:
        if not self.active:
            return
        now = now_us()
        for _key, local_ts, first_ts in written:
            self.latest_us.append(now - local_ts)
            self.oldest_us.append(now - first_ts)

    def summary(self) -> dict:
        out: dict = {"latency_samples": len(self.latest_us)}
        for name, values in (("latest", self.latest_us), ("oldest", self.oldest_us)):
            ordered = sorted(values)
            for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
                value = percentile(ordered, q)
                out[f"latency_{name}_{label}_ms"] = None if value is None else value / 1000
            out[f"latency_{name}_max_ms"] = values.max / 1000 if values.max is not None else None
        return out


class LoopWatch:
    """Where latency goes besides the sinks: how late the event loop wakes a 1 ms
    sleeper (anything that holds the loop delays every frame behind it), and the
    garbage collector's pauses."""

    INTERVAL_S = 0.001

    def __init__(self) -> None:
        self.lags_us = Samples()
        self.gc_pauses_us: list[int] = []
        self.gc_by_generation: dict[int, list[int]] = {}
        self._gc_started = 0.0
        self.active = False

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self.active:
            pause = int((time.perf_counter() - self._gc_started) * 1e6)
            self.gc_pauses_us.append(pause)
            self.gc_by_generation.setdefault(info["generation"], []).append(pause)

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(self.INTERVAL_S)
                if self.active:
                    self.lags_us.append(int((time.perf_counter() - started - self.INTERVAL_S) * 1e6))
        finally:
            gc.callbacks.remove(self._on_gc)

    def summary(self) -> dict:
        lags = sorted(self.lags_us)
        pauses = sorted(self.gc_pauses_us)
        out: dict = {"gc_collections": len(pauses),
                     "gc_pause_max_ms": pauses[-1] / 1000 if pauses else 0.0,
                     "gc_pause_total_ms": sum(pauses) / 1000,
                     # generation: [collections, longest pause ms]
                     "gc_generations": {str(g): [len(v), max(v) / 1000] for g, v in sorted(self.gc_by_generation.items())}}
        for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
            value = percentile(lags, q)
            out[f"loop_lag_{label}_ms"] = None if value is None else value / 1000
        out["loop_lag_max_ms"] = self.lags_us.max / 1000 if self.lags_us.max is not None else None
        return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _counters(streamer: Streamer) -> dict:
    totals: dict[str, int] = {}
    for feed in streamer.feeds:
        for key, value in feed.summary().items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    return totals


async def run(feeds_spec: list[dict], *, expect_frames: int | None, duration: float | None,
              warmup: float, timeout: float, keep: bool = False) -> dict:
    settings = load_settings()
    if not keep:
        wipe(settings)
    feeds = [
        FeedConfig(
            spec["exchange"], spec.get("symbols", []), Endpoints(spec["ws_url"], spec["rest_url"]),
            # A loop's end is a normal close: reconnect at once. A quiet end is no stall.
            ws=ws_options(settings, stall_timeout=max(120.0, timeout), backoff_base=0.01, backoff_cap=0.05),
            native_symbols=spec.get("native_symbols"),
            # One shard of an exchange (serve --shards): a feed of its own name, okx@2.
            shard=spec.get("shard", ""),
        )
        for spec in feeds_spec
    ]
    streamer = Streamer(settings, feeds)
    probe = LatencyProbe(streamer.redis)
    watch = LoopWatch()
    watch_task = asyncio.get_running_loop().create_task(watch.run())
    process = psutil.Process()
    loop = asyncio.get_running_loop()
    await streamer.start()
    result: dict = {}
    try:
        deadline = loop.time() + timeout

        def frames() -> int:
            return sum(feed.stats.frames for feed in streamer.feeds)

        while frames() == 0:
            if loop.time() > deadline:
                raise TimeoutError("no frame arrived")
            _check(streamer)
            await asyncio.sleep(POLL_S)
        if warmup:
            await asyncio.sleep(warmup)
        start_frames, start_counts = frames(), _counters(streamer)
        cpu0, wall0, opened_unix = _cpu_seconds(), time.perf_counter(), time.time()
        probe.active = True
        watch.active = True
        rss_samples = [process.memory_info().rss]
        next_sample = wall0 + 0.5
        end_at = None if duration is None else loop.time() + duration
        while True:
            _check(streamer)
            if expect_frames is not None and frames() >= expect_frames and all(
                feed.pending_resyncs == 0 for feed in streamer.feeds
            ):
                break
            if end_at is not None and loop.time() >= end_at:
                break
            if loop.time() > deadline:
                result["timed_out"] = True
                break
            if time.perf_counter() >= next_sample:
                rss_samples.append(process.memory_info().rss)
                next_sample += 0.5
            await asyncio.sleep(POLL_S)
        end_frames = frames()
        await streamer.pg.flush()
        await streamer.redis.flush()
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
        probe.active = False
        watch.active = False
        rss_samples.append(process.memory_info().rss)
        counts = _counters(streamer)
        measured = end_frames - start_frames
        levels = counts.get("book_updates", 0) - start_counts.get("book_updates", 0)
        result.update({
            "frames": measured,
            "frames_total": end_frames,
            "wall_s": wall,
            # On the shared clock, so that several processes' windows can be joined.
            "window_unix": [opened_unix, opened_unix + wall],
            "cpu_s": cpu,
            "frames_per_s": measured / wall if wall > 0 else None,
            "level_updates": levels,
            "level_updates_per_s": levels / wall if wall > 0 else None,
            "cpu_s_per_100k_frames": cpu / measured * 100_000 if measured else None,
            "cpu_utilisation": cpu / wall if wall > 0 else None,
            "rss_mb": [round(s / 2**20, 1) for s in rss_samples],
            "rows_written": dict(streamer.pg.rows_written),
            "counters": counts,
            **probe.summary(),
            **watch.summary(),
        })
    finally:
        watch_task.cancel()
        await streamer.stop()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's RSS high-water mark. ``VmHWM`` belongs to the address space
    exec created; ``ru_maxrss`` is not used because Linux carries the parent's
    value over fork and exec, so a big parent would inflate every child."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on Linux, bytes on macOS


def _check(streamer: Streamer) -> None:
    failure = streamer.failed_task()
    if failure is not None:
        raise failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench.e2e.worker")
    parser.add_argument("feeds", help="JSON list of {exchange, [shard,] ws_url, rest_url, symbols|native_symbols}")
    parser.add_argument("--expect-frames", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true",
                        help="do not wipe the schema and prefix (another worker of the same run did)")
    args = parser.parse_args(argv)
    if (args.expect_frames is None) == (args.duration is None):
        parser.error("give exactly one of --expect-frames and --duration")
    result = asyncio.run(run(orjson.loads(args.feeds), expect_frames=args.expect_frames, duration=args.duration,
                             warmup=args.warmup, timeout=args.timeout, keep=args.keep))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
