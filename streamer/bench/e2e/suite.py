"""``coby bench streamer``: COBY end to end, its floors, and its scale; one figure per line.

Cases (each run is a fresh streamer process against a fresh exchange process):

* ``e2e.<capture>``: binance-spot, kraken-spot, okx captures looped (see
  :mod:`.looped`) at full speed over loopback WebSocket, through journal,
  book sync with checksums, PostgreSQL COPY and Redis;
* ``sim.okx.rate<R>``: the simulated OKX market paced in real time at rising
  rates (latency at a known offered load);
* ``paced.<capture>.rate10000``: the Kraken and OKX captures looped and
  served at a constant 10,000 frames/s (latency at the target's load; each
  loop resyncs every book from the session's in-band snapshots);
* ``paced.sim-kraken.10sym.rate10000``: a pre-rendered simulated Kraken
  session (10 symbols) at the same 10,000 frames/s, steady state: one
  snapshot per book at the start, then updates only, as a live connection;
* ``scale.<exchanges>.<N>sym``: simulated markets, pre-rendered once per
  suite run (:mod:`.prerender`) and served looped as fast as the streamer
  reads, 10/100/1,000 symbols, one and three exchanges; with three exchanges
  also ``...<N>sym.3proc``: one streamer process per exchange, and with one
  exchange of 1,000 symbols ``...1000sym.2proc``: its symbols split over two
  processes (shards);
* ``e2e.<capture>.2proc``, ``paced.<capture>.rate10000.2proc``: the same
  frames with the exchange's symbols split over two streamer processes
  (:mod:`.shards`), as ``coby stream --processes 2`` runs one exchange;
* ``soak.okx.<S>s`` (``--cases soak``, not in the default set): RSS over a
  10-minute full-speed run;
* ``floor.parse.<capture>``, ``floor.processor.<capture>``, ``floor.copy``:
  see :mod:`.floors`; ratios of the end-to-end rate to each floor.

PostgreSQL and Redis come from the environment as for every ``coby``
command (embedded ones when unset); the suite works in its own database
``coby_bench``, schema ``bench_e2e`` and Redis prefix ``cobybench:e2e:``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from ...config import Settings, load_settings
from ...embedded import ensure_database, export_env
from ...capture.reader import load_capture
from ...services import running_services
from ..peer.frames import write_looped_capture
from . import floors
from .figures import figure
from .worker import wipe

log = logging.getLogger(__name__)

SUITE = "streamer"
CAPTURES = ("binance-spot", "kraken-spot", "okx")
BENCH_DB = "coby_bench"
BENCH_SCHEMA = "bench_e2e"
BENCH_PREFIX = "cobybench:e2e:"
#: Frames per end-to-end capture run: loops of the capture until at least this many.
TARGET_FRAMES = 40_000
QUICK_FRAMES = 1_000
#: Offered load of the paced capture cases (the latency target is stated at 10k frames/s).
PACED_RATE = 10_000
PACED_CAPTURES = ("kraken-spot", "okx")
#: The steady-state paced case: a pre-rendered simulated session of this exchange and symbol count.
PACED_STEADY = ("kraken", 10)
#: Case groups: e2e (looped captures + floors), paced (captures at 10k frames/s), sim (simulator in real
#: time), scale (pre-rendered simulator sessions as fast as the streamer reads), soak (RSS over a
#: long full-speed run).
GROUPS = ("e2e", "paced", "sim", "scale", "soak")
DEFAULT_GROUPS = ("e2e", "paced", "sim", "scale")
#: Capture of the soak run, and how its RSS drift is judged: after this warm-up.
SOAK_CAPTURE = "okx"
SOAK_WARMUP_S = 60.0
SOAK_FRAMES_PER_CONNECTION = 50_000


@dataclass
class Options:
    runs: int = 5
    quick: bool = False
    captures_dir: Path | None = None
    command: str = "coby bench streamer --json"
    #: Which captures run end to end, and whether the simulator and scale cases run.
    captures: tuple[str, ...] = CAPTURES
    simulated: bool = True
    #: Case groups to run (see GROUPS); the soak is not in the default set (it takes 10 minutes).
    groups: tuple[str, ...] = DEFAULT_GROUPS
    #: Seconds of the soak run.
    soak_seconds: float = 600.0
    #: Servers (default: from the environment, embedded when unset) and the benchmark's own namespace.
    settings: Settings | None = None
    db_name: str = BENCH_DB
    schema: str = BENCH_SCHEMA
    prefix: str = BENCH_PREFIX


def captures_dir() -> Path:
    """``COBY_CAPTURES_DIR``, default ``../shared/fixtures/captures`` from the repository root."""
    configured = os.environ.get("COBY_CAPTURES_DIR")
    root = Path(__file__).resolve().parents[3]
    path = Path(configured) if configured else root / ".." / "shared" / "fixtures" / "captures"
    return (path if path.is_absolute() else root / path).resolve()


class Harness:
    """Starts exchange and streamer processes with the benchmark's own database, schema and prefix."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run_case(self, serve_args: list[str], *, expect: bool, duration: float | None = None,
                 warmup: float = 0.0, timeout: float = 300.0, processes: int = 1,
                 wrap: list[str] | None = None) -> dict[str, Any]:
        """One run: an exchange process serving ``serve_args`` and streamer process(es) reading it.

        ``processes > 1`` spreads the served exchanges over that many streamer
        processes (as ``coby stream --processes`` does) and combines their
        measurements (:func:`combine_results`). ``wrap`` prefixes the streamer
        command (a profiler, see :mod:`.profile`).
        """
        py = sys.executable
        with tempfile.TemporaryDirectory(prefix="coby-bench-") as data_dir:
            env = {**self.env, "COBY_DATA_DIR": data_dir}
            with serving(serve_args, env) as (ready, finish):
                groups = _spread(ready["feeds"], processes)
                if len(groups) > 1:
                    wipe(load_settings(env))  # once, before the workers start (each keeps what it finds)

                def command(feeds: list[dict]) -> list[str]:
                    args = [py, "-m", "streamer.bench.e2e.worker", orjson.dumps(feeds).decode(),
                            "--timeout", str(timeout), "--warmup", str(warmup)]
                    args += (["--expect-frames", str(_expected_frames(ready, feeds))] if expect
                             else ["--duration", str(duration)])
                    return [*(wrap or []), *args, *(["--keep"] if len(groups) > 1 else [])]

                workers = [subprocess.Popen(command(feeds), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True) for feeds in groups]
                results = [last_json(*worker.communicate(timeout=timeout + 60), worker.returncode,
                                      "streamer process") for worker in workers]
                result = results[0] if len(results) == 1 else combine_results(results)
                result["served"] = finish()
                result["ready"] = {k: v for k, v in ready.items() if k != "feeds"}
                return result


