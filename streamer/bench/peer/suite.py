"""``coby bench peer``: COBY and cryptofeed on the same recorded frames, in the same run.

For each of the binance-spot, kraken-spot and okx captures (looped, see
:mod:`.frames`), every run measures, back to back:

* ``cryptofeed_noop``: cryptofeed's feed with no-op callbacks, checksum
  validation on for Kraken and OKX (:mod:`.cryptofeed_run`), reading the
  looped frames over a loopback WebSocket through its own transport from the
  same exchange process COBY reads, timed the way COBY is;
* ``cryptofeed_pg_redis``: the same with cryptofeed's PostgreSQL and Redis
  backends writing to the same servers COBY uses;
* ``cryptofeed_handler``: cryptofeed's message handler alone (no-op
  callbacks), the frames handed to it in process, no transport;
* ``coby``: the real streamer as deployed (:mod:`streamer.bench.e2e.worker`:
  journal, book sync with checksums, PostgreSQL COPY, Redis) reading the
  looped frames over a loopback WebSocket from an exchange process of its
  own (:mod:`streamer.bench.e2e.serve`), so the exchange's CPU is not COBY's.
  Its rate is measured from the first frame received until every frame was
  received and PostgreSQL and Redis were flushed (start-up excluded, COPY
  included). Each COBY run gets a fresh data directory (its journal) and a
  fresh schema;
* ``coby_2proc``, ``coby_3proc``: the same frames with the exchange's symbols
  split over two (three) connections, one streamer process each (what ``coby
  stream --processes 2`` or ``3`` does with one exchange on this two-core
  machine; the capture is split by symbol, balanced by frames,
  :mod:`streamer.bench.e2e.shards`). The rate is all frames over the joined
  window of the processes;
* ``coby_processor``: COBY's :class:`~streamer.processor.FeedProcessor` alone
  on the same frames in the suite's process (parse, book sync with checksums,
  rows; no transport, nothing stored), against ``cryptofeed_handler``.

Ratios are COBY/cryptofeed per run, then the median over runs. Every
cryptofeed run and every COBY run is a process of its own.

PostgreSQL and Redis come from the environment as for every ``coby``
command (embedded ones when unset). The suite works in its own database
``coby_bench_peer`` (COBY in schema ``bench_peer``, dropped before each of
its runs; cryptofeed's ``book``/``trades`` tables in schema
``bench_peer_cryptofeed``, emptied before each run) and under the Redis
prefixes ``cobybench:peer:`` (COBY) and ``cobybench:peer:cryptofeed:``; it
drops both schemas and deletes both prefixes' keys when it ends.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import psycopg
import redis
from psycopg import sql

from ...capture.reader import load_capture
from ...capture.replay import session_symbols
from ...config import Settings, load_settings
from ...errors import ConfigError
from ...embedded import ensure_database, export_env
from ...services import running_services
from ..e2e.figures import figure, figure_line, write_results
from ..e2e.floors import processor_rate
from ..e2e.suite import Harness, captures_dir, last_json, serving
from .frames import write_looped_capture

log = logging.getLogger(__name__)

SUITE = "peer"
#: capture session name -> COBY protocol (= cryptofeed feed) that speaks it.
CAPTURES = {"binance-spot": "binance", "kraken-spot": "kraken", "okx": "okx"}
BENCH_DB = "coby_bench_peer"
COBY_SCHEMA = "bench_peer"
COBY_PREFIX = "cobybench:peer:"
#: Connections (one streamer process each) of COBY's sharded deployments: as many as the
#: machine's two cores, and one more (a process waiting on its sinks leaves its core to another).
SHARDS = (2, 3)
#: Frames per looped run (the capture is repeated until at least this many).
TARGET_FRAMES = 40_000
QUICK_FRAMES = 4_000
CRYPTOFEED_SCHEMA_SUFFIX = "_cryptofeed"
#: cryptofeed's tables, as its PostgreSQL backend writes them (the layout of its examples).
CRYPTOFEED_TABLES = (
    "CREATE TABLE IF NOT EXISTS {}.book (id serial PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,"
    " exchange VARCHAR(32), symbol VARCHAR(32), data JSONB)",
    "CREATE TABLE IF NOT EXISTS {}.trades (id serial PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,"
    " exchange VARCHAR(32), symbol VARCHAR(32), side VARCHAR(8), amount NUMERIC(64, 32), price NUMERIC(64, 32),"
    " trade_id VARCHAR(64), order_type VARCHAR(32))",
)
#: cryptofeed puts its table name into its SQL text as is: only plain identifiers are passed to it.
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PeerHarness:
    """Runs one measurement at a time, each in a process of its own, on the suite's database and prefixes."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.coby_schema = settings.db.schema
        self.coby_prefix = settings.redis.prefix
        self.cf_schema = self.coby_schema + CRYPTOFEED_SCHEMA_SUFFIX
        self.cf_prefix = self.coby_prefix + "cryptofeed:"
        if not _PLAIN_IDENTIFIER.fullmatch(self.cf_schema):
            raise ConfigError(f"benchmark schema {self.cf_schema!r} must be a plain lower-case identifier")

    # -- servers ---------------------------------------------------------

    def prepare_database(self) -> None:
        with psycopg.connect(self.settings.db.url(), autocommit=True) as conn:
            schema = sql.Identifier(self.cf_schema)
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            for statement in CRYPTOFEED_TABLES:
                conn.execute(sql.SQL(statement).format(schema))

    def reset_cryptofeed_state(self) -> None:
        """Empty cryptofeed's tables and streams so every run writes into the same, empty, state."""
        with psycopg.connect(self.settings.db.url(), autocommit=True) as conn:
            schema = sql.Identifier(self.cf_schema)
            conn.execute(sql.SQL("TRUNCATE {}.book, {}.trades").format(schema, schema))
        self._delete_prefix(self.cf_prefix)

    def reset_coby_state(self) -> None:
        """Drop COBY's bench schema and keys: every COBY run starts from a fresh schema (a fixed cost)."""
        with psycopg.connect(self.settings.db.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.coby_schema)))
        self._delete_prefix(self.coby_prefix)

    def cleanup(self) -> None:
        """Leave nothing behind: both schemas dropped, both prefixes' keys deleted."""
        self.reset_coby_state()
        with psycopg.connect(self.settings.db.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.cf_schema)))
        self._delete_prefix(self.cf_prefix)

    def _delete_prefix(self, prefix: str) -> None:
        client = redis.Redis(**self.settings.redis.client_kwargs())
        try:
            batch = []
            for key in client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        finally:
            client.close()

    # -- measurements ----------------------------------------------------

    def cryptofeed(self, capture: Path, protocol: str, loops: int, mode: str, *,
                   looped_file: Path | None = None) -> dict:
        """One cryptofeed run (its own process); its JSON result.

        With ``looped_file`` the frames come over a loopback WebSocket from an
        exchange process serving that file (as for COBY); without, they are
        handed to cryptofeed's message handler in its own process.
        """
        db, rds = self.settings.db, self.settings.redis
        if mode == "backends":
            if rds.password or rds.tls or rds.username:
                raise RuntimeError("cryptofeed's Redis backend has no AUTH/TLS options; use a Redis without them")
            self.reset_cryptofeed_state()
        args = [sys.executable, "-m", "streamer.bench.peer.cryptofeed_run", "--capture", str(capture),
                "--protocol", protocol, "--loops", str(loops), "--mode", mode,
                "--pg-host", db.host or "", "--pg-port", str(db.port), "--pg-user", db.user, "--pg-db", db.name,
                "--pg-schema", self.cf_schema, "--redis-key-prefix", self.cf_prefix]
        if rds.unix_socket:
            if mode == "backends":
                # cryptofeed 2.4.1 RedisCallback: `f"unix://{host}" + f":{port}" if port else ""` builds an
                # empty URL when port is None, which a socket requires.
                raise RuntimeError("cryptofeed's Redis backend cannot reach a unix socket; set REDIS_HOST/REDIS_PORT")
            args += ["--redis-socket", rds.unix_socket]
        else:
            args += ["--redis-host", rds.host or "", "--redis-port", str(rds.port)]
        if looped_file is None:
            return self._run_cryptofeed(args, protocol, mode)
        with serving(["capture", str(looped_file), "--loops", "1"], self.env) as (ready, finish):
            result = self._run_cryptofeed([*args, "--ws-url", ready["feeds"][0]["ws_url"], "--expect-frames",
                                           str(ready["expect_frames"])], protocol, mode)
            result["served"] = finish()
            return result

    def _run_cryptofeed(self, args: list[str], protocol: str, mode: str) -> dict:
        db = self.settings.db
        env = dict(self.env)
        if db.password:
            env["PGPASSWORD"] = db.password  # asyncpg reads it; never on a command line
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        return last_json(out.stdout, out.stderr, out.returncode, f"cryptofeed run ({protocol}, {mode})")

    def coby(self, looped_file: Path, shards: int = 1) -> dict:
        """One COBY run on ``looped_file`` (exchange and streamer processes of their own): the worker's result.

        With ``shards > 1`` the exchange's symbols are split over that many
        connections, one streamer process each (``coby stream --processes``
        on one exchange), and the result is the deployment's (:func:`combine_results`).
        """
        self.reset_coby_state()
        serve = ["capture", str(looped_file), "--loops", "1", *(["--shards", str(shards)] if shards > 1 else [])]
        result = Harness(self.env).run_case(serve, expect=True, timeout=600, processes=shards)
        if result.get("timed_out"):
            raise RuntimeError(f"COBY did not receive every frame of {looped_file.name} in time")
        return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _sharded_specs(prefix: str, shards: int, runs: dict[str, list], noop: list, backends: list,
                   window: str) -> list[tuple]:
    """The figures of COBY with the exchange split over ``shards`` processes, and its ratios."""
    name = f"{prefix}.coby_{shards}proc"
    ratio = f"{prefix}.ratio.coby_{shards}proc"
    together = {"note": f"all {shards} streamer processes together"}
    return [
        (f"{name}.frames_per_s", runs["rate"], "frames/s",
         {"method": f"{window}; the exchange's symbols split over {shards} connections, one streamer process "
                    "each (coby stream --processes), frames over the joined window of the processes",
          "shards": shards}),
        (f"{ratio}_over_cryptofeed_noop", [_ratio(c, n) for c, n in zip(runs["rate"], noop)], "x", {}),
        (f"{ratio}_over_cryptofeed_pg_redis", [_ratio(c, b) for c, b in zip(runs["rate"], backends)], "x", {}),
        (f"{name}.cpu_s_per_100k_frames", runs["cpu"], "s", together),
        (f"{name}.peak_rss_mb", runs["rss"], "MB", together),
    ]


