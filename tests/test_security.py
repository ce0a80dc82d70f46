"""Security: where credentials come from, that they never leak, loopback-only
listeners, and parameterized SQL only.

Servers that need passwords or get inspected are started here, under the
test's own temporary directory (a redis-server with ``requirepass`` and an ACL
user, a throwaway embedded PostgreSQL with scram authentication); the shared
servers are only read from.
"""

from __future__ import annotations

import ast
import asyncio
import io
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from psycopg import sql

from streamer.config import load_settings
from streamer.embedded import free_tcp_port, redis_server_binary, start_postgres, start_redis
from streamer.errors import ConfigError
from streamer.logging_setup import RedactingFilter, RedactingFormatter, install_logging
from streamer.secrets import describe_error, parse_secrets_file, register_secret, resolve_secrets, scrub

REPO_ROOT = Path(__file__).resolve().parent.parent


def _marker(tag: str) -> str:
    """A unique secret that cannot appear in any output by chance."""
    return f"{tag}-{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------
# (d) secret sources, precedence, bad values
# ---------------------------------------------------------------------------


def test_password_file_is_read_without_its_trailing_newline(tmp_path):
    secret = _marker("dbpw")
    path = tmp_path / "db_password"
    path.write_text(secret + "\n")
    settings = load_settings({"DB_PASSWORD_FILE": str(path), "REDIS_PASSWORD_FILE": str(path)})
    assert settings.db.password == secret
    assert settings.redis.password == secret


@pytest.mark.parametrize("variable", ["DB_PASSWORD_FILE", "REDIS_PASSWORD_FILE", "REDIS_URL_FILE"])
def test_password_file_that_does_not_exist_names_the_variable(tmp_path, variable):
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings({variable: str(tmp_path / "missing")})
    assert "does not exist" in str(info.value)


