"""Smoke test of ``coby bench receive``: both clients read every frame, figures well formed (speed never asserted)."""

from __future__ import annotations

import pytest

from streamer.bench import receive

pytestmark = pytest.mark.captures


def test_bench_receive_reads_every_frame_with_both_clients(captures_dir):
    figures = receive.run(runs=2, frames=3_000, command="coby bench receive --json --quick", folder=captures_dir)

    names = {figure["name"] for figure in figures}
    for capture in receive.CAPTURES:
        assert {f"receive.{capture}.coby.us_cpu_per_frame", f"receive.{capture}.websockets.us_cpu_per_frame",
                f"receive.{capture}.ratio.websockets_over_coby"} <= names
    for figure in figures:
        assert figure["runs"] == 2 and figure["frames"] == 3_000
        assert figure["min"] <= figure["median"] <= figure["max"] and figure["median"] > 0
        assert figure["unit"] in {"us", "x"}
