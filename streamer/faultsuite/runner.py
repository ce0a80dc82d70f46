"""Runs fault scenarios end to end: own servers, simulated exchanges, the streamer as a process.

For each scenario, under a fresh temporary directory:

1. a PostgreSQL cluster and a Redis server of its own (:mod:`.servers`), and a
   :class:`~.servers.LatencyProxy` between the streamer and PostgreSQL;
2. simulated exchanges (fixed seed) with a :class:`~.accounting.WireTap` on
   each, wrapping the scenario's fault plan;
3. ``python -m streamer.cli stream`` as a separate process, configured only
   through its environment, so it can be killed with SIGKILL and restarted;
4. the scenario's script (faults on, off, recovery), then a quiet period
   (the taps stop recording so every tick counted had time to arrive), a
   SIGTERM, and the accounting against PostgreSQL.

The machine's own PostgreSQL and Redis are never used: the streamer's
environment is rebuilt from scratch and names only the suite's servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from ..errors import ServerError
from ..simulator.backend import SimulatedExchanges, run_simulated_exchanges
from .accounting import DeadInterval, TickLedger, WireTap, account
from .servers import LatencyProxy, PostgresProcess, RedisProcess

log = logging.getLogger(__name__)

SCHEMA = "coby"
REDIS_PREFIX = "coby:"
SYMBOLS = {"binance": ["BTC-USDT", "ETH-USDT"], "okx": ["BTC-USDT", "ETH-USDT"]}
SEED = 7
RATE = 20.0
#: Seconds the taps stay off before the streamer is stopped: every counted tick has arrived by then.
QUIET_S = 2.0
SYNC_TIMEOUT_S = 30.0
#: Environment prefixes that could point the streamer at other servers; never inherited.
_FOREIGN_ENV = ("DB_", "REDIS_", "COBY_", "PG")
_REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class StreamerProcess:
    """``python -m streamer.cli stream`` with a given environment; can be killed and restarted."""

    def __init__(self, specs: list[str], env: dict[str, str], log_path: Path) -> None:
        self.specs = specs
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.exit_codes: list[int] = []
        self.peak_rss = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamer.cli", "stream", *self.specs],
                env=self.env, cwd=str(_REPO_ROOT), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sample_rss(self) -> None:
        if not self.alive:
            return
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, psutil.Process(self.process.pid).memory_info().rss)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.exit_codes.append(self.process.wait(10))

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a graceful stop flushes PostgreSQL and Redis), SIGKILL after ``timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            if process is not None and process.returncode is not None and len(self.exit_codes) < self.starts:
                self.exit_codes.append(process.returncode)
            return
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(10)
        self.exit_codes.append(code)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ScenarioContext:
    """What a scenario script can act on."""

    short: bool
    pg: PostgresProcess
    redis: RedisProcess
    proxy: LatencyProxy
    exchanges: SimulatedExchanges
    taps: dict[str, WireTap]
    ledger: TickLedger
    streamer: StreamerProcess
    dead: list[DeadInterval] = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    @property
    def books(self) -> list[tuple[str, str]]:
        return [(exchange, symbol) for exchange, symbols in SYMBOLS.items() for symbol in symbols]

    async def sleep(self, seconds: float) -> None:
        """Sleep while sampling the streamer's memory and noticing if it died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            self.streamer.sample_rss()
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(0.2, left))

    def synced_books(self, since_us: int = 0) -> set[tuple[str, str]]:
        """Books with a ``synced`` event at or after ``since_us`` (read directly, not through the proxy)."""
        query = sql.SQL("SELECT DISTINCT exchange, symbol FROM {}.feed_events WHERE event = 'synced' "
                        "AND local_ts >= to_timestamp(%s / 1e6)").format(sql.Identifier(SCHEMA))
        try:
            with psycopg.connect(self.pg.url(), autocommit=True) as conn:
                return set(conn.execute(query, (since_us,)).fetchall())
        except psycopg.Error:
            return set()  # server down or tables not created yet

    async def wait_synced(self, since_us: int = 0, timeout: float = SYNC_TIMEOUT_S) -> bool:
        """Wait until every book synced (again) after ``since_us``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = set(self.books)
        while loop.time() < deadline:
            if wanted <= await asyncio.to_thread(self.synced_books, since_us):
                return True
            if not self.streamer.alive:
                return False
            await self.sleep(0.3)
        return False

    def redis_books(self) -> set[str]:
        """``exchange:symbol`` of the live books in Redis (each with its key present)."""
        client = self.redis.client()
        try:
            members = client.smembers(f"{REDIS_PREFIX}books")
            return {m for m in members if client.exists(f"{REDIS_PREFIX}book:{m}")}
        finally:
            client.close()


def streamer_env(ctx_dir: Path, pg_port: int, redis_port: int, exchanges: SimulatedExchanges) -> dict[str, str]:
    """The streamer's whole configuration: the suite's servers and simulated exchanges only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    env.update({
        "DB_HOST": "127.0.0.1", "DB_PORT": str(pg_port), "DB_NAME": "coby", "DB_USER": "postgres",
        "COBY_DB_SCHEMA": SCHEMA,
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port), "COBY_REDIS_PREFIX": REDIS_PREFIX,
        "COBY_DATA_DIR": str(ctx_dir / "streamer"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    })
    for protocol, endpoints in exchanges.items():
        env[f"COBY_{protocol.upper()}_WS_URL"] = endpoints.ws_url
        env[f"COBY_{protocol.upper()}_REST_URL"] = endpoints.rest_url
    return env