def test_password_file_that_is_a_directory_or_empty_or_multiline_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="DB_PASSWORD_FILE must name a file"):
        load_settings({"DB_PASSWORD_FILE": str(tmp_path)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="DB_PASSWORD_FILE names an empty file"):
        load_settings({"DB_PASSWORD_FILE": str(empty)})
    secret = _marker("multi")
    multi = tmp_path / "multi"
    multi.write_text(f"{secret}\nsecond line\n")
    with pytest.raises(ConfigError, match="REDIS_PASSWORD_FILE") as info:
        load_settings({"REDIS_PASSWORD_FILE": str(multi)})
    assert secret not in str(info.value)


def test_unreadable_password_file_names_the_variable(tmp_path):
    if os.geteuid() != 0:
        path = tmp_path / "pw"
        path.write_text("secret-value\n")
        path.chmod(0)
    else:
        # Root reads any regular file whatever its mode; a write-only kernel
        # setting is unreadable even for root.
        path = Path("/proc/sys/vm/drop_caches")
    with pytest.raises(ConfigError, match="DB_PASSWORD_FILE names a file this process cannot read"):
        load_settings({"DB_PASSWORD_FILE": str(path)})


def test_variable_and_its_file_twin_together_are_an_error(tmp_path):
    path = tmp_path / "pw"
    path.write_text("from-file\n")
    with pytest.raises(ConfigError, match="set either DB_PASSWORD or DB_PASSWORD_FILE, not both"):
        load_settings({"DB_PASSWORD": "from-env", "DB_PASSWORD_FILE": str(path)})


def test_secrets_file_parsing(tmp_path):
    db_secret, redis_secret = _marker("db"), _marker("redis")
    path = tmp_path / "secrets.env"
    path.write_text(
        "# COBY secrets\n"
        "\n"
        f"DB_PASSWORD={db_secret}\n"
        f"export REDIS_PASSWORD = '{redis_secret}'\n"
        'REDIS_URL="redis://cache.internal:6380/2"\n'
    )
    assert parse_secrets_file(str(path)) == {
        "DB_PASSWORD": db_secret,
        "REDIS_PASSWORD": redis_secret,
        "REDIS_URL": "redis://cache.internal:6380/2",
    }
    settings = load_settings({"COBY_SECRETS_FILE": str(path)})
    assert settings.db.password == db_secret
    assert settings.redis.password == redis_secret
    assert (settings.redis.host, settings.redis.port, settings.redis.db) == ("cache.internal", 6380, 2)


def test_secrets_file_refuses_unknown_keys_repeats_and_keyless_lines_without_echoing_values(tmp_path):
    secret = _marker("leak")
    path = tmp_path / "secrets.env"
    path.write_text(f"DB_PASSWORD=ok-value\nAWS_SECRET={secret}\n")
    with pytest.raises(ConfigError, match=r"line 2: unknown key 'AWS_SECRET'") as info:
        load_settings({"COBY_SECRETS_FILE": str(path)})
    assert secret not in str(info.value)

    path.write_text(f"DB_PASSWORD=a-value\nDB_PASSWORD={secret}\n")
    with pytest.raises(ConfigError, match="line 2: DB_PASSWORD is set twice") as info:
        load_settings({"COBY_SECRETS_FILE": str(path)})
    assert secret not in str(info.value)

    path.write_text(f"{secret}\n")  # a password pasted without its key
    with pytest.raises(ConfigError, match="COBY_SECRETS_FILE.*line 1 must look like KEY=VALUE") as info:
        load_settings({"COBY_SECRETS_FILE": str(path)})
    assert secret not in str(info.value)

    with pytest.raises(ConfigError, match="COBY_SECRETS_FILE names a file that does not exist"):
        load_settings({"COBY_SECRETS_FILE": str(tmp_path / "absent")})


def test_precedence_variable_then_file_twin_then_secrets_file(tmp_path):
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text("DB_PASSWORD=from-secrets-file\nREDIS_PASSWORD=from-secrets-file\n")
    twin = tmp_path / "redis_pw"
    twin.write_text("from-file-twin\n")
    env = {
        "COBY_SECRETS_FILE": str(secrets_file),
        "DB_PASSWORD": "from-variable",
        "REDIS_PASSWORD_FILE": str(twin),
    }
    resolved = resolve_secrets(env)
    assert resolved == {"DB_PASSWORD": "from-variable", "REDIS_PASSWORD": "from-file-twin", "REDIS_URL": None}
    del env["DB_PASSWORD"]
    assert resolve_secrets(env)["DB_PASSWORD"] == "from-secrets-file"


def test_redis_url_forms_and_their_precedence():
    settings = load_settings({
        "REDIS_URL": "rediss://alice:p%40ss%2Fword@cache.example:6380/3",
        # REDIS_URL decides location, TLS and credentials: these are overridden.
        "REDIS_HOST": "ignored.example", "REDIS_PORT": "1", "REDIS_USERNAME": "bob", "REDIS_PASSWORD": "other",
    })
    rd = settings.redis
    assert (rd.host, rd.port, rd.db, rd.tls, rd.username, rd.password) == (
        "cache.example", 6380, 3, True, "alice", "p@ss/word"
    )
    kwargs = rd.client_kwargs()
    assert kwargs["ssl"] is True and kwargs["username"] == "alice" and kwargs["password"] == "p@ss/word"
    assert "p@ss" not in repr(settings) and "p@ss" not in rd.safe_description()
    assert rd.safe_description().startswith("rediss://alice@cache.example:6380/3")

    # Credentials missing from the URL come from REDIS_USERNAME / REDIS_PASSWORD.
    rd = load_settings({"REDIS_URL": "redis://127.0.0.1", "REDIS_USERNAME": "carol", "REDIS_PASSWORD": "pw-carol"}).redis
    assert (rd.host, rd.port, rd.db, rd.tls, rd.username, rd.password) == ("127.0.0.1", 6379, 0, False, "carol", "pw-carol")

    rd = load_settings({"REDIS_URL": "unix://:sockpw@/run/redis/redis.sock?db=4"}).redis
    assert rd.client_kwargs() == {"db": 4, "password": "sockpw", "unix_socket_path": "/run/redis/redis.sock"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://u:{pw}@host:1/0", "must start with redis://, rediss:// or unix://"),
        ("redis://u:{pw}@host:99999/0", "not a valid URL"),
        ("redis://u:{pw}@host/notanumber", "database must be an integer"),
        ("redis://u:{pw}@host/16", "between 0 and 15"),
        ("redis://u:{pw}@host/1?db=2", "database twice"),
        ("redis://u:{pw}@host/1?timeout=3", "unsupported query parameter 'timeout'"),
        ("unix://u:{pw}@relative.sock", "absolute socket path"),
    ],
)
def test_bad_redis_url_is_a_clear_error_without_the_password(url, message):
    secret = _marker("urlpw")
    with pytest.raises(ConfigError, match="REDIS_URL") as info:
        load_settings({"REDIS_URL": url.format(pw=secret)})
    assert message in str(info.value)
    assert secret not in str(info.value)


