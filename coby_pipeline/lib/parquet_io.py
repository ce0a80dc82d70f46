"""Writing Parquet so readers never see half a file and re-runs never duplicate.

Every dataset file is written under a hidden temporary name in its final
folder and then renamed over the target (atomic on one filesystem), so a
concurrent ``read_parquet('**/*.parquet')`` sees the old file or the new one,
never a torn one, and temporary files never match ``*.parquet``.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

#: Compression of every Parquet file the pipeline writes.
COMPRESSION = "zstd"

# Hive partition values the pipeline writes into folder names. Exchange ids and
# normalized symbols (BTC-USDT) fit; anything else would need escaping that
# DuckDB and Polars do not undo, so it is refused with a clear error.
_HIVE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hive_value(value: str, column: str) -> str:
    """``value`` if it can be a Hive folder value as is; else ValueError."""
    if not isinstance(value, str) or not _HIVE_VALUE.match(value):
        raise ValueError(
            f"{column} {value!r} cannot be a Hive partition folder name "
            "(letters, digits, '.', '_' and '-' only, starting with a letter or digit)"
        )
    return value


def _temporary_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def write_arrow_atomic(table: pa.Table, target: Path) -> Path:
    """Write ``table`` to ``target`` (zstd) via a temporary file and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_path(target)
    try:
        pq.write_table(table, temporary, compression=COMPRESSION)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def write_polars_atomic(frame: pl.DataFrame, target: Path) -> Path:
    """Write a Polars frame to ``target`` (zstd) via a temporary file and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_path(target)
    try:
        frame.write_parquet(temporary, compression=COMPRESSION)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def write_bytes_atomic(data: bytes, target: Path) -> Path:
    """Write ``data`` to ``target`` via a temporary file and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_path(target)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def remove_stale(folder: Path, keep: set[Path], pattern: str = "*") -> list[Path]:
    """Delete entries of ``folder`` matching ``pattern`` that are not in ``keep``."""
    removed = []
    if not folder.is_dir():
        return removed
    keep_resolved = {p.resolve() for p in keep}
    for entry in folder.glob(pattern):
        if entry.resolve() in keep_resolved:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def prune_empty_parents(path: Path, stop: Path) -> None:
    """Remove ``path`` and its empty parents up to (not including) ``stop``."""
    stop = stop.resolve()
    current = path.resolve()
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:  # not empty (or gone): leave it
            return
        current = current.parent