@contextmanager
def serving(serve_args: list[str], env: dict[str, str]) -> Iterator[tuple[dict, Callable[[], dict]]]:
    """An exchange process (:mod:`.serve`) serving ``serve_args``, for the length of the ``with``.

    Yields its ready line (``feeds`` with their URLs, ``expect_frames``) and
    ``finish()``, which ends the exchange process and returns its counters.
    """
    server = subprocess.Popen([sys.executable, "-m", "streamer.bench.e2e.serve", *serve_args], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def finish() -> dict:
        server.stdin.close()
        return orjson.loads(server.stdout.readline() or "{}")

    try:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"exchange process exited with {server.wait()} before listening")
        yield orjson.loads(line), finish
    finally:
        if server.stdin and not server.stdin.closed:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def last_json(out: str, err: str, returncode: int, what: str) -> dict:
    """The last JSON line a measuring process printed (a profiler wrapping it may print after it)."""
    if returncode != 0:
        raise RuntimeError(f"{what} failed ({returncode}): {err[-2000:]}")
    return orjson.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def _expected_frames(ready: dict, feeds: list[dict]) -> int:
    """Frames a streamer process given ``feeds`` receives: theirs, when the server says
    per feed (a capture's, or a shard's), else all it serves."""
    per_feed = [feed.get("expect_frames") for feed in feeds]
    return sum(per_feed) if per_feed and None not in per_feed else ready["expect_frames"]