def test_tls_and_certificate_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    rd = load_settings({"REDIS_HOST": "cache", "REDIS_TLS": "1", "REDIS_TLS_CA_FILE": str(ca)}).redis
    kwargs = rd.client_kwargs()
    assert kwargs["ssl"] is True and kwargs["ssl_ca_certs"] == str(ca) and kwargs["ssl_cert_reqs"] == "required"
    with pytest.raises(ConfigError, match="REDIS_TLS_CA_FILE is set but TLS is off"):
        load_settings({"REDIS_HOST": "cache", "REDIS_TLS_CA_FILE": str(ca)})
    with pytest.raises(ConfigError, match="REDIS_TLS_CERT_FILE must name an existing file"):
        load_settings({"REDIS_HOST": "cache", "REDIS_TLS": "1", "REDIS_TLS_CERT_FILE": str(tmp_path / "nope")})

    db = load_settings({"DB_HOST": "db", "DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": str(ca)}).db
    assert "sslmode=verify-full" in db.url() and f"sslrootcert={ca}" in db.url()
    conninfo = psycopg.conninfo.conninfo_to_dict(db.url())
    assert conninfo["sslrootcert"] == str(ca) and conninfo["sslmode"] == "verify-full"
    assert load_settings({"DB_HOST": "db", "DB_SSLROOTCERT": "system"}).db.sslrootcert == "system"
    with pytest.raises(ConfigError, match="DB_SSLROOTCERT must name an existing file"):
        load_settings({"DB_HOST": "db", "DB_SSLROOTCERT": str(tmp_path / "missing.pem")})


def test_passwords_are_not_in_repr_or_str_of_settings():
    db_secret, redis_secret = _marker("db"), _marker("redis")
    settings = load_settings({"DB_HOST": "h", "DB_PASSWORD": db_secret, "REDIS_HOST": "r", "REDIS_PASSWORD": redis_secret})
    for text in (repr(settings), str(settings), settings.db.safe_description(), settings.redis.safe_description()):
        assert db_secret not in text and redis_secret not in text
    assert db_secret in settings.db.url()  # the driver still gets it


def test_ui_host_defaults_to_loopback():
    assert load_settings({}).ui_host == "127.0.0.1"
    assert load_settings({"COBY_UI_HOST": "0.0.0.0"}).ui_host == "0.0.0.0"
    with pytest.raises(ConfigError, match="COBY_UI_HOST"):
        load_settings({"COBY_UI_HOST": "host name; rm -rf"})


# ---------------------------------------------------------------------------
# Scrubbing
# ---------------------------------------------------------------------------


