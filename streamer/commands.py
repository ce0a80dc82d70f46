"""What each ``coby`` subcommand does (argument parsing lives in :mod:`streamer.cli`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import psycopg

from .config import Settings, load_settings
from .connection.ws import WsOptions
from .contract import TABLES
from .endpoints import resolve_endpoints
from .errors import ConfigError
from .exchanges.base import Endpoints
from .exchanges.registry import PROTOCOL_ALIASES, get_mapper
from .feed import FeedConfig
from .live import read_live_books
from .services import running_services
from .shards import check_disjoint, check_layout, parse_feed_name, plan_feeds
from .symbols import validate_symbol

log = logging.getLogger(__name__)

DEFAULT_STREAMS = "binance:BTC-USDT,ETH-USDT kraken:BTC-USD,ETH-USD okx:BTC-USDT,ETH-USDT"
DEMO_SYMBOLS = {
    "binance": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
    "kraken": ["BTC-USD", "ETH-USD", "SOL-USD"],
    "okx": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
}


def ws_options(settings: Settings, **overrides) -> WsOptions:
    """Connection options from the settings (``COBY_STALL_TIMEOUT``, ``COBY_MAX_FRAME_BYTES``)."""
    values = {"stall_timeout": settings.stall_timeout, "max_frame_bytes": settings.max_frame_bytes, **overrides}
    return WsOptions(**values)


def _fault_plan(spec: str | None):
    """The fault plans of a ``--faults`` spec (None without one); a bad spec is a ConfigError."""
    if not spec:
        return None
    from .local.faults import parse_fault_spec

    plan = parse_fault_spec(spec)
    log.warning("injecting faults: %s", plan.spec())
    return plan


def parse_stream_specs(specs: list[str]) -> dict[str, list[str]]:
    """``["binance:BTC-USDT,ETH-USDT", "okx@1:BTC-USDT"]`` -> feed name -> symbols.

    A feed is an exchange (``binance``) or one shard of it (``okx@1``, see
    :mod:`streamer.shards`).
    """
    result: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, symbols = spec.partition(":")
        name = name.strip().lower()
        if not sep or not symbols.strip():
            raise ConfigError(f"stream spec must look like exchange:SYM1,SYM2 or exchange@N:SYM1,SYM2, got {spec!r}")
        exchange, _shard = parse_feed_name(name)
        get_mapper(exchange)  # raises UnknownExchangeError with the list of known ones
        result.setdefault(name, [])
        for symbol in symbols.split(","):
            result[name].append(validate_symbol(symbol.strip()))
    check_disjoint(result)
    return result


def feed_configs(wanted: dict[str, list[str]], settings: Settings) -> list[FeedConfig]:
    """One :class:`FeedConfig` per feed of :func:`parse_stream_specs`."""
    configs = []
    for name, symbols in wanted.items():
        exchange, shard = parse_feed_name(name)
        configs.append(FeedConfig(exchange, symbols, resolve_endpoints(get_mapper(exchange)),
                                  ws=ws_options(settings), shard=shard))
    return configs


async def _run_streamer(settings: Settings, feeds: list[FeedConfig], *, duration: float | None,
                        record_dir: Path | None = None) -> dict:
    from .app import Streamer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    streamer = Streamer(settings, feeds, record_dir=record_dir)
    await streamer.start()
    try:
        deadline = None if duration is None else loop.time() + duration
        while not stop.is_set():
            timeout = 1.0 if deadline is None else min(1.0, deadline - loop.time())
            if timeout <= 0:
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            failure = streamer.failed_task()
            if failure is not None:
                raise failure
    finally:
        await streamer.stop()
    return streamer.summary()


async def stream(args) -> dict:
    settings = load_settings()
    specs = args.specs or (os.environ.get("COBY_STREAMS") or DEFAULT_STREAMS).split()
    wanted = parse_stream_specs(specs)
    supervised = getattr(args, "supervised", False)
    processes = 1 if supervised else args.processes if getattr(args, "processes", None) else _env_processes()
    if processes > 1:
        wanted = plan_feeds(wanted, processes)  # more processes than exchanges: split the busiest
    with running_services(settings) as resolved:
        if not supervised:  # a child sees only its own feeds; its parent checked them all
            check_layout(resolved, list(wanted))
        if processes > 1 and len(wanted) > 1:
            from .embedded import export_env
            from .processes import run_processes, split_exchanges

            # Children connect to the servers resolved here (embedded ones included).
            env = {**os.environ, **export_env(resolved)}
            return await run_processes(split_exchanges(wanted, processes), env, duration=args.duration,
                                       record_dir=args.record)
        return await _run_streamer(resolved, feed_configs(wanted, resolved), duration=args.duration,
                                   record_dir=Path(args.record) if args.record else None)


def _env_processes() -> int:
    raw = os.environ.get("COBY_PROCESSES", "1").strip() or "1"
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"COBY_PROCESSES must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"COBY_PROCESSES must be at least 1, got {value}")
    return value


async def capture_replay(args, settings: Settings | None = None) -> dict:
    from .app import Streamer
    from .capture.reader import load_capture
    from .capture.replay import CaptureReplayBackend, protocol_of, session_symbols
    from .local.faults import describe_plan
    from .local.server import LocalExchangeServer

    capture = load_capture(Path(args.file))
    protocol = (args.exchange or protocol_of(capture)).lower()
    protocol = PROTOCOL_ALIASES.get(protocol, protocol)
    mapper = get_mapper(protocol)
    natives = session_symbols(capture, protocol)
    if not natives:
        raise ConfigError(f"{args.file}: no book or trade subscriptions found in the session")
    backend = CaptureReplayBackend(capture, speed=args.speed)
    faults = _fault_plan(getattr(args, "faults", None))
    settings = settings or load_settings()
    with running_services(settings) as resolved:
        async with LocalExchangeServer(backend, faults=faults) as server:
            ws_url = server.ws_base_url + _ws_path(mapper.default_endpoints.ws_url)
            feed = FeedConfig(
                protocol, [], Endpoints(ws_url, server.rest_base_url),
                # The capture ends; a quiet replay is not a stall to reconnect from.
                ws=ws_options(resolved, stall_timeout=max(60.0, args.timeout)),
                native_symbols=natives,
            )
            streamer = Streamer(resolved, [feed])
            await streamer.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.timeout
            timed_out = False
            try:
                while loop.time() < deadline:
                    failure = streamer.failed_task()
                    if failure is not None:
                        raise failure
                    exchange_feed = streamer.feeds[0]
                    if (backend.finished.is_set() and exchange_feed.stats.frames >= backend.frames_sent
                            and exchange_feed.pending_resyncs == 0):
                        break
                    await asyncio.sleep(0.05)
                else:
                    timed_out = True
                # What the orchestrator would read from Redis at the end of the session.
                await streamer.redis.flush()
                live = await read_live_books(resolved.redis, protocol)
            finally:
                await streamer.stop()
    summary = streamer.summary()[protocol]
    books = summary.pop("books")
    result = {
        "exchange": capture.meta.get("exchange", protocol),
        "protocol": protocol,
        "session": capture.meta.get("session"),
        "frames": summary["frames"],
        "frames_served": backend.frames_sent,
        "book_updates": summary["book_updates"],
        "trades": summary["trades"],
        "snapshots_written": summary["snapshots_written"],
        "sequence_gaps": summary["sequence_gaps"],
        "resyncs": summary["resyncs"],
        "checksum_ok": summary["checksum_ok"],
        "checksum_failed": summary["checksum_failed"],
        "rejected": summary["rejected"],
        "timed_out": timed_out,
        **({"faults": describe_plan(faults)} if faults is not None else {}),
        "books": books,
        "redis_books": {
            book["symbol"]: {"bid": book["bids"][0] if book["bids"] else None,
                             "ask": book["asks"][0] if book["asks"] else None}
            for book in live.values()
        },
    }
    return result


def _ws_path(url: str) -> str:
    """The path part of an exchange's default WebSocket URL (OKX serves under /ws/v5/public)."""
    from urllib.parse import urlparse

    path = urlparse(url).path
    return path if path not in ("", "/") else ""


