"""``coby stream --processes N``: exchanges spread over supervised child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import psutil
import psycopg
import pytest

from streamer.embedded import export_env
from streamer.errors import ConfigError
from streamer.processes import split_exchanges, stream_specs

from .test_durability import REPO_ROOT, SYMBOLS, _simulator, stored_rows


def test_exchanges_are_balanced_by_symbols_and_never_split():
    wanted = {"binance": ["A-B"] * 5, "kraken": ["A-B"] * 3, "okx": ["A-B"] * 3, "bybit": ["A-B"]}
    groups = split_exchanges(wanted, 2)
    assert sorted(sorted(g) for g in groups) == [["binance", "bybit"], ["kraken", "okx"]]
    assert split_exchanges(wanted, 10) == [{e: s} for e, s in sorted(wanted.items(), key=lambda i: -len(i[1]))]
    assert stream_specs({"okx": ["BTC-USDT", "ETH-USDT"]}) == ["okx:BTC-USDT,ETH-USDT"]
    with pytest.raises(ConfigError):
        split_exchanges(wanted, 0)


def _children(parent: psutil.Process) -> list[psutil.Process]:
    return [c for c in parent.children() if "stream" in c.cmdline()]


@pytest.mark.timeout(180)
def test_each_group_streams_in_its_own_process_and_a_killed_one_is_restarted(settings, tmp_path):
    simulator, urls = _simulator(tmp_path)
    try:
        env = {**os.environ, **export_env(settings), **urls, "COBY_DATA_DIR": str(tmp_path / "data")}
        specs = [f"{e}:{','.join(s)}" for e, s in SYMBOLS.items()]
        parent = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "stream", *specs, "--processes", "2", "--duration", "25"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        supervisor = psutil.Process(parent.pid)
        deadline = time.monotonic() + 60
        while len(_children(supervisor)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        children = _children(supervisor)
        assert len(children) == 2
        owners = {next(s.split(":")[0] for s in c.cmdline() if ":" in s): c.pid for c in children}
        assert sorted(owners) == sorted(SYMBOLS)  # one exchange per process
        url, schema = settings.db.url(), settings.db.schema
        while time.monotonic() < deadline:
            try:
                if all(stored_rows(url, schema, e)["trades"].total() > 5 for e in SYMBOLS):
                    break
            except psycopg.errors.UndefinedTable:
                pass  # the children are still creating the schema
            time.sleep(0.5)
        os.kill(owners["okx"], signal.SIGKILL)
        killed_at = time.time()
        output, _ = parent.communicate(timeout=120)
    finally:
        simulator.terminate()
        simulator.wait(timeout=30)
    assert parent.returncode == 0
    result = orjson.loads(output.decode().strip().splitlines()[-1])
    by_exchange = {tuple(p["exchanges"]): p for p in result["processes"]}
    assert by_exchange[("okx",)]["restarts"] == 1 and by_exchange[("binance",)]["restarts"] == 0
    # The restarted process went on storing OKX after the kill.
    since = int(killed_at * 1_000_000) + 2_000_000
    assert stored_rows(url, schema, "okx", since_us=since)["book_updates"].total() > 0
    assert by_exchange[("okx",)]["summary"] is not None