def _spread(feeds: list[dict], processes: int) -> list[list[dict]]:
    """The served feeds in ``processes`` groups, round robin. A feed is never split: an
    exchange served in shards (``serve --shards``) is several feeds, so its shards can
    go to different processes."""
    count = max(1, min(processes, len(feeds)))
    return [feeds[i::count] for i in range(count)]


def combine_results(results: list[dict]) -> dict:
    """Several streamer processes of one run as one streamer: frames and CPU add up,
    and rates are over the joined window (first process's start to last one's
    end: a process that finishes early does not make the deployment faster);
    peak RSS adds up (the memory the deployment needs), latency and loop lag are
    the worst process's."""
    def total(key: str) -> float | None:
        values = [r.get(key) for r in results]
        return None if any(v is None for v in values) else sum(values)

    def worst(key: str) -> float | None:
        values = [r.get(key) for r in results if r.get(key) is not None]
        return max(values) if values else None

    frames = total("frames") or 0
    cpu = total("cpu_s") or 0.0
    windows = [r.get("window_unix") for r in results]
    wall = (max(w[1] for w in windows) - min(w[0] for w in windows)) if None not in windows else None
    levels = total("level_updates")
    combined = {
        "processes": len(results),
        "frames": frames,
        "frames_total": total("frames_total"),
        "wall_s": wall,
        "frames_per_s": frames / wall if wall else None,
        "level_updates_per_s": levels / wall if wall and levels is not None else None,
        "cpu_s": cpu,
        "cpu_s_per_100k_frames": cpu / frames * 100_000 if frames else None,
        "cpu_utilisation": cpu / wall if wall else None,
        "peak_rss_mb": total("peak_rss_mb"),
        "peak_rss_mb_per_process": [r.get("peak_rss_mb") for r in results],
        "timed_out": any(r.get("timed_out") for r in results),
        "counters": {key: sum(r.get("counters", {}).get(key, 0) or 0 for r in results)
                     for key in ("checksum_ok", "checksum_failed", "sequence_gaps", "book_updates", "frames")},
        "per_process": results,
    }
    for key in results[0]:
        if key.startswith(("latency_", "loop_lag_", "gc_pause_max")):
            combined[key] = worst(key)
    return combined