async def simulate(args) -> dict:
    from .simulator.backend import run_simulated_exchanges

    protocols = [p.strip() for p in args.exchanges.split(",") if p.strip()]
    for protocol in protocols:
        get_mapper(protocol)
    faults_spec = getattr(args, "faults", None)
    _fault_plan(faults_spec)  # a bad spec fails before any server starts
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with run_simulated_exchanges(protocols, {p: DEMO_SYMBOLS[p] for p in protocols}, rate=args.rate) as urls:
        for protocol, endpoints in urls.items():
            # One plan per exchange: counters and held frames must not mix across servers.
            urls.servers[protocol].faults = _fault_plan(faults_spec)
            print(f"{protocol}: ws={endpoints.ws_url} rest={endpoints.rest_url}", file=sys.stderr, flush=True)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    return {"exchanges": {p: {"ws": e.ws_url, "rest": e.rest_url} for p, e in urls.items()}}


def hour_keys(start: datetime, end: datetime) -> list[str]:
    """Hourly partition keys (``YYYY-MM-DD-HH:00``) overlapping [start, end]."""
    hour = start.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    keys = []
    while hour <= end:
        keys.append(hour.strftime("%Y-%m-%d-%H:00"))
        hour += timedelta(hours=1)
    return keys


def _table_counts(settings: Settings) -> dict[str, int]:
    from psycopg import sql

    counts = {}
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        for table in TABLES:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(settings.db.schema), sql.Identifier(table.name)
            )
            counts[table.name] = conn.execute(query).fetchone()[0]
    return counts


