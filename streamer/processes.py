"""Several streamer processes sharing the work: one group of feeds each.

One Python process runs one event loop on one core. When the exchanges of a
deployment need more than that (many exchanges, thousands of symbols),
``coby stream --processes N`` (or ``COBY_PROCESSES``) splits them into up to N
groups and runs each group as its own ``coby stream`` child process against the
same PostgreSQL, Redis and data directory. A feed is a whole exchange or, when
there are more processes than exchanges, one shard of an exchange's symbols
(:mod:`streamer.shards`). Nothing is shared between children but the servers:
every feed has its own connection, journal, checkpoint stream and Redis status,
so the groups are independent and each child recovers on its own.

The parent only supervises: it starts the children, restarts one that exits
unexpectedly (its journal makes the restart lossless, see
:mod:`streamer.durability`), forwards SIGINT/SIGTERM, and returns every
child's summary.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import suppress

import orjson

from .connection.backoff import backoff_delay
from .errors import ConfigError
from .shards import parse_feed_name

log = logging.getLogger(__name__)

#: Seconds a stopping child gets to flush before it is killed.
STOP_GRACE_S = 30.0


def split_exchanges(wanted: dict[str, list[str]], processes: int) -> list[dict[str, list[str]]]:
    """Spread the feeds over at most ``processes`` groups, balanced by symbol count.

    A feed is never split here: its connection, journal and checkpoints belong
    to one process (shards are planned before, by
    :func:`streamer.shards.plan_feeds`). Largest first, each to the group with
    the fewest symbols so far.
    """
    if processes < 1:
        raise ConfigError(f"processes must be at least 1, got {processes}")
    groups: list[dict[str, list[str]]] = [{} for _ in range(min(processes, len(wanted)))]
    for exchange, symbols in sorted(wanted.items(), key=lambda item: -len(item[1])):
        lightest = min(groups, key=lambda group: sum(len(s) for s in group.values()))
        lightest[exchange] = symbols
    return groups


def stream_specs(group: dict[str, list[str]]) -> list[str]:
    """``coby stream`` arguments for one group: ``exchange:SYM,SYM`` (``exchange@N:...`` for a shard)."""
    return [f"{exchange}:{','.join(symbols)}" for exchange, symbols in group.items()]


class _Child:
    def __init__(self, index: int, group: dict[str, list[str]]) -> None:
        self.index = index
        self.group = group
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.summary: dict | None = None


async def run_processes(groups: list[dict[str, list[str]]], env: dict[str, str], *,
                        duration: float | None, record_dir: str | None = None) -> dict:
    """Run one ``coby stream`` child per group until ``duration`` passes or a signal comes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    children = [_Child(i, group) for i, group in enumerate(groups)]
    deadline = None if duration is None else loop.time() + duration
    supervisors = [asyncio.create_task(_supervise(child, env, stop, deadline, record_dir)) for child in children]
    try:
        await asyncio.gather(*supervisors)
    finally:
        stop.set()
        for task in supervisors:
            task.cancel()
        for child in children:
            await _stop_child(child)
    return {
        "processes": [
            {"feeds": sorted(child.group), "exchanges": sorted({parse_feed_name(name)[0] for name in child.group}),
             "restarts": child.restarts, "summary": child.summary}
            for child in children
        ],
    }


async def _supervise(child: _Child, env: dict[str, str], stop: asyncio.Event, deadline: float | None,
                     record_dir: str | None) -> None:
    loop = asyncio.get_running_loop()
    failures = 0
    while not stop.is_set():
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return
        args = [sys.executable, "-m", "streamer.cli", "stream", *stream_specs(child.group), "--supervised"]
        if remaining is not None:
            args += ["--duration", f"{remaining:.3f}"]
        if record_dir is not None:
            args += ["--record", record_dir]
        child.process = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE)
        log.info("process %d (%s) started, pid %d", child.index, ",".join(sorted(child.group)), child.process.pid)
        waiter = asyncio.create_task(child.process.communicate())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            stopper.cancel()
            await _stop_child(child)
            output, _ = await waiter
        else:
            stopper.cancel()
            output, _ = waiter.result()
        child.summary = _last_json(output)
        if child.process.returncode == 0 or stop.is_set():
            return  # finished its duration, or stopped on request
        failures += 1
        child.restarts += 1
        delay = backoff_delay(failures, 0.5, 30.0)
        log.error("process %d (%s) exited with %s; restarting in %.1f s (its journal keeps every tick)",
                  child.index, ",".join(sorted(child.group)), child.process.returncode, delay)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _stop_child(child: _Child) -> None:
    process = child.process
    if process is None or process.returncode is not None:
        return
    with suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_S)
    except TimeoutError:
        log.error("process %d did not stop within %.0f s; killing it", child.index, STOP_GRACE_S)
        with suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _last_json(output: bytes | None) -> dict | None:
    for line in reversed((output or b"").decode("utf-8", "replace").splitlines()):
        with suppress(orjson.JSONDecodeError):
            value = orjson.loads(line)
            if isinstance(value, dict):
                return value
    return None
