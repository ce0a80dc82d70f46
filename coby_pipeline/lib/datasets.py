"""Where the derived (non-replay) datasets live.

Each is one table per hour: ``{datasets_root}/{name}/date=YYYY-MM-DD/hour=HH/part-0.parquet``
(plus, for heatmaps, one PNG per symbol in the same folder).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .hours import HourWindow

PRICE_BUCKETS = "price_buckets"
HEATMAP = "heatmap"
QUALITY_SCORES = "quality_scores"
PART_NAME = "part-0.parquet"


def hour_folder(datasets_root: Path, name: str, window: HourWindow) -> Path:
    return Path(datasets_root) / name / window.hive_path


def hour_table(datasets_root: Path, name: str, window: HourWindow) -> Path:
    return hour_folder(datasets_root, name, window) / PART_NAME


def read_hour_table(datasets_root: Path, name: str, window: HourWindow, schema: pl.Schema) -> pl.DataFrame:
    """The hour's table, or ``FileNotFoundError`` naming the asset to materialize."""
    path = hour_table(datasets_root, name, window)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: materialize {name} for partition {window.key} first")
    return pl.read_parquet(path).cast(dict(schema))


def markdown_table(frame: pl.DataFrame, *, max_rows: int = 20, float_digits: int = 6) -> str:
    """A small markdown table for asset metadata (the UI renders it)."""
    shown = frame.head(max_rows)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "| " + " | ".join("---" for _ in shown.columns) + " |"
    lines = [header, rule]
    for row in shown.iter_rows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f"{value:.{float_digits}g}")
            elif value is None:
                cells.append("")
            else:
                cells.append(str(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    if frame.height > max_rows:
        lines.append(f"\n{frame.height - max_rows} more rows")
    return "\n".join(lines)