def measure_capture(harness: PeerHarness, name: str, path: Path, protocol: str, *, runs: int, target: int,
                    workdir: Path, command: str) -> list[dict]:
    """All figures for one capture: cryptofeed no-op, cryptofeed PG+Redis, COBY, and the ratios."""
    capture = load_capture(path)
    frames_once = sum(1 for rec in capture.records if rec["dir"] == "recv")
    loops = max(2, -(-target // frames_once))
    looped_file = workdir / f"{name}.x{loops}.jsonl.gz"
    frames = write_looped_capture(capture, loops, looped_file)

    noop, backends, handler, noop_cpu, backends_cpu, noop_rss, backends_rss = [], [], [], [], [], [], []
    coby, coby_cpu, coby_rss, processor = [], [], [], []
    symbols = len(session_symbols(capture, protocol).as_dict()["book"])
    deployments = [shards for shards in SHARDS if shards <= symbols]
    sharded: dict[int, dict[str, list]] = {n: {"rate": [], "cpu": [], "rss": []} for n in deployments}
    split_frames: dict[int, int] = {}
    split_checksums: dict[int, int] = {}
    checks: dict[str, Any] = {}
    for run in range(runs):
        log.info("peer %s: run %d/%d (%d frames)", name, run + 1, runs, frames)
        cf_noop = harness.cryptofeed(path, protocol, loops, "noop", looped_file=looped_file)
        cf_back = harness.cryptofeed(path, protocol, loops, "backends", looped_file=looped_file)
        # Both handlers alone read the looped file itself (one connection), so every
        # column of the table is the same frames.
        cf_handler = harness.cryptofeed(looped_file, protocol, 1, "noop")
        full = harness.coby(looped_file)
        for shards in deployments:
            split = harness.coby(looped_file, shards=shards)
            if split["counters"].get("checksum_failed") or split["counters"].get("sequence_gaps"):
                raise RuntimeError(f"COBY in {shards} shards reported checksum failures or gaps on {name}: "
                                   f"{split['counters']}")
            sharded[shards]["rate"].append(split["frames_per_s"])
            sharded[shards]["cpu"].append(split["cpu_s_per_100k_frames"])
            sharded[shards]["rss"].append(split["peak_rss_mb"])
            split_frames[shards] = split["frames_total"]
            split_checksums[shards] = split["counters"].get("checksum_ok")
        # COBY's processor alone on the same frames, in this process: like cryptofeed's
        # handler alone, no transport and nothing stored (but it builds the rows).
        processor.append(processor_rate(looped_file, 1)[0])
        counters = full["counters"]
        coby.append(full["frames_per_s"])
        coby_cpu.append(full["cpu_s_per_100k_frames"])
        coby_rss.append(full["peak_rss_mb"])
        noop.append(cf_noop["frames"] / cf_noop["seconds"])
        backends.append(cf_back["frames"] / cf_back["seconds"])
        handler.append(cf_handler["frames"] / cf_handler["seconds"])
        noop_cpu.append(cf_noop["cpu_seconds"] / cf_noop["frames"] * 100_000)
        backends_cpu.append(cf_back["cpu_seconds"] / cf_back["frames"] * 100_000)
        noop_rss.append(cf_noop["peak_rss_mb"])
        backends_rss.append(cf_back["peak_rss_mb"])
        checks = {
            "cryptofeed_version": cf_noop["cryptofeed_version"],
            "cryptofeed_checksum_validation": cf_noop["checksum_validation"],
            "cryptofeed_transport": cf_noop["transport"],
            "cryptofeed_frames": cf_noop["frames"],
            "cryptofeed_frames_served": cf_noop["served"].get("frames_sent"),
            "cryptofeed_book_callbacks": cf_noop["book_callbacks"],
            "cryptofeed_trade_callbacks": cf_noop["trade_callbacks"],
            "coby_frames": full["frames_total"],
            "coby_frames_served": full["served"].get("frames_sent"),
            "coby_book_updates": counters.get("book_updates"),
            "coby_checksum_ok": counters.get("checksum_ok"),
            "coby_checksum_failed": counters.get("checksum_failed"),
            "coby_sequence_gaps": counters.get("sequence_gaps"),
            "coby_resyncs": counters.get("resyncs"),
            "coby_rejected": counters.get("rejected"),
            # Frames each sharded deployment received (checksums and gaps are checked per run above).
            "coby_sharded_frames": {str(n): frames for n, frames in split_frames.items()},
            "coby_sharded_checksum_ok": {str(n): ok for n, ok in split_checksums.items()},
        }
    common = dict(capture=name, exchange=protocol, frames=frames, loops=loops, **checks)
    prefix = f"peer.{name}"
    window = "first frame received -> every frame received and PostgreSQL and Redis flushed"
    cf_window = {"method": "loopback WebSocket through cryptofeed's own transport; first frame received -> "
                           "every frame handled (and, with backends, their queues written out)"}
    specs = [
        (f"{prefix}.cryptofeed_noop.frames_per_s", noop, "frames/s", cf_window),
        (f"{prefix}.cryptofeed_pg_redis.frames_per_s", backends, "frames/s", cf_window),
        (f"{prefix}.cryptofeed_handler.frames_per_s", handler, "frames/s",
         {"method": "frames handed to cryptofeed's message handler in process, no-op callbacks; no transport"}),
        (f"{prefix}.coby.frames_per_s", coby, "frames/s", {"method": window}),
        (f"{prefix}.ratio.coby_over_cryptofeed_noop", [_ratio(c, n) for c, n in zip(coby, noop)], "x", {}),
        (f"{prefix}.ratio.coby_over_cryptofeed_pg_redis", [_ratio(c, b) for c, b in zip(coby, backends)], "x", {}),
        *(spec for shards in deployments for spec in _sharded_specs(prefix, shards, sharded[shards], noop, backends,
                                                                    window)),
        (f"{prefix}.coby_processor.frames_per_s", processor, "frames/s",
         {"method": "FeedProcessor alone over the looped frames as journal records (parse, book sync with "
                    "checksums, rows); no transport, nothing stored: the conditions of cryptofeed_handler"}),
        (f"{prefix}.ratio.coby_processor_over_cryptofeed_handler",
         [_ratio(c, n) for c, n in zip(processor, handler)], "x", {}),
        (f"{prefix}.cryptofeed_noop.cpu_s_per_100k_frames", noop_cpu, "s", {}),
        (f"{prefix}.cryptofeed_pg_redis.cpu_s_per_100k_frames", backends_cpu, "s",
         {"note": "cryptofeed's process only (PostgreSQL and Redis server CPU not counted)"}),
        (f"{prefix}.coby.cpu_s_per_100k_frames", coby_cpu, "s",
         {"note": "COBY's streamer process only (exchange, PostgreSQL and Redis servers not counted)",
          "method": window}),
        (f"{prefix}.coby.peak_rss_mb", coby_rss, "MB", {}),
        (f"{prefix}.cryptofeed_noop.peak_rss_mb", noop_rss, "MB", {}),
        (f"{prefix}.cryptofeed_pg_redis.peak_rss_mb", backends_rss, "MB", {}),
    ]
    figures = []
    for fig_name, samples, unit, extra in specs:
        try:
            figures.append(figure(fig_name, samples, unit, command, **extra, **common))
        except ValueError as exc:  # no run gave a value
            log.warning("peer: %s", exc)
    return figures


def run_suite(*, runs: int, quick: bool, command: str, emit: Callable[[dict], None],
              captures: dict[str, str] | None = None, captures_folder: Path | None = None,
              settings: Settings | None = None, db_name: str = BENCH_DB, schema: str = COBY_SCHEMA,
              prefix: str = COBY_PREFIX) -> list[dict]:
    """Every capture's figures (a capture missing from the captures folder is skipped with a warning).

    ``settings`` default to the environment's (embedded servers when unset);
    COBY works in ``db_name``/``schema``/``prefix``, cryptofeed in
    ``schema + "_cryptofeed"`` and ``prefix + "cryptofeed:"``.
    """
    figures: list[dict] = []
    folder = captures_folder or captures_dir()
    with running_services(settings or load_settings()) as resolved:
        resolved = resolved.with_db(name=db_name, schema=schema).with_redis(prefix=prefix)
        ensure_database(resolved)
        env = {**os.environ, **export_env(resolved), "DB_NAME": db_name, "COBY_DB_SCHEMA": schema,
               "COBY_REDIS_PREFIX": prefix}
        harness = PeerHarness(resolved, env)
        harness.prepare_database()
        try:
            with tempfile.TemporaryDirectory(prefix="coby-bench-peer-") as tmp:
                for name, protocol in (captures or CAPTURES).items():
                    path = folder / f"{name}.session1.jsonl.gz"
                    if not path.exists():
                        log.warning("capture %s not found (set COBY_CAPTURES_DIR); skipping it", path)
                        continue
                    for item in measure_capture(harness, name, path, protocol, runs=runs,
                                                target=QUICK_FRAMES if quick else TARGET_FRAMES,
                                                workdir=Path(tmp), command=command):
                        figures.append(item)
                        emit(item)
        finally:
            harness.cleanup()
    return figures


def main(args) -> int:
    """``coby bench peer [--json] [--runs N] [--quick] [--results DIR]``.

    Prints one JSON object per figure (``--json``: nothing else on stdout) and
    writes them to ``{results}/peer.jsonl`` (``peer.quick.jsonl`` with
    ``--quick``, so a quick check never replaces the recorded figures).
    """
    from importlib.util import find_spec

    if find_spec("cryptofeed") is None:  # the peer is the optional ``bench`` extra
        print("coby bench peer: cryptofeed is not installed; pip install -e '.[bench]'", file=sys.stderr)
        return 2
    quick = bool(getattr(args, "quick", False))
    runs = 1 if quick else (args.runs or 5)
    command = "coby bench peer --json" + (" --quick" if quick else "") + (f" --runs {runs}" if runs != 5 and not quick else "")
    as_json = bool(getattr(args, "json", False))

    def emit(item: dict) -> None:
        print(figure_line(item, as_json), flush=True)

    figures = run_suite(runs=runs, quick=quick, command=command, emit=emit)
    write_results(figures, getattr(args, "results", None), SUITE, quick)
    if figures:
        medians = {f["name"]: f["median"] for f in figures}
        log.info("peer: %d figures; ratios %s", len(figures),
                 {k: round(v, 2) for k, v in medians.items() if ".ratio." in k})
    return 0 if figures else 1