async def run_scenario(scenario, *, short: bool = False,
                       before_accounting: Callable[[ScenarioContext], None] | None = None) -> dict:
    """Run one scenario (see :mod:`.scenarios`) and return its result object.

    ``before_accounting`` runs after the streamer stopped and before the
    rows are counted (the tests use it to tamper with the stored rows and
    check that the accounting notices).
    """
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="coby-faults-"))
    pg = PostgresProcess(directory / "postgres")
    redis = RedisProcess(directory / "redis")
    streamer: StreamerProcess | None = None
    try:
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(redis.start)
        ledger = TickLedger()
        async with LatencyProxy(pg.port) as proxy, \
                run_simulated_exchanges(list(SYMBOLS), SYMBOLS, seed=SEED, rate=RATE) as exchanges:
            taps = {}
            for protocol in SYMBOLS:
                tap = WireTap(protocol, SYMBOLS[protocol], ledger, inner=scenario.plan(protocol, short))
                exchanges.servers[protocol].faults = tap
                taps[protocol] = tap
            specs = [f"{protocol}:{','.join(symbols)}" for protocol, symbols in SYMBOLS.items()]
            streamer = StreamerProcess(specs, streamer_env(directory, proxy.port, redis.port, exchanges),
                                       directory / "streamer.log")
            ctx = ScenarioContext(short, pg, redis, proxy, exchanges, taps, ledger, streamer)
            streamer.start()
            if not await ctx.wait_synced():
                raise ServerError(f"the streamer did not sync every book within {SYNC_TIMEOUT_S:.0f} s: "
                                  f"{streamer.log_tail()}")
            await scenario.run(ctx)
            # Quiet period: the exchanges go silent; what was counted gets time to arrive.
            for tap in taps.values():
                tap.recording = False
            await ctx.sleep(QUIET_S)
            crashed = not streamer.alive
            await streamer.stop()
        if before_accounting is not None:
            before_accounting(ctx)
        result = account(ledger, pg.url(), SCHEMA, dead=ctx.dead)
        result = {
            "scenario": scenario.name,
            **result,
            "peak_rss_mb": round(streamer.peak_rss / 2**20, 1),
            "duration_s": round(time.monotonic() - started, 1),
            "streamer_starts": streamer.starts,
            "streamer_exit_codes": streamer.exit_codes,
            "streamer_crashed": crashed,
            "notes": ctx.notes,
        }
        if crashed:
            result["streamer_log_tail"] = streamer.log_tail()
        return result
    finally:
        if streamer is not None and streamer.alive:
            with contextlib.suppress(Exception):
                streamer.process.kill()
                streamer.process.wait(10)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(redis.stop)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.stop)
        shutil.rmtree(directory, ignore_errors=True)


async def run_suite(scenarios: Sequence, *, short: bool = False,
                    on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run scenarios one after another. A scenario whose harness fails yields
    ``{"scenario", "error"}`` and the suite goes on."""
    results = []
    for scenario in scenarios:
        try:
            result = await run_scenario(scenario, short=short)
        except Exception as exc:  # the harness failed for this scenario: report it, run the others
            log.exception("scenario %s failed to run", scenario.name)
            result = {"scenario": scenario.name, "error": f"{type(exc).__name__}: {exc}"}
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
