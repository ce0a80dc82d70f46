"""The ``coby`` command.

    coby stream [EXCHANGE[@SHARD]:SYM,SYM ...] [--duration S] [--record DIR] [--processes N]
    coby capture replay FILE [--exchange PROTOCOL] [--speed max|1|N] [--faults SPEC]
    coby simulate [--exchanges binance,kraken,okx] [--duration S] [--faults SPEC]
    coby demo [--duration S] [--no-ui]
    coby materialize HOUR [HOUR ...] | --from HOUR --to HOUR
    coby schema
    coby faults [--json] [--scenario NAME ...] [--short]
    coby bench SUITE [--json] [--runs N] [--quick]

Commands that produce a result print it as one JSON object on the last line
of stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from .errors import CobyError
from .logging_setup import install_logging
from .secrets import scrub


def _speed(value: str) -> float | None:
    if value == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--speed must be 'max' or a positive number, got {value!r}") from None
    if not speed > 0:
        raise argparse.ArgumentTypeError(f"--speed must be positive, got {value!r}")
    return speed


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


#: ``coby bench`` suites: module whose ``main(args) -> int`` runs the suite.
BENCH_SUITES: dict[str, str] = {
    "pipeline": "streamer.bench.pipeline",
    "peer": "streamer.bench.peer.suite",
    "receive": "streamer.bench.receive",
    "streamer": "streamer.bench.e2e.suite",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coby", description="Cryptocurrency Order Book Yielder")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    stream = sub.add_parser("stream", help="stream live books and trades into PostgreSQL and Redis")
    stream.add_argument("specs", nargs="*", metavar="EXCHANGE:SYMBOLS",
                        help="e.g. binance:BTC-USDT,ETH-USDT; okx@1:BTC-USDT okx@2:ETH-USDT names the shards "
                             "(connections) of one exchange (default: COBY_STREAMS or a BTC/ETH set per exchange)")
    stream.add_argument("--duration", type=_positive, help="stop after this many seconds")
    stream.add_argument("--record", metavar="DIR", help="also record every raw frame (coby-capture/1) into DIR")
    stream.add_argument("--processes", type=int, metavar="N",
                        help="spread the exchanges over N streamer processes, splitting the busiest into shards "
                             "when there are more processes than exchanges (default: COBY_PROCESSES or 1)")
    # Set by `--processes` on its children: the parent planned and checked the whole layout.
    stream.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)

    capture = sub.add_parser("capture", help="recorded sessions")
    capture_sub = capture.add_subparsers(dest="capture_command", required=True)
    replay = capture_sub.add_parser("replay", help="serve a recorded session on 127.0.0.1 and stream it through COBY")
    replay.add_argument("file")
    replay.add_argument("--exchange", metavar="PROTOCOL",
                        help="protocol when the venue differs (binance for Binance.US/TR, okx for Okcoin)")
    replay.add_argument("--speed", type=_speed, default=None, metavar="max|1|N", help="replay speed (default max)")
    replay.add_argument("--timeout", type=_positive, default=120.0, help="give up after this many seconds")
    replay.add_argument("--faults", metavar="SPEC[;SPEC]",
                        help="inject faults, e.g. 'drop:every=500;disconnect:after=1000,times=5' "
                             "(kinds: drop, duplicate, reorder, corrupt, disconnect, stall, rest)")

    simulate = sub.add_parser("simulate", help="run simulated exchanges on 127.0.0.1")
    simulate.add_argument("--exchanges", default="binance,kraken,okx")
    simulate.add_argument("--duration", type=_positive)
    simulate.add_argument("--rate", type=float, default=50.0, help="market events per second per symbol")
    simulate.add_argument("--faults", metavar="SPEC[;SPEC]",
                          help="inject faults on every simulated exchange (see capture replay --faults); "
                               "switch them at runtime with POST/DELETE /_coby/faults")

    demo = sub.add_parser("demo", help="embedded servers + simulated exchanges + streamer + Dagster")
    demo.add_argument("--duration", type=_positive, help="run bounded, materialize the covered hours, print a summary")
    demo.add_argument("--no-ui", action="store_true", help="do not start the Dagster UI and daemon")
    demo.add_argument("--ui-port", type=int, default=3000)
    demo.add_argument("--rate", type=float, default=50.0, help="market events per second per symbol")

    materialize = sub.add_parser("materialize", help="materialize the pipeline for hour partitions (YYYY-MM-DD-HH:00)")
    materialize.add_argument("partitions", nargs="*")
    materialize.add_argument("--from", dest="start")
    materialize.add_argument("--to", dest="end")

    sub.add_parser("schema", help="create or upgrade the PostgreSQL schema")

    faults = sub.add_parser("faults", help="run fault scenarios end to end against PostgreSQL and Redis servers "
                                           "of their own; one JSON object per scenario")
    faults.add_argument("--json", action="store_true", help="one JSON object per line, nothing else")
    faults.add_argument("--scenario", action="append", metavar="NAME",
                        help="run only this scenario (repeatable; default: all)")
    faults.add_argument("--short", action="store_true", help="short durations (as in the test suite)")

    bench = sub.add_parser("bench", help="benchmark suites: one JSON object per figure, also written to "
                                         "bench/results/<suite>.jsonl")
    bench.add_argument("suite", choices=sorted(BENCH_SUITES))
    bench.add_argument("--json", action="store_true", help="one JSON object per figure, nothing else on stdout")
    bench.add_argument("--runs", type=int, default=5, help="runs per figure (median, min and max are reported)")
    bench.add_argument("--quick", action="store_true", help="small inputs, results to <suite>.quick.jsonl")
    bench.add_argument("--rows", type=int, help="pipeline: snapshot rows of the synthetic hour (default 10 million)")
    bench.add_argument("--cases", help="streamer: case groups to run, comma-separated "
                                       "(e2e, paced, sim, scale, soak; default all but soak)")
    bench.add_argument("--soak-seconds", type=float, help="streamer: length of the soak run (default 600)")
    bench.add_argument("--results", metavar="DIR", default="bench/results", help="where the .jsonl files go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every log line, error message and uncaught traceback is scrubbed of secrets.
    install_logging(verbose=args.verbose)
    from . import commands  # imported late: keeps `coby --help` fast

    try:
        if args.command == "stream":
            result = asyncio.run(commands.stream(args))
        elif args.command == "capture":
            result = asyncio.run(commands.capture_replay(args))
        elif args.command == "simulate":
            result = asyncio.run(commands.simulate(args))
        elif args.command == "demo":
            result = commands.demo(args)
        elif args.command == "materialize":
            result = commands.materialize(args)
        elif args.command == "schema":
            result = commands.schema(args)
        elif args.command == "faults":
            return commands.faults(args)  # prints one object per scenario itself
        elif args.command == "bench":
            import importlib

            return importlib.import_module(BENCH_SUITES[args.suite]).main(args)  # prints its figures itself
        else:  # pragma: no cover - argparse enforces the choices
            raise AssertionError(args.command)
    except CobyError as exc:
        print(scrub(f"coby: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result is not None:
        sys.stdout.write(scrub(orjson.dumps(result).decode()) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
