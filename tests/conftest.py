"""Shared fixtures: real PostgreSQL and Redis for the whole test session.

Where the servers come from (``services``), for each of PostgreSQL and Redis:

1. ``DB_HOST`` (resp. ``REDIS_HOST`` / ``REDIS_SOCKET``) set in the environment: use it;
2. else a server answering on 127.0.0.1:5432 (resp. 6379): use it (user ``postgres``);
3. else start embedded servers (``streamer.embedded``) under a temporary
   directory and stop them when the session ends.

``COBY_TEST_SERVICES=embedded`` skips steps 1 and 2, so the no-servers path can
be exercised on a machine that does run servers.

Isolation: every test gets a fresh schema ``t_<hex>`` in the dedicated database
``coby_test`` (``COBY_TEST_DB_NAME``) and a Redis key prefix ``t:<hex>:``; both
are removed after the test. Tables are not created here: tests call
``streamer.sinks.schema.apply_schema`` when they need them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import redis
from psycopg import sql

from streamer.config import Settings, load_settings
from streamer.embedded import EmbeddedServices, ensure_database

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DB_NAME = os.environ.get("COBY_TEST_DB_NAME", "coby_test")
SERVICES_MODES = {"auto", "embedded"}


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _session_settings(data_dir: Path) -> tuple[Settings, bool, bool]:
    """Settings for the session's servers and which of them must be embedded."""
    mode = os.environ.get("COBY_TEST_SERVICES", "auto").strip().lower() or "auto"
    if mode not in SERVICES_MODES:
        raise pytest.UsageError(f"COBY_TEST_SERVICES must be one of {sorted(SERVICES_MODES)}, got {mode!r}")
    env = dict(os.environ)
    if mode == "embedded":
        for name in ("DB_HOST", "REDIS_HOST", "REDIS_SOCKET"):
            env.pop(name, None)
    base = load_settings(env)
    base = replace(base, data_dir=data_dir).with_db(name=TEST_DB_NAME)
    embed_db = embed_redis = False
    if base.db.host is None:
        if mode == "auto" and _accepts("127.0.0.1", 5432):
            base = base.with_db(host="127.0.0.1", port=5432, user="postgres")
        else:
            embed_db = True
    if base.redis.embedded:
        if mode == "auto" and _accepts("127.0.0.1", 6379):
            base = base.with_redis(host="127.0.0.1", port=6379)
        else:
            embed_redis = True
    return base, embed_db, embed_redis


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what ``coby``'s entry point installs (a stderr handler replacing the
    root's handlers, exception hooks) when a test calls ``streamer.cli.main``:
    that handler would outlive the test's captured stderr and fail every later
    log line with "I/O operation on closed file"."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
    for handler in saved[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved[1])
    sys.excepthook, threading.excepthook = saved[2], saved[3]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def services() -> Iterator[Settings]:
    """Settings that reach the session's PostgreSQL (database ``coby_test``) and Redis."""
    # A short private directory: unix-socket paths must stay under 108 bytes.
    data_dir = Path(tempfile.mkdtemp(prefix="coby-test-"))
    embedded = EmbeddedServices()
    try:
        base, embed_db, embed_redis = _session_settings(data_dir)
        # EmbeddedServices starts exactly the servers ``base`` leaves without an address.
        assert base.db.embedded == embed_db and base.redis.embedded == embed_redis
        resolved = embedded.start(base)
        ensure_database(resolved)
        yield resolved
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def settings(services: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The session servers with a fresh, empty schema and Redis prefix for this test."""
    tag = uuid.uuid4().hex[:12]
    schema = f"t_{tag}"
    prefix = f"t:{tag}:"
    test_settings = replace(services, data_dir=tmp_path).with_db(schema=schema).with_redis(prefix=prefix)
    with psycopg.connect(test_settings.db.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield test_settings
    finally:
        with psycopg.connect(test_settings.db.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        client = redis.Redis(**test_settings.redis.client_kwargs())
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


@pytest.fixture
def pg_conn(settings: Settings) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test database, ``search_path`` = the test schema."""
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db.schema)))
        yield conn


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis(**settings.redis.client_kwargs(), decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    """The recorded exchange sessions (``COBY_CAPTURES_DIR``, relative to the repo root)."""
    configured = os.environ.get("COBY_CAPTURES_DIR", "").strip() or "../shared/fixtures/captures"
    path = Path(configured).expanduser()
    if not path.is_absolute():
        path = (REPO_ROOT / path).resolve()
    if not path.is_dir():
        pytest.skip(f"recorded exchange sessions not found at {path} (set COBY_CAPTURES_DIR)")
    return path