def _figures_of(prefix: str, results: list[dict], command: str, **extra) -> list[dict]:
    """The standard figures of a set of runs of one end-to-end case."""
    def col(key: str) -> list:
        return [r.get(key) for r in results]

    base = {"case": prefix, **extra}
    out = [
        figure(f"{prefix}.frames_per_s", col("frames_per_s"), "frames/s", command, **base),
        figure(f"{prefix}.level_updates_per_s", col("level_updates_per_s"), "levels/s", command, **base),
        figure(f"{prefix}.cpu_s_per_100k_frames", col("cpu_s_per_100k_frames"), "cpu s", command, **base),
        figure(f"{prefix}.cpu_utilisation", col("cpu_utilisation"), "cores", command, **base),
        figure(f"{prefix}.peak_rss_mb", col("peak_rss_mb"), "MB", command, **base),
    ]
    for label in ("p50", "p99", "p999"):
        values = col(f"latency_latest_{label}_ms")
        if any(v is not None for v in values):
            out.append(figure(f"{prefix}.latency_{label}_ms", values, "ms", command,
                              definition="frame receipt -> book acknowledged by Redis (frame that last changed it)",
                              samples_per_run=col("latency_samples"), **base))
        values = col(f"latency_oldest_{label}_ms")
        if any(v is not None for v in values):
            out.append(figure(f"{prefix}.latency_oldest_{label}_ms", values, "ms", command,
                              definition="oldest frame coalesced into the flushed book -> acknowledged by Redis",
                              **base))
    for key, definition in (
        ("loop_lag_p99_ms", "event-loop lag: how late a 1 ms sleeper wakes, p99"),
        ("loop_lag_max_ms", "event-loop lag, maximum"),
        ("gc_pause_max_ms", "longest garbage-collector pause in the window"),
    ):
        values = col(key)
        if any(v is not None for v in values):
            out.append(figure(f"{prefix}.{key}", values, "ms", command, definition=definition, **base))
    checks = [r.get("counters", {}) for r in results]
    out[0]["checksum_ok"] = [c.get("checksum_ok") for c in checks]
    out[0]["checksum_failed"] = [c.get("checksum_failed") for c in checks]
    out[0]["sequence_gaps"] = [c.get("sequence_gaps") for c in checks]
    out[0]["frames_measured"] = col("frames")
    out[0]["timed_out"] = [bool(r.get("timed_out")) for r in results]
    return out


