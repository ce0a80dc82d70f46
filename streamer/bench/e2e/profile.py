"""Where a streamer process's time goes, by component, from a py-spy profile.

    python -m streamer.bench.e2e.profile CAPTURE_FILE [--rate FRAMES_PER_S] [--seconds S] [--raw OUT]

Runs one benchmark case (the capture served from its own process, looped on
one connection as the peer suite does; ``--rate`` paces it) with the streamer
process under ``py-spy record --gil`` (the ``bench`` extra: only samples
that hold the GIL, so Python CPU time), then prints the share of samples per
component: the processor's mapper, book sync and row building, the journal,
the PostgreSQL and Redis sinks, the socket, and process start-up. PostgreSQL,
Redis and the exchange process are not in the profile. Needs PostgreSQL and Redis from the environment as every
``coby`` command.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ...config import load_settings
from ...embedded import ensure_database, export_env
from ...services import running_services
from .suite import BENCH_DB, BENCH_PREFIX, BENCH_SCHEMA, Harness

#: Components, first match wins, by a function on the sampled stack (outermost first).
COMPONENTS = (
    ("mapper (parse, validate, normalize)", ("map_message", "map_snapshot")),
    ("book sync (apply levels, checksums)", ("BookSync.on_message",)),
    ("rows and processor bookkeeping", ("FeedProcessor.process",)),
    ("live-cache hand-off (Outputs.commit)", ("Outputs.commit",)),
    ("journal", ("FeedDurability.append", "Journal.flush", "Journal._timed_flush")),
    ("PostgreSQL sink (COPY formatting, I/O)", ("PostgresSink._run", "PostgresSink.flush")),
    ("Redis sink (documents, pipeline)", ("RedisSink._run", "RedisSink.flush")),
    ("socket and WebSocket framing", ("_read_ready", "Connection.recv", "WsClient._receive_loop")),
    ("process start-up (imports)", ("_find_and_load",)),
)


def summarize(raw: Path) -> list[tuple[str, float]]:
    """(component, share of samples) from py-spy's raw (collapsed-stack) output."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        samples = int(number)
        total += samples
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        counts[_component(frames)] += samples
    return [(name, counts[name] / total) for name, _ in (*COMPONENTS, ("other", ()))] if total else []


def _component(frames: list[str]) -> str:
    # The innermost matching component names the sample: the processor's own
    # frames wrap the mapper and book-sync calls, which are more specific.
    for frame in reversed(frames):
        for name, markers in COMPONENTS:
            if any(frame.endswith(marker) for marker in markers):
                return name
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench.e2e.profile")
    parser.add_argument("capture", type=Path, help="a coby-capture file (looped ones from the peer suite work)")
    parser.add_argument("--rate", type=float, help="frames per second (default: as fast as the streamer reads)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    args = parser.parse_args(argv)
    # The virtual environment's own first (its bin/ need not be on PATH).
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    with running_services(load_settings()) as resolved, tempfile.TemporaryDirectory() as tmp:
        resolved = resolved.with_db(name=BENCH_DB, schema=BENCH_SCHEMA).with_redis(prefix=BENCH_PREFIX)
        ensure_database(resolved)
        raw = args.raw or Path(tmp) / "profile.txt"
        serve = ["capture", str(args.capture)] + (["--rate", str(args.rate)] if args.rate else [])
        result = Harness({**os.environ, **export_env(resolved)}).run_case(
            serve, expect=False, duration=args.seconds, warmup=1.0,
            # --gil: only samples that hold the GIL, i.e. Python CPU time (idle
            # threads and the loop's wait for input are left out).
            wrap=[spy, "record", "--gil", "--rate", "200", "--format", "raw", "--output", str(raw), "--"])
        if result.get("frames_per_s") is None:
            print(f"{args.capture.name}: no frames in the measured window; the capture must last longer than "
                  f"--seconds plus a second of warm-up (loop it: streamer.bench.peer.frames.write_looped_capture)",
                  file=sys.stderr)
            return 1
        print(f"{args.capture.name}: {result['frames_per_s']:,.0f} frames/s, "
              f"{result['cpu_utilisation']:.2f} cores, {result['cpu_s_per_100k_frames']:.2f} CPU s / 100k frames "
              f"(under the profiler)")
        for name, share in summarize(raw):
            print(f"  {share * 100:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