def demo(args, settings: Settings | None = None) -> dict:
    from .embedded import export_env

    settings = settings or load_settings()
    with running_services(settings) as resolved:
        dagster_home = (resolved.data_dir / "dagster").resolve()
        dagster_home.mkdir(parents=True, exist_ok=True)
        _install_dagster_yaml(dagster_home)
        # The Dagster processes (and the in-process materialization) reach the
        # same servers through the environment, exactly as a deployment would.
        pipeline_env = {
            **export_env(resolved),
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "COBY_DATASETS_DIR": str((resolved.data_dir / "datasets").resolve()),
        }
        with _environ(pipeline_env):
            ui = None if args.no_ui else _start_dagster_ui(dict(os.environ), args.ui_port, resolved.ui_host)
            started = datetime.now(timezone.utc)
            try:
                summary = asyncio.run(_demo_stream(resolved, args))
                ended = datetime.now(timezone.utc)
                result: dict = {"started": started.isoformat(), "ended": ended.isoformat(), "streamer": summary}
                if args.duration is not None:
                    from coby_pipeline.materialize import materialize_hours

                    keys = hour_keys(started, ended)
                    materialized = materialize_hours(keys)
                    result.update(
                        partitions=keys,
                        pipeline=materialized,
                        replay_dataset=materialized["replay_dataset"],
                        rows=_table_counts(resolved),
                        dagster_ui=None if ui is None else f"http://{resolved.ui_host}:{args.ui_port}",
                    )
                return result
            finally:
                if ui is not None:
                    _stop_process(ui)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _demo_stream(settings: Settings, args) -> dict:
    from .simulator.backend import run_simulated_exchanges

    async with run_simulated_exchanges(list(DEMO_SYMBOLS), DEMO_SYMBOLS, rate=args.rate) as urls:
        feeds = [FeedConfig(p, DEMO_SYMBOLS[p], urls[p], ws=ws_options(settings)) for p in DEMO_SYMBOLS]
        return await _run_streamer(settings, feeds, duration=args.duration)


def _install_dagster_yaml(dagster_home: Path) -> None:
    source = Path(__file__).resolve().parent.parent / "dagster.yaml"
    target = dagster_home / "dagster.yaml"
    if source.exists() and not target.exists():
        target.write_text(source.read_text())


def _start_dagster_ui(env: dict[str, str], port: int, host: str = "127.0.0.1") -> subprocess.Popen:
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", host, "-p", str(port)]
    log.info("starting Dagster UI and daemon on http://%s:%d", host, port)
    # Default signal handling, so the process group can be stopped by SIGTERM.
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=sys.stderr, stderr=sys.stderr)


def _stop_process(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def materialize(args) -> dict:
    from coby_pipeline.materialize import materialize_hours

    keys = list(args.partitions)
    if args.start or args.end:
        if not (args.start and args.end):
            raise ConfigError("--from and --to go together")
        fmt = "%Y-%m-%d-%H:%M"
        try:
            start = datetime.strptime(args.start, fmt).replace(tzinfo=timezone.utc)
            end = datetime.strptime(args.end, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            raise ConfigError("--from/--to must look like 2026-11-25-13:00") from None
        keys += hour_keys(start, end)
    if not keys:
        raise ConfigError("name at least one hour partition (YYYY-MM-DD-HH:00) or --from/--to")
    settings = load_settings()
    from .embedded import export_env

    with running_services(settings) as resolved, _environ(export_env(resolved)):
        return materialize_hours(keys)


def schema(args) -> dict:
    from .sinks.schema import apply_schema

    settings = load_settings()
    with running_services(settings) as resolved:
        with psycopg.connect(resolved.db.url(), autocommit=True) as conn:
            report = apply_schema(conn, resolved)
    return {"schema": resolved.db.schema, "report": str(report)}


def faults(args) -> int:
    """Run the fault scenarios; print one JSON object per scenario as each ends.

    Exit code 0 when every scenario ran (losses are results, not failures),
    1 when the harness itself failed for a scenario (its object has ``error``).
    """
    import orjson

    from .faultsuite.runner import run_suite
    from .faultsuite.scenarios import all_scenarios

    available = all_scenarios()
    names = args.scenario or list(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(available)}")

    def emit(result: dict) -> None:
        if args.json:
            sys.stdout.write(orjson.dumps(result).decode() + "\n")
        else:
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            if "error" in result:
                print(f"{result['scenario']}: harness failed: {result['error']}", file=sys.stderr)
            else:
                print(f"{result['scenario']}: sent {result['ticks_sent']} ticks, stored {result['ticks_stored']}, "
                      f"lost {result['lost']}, duplicated {result['duplicated']}, "
                      f"quarantined {result['quarantined']}, gaps {result['gaps_recorded']}, "
                      f"sent while dead {result['sent_while_dead']}, peak RSS {result['peak_rss_mb']} MB",
                      file=sys.stderr)
        sys.stdout.flush()

    results = asyncio.run(run_suite([available[name] for name in names], short=args.short, on_result=emit))
    return 1 if any("error" in result for result in results) else 0