def test_scrub_removes_registered_secrets_urls_and_conninfo_passwords():
    secret = _marker("reg") + "/+@"
    register_secret(secret)
    from urllib.parse import quote

    text = f"raw {secret} encoded {quote(secret, safe='')} end"
    assert scrub(text) == "raw *** encoded *** end"
    # Unregistered values in credential-shaped places.
    assert scrub('dsn "postgresql://app:hunter22@db:5432/coby" failed') == 'dsn "postgresql://app:***@db:5432/coby" failed'
    assert scrub("redis://:p@ss@cache:6379/0 down") == "redis://:***@cache:6379/0 down"
    assert scrub("host=db password='a b\\'c' user=x") == "host=db password=*** user=x"
    assert scrub("postgresql://u@/db?host=/s&password=zzz9&sslmode=require") == (
        "postgresql://u@/db?host=/s&password=***&sslmode=require"
    )
    # Nothing credential-like is left alone.
    assert scrub("redis://cache:6379/0 up, 3 books") == "redis://cache:6379/0 up, 3 books"


def test_scrub_cleans_real_libpq_errors_that_quote_the_password():
    secret = _marker("libpq")
    # libpq quotes the offending URI (with its password) when it cannot parse it.
    with pytest.raises(psycopg.Error) as info:
        psycopg.connect(f"postgresql://app:{secret}@[127.0.0.1:1/coby", connect_timeout=1)
    assert secret in str(info.value)  # the driver's message does hold it...
    assert secret not in describe_error(info.value)  # ...ours does not
    # A malformed percent-escape is quoted as it is: registered secrets cover it.
    broken = _marker("pct") + "%zz"
    register_secret(broken)
    with pytest.raises(psycopg.Error) as info:
        psycopg.connect(f"postgresql://app:{broken}@127.0.0.1:1/coby", connect_timeout=1)
    assert broken in str(info.value)
    assert broken not in describe_error(info.value)
    assert describe_error(info.value).startswith("ProgrammingError: invalid percent-encoded token")


def test_log_formatter_filter_and_excepthook_redact(capsys):
    secret = _marker("log")
    settings = load_settings({"DB_HOST": "127.0.0.1", "DB_PASSWORD": secret})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("coby.test.security")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting to %s", settings.db.url())
        try:
            raise RuntimeError(f"driver said: {settings.db.url()}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "connecting to postgresql://postgres:***@" in output
    assert "RuntimeError: driver said" in output
    assert secret not in output

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw is %s", (secret,), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "pw is ***"

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook)
    try:
        stream = io.StringIO()
        install_logging(verbose=True, stream=stream)
        logging.getLogger("streamer.anything").debug("url %s", settings.db.url())
        try:
            raise ValueError(secret)
        except ValueError:
            sys.excepthook(*sys.exc_info())
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        sys.excepthook = saved[2]
    assert "DEBUG streamer.anything: url postgresql://postgres:***@" in stream.getvalue()
    assert secret not in stream.getvalue()
    err = capsys.readouterr().err
    assert "ValueError: ***" in err and secret not in err


# ---------------------------------------------------------------------------
# (a) Redis AUTH and ACL on a real redis-server of our own
# ---------------------------------------------------------------------------


