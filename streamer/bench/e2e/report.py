"""Markdown tables of a ``streamer`` results file, for the sections of ``BENCHMARKS.md``.

    python -m streamer.bench.e2e.report bench/results/streamer.jsonl [bench/results/streamer.soak.jsonl ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _cell(figures: dict, name: str) -> str:
    f = figures.get(name)
    if f is None:
        return "-"
    return f"{_fmt(f['median'])} ({_fmt(f['min'])}-{_fmt(f['max'])})"


COLUMNS = [("frames/s", "frames_per_s"), ("levels/s", "level_updates_per_s"),
           ("CPU s / 100k frames", "cpu_s_per_100k_frames"), ("CPU cores", "cpu_utilisation"),
           ("peak RSS MB", "peak_rss_mb"), ("latency p50 ms", "latency_p50_ms"),
           ("p99 ms", "latency_p99_ms"), ("p99.9 ms", "latency_p999_ms"),
           ("oldest-frame p99 ms", "latency_oldest_p99_ms"), ("loop lag p99 ms", "loop_lag_p99_ms"),
           ("longest GC pause ms", "gc_pause_max_ms")]


def case_table(figures: dict, prefix: str) -> str:
    cases = sorted({f["case"] for f in figures.values() if f.get("case", "").startswith(prefix)},
                   key=lambda c: [int(p) if p.isdigit() else p for p in c.replace("rate", ".").replace("sym", "").split(".")])
    lines = ["| case | " + " | ".join(h for h, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for case in cases:
        lines.append(f"| `{case}` | " + " | ".join(_cell(figures, f"{case}.{k}") for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def floor_table(figures: dict) -> str:
    lines = ["| capture | end to end frames/s | orjson alone frames/s | end to end / orjson | processor alone frames/s "
             "| end to end / processor | bare COPY rows/s | end-to-end levels/s / COPY |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("binance-spot", "kraken-spot", "okx"):
        lines.append(" | ".join([
            f"| {name}", _cell(figures, f"e2e.{name}.frames_per_s"), _cell(figures, f"floor.parse.{name}.frames_per_s"),
            _cell(figures, f"ratio.e2e_over_parse.{name}"), _cell(figures, f"floor.processor.{name}.frames_per_s"),
            _cell(figures, f"ratio.e2e_over_processor.{name}"), _cell(figures, f"floor.copy.{name}.rows_per_s"),
            _cell(figures, f"ratio.e2e_levels_over_copy.{name}"),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in argv] or [Path("bench/results/streamer.jsonl")]
    figures = {f["name"]: f for path in paths for f in map(orjson.loads, path.read_text().splitlines())}
    any_figure = next(iter(figures.values()))
    m = any_figure["machine"]
    print(f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m.get('python')}; date {any_figure['date'][:10]}; "
          f"command `{any_figure['command']}`; runs per figure {any_figure['runs']}.\n")
    print("### End to end, looped captures\n\n" + case_table(figures, "e2e.") + "\n")
    print("### Captures paced at a constant frame rate\n\n" + case_table(figures, "paced.") + "\n")
    print("### End to end, simulator paced in real time (OKX, 10 symbols)\n\n" + case_table(figures, "sim.") + "\n")
    print("### Floors\n\n" + floor_table(figures) + "\n")
    print("### Scale (pre-rendered simulator sessions as fast as the streamer reads)\n\n"
          + case_table(figures, "scale.") + "\n")
    soak = [f for f in figures.values() if f["name"].startswith("soak.")]
    if soak:
        print("### Soak\n")
        for f in soak:
            print(f"- `{f['name']}`: {_fmt(f['median'])} {f['unit']}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
