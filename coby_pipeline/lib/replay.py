"""The replay dataset: raw ticks of one hour as Hive-partitioned Parquet.

Layout (one file per kind, exchange, symbol and hour)::

    {datasets_root}/replay/{kind}/exchange=X/symbol=Y/date=YYYY-MM-DD/hour=HH/part-0.parquet

``kind`` is ``book_updates``, ``book_snapshots`` or ``trades``. Files use the
contract's Arrow schema (:data:`streamer.contract.REPLAY_KINDS`), exchange and
symbol included (DuckDB and Polars both accept the duplicate Hive column), are
zstd-compressed and sorted by ``local_ts``. Writing an hour replaces that
hour's files and removes files of exchange/symbol pairs that no longer have
rows, so re-materializing never duplicates data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from streamer.contract import REPLAY_KINDS

from .hours import HourWindow
from .parquet_io import hive_value, prune_empty_parents, remove_stale, write_arrow_atomic

REPLAY_FOLDER = "replay"
PART_NAME = "part-0.parquet"

#: Secondary sort keys after ``local_ts``: the order the rows were produced in.
_TIE_BREAKERS: dict[str, list[str]] = {
    "book_updates": ["seq"],
    "book_snapshots": ["side", "level"],
    "trades": [],
}


def replay_root(datasets_root: Path) -> Path:
    return Path(datasets_root) / REPLAY_FOLDER


def hour_file(datasets_root: Path, kind: str, exchange: str, symbol: str, window: HourWindow) -> Path:
    return (
        replay_root(datasets_root)
        / kind
        / f"exchange={hive_value(exchange, 'exchange')}"
        / f"symbol={hive_value(symbol, 'symbol')}"
        / window.hive_path
        / PART_NAME
    )


def hour_files(datasets_root: Path, kind: str, window: HourWindow) -> list[Path]:
    """Every replay file of ``kind`` for the hour, across exchanges and symbols."""
    base = replay_root(datasets_root) / kind
    return sorted(base.glob(f"exchange=*/symbol=*/{window.hive_path}/*.parquet"))


def pair_of(path: Path) -> tuple[str, str]:
    """(exchange, symbol) of a replay file, from its Hive folders."""
    values = dict(part.split("=", 1) for part in Path(path).parts if "=" in part)
    return values["exchange"], values["symbol"]


def scan_hour(datasets_root: Path, kind: str, window: HourWindow) -> pl.LazyFrame:
    """A lazy frame over the hour's replay files (empty, with the schema, if none)."""
    files = hour_files(datasets_root, kind, window)
    if not files:
        return pl.from_arrow(REPLAY_KINDS[kind].arrow_schema().empty_table()).lazy()
    return pl.scan_parquet(files, hive_partitioning=False)


def duckdb_query(datasets_root: Path, kind: str = "book_updates", window: HourWindow | None = None) -> str:
    """A DuckDB query over the replay dataset (optionally one hour of it)."""
    glob = (replay_root(datasets_root) / kind / "**" / "*.parquet").as_posix()
    query = f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)"
    if window is not None:
        query += f"\nWHERE date = DATE '{window.date}' AND hour = '{window.hour}'"
    return query + "\nORDER BY local_ts"


@dataclass
class ReplayHour:
    """What :func:`write_hour` wrote."""

    rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)
    #: rows per kind and ``exchange/symbol``.
    pairs: dict[str, dict[str, int]] = field(default_factory=dict)
    removed: list[Path] = field(default_factory=list)

    def merge(self, other: "ReplayHour") -> None:
        self.rows.update(other.rows)
        self.files.update(other.files)
        self.pairs.update(other.pairs)
        self.removed.extend(other.removed)


def _sorted_frame(kind: str, table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    keys = ["exchange", "symbol", "local_ts", *_TIE_BREAKERS[kind]]
    return frame.sort(keys, nulls_last=True, maintain_order=True)


def write_hour(datasets_root: Path, window: HourWindow, tables: dict[str, pa.Table]) -> ReplayHour:
    """Write the hour's rows of each kind (``tables[kind]`` has the contract schema)."""
    result = ReplayHour()
    for kind, table in tables.items():
        schema = REPLAY_KINDS[kind].arrow_schema()
        written: list[Path] = []
        per_pair: dict[str, int] = {}
        if table.num_rows:
            frame = _sorted_frame(kind, table)
            for (exchange, symbol), part in frame.partition_by(
                ["exchange", "symbol"], as_dict=True, maintain_order=True
            ).items():
                target = hour_file(datasets_root, kind, exchange, symbol, window)
                write_arrow_atomic(part.to_arrow().cast(schema), target)
                written.append(target)
                per_pair[f"{exchange}/{symbol}"] = part.height
        result.removed.extend(_remove_other_files(datasets_root, kind, window, set(written)))
        result.rows[kind] = table.num_rows
        result.files[kind] = written
        result.pairs[kind] = per_pair
    return result


def _remove_other_files(datasets_root: Path, kind: str, window: HourWindow, keep: set[Path]) -> list[Path]:
    """Files of this hour that the current write did not produce (stale pairs, old parts)."""
    base = replay_root(datasets_root) / kind
    removed = []
    for hour_dir in base.glob(f"exchange=*/symbol=*/{window.hive_path}"):
        removed.extend(remove_stale(hour_dir, keep, "*.parquet"))
        if not any(hour_dir.iterdir()):
            prune_empty_parents(hour_dir, base)
    return removed