class AuthRedis:
    """A real redis-server on 127.0.0.1 with ``requirepass`` and one ACL user."""

    def __init__(self, directory: Path) -> None:
        self.port = free_tcp_port()
        self.default_password = _marker("default")
        self.user = "coby_app"
        self.user_password = _marker("acl")
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "redis.conf"
        conf.write_text(
            "\n".join([
                "bind 127.0.0.1",
                f"port {self.port}",
                "protected-mode yes",
                "daemonize no",
                'save ""',
                "appendonly no",
                f"dir {directory}",
                f"logfile {directory / 'redis.log'}",
                f"requirepass {self.default_password}",
                f"user {self.user} on >{self.user_password} ~* &* +@all",
            ]) + "\n"
        )
        self.process = subprocess.Popen(
            [str(redis_server_binary()), str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(directory / 'redis.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def auth_redis(tmp_path):
    server = AuthRedis(tmp_path / "redis-auth")
    try:
        yield server
    finally:
        server.stop()


def _whoami(env: dict[str, str]) -> str:
    client = redis.Redis(decode_responses=True, socket_timeout=5, **load_settings(env).redis.client_kwargs())
    try:
        return client.acl_whoami()
    finally:
        client.close()


def test_redis_acl_user_and_requirepass_via_url_and_variables(auth_redis, tmp_path):
    url = f"redis://{auth_redis.user}:{auth_redis.user_password}@127.0.0.1:{auth_redis.port}/0"
    assert _whoami({"REDIS_URL": url}) == auth_redis.user

    pw_file = tmp_path / "redis_pw"
    pw_file.write_text(auth_redis.user_password + "\n")
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(auth_redis.port), "REDIS_USERNAME": auth_redis.user,
           "REDIS_PASSWORD_FILE": str(pw_file)}
    assert _whoami(env) == auth_redis.user

    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(auth_redis.port), "REDIS_PASSWORD": auth_redis.default_password}
    assert _whoami(env) == "default"

    # Without credentials the server refuses.
    with pytest.raises(redis.AuthenticationError):
        _whoami({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(auth_redis.port)})


async def test_redis_wrong_password_is_a_clear_error_without_the_password(auth_redis):
    from streamer.sinks.redis_sink import RedisSink

    wrong = _marker("wrong")
    settings = load_settings({
        "REDIS_URL": f"redis://{auth_redis.user}:{wrong}@127.0.0.1:{auth_redis.port}/0",
        "COBY_REDIS_PREFIX": f"t:{uuid.uuid4().hex[:8]}:",
    })
    with pytest.raises(redis.AuthenticationError) as info:
        _whoami({"REDIS_URL": f"redis://{auth_redis.user}:{wrong}@127.0.0.1:{auth_redis.port}/0"})
    assert "invalid username-password pair" in str(info.value)
    assert wrong not in describe_error(info.value)

    # The sink's idle health check is its first round trip: it must fail, clearly.
    sink = RedisSink(settings, reconnect_max_delay=0.2, health_interval=0.01)
    await sink.start()
    try:
        for _ in range(250):
            if sink.last_error is not None:
                break
            await asyncio.sleep(0.02)
        assert sink.last_error is not None and "AuthenticationError" in sink.last_error
        assert sink.connected is False
        assert wrong not in sink.last_error and wrong not in repr(sink.stats())
    finally:
        await sink.close()


# ---------------------------------------------------------------------------
# (b) PostgreSQL password authentication on a throwaway embedded server
# ---------------------------------------------------------------------------


@pytest.fixture
def scram_postgres(tmp_path):
    """An embedded PostgreSQL whose non-superuser roles must authenticate with
    scram-sha-256, and one such role."""
    server = start_postgres(tmp_path / "pg")
    try:
        info = server.get_postmaster_info()
        admin = load_settings({"DB_HOST": str(info.socket_dir), "DB_PORT": str(info.port or 5432), "DB_NAME": "postgres"})
        password = _marker("pgpw")
        with psycopg.connect(admin.db.url(), autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            # CREATE ROLE takes no bind parameters: compose the literal safely.
            conn.execute(sql.SQL("CREATE ROLE coby_app LOGIN PASSWORD {}").format(sql.Literal(password)))
            hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
            hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
            conn.execute("SELECT pg_reload_conf()")
        yield server, admin, password
    finally:
        server.cleanup()


def test_postgres_password_auth_from_a_file_and_scrubbed_failures(scram_postgres, tmp_path):
    server, admin, password = scram_postgres
    env = {"DB_HOST": admin.db.host, "DB_PORT": str(admin.db.port), "DB_NAME": "postgres", "DB_USER": "coby_app"}
    pw_file = tmp_path / "db_password"
    pw_file.write_text(password + "\n")
    settings = load_settings({**env, "DB_PASSWORD_FILE": str(pw_file)})
    with psycopg.connect(settings.db.url(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "coby_app"

    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(load_settings(env).db.url(), connect_timeout=5)  # no password at all

    wrong = _marker("pgwrong")
    bad = load_settings({**env, "DB_PASSWORD": wrong})
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(bad.db.url(), connect_timeout=5)
    message = describe_error(info.value)
    assert "password authentication failed for user \"coby_app\"" in message
    assert wrong not in message and password not in message

    # The embedded server has no TCP listener at all: a unix socket only.
    postmaster = psutil.Process(server.get_pid())
    assert [c for c in postmaster.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN] == []


# ---------------------------------------------------------------------------
# (c) the log grep: a real `coby capture replay` session
# ---------------------------------------------------------------------------


def _run_coby(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if not key.startswith(("DB_", "REDIS_", "COBY_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", "-v", *args],
        cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def test_coby_replay_session_never_prints_a_secret(settings, captures_dir, auth_redis, tmp_path):
    capture = captures_dir / "okx.session1.jsonl.gz"
    if not capture.exists():
        pytest.skip(f"capture {capture.name} not present")
    db_secret = _marker("dbsecret")  # the shared server trusts: the password travels and is ignored
    env = {
        "DB_HOST": settings.db.host, "DB_PORT": str(settings.db.port), "DB_NAME": settings.db.name,
        "DB_USER": settings.db.user, "DB_PASSWORD": db_secret, "COBY_DB_SCHEMA": settings.db.schema,
        "REDIS_URL": f"redis://{auth_redis.user}:{auth_redis.user_password}@127.0.0.1:{auth_redis.port}/0",
        "COBY_REDIS_PREFIX": settings.redis.prefix, "COBY_DATA_DIR": str(tmp_path / "data"),
    }
    result = _run_coby(["capture", "replay", str(capture), "--timeout", "60"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    summary = __import__("orjson").loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] > 0 and summary["redis_books"], summary  # it really ran, through the ACL user
    assert " DEBUG " in result.stderr  # debug logging was on
    for secret in (db_secret, auth_redis.user_password, auth_redis.default_password):
        assert secret not in output

    # Error paths: Redis refuses the password, then PostgreSQL is unreachable.
    wrong = _marker("wrongredis")
    env_bad_redis = {**env, "REDIS_URL": f"redis://{auth_redis.user}:{wrong}@127.0.0.1:{auth_redis.port}/0"}
    result = _run_coby(["capture", "replay", str(capture), "--timeout", "60"], env_bad_redis)
    output = result.stdout + result.stderr
    assert "AuthenticationError" in output or "unreachable" in output, output[-3000:]
    assert wrong not in output and db_secret not in output

    env_no_db = {**env, "DB_PORT": str(free_tcp_port())}
    result = _run_coby(["capture", "replay", str(capture), "--timeout", "30"], env_no_db)
    assert result.returncode != 0
    # TCP says "Connection refused"; a unix socket (embedded PostgreSQL) that is not there says so too.
    unreachable = ("Connection refused", "connection failed", "No such file or directory")
    assert any(text in result.stderr for text in unreachable), result.stderr[-3000:]
    assert db_secret not in result.stdout + result.stderr


# ---------------------------------------------------------------------------
# Listeners bind loopback (or a private unix socket)
# ---------------------------------------------------------------------------


def _listening(pid: int) -> list:
    return [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


def test_embedded_redis_listens_on_a_private_socket_or_loopback_only(tmp_path):
    server = start_redis(tmp_path / "r1")
    try:
        assert server.unix_socket is not None
        assert _listening(server.pid) == []  # no TCP at all
        assert os.stat(server.unix_socket).st_mode & 0o077 == 0  # this user only
    finally:
        server.stop()
    server = start_redis(tmp_path / "r2", port=free_tcp_port())
    try:
        listeners = _listening(server.pid)
        assert listeners and {c.laddr.ip for c in listeners} == {"127.0.0.1"}
    finally:
        server.stop()


async def test_local_exchange_server_listens_on_loopback_only():
    from streamer.simulator.backend import run_simulated_exchanges

    async with run_simulated_exchanges(["okx"], {"okx": ["BTC-USDT"]}, rate=5) as urls:
        port = int(urls["okx"].rest_url.rsplit(":", 1)[1].split("/")[0])
        ours = [c for c in _listening(os.getpid()) if c.laddr.port == port]
        assert ours and {c.laddr.ip for c in ours} == {"127.0.0.1"}


# ---------------------------------------------------------------------------
# (e) SQL is never built by string formatting
# ---------------------------------------------------------------------------

_SQL_SHAPE = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TABLE|INDEX|SCHEMA|DATABASE|EXTENSION|ROLE|UNIQUE|OR\s+REPLACE)|"
    r"DROP\s+(TABLE|SCHEMA|DATABASE|INDEX|ROLE)|ALTER\s+(TABLE|ROLE|DATABASE)|"
    r"COPY\s+\S+|TRUNCATE\s|GRANT\s|WHERE\s+\w+\s*=)",
    re.S,
)
#: Reviewed exceptions, each with why it is safe.
_ALLOWED = {
    # DDL from the contract's own constant column declarations; the schema name
    # goes through validate_identifier(); the result is wrapped in sql.SQL().
    ("streamer/contract.py", "create_sql"),
    # A DuckDB query shown to users in asset metadata (never executed by COBY).
    ("coby_pipeline/lib/replay.py", "duckdb_query"),
}


def _formatted_sql(path: Path) -> list[tuple[int, str, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent
    found = []
    for node in ast.walk(tree):
        text, how = None, None
        if isinstance(node, ast.JoinedStr):
            text, how = "".join(v.value for v in node.values if isinstance(v, ast.Constant)), "f-string"
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add))
              and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):
            text, how = node.left.value, "% or + on a string"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
              and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)):
            text, how = node.func.value.value, "str.format"  # sql.SQL(...).format(...) is a Call, not a str
        if text is None or not _SQL_SHAPE.search(text):
            continue
        function = node
        while function is not None and not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = parents.get(function)
        found.append((node.lineno, how, function.name if function is not None else "<module>"))
    return found


def test_no_sql_is_built_by_string_formatting():
    offenders = []
    for root in ("streamer", "coby_pipeline"):
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT).as_posix()
            for line, how, function in _formatted_sql(path):
                if (relative, function) not in _ALLOWED:
                    offenders.append(f"{relative}:{line} ({function}): SQL built with {how}")
    assert offenders == [], "use psycopg.sql composition or bind parameters:\n" + "\n".join(offenders)


def test_the_sql_scanner_catches_what_it_should(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def a(conn, t, v):\n"
        "    conn.execute(f\"SELECT * FROM {t}\")\n"
        "    conn.execute(\"DELETE FROM x WHERE id = %s\" % v)\n"
        "    conn.execute(\"INSERT INTO {} VALUES (1)\".format(t))\n"
        "    conn.execute(sql.SQL(\"SELECT * FROM {}\").format(sql.Identifier(t)))\n"
        "    conn.execute(\"SELECT * FROM x WHERE id = %s\", (v,))\n"
        "    log.info(f\"stored {v} rows\")\n"
    )
    assert [(line, how) for line, how, _ in _formatted_sql(sample)] == [
        (2, "f-string"), (3, "% or + on a string"), (4, "str.format"),
    ]


def test_embedded_postgres_socket_is_for_its_own_user_only(tmp_path):
    """The embedded server trusts local connections: its socket must not be world-connectable."""
    from streamer.embedded import SOCKET_MODE

    server = start_postgres(tmp_path / "pg")
    try:
        info = server.get_postmaster_info()
        sock = Path(info.socket_dir) / f".s.PGSQL.{info.port or 5432}"
        assert stat.S_IMODE(sock.stat().st_mode) == SOCKET_MODE
        settings = load_settings({"DB_HOST": str(info.socket_dir), "DB_PORT": str(info.port or 5432), "DB_NAME": "postgres"})
        with psycopg.connect(settings.db.url(), autocommit=True, connect_timeout=5) as conn:
            # Still reachable by this process, and the next start creates the socket with that mode.
            pending = conn.execute(
                "SELECT setting FROM pg_file_settings WHERE name = 'unix_socket_permissions' AND applied IS NOT NULL"
            ).fetchall()
        assert pending and int(pending[-1][0], 8) == SOCKET_MODE
    finally:
        server.cleanup()
