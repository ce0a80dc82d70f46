"""One benchmark figure: a value measured over several runs, with where and when.

A figure is written as one JSON object (``bench/results/<suite>.jsonl``)::

    {"name", "value", "unit", "runs", "median", "min", "max", "samples",
     "command", "machine": {"nproc", "cpu"}, "date", ...extra}

``value`` is the median; ``samples`` are the per-run values, so the range
can be checked.
"""

from __future__ import annotations

import os
import platform
import statistics
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import orjson


@lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """``nproc`` (CPUs this process may use) and the CPU model name."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: keep platform's answer
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": nproc, "cpu": cpu, "python": platform.python_version()}


def figure(name: str, samples: Iterable[float | None], unit: str, command: str, **extra: Any) -> dict[str, Any]:
    """A figure from per-run samples (runs that produced no value are left out and counted)."""
    values = [float(v) for v in samples if v is not None]
    if not values:
        raise ValueError(f"figure {name!r}: no run produced a value")
    median = statistics.median(values)
    return {
        "name": name,
        "value": median,
        "unit": unit,
        "runs": len(values),
        "median": median,
        "min": min(values),
        "max": max(values),
        "samples": values,
        "command": command,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank; None when empty."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[rank]


def figure_line(item: dict[str, Any], as_json: bool) -> str:
    """How a suite prints one figure: its JSON object (``--json``), or a line for people."""
    if as_json:
        return orjson.dumps(item).decode()
    return (f"{item['name']:<58} {item['median']:>14,.2f} {item['unit']:<9} "
            f"(min {item['min']:,.2f}, max {item['max']:,.2f}, {item['runs']} runs)")


def write_results(figures: list[dict[str, Any]], results: str | Path | None, suite: str, quick: bool) -> Path:
    """The figures as ``{results}/{suite}.jsonl``, one object a line (default folder ``bench/results``).

    A quick run writes ``{suite}.quick.jsonl``, so a quick check never
    replaces the recorded figures.
    """
    folder = Path(results or "bench/results")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{suite}{'.quick' if quick else ''}.jsonl"
    path.write_text("".join(orjson.dumps(item).decode() + "\n" for item in figures), encoding="utf-8")
    return path
