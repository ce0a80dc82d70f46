"""Embedded PostgreSQL and Redis: real servers under a data directory.

Each test starts its own servers in its own directory; the session's shared
servers are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from streamer.config import load_settings
from streamer.embedded import EmbeddedServices, export_env, start_redis

REPO_ROOT = Path(__file__).resolve().parent.parent


def _servers_under(path: Path) -> list[psutil.Process]:
    """Server processes this test started under ``path`` (postgres -D <path>/..., redis-server in <path>/...)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "postgres" and any(str(path) in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
            elif proc.info["name"] == "redis-server" and str(path) in proc.cwd():
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def short_dir():
    """A short private directory (unix-socket paths must stay under 108 bytes).

    Teardown stops any server a failed test left running under it."""
    path = Path(tempfile.mkdtemp(prefix="coby-emb-"))
    yield path
    leftovers = _servers_under(path)
    for proc in leftovers:
        proc.terminate()
    psutil.wait_procs(leftovers, timeout=10)
    shutil.rmtree(path, ignore_errors=True)


def _embedded_settings(data_dir: Path, **env):
    return load_settings({"COBY_DATA_DIR": str(data_dir), "DB_NAME": "coby_embedded", **env})


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_starts_real_servers_on_loopback_or_sockets_and_stops_them(short_dir):
    with EmbeddedServices() as services:
        resolved = services.start(_embedded_settings(short_dir))
        pg_pid, redis_pid = services.postgres_pid, services.redis_pid
        assert resolved.db.host is not None and resolved.redis.unix_socket is not None
        with psycopg.connect(resolved.db.url(), autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "coby_embedded"
            # No TCP listener at all: unix socket only.
            assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
        client = redis.Redis(**resolved.redis.client_kwargs())
        assert client.ping()
        config = client.config_get("bind")["bind"]
        assert config.split() == ["127.0.0.1"]
        assert client.config_get("appendonly")["appendonly"] == "no"
        client.close()
    assert _gone(pg_pid) and _gone(redis_pid)


def test_only_unconfigured_servers_are_started(short_dir, services):
    # PostgreSQL is configured (the session's), Redis is not: only Redis starts.
    settings = _embedded_settings(short_dir).with_db(host=services.db.host, port=services.db.port, name=services.db.name)
    with EmbeddedServices() as embedded:
        resolved = embedded.start(settings)
        assert embedded.postgres_pid is None and embedded.redis_pid is not None
        assert resolved.db == settings.db
        assert not (short_dir / "postgres").exists()


def test_export_env_lets_a_child_process_reach_the_same_servers(short_dir):
    with EmbeddedServices() as services:
        resolved = services.start(_embedded_settings(short_dir, COBY_DB_SCHEMA="child_schema", COBY_REDIS_PREFIX="c:"))
        client = redis.Redis(**resolved.redis.client_kwargs(), decode_responses=True)
        client.set("c:marker", "from-parent")
        child = textwrap.dedent(
            """
            import json, psycopg, redis
            from streamer.config import load_settings
            s = load_settings()
            with psycopg.connect(s.db.url()) as conn:
                db = conn.execute("SELECT current_database()").fetchone()[0]
            r = redis.Redis(**s.redis.client_kwargs(), decode_responses=True)
            print(json.dumps({"db": db, "schema": s.db.schema, "marker": r.get(s.redis.prefix + "marker")}))
            """
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "COBY_"))}
        env.update(export_env(resolved), PYTHONPATH=str(REPO_ROOT))
        out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"db": "coby_embedded", "schema": "child_schema", "marker": "from-parent"}
        client.close()


def test_servers_left_running_by_a_dead_process_are_adopted_then_stopped(short_dir):
    """A crash (no cleanup) leaves both servers running; the next start reuses them."""
    crash = textwrap.dedent(
        f"""
        import json, os
        from streamer.config import load_settings
        from streamer.embedded import EmbeddedServices
        services = EmbeddedServices()
        services.start(load_settings({{"COBY_DATA_DIR": {str(short_dir)!r}, "DB_NAME": "coby_embedded"}}))
        print(json.dumps([services.postgres_pid, services.redis_pid]), flush=True)
        os._exit(0)  # like a crash: no atexit handlers, no stop()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", crash], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    old_pg, old_redis = json.loads(out.stdout.strip().splitlines()[-1])
    assert psutil.pid_exists(old_pg) and psutil.pid_exists(old_redis)

    with EmbeddedServices() as services:
        resolved = services.start(_embedded_settings(short_dir))
        assert services.postgres_pid == old_pg
        assert services.redis_pid == old_redis
        with psycopg.connect(resolved.db.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _gone(old_pg) and _gone(old_redis)


def test_stale_redis_pid_file_of_an_unrelated_process_is_left_alone(short_dir):
    redis_dir = short_dir / "redis"
    redis_dir.mkdir()
    (redis_dir / "redis.pid").write_text(str(os.getpid()))  # our own pid: certainly not a redis-server
    server = start_redis(redis_dir)
    try:
        assert server.pid != os.getpid() and server.ping()
    finally:
        server.stop()
    assert psutil.pid_exists(os.getpid())


def test_redis_falls_back_to_tcp_when_the_socket_path_is_too_long(short_dir):
    deep = short_dir / ("d" * 60) / ("e" * 60)
    server = start_redis(deep)
    try:
        assert server.unix_socket is None and server.port
        client = redis.Redis(host="127.0.0.1", port=server.port)
        assert client.ping()
        client.close()
    finally:
        server.stop()
    assert _gone(server.pid)


def test_redis_restarts_on_a_fixed_port_in_the_same_directory(short_dir):
    from streamer.embedded import free_tcp_port

    port = free_tcp_port()
    first = start_redis(short_dir / "r", port=port)
    redis.Redis(host="127.0.0.1", port=port).set("k", "v")
    first.stop()
    second = start_redis(short_dir / "r", port=port)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        assert second.pid != first.pid
        assert client.get("k") is None  # no persistence: a restarted cache is empty
        client.close()
    finally:
        second.stop()
