"""Smoke test of the ``peer`` benchmark suite (COBY beside cryptofeed): well-formed figures, never speed."""

from __future__ import annotations

import pytest

from streamer.bench.peer.suite import run_suite

pytest.importorskip("cryptofeed", reason="cryptofeed is the optional 'bench' extra: pip install -e '.[bench]'")


def test_peer_bench_quick_produces_well_formed_figures(settings, captures_dir):
    if not (captures_dir / "okx.session1.jsonl.gz").exists():
        pytest.skip(f"okx.session1.jsonl.gz not in {captures_dir}")
    if settings.redis.unix_socket:
        pytest.skip("cryptofeed's Redis backend cannot reach a unix socket (embedded Redis)")
    emitted: list[dict] = []
    figures = run_suite(runs=1, quick=True, command="coby bench peer --json --quick", emit=emitted.append,
                        captures={"okx": "okx"}, captures_folder=captures_dir, settings=settings,
                        db_name=settings.db.name, schema=settings.db.schema, prefix=settings.redis.prefix)
    assert figures == emitted
    by_name = {f["name"]: f for f in figures}
    for name in ("peer.okx.cryptofeed_noop.frames_per_s", "peer.okx.cryptofeed_pg_redis.frames_per_s",
                 "peer.okx.coby.frames_per_s", "peer.okx.ratio.coby_over_cryptofeed_noop",
                 "peer.okx.ratio.coby_over_cryptofeed_pg_redis", "peer.okx.cryptofeed_handler.frames_per_s",
                 "peer.okx.ratio.coby_processor_over_cryptofeed_handler", "peer.okx.coby_2proc.frames_per_s",
                 "peer.okx.ratio.coby_2proc_over_cryptofeed_pg_redis"):
        assert name in by_name, name
    for f in figures:
        assert f["runs"] == len(f["samples"]) == 1
        assert f["min"] <= f["median"] <= f["max"] and f["median"] > 0
        assert f["machine"]["nproc"] >= 1 and f["machine"]["cpu"] and f["date"].endswith("Z")
    rate = by_name["peer.okx.coby.frames_per_s"]
    # Both sides saw the whole looped capture, and every checksum held on both
    # (cryptofeed raises on a bad checksum, so its run finishing says it).
    assert rate["coby_frames"] == rate["coby_frames_served"] == rate["frames"]
    assert rate["coby_checksum_failed"] == 0 and rate["coby_checksum_ok"] > 0
    assert rate["cryptofeed_checksum_validation"] is True and rate["cryptofeed_book_callbacks"] > 0
    # cryptofeed read the same served frames, over its own WebSocket transport.
    assert rate["cryptofeed_transport"] == "websocket"
    assert rate["cryptofeed_frames"] == rate["cryptofeed_frames_served"] == rate["frames"]
    # The ratio is the two measured rates of the same run, not a constant.
    ratio = by_name["peer.okx.ratio.coby_over_cryptofeed_noop"]["median"]
    noop = by_name["peer.okx.cryptofeed_noop.frames_per_s"]["median"]
    assert ratio == pytest.approx(rate["median"] / noop)
    # The sharded deployments received every frame too (a checksum failure or a gap raises).
    assert rate["coby_sharded_frames"] == {"2": rate["frames"], "3": rate["frames"]}
    assert rate["coby_sharded_checksum_ok"] == {"2": rate["coby_checksum_ok"], "3": rate["coby_checksum_ok"]} != {}
    assert by_name["peer.okx.coby_2proc.frames_per_s"]["shards"] == 2
    assert by_name["peer.okx.coby_3proc.frames_per_s"]["shards"] == 3