def run_suite(options: Options, emit: Callable[[dict], None]) -> list[dict]:
    settings = options.settings or load_settings()
    figures: list[dict] = []

    def add(items: list[dict]) -> None:
        for item in items:
            figures.append(item)
            emit(item)

    cmd = options.command
    runs = 1 if options.quick else options.runs
    folder = options.captures_dir or captures_dir()
    with running_services(settings) as resolved:
        resolved = resolved.with_db(name=options.db_name, schema=options.schema).with_redis(prefix=options.prefix)
        ensure_database(resolved)
        env = {**os.environ, **export_env(resolved)}
        harness = Harness(env)

        # 1. End to end on the looped captures, and the floors on the same frames.
        e2e_rates: dict[str, float] = {}
        e2e_level_rates: dict[str, float] = {}
        for name in options.captures if "e2e" in options.groups else ():
            path = folder / f"{name}.session1.jsonl.gz"
            if not path.exists():
                log.warning("capture %s not found; skipping its cases", path)
                continue
            frames = floors.capture_frames(path)
            target = QUICK_FRAMES if options.quick else TARGET_FRAMES
            loops = max(1, -(-target // len(frames)))
            results = [harness.run_case(["capture", str(path), "--loops", str(loops)], expect=True)
                       for _ in range(runs)]
            case = _figures_of(f"e2e.{name}", results, cmd, loops=loops, frames_per_loop=len(frames),
                               looping="N consecutive connections, each the whole recorded session")
            add(case)
            e2e_rates[name] = case[0]["median"]
            e2e_level_rates[name] = case[1]["median"]
            if not options.quick:
                # The same frames with the exchange split over two processes (coby stream --processes 2).
                results = [harness.run_case(["capture", str(path), "--loops", str(loops), "--shards", str(SHARDS)],
                                            expect=True, processes=SHARDS) for _ in range(runs)]
                add(_figures_of(f"e2e.{name}.{SHARDS}proc", results, cmd, loops=loops, frames_per_loop=len(frames),
                                shards=SHARDS, note=SHARDS_NOTE,
                                looping="N consecutive connections per shard, each its symbols' part of the session"))

            parse = [floors.parse_rate(frames, loops) for _ in range(runs)]
            add([figure(f"floor.parse.{name}.frames_per_s", parse, "frames/s", cmd, loops=loops)])
            processed = []
            rows: list[tuple] = []
            for _ in range(runs):
                rate, rows = floors.processor_rate(path, loops)
                processed.append(rate)
            add([figure(f"floor.processor.{name}.frames_per_s", processed, "frames/s", cmd, loops=loops)])
            add([
                figure(f"ratio.e2e_over_parse.{name}", [e2e_rates[name] / p for p in parse], "fraction", cmd,
                       definition="end-to-end frames/s (median) / orjson-only frames/s (each run)"),
                figure(f"ratio.e2e_over_processor.{name}", [e2e_rates[name] / p for p in processed], "fraction", cmd,
                       definition="end-to-end frames/s (median) / processor-only frames/s (each run)"),
            ])
            if rows:
                copy = [floors.copy_rate(resolved, rows) for _ in range(runs)]
                add([figure(f"floor.copy.{name}.rows_per_s", copy, "rows/s", cmd, rows=len(rows),
                            source=f"book_updates rows of {name} x{loops}")])
                add([figure(f"ratio.e2e_levels_over_copy.{name}", [e2e_level_rates[name] / c for c in copy],
                            "fraction", cmd,
                            definition="end-to-end level updates/s (median) / bare COPY rows/s (each run)")])

        # 1b. The simulator at rising real-time rates: latency at a known load.
        duration = 2.0 if options.quick else 8.0
        sim_rates = () if not (options.simulated and "sim" in options.groups) else (
            (50,) if options.quick else (50, 200, 500, 1000))
        for rate in sim_rates:
            results = [harness.run_case(["simulate", "--exchanges", "okx", "--symbols", "10", "--rate", str(rate)],
                                        expect=False, duration=duration, warmup=1.0)
                       for _ in range(runs)]
            add(_figures_of(f"sim.okx.10sym.rate{rate}", results, cmd, symbols=10, rate_per_symbol=rate,
                            duration_s=duration, paced="real time"))

        # 1c. Captures paced at a constant frame rate: receipt-to-Redis latency at 10k frames/s.
        # Looped on one connection (Kraken and OKX resend their snapshots in-band,
        # so each loop resets the books): a reconnect per loop would put a
        # handshake and a full resync into the latency every few hundred frames.
        paced = options.captures if not options.quick else options.captures[:1]
        for name in paced if "paced" in options.groups else ():
            path = folder / f"{name}.session1.jsonl.gz"
            if name not in PACED_CAPTURES or not path.exists():
                continue
            capture = load_capture(path)
            frames_per_loop = sum(1 for rec in capture.records if rec["dir"] == "recv")
            for rate in (PACED_RATE,):
                # Enough loops for warm-up and duration, with a margin: the run ends at its duration.
                loops = max(1, int(-(-(duration + 3.0) * rate // frames_per_loop)))
                with tempfile.TemporaryDirectory(prefix="coby-bench-paced-") as tmp:
                    looped = Path(tmp) / f"{name}.x{loops}.jsonl.gz"
                    write_looped_capture(capture, loops, looped)
                    results = [harness.run_case(["capture", str(looped), "--rate", str(rate)],
                                                expect=False, duration=duration, warmup=1.0)
                               for _ in range(runs)]
                    add(_figures_of(f"paced.{name}.rate{rate}", results, cmd, offered_frames_per_s=rate,
                                    duration_s=duration, loops=loops, frames_per_loop=frames_per_loop,
                                    paced="constant frame rate; the capture looped on one connection"))
                    if not options.quick:
                        # The same offered load shared by two processes, one shard each.
                        results = [harness.run_case(["capture", str(looped), "--rate", str(rate),
                                                     "--shards", str(SHARDS)],
                                                    expect=False, duration=duration, warmup=1.0, processes=SHARDS)
                                   for _ in range(runs)]
                        add(_figures_of(f"paced.{name}.rate{rate}.{SHARDS}proc", results, cmd,
                                        offered_frames_per_s=rate, duration_s=duration, loops=loops,
                                        frames_per_loop=frames_per_loop, shards=SHARDS, note=SHARDS_NOTE,
                                        paced="constant frame rate in all, each shard its share of it"))

        # 1d. Steady state at the same rate: a live connection resyncs only when it reconnects,
        # where a looped capture resyncs every book each loop (every 0.44 s on Kraken's).
        if options.simulated and "paced" in options.groups:
            add(paced_steady_case(harness, runs=runs, duration=duration, command=cmd))

        # 6. Scale: as fast as the streamer reads, more symbols, more exchanges. The simulated
        # markets are pre-rendered once per suite run and served from the recordings (see
        # scale_sources), so the streamer, not the simulator, sets the pace.
        scale_cases = () if not (options.simulated and "scale" in options.groups) else (
            SCALE_QUICK_CASES if options.quick else SCALE_CASES)
        if scale_cases:
            with tempfile.TemporaryDirectory(prefix="coby-bench-scale-") as tmp:
                sources = scale_sources(scale_cases, Path(tmp), quick=options.quick)
                for exchanges, symbols in scale_cases:
                    add(scale_case(harness, sources, exchanges, symbols, runs=runs, duration=duration, command=cmd))
                    if options.quick:
                        continue
                    # What the streamer does about one saturated process: one process per
                    # exchange, and one exchange with many symbols split over two.
                    if "," in exchanges:
                        processes = len(exchanges.split(","))
                        add(scale_case(harness, sources, exchanges, symbols, runs=runs, duration=duration,
                                       command=cmd, processes=processes))
                    elif symbols >= SCALE_SHARDED_FROM:
                        add(scale_case(harness, sources, exchanges, symbols, runs=runs, duration=duration,
                                       command=cmd, processes=SHARDS, shards=SHARDS))

        # 7. Soak: one long run at full speed; RSS sampled every half second.
        soak_path = folder / f"{SOAK_CAPTURE}.session1.jsonl.gz"
        if "soak" in options.groups and soak_path.exists():
            add(soak_figures(harness, soak_path, options.soak_seconds, cmd))
    return figures


#: Processes of the sharded cases (one exchange's symbols split over them): the machine's two cores.
SHARDS = 2
SHARDS_NOTE = ("the exchange's symbols split over two connections, one streamer process each (coby stream "
               "--processes 2 with one exchange); the capture split by symbol, balanced by frames; rates are all "
               "frames over the joined window of both processes")
#: One exchange with at least this many symbols is also measured split over SHARDS processes.
SCALE_SHARDED_FROM = 1000
#: Scale cases: (exchanges, symbols per exchange); the quick run has one small case.
SCALE_CASES = (("okx", 10), ("okx", 100), ("okx", 1000), ("binance,kraken,okx", 10), ("binance,kraken,okx", 100))
SCALE_QUICK_CASES = (("okx", 10),)
#: Frames recorded per pre-rendered source: a loop lasts seconds at the streamer's rate, so
#: the reconnect and resync that start each loop are a small part of a run.
SCALE_FRAMES = 100_000
SCALE_QUICK_FRAMES = 20_000
#: Loops offered to a scale run: more than any run can read (the run ends at its duration).
SCALE_LOOPS = 1_000_000
SCALE_NOTE = ("source: a pre-rendered market-simulator recording (coby-capture), served looped at full speed "
              "from its own process; each loop is a reconnect that resyncs every book from the recorded snapshots")


def scale_sources(cases: tuple[tuple[str, int], ...], directory: Path, *, quick: bool) -> dict:
    """Record every (exchange, symbol count) the scale cases use, once, into ``directory``.

    The live simulator renders only a few thousand frames per second, well
    below what the streamer reads; a recording replays at socket speed.
    Symbols are :func:`.serve.simulated_symbols`, as the live cases had.
    Returns ``{(protocol, symbols): prerender.Prerendered}``.
    """
    from . import prerender  # here: only the scale cases need the simulator

    wanted = [(protocol, symbols) for exchanges, symbols in cases for protocol in exchanges.split(",")]
    frames = SCALE_QUICK_FRAMES if quick else SCALE_FRAMES
    log.info("pre-rendering %d simulated sessions of %d frames", len(set(wanted)), frames)
    return prerender.prerender_many(wanted, directory, frames)


def scale_case(harness: Harness, sources: dict, exchanges: str, symbols: int, *, runs: int, duration: float,
               command: str, processes: int = 1, shards: int = 1) -> list[dict]:
    """One scale case: the exchanges' recordings served together, looped, for ``duration`` seconds a run
    (with ``shards``, each exchange's symbols split over that many connections)."""
    from .prerender import DEFAULT_RATE  # here: only the scale cases need the simulator

    recorded = [sources[(protocol, symbols)] for protocol in exchanges.split(",")]
    serve_args = ["capture", *(str(item.path) for item in recorded), "--loops", str(SCALE_LOOPS),
                  *(["--shards", str(shards)] if shards > 1 else [])]
    results = [harness.run_case(serve_args, expect=False, duration=duration, warmup=1.0, processes=processes)
               for _ in range(runs)]
    label = exchanges.replace(",", "+") + f".{symbols}sym" + (f".{processes}proc" if processes > 1 else "")
    return _figures_of(f"scale.{label}", results, command, symbols=symbols, exchanges=exchanges,
                       streamer_processes=processes,
                       duration_s=duration, paced="as fast as the streamer reads (server backpressure)",
                       note=SCALE_NOTE, frames_per_loop=sum(item.frames for item in recorded),
                       rate_per_symbol=DEFAULT_RATE,
                       connections_per_run=[r.get("served", {}).get("connections") for r in results])


def paced_steady_case(harness: Harness, *, runs: int, duration: float, command: str,
                      rate: int = PACED_RATE) -> list[dict]:
    """``paced.sim-kraken.10sym.rate10000``: a pre-rendered simulated session served at ``rate`` frames/s.

    The recording is long enough for the warm-up and the run on one
    connection: every book is synced once at the start (in the warm-up) and
    the measured window holds updates only.
    """
    protocol, symbols = PACED_STEADY
    warmup = 1.0
    frames = int((warmup + duration + 1.0) * rate)
    with tempfile.TemporaryDirectory(prefix="coby-bench-steady-") as tmp:
        from . import prerender  # here: only the simulated cases need the simulator

        source = prerender.prerender_many([PACED_STEADY], Path(tmp), frames)[PACED_STEADY]
        results = [harness.run_case(["capture", str(source.path), "--rate", str(rate)],
                                    expect=False, duration=duration, warmup=warmup)
                   for _ in range(runs)]
    return _figures_of(f"paced.sim-{protocol}.{symbols}sym.rate{rate}", results, command,
                       offered_frames_per_s=rate, duration_s=duration, symbols=symbols,
                       frames_recorded=source.frames,
                       connections_per_run=[r.get("served", {}).get("connections") for r in results],
                       paced="constant frame rate; one connection, one snapshot per book, then updates only",
                       note="source: a pre-rendered market-simulator recording (coby-capture)")


def soak_figures(harness: Harness, path: Path, seconds: float, command: str) -> list[dict]:
    """One run of ``seconds`` at full speed; RSS drift after warm-up.

    The capture is looped on one connection (in-band snapshots reset the books
    every loop) to about SOAK_FRAMES_PER_CONNECTION frames, and that is served
    on reconnect after reconnect until the time is up: a long session with a
    reconnect every few seconds, as an unsteady exchange connection has.
    ``rss_growth`` is (the highest RSS after the warm-up) / (RSS at the end of
    the warm-up) - 1: the target is a flat RSS, within 20 %.
    """
    capture = load_capture(path)
    per_loop = sum(1 for rec in capture.records if rec["dir"] == "recv")
    inner = max(1, SOAK_FRAMES_PER_CONNECTION // per_loop)
    with tempfile.TemporaryDirectory(prefix="coby-bench-soak-") as tmp:
        looped = Path(tmp) / f"{path.name.split('.')[0]}.x{inner}.jsonl.gz"
        frames_per_loop = write_looped_capture(capture, inner, looped)
        # More connections than any run can use: the run ends at its duration.
        result = harness.run_case(["capture", str(looped), "--loops", "1000000"], expect=False, duration=seconds,
                                  warmup=0.0, timeout=seconds + 120)
    samples = result["rss_mb"]  # one per 0.5 s from the first frame
    warm = int(min(SOAK_WARMUP_S, seconds / 4) * 2)
    base = samples[warm] if len(samples) > warm else samples[-1]
    after = samples[warm:] or samples[-1:]
    growth = max(after) / base - 1
    extra = dict(case="soak", capture=path.name, duration_s=seconds, frames_per_loop=frames_per_loop,
                 warmup_s=warm / 2, rss_mb_samples=samples[::20], rss_mb_at_warmup=base, rss_mb_end=samples[-1],
                 frames=result["frames"], counters=result.get("counters", {}),
                 connections=result.get("served", {}).get("connections"))
    name = f"soak.{path.name.split('.')[0]}.{int(seconds)}s"
    return [
        figure(f"{name}.rss_growth", [growth], "fraction", command,
               definition="max RSS after warm-up / RSS at end of warm-up - 1", **extra),
        figure(f"{name}.peak_rss_mb", [result["peak_rss_mb"]], "MB", command, case="soak"),
        figure(f"{name}.frames_per_s", [result["frames_per_s"]], "frames/s", command, case="soak"),
        figure(f"{name}.cpu_s_per_100k_frames", [result["cpu_s_per_100k_frames"]], "cpu s", command, case="soak"),
    ]


def main(args) -> int:
    """Entry point of ``coby bench streamer``: figures as JSON lines on stdout and in ``bench/results``.

    ``--cases e2e,paced,...`` runs only those groups (results then go to
    ``streamer.<groups>.jsonl``); ``--cases soak`` is the 10-minute RSS run
    (``--soak-seconds`` changes its length).
    """
    runs = getattr(args, "runs", None) or 5
    quick = bool(getattr(args, "quick", False))
    cases = getattr(args, "cases", None)
    groups = DEFAULT_GROUPS if not cases else tuple(c.strip() for c in cases.split(",") if c.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f"coby bench streamer: unknown case group(s) {unknown}; choose from {list(GROUPS)}", file=sys.stderr)
        return 2
    soak_seconds = float(getattr(args, "soak_seconds", None) or 600.0)
    command = ("coby bench streamer --json" + (f" --runs {runs}" if runs != 5 else "") + (" --quick" if quick else "")
               + (f" --cases {','.join(groups)}" if cases else "")
               + (f" --soak-seconds {soak_seconds:g}" if "soak" in groups and soak_seconds != 600.0 else ""))
    out_dir = Path(getattr(args, "results", None) or "bench/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    # A quick run never overwrites the real figures; a partial set of groups has its own file.
    stem = SUITE + ("" if not cases else "." + "+".join(groups)) + (".quick" if quick else "")
    target = out_dir / f"{stem}.jsonl"
    partial = target.with_suffix(".jsonl.partial")
    with partial.open("w", encoding="utf-8") as sink:
        def emit(item: dict) -> None:
            line = orjson.dumps(item).decode()
            sink.write(line + "\n")
            sink.flush()
            if getattr(args, "json", False):
                print(line, flush=True)
            else:
                print(f"{item['name']}: {item['median']:.4g} {item['unit']} "
                      f"(min {item['min']:.4g}, max {item['max']:.4g}, {item['runs']} runs)", flush=True)

        run_suite(Options(runs=runs, quick=quick, command=command, groups=groups, soak_seconds=soak_seconds), emit)
    partial.replace(target)  # a complete run replaces the previous results, an interrupted one does not
    return 0
