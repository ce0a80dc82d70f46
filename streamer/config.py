"""Configuration from the environment.

Every setting has a documented environment variable (see README). Invalid
values raise :class:`~streamer.errors.ConfigError` naming the variable, so a
typo never turns into a silent default.

With neither ``DB_HOST`` nor ``REDIS_HOST`` set, COBY starts its own embedded
PostgreSQL and Redis under ``COBY_DATA_DIR`` (see :mod:`streamer.embedded`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, unquote, urlsplit

from .errors import ConfigError
from .secrets import register_secret, resolve_secrets

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: Default price-bucket sizes by base asset, overridable by ``<BASE>_BUCKET_SIZE``.
DEFAULT_BUCKET_SIZES: dict[str, Decimal] = {"BTC": Decimal("10"), "ETH": Decimal("1")}


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1, maximum: int | None = None) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: int, choices: tuple[int, ...]) -> int:
    value = _int(env, name, default)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0,
           inclusive: bool = False) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        raise ConfigError(f"{name} must be a finite number {'>=' if inclusive else '>'} {minimum}, got {raw!r}")
    return value


def _decimal(env: Mapping[str, str], name: str, default: Decimal) -> Decimal:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal number, got {raw!r}") from None
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"{name} must be a positive decimal number, got {raw!r}")
    return value


def _ident(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name) or default
    if not _IDENT.match(value):
        raise ConfigError(f"{name} must be a lower-case SQL identifier ([a-z_][a-z0-9_]*), got {value!r}")
    return value


@dataclass(frozen=True)
class DatabaseSettings:
    """Where PostgreSQL is. ``host`` may be a unix-socket directory."""

    host: str | None
    port: int = 5432
    name: str = "coby"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)  # never printed
    sslmode: str | None = None
    schema: str = "coby"
    #: CA bundle that verifies the server (``sslmode=verify-ca/verify-full``).
    sslrootcert: str | None = None
    #: Client certificate and key, for servers that authenticate clients by certificate.
    sslcert: str | None = None
    sslkey: str | None = None

    @property
    def embedded(self) -> bool:
        return self.host is None

    def url(self, *, database: str | None = None) -> str:
        """A libpq URL. The password is included (for drivers), so never log it."""
        if self.host is None:
            raise ConfigError("DB_HOST is not set and no embedded PostgreSQL has been started yet")
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        db = quote(database or self.name, safe="")
        params = [f"host={quote(self.host, safe='/')}", f"port={self.port}"]
        if self.sslmode:
            params.append(f"sslmode={quote(self.sslmode, safe='')}")
        for key in ("sslrootcert", "sslcert", "sslkey"):
            value = getattr(self, key)
            if value:
                params.append(f"{key}={quote(value, safe='/')}")
        return f"postgresql://{auth}@/{db}?" + "&".join(params)

    def safe_description(self) -> str:
        """For logs: no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name} (schema {self.schema})"


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to authenticate (AUTH password, or ACL user + password)."""

    host: str | None
    port: int = 6379
    password: str | None = field(default=None, repr=False)
    db: int = 0
    prefix: str = "coby:"
    unix_socket: str | None = None
    tls: bool = False
    #: ACL user (Redis 6+); ``None`` authenticates as ``default`` with ``password``.
    username: str | None = None
    #: TLS: CA bundle that verifies the server, and a client certificate and key.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @property
    def embedded(self) -> bool:
        return self.host is None and self.unix_socket is None

    def client_kwargs(self) -> dict:
        """Keyword arguments for ``redis.Redis`` / ``redis.asyncio.Redis``."""
        kwargs: dict = {"db": self.db, "password": self.password}
        if self.username:
            kwargs["username"] = self.username
        if self.unix_socket:
            kwargs["unix_socket_path"] = self.unix_socket
        elif self.host is not None:
            kwargs.update(host=self.host, port=self.port, ssl=self.tls)
            if self.tls:
                kwargs["ssl_cert_reqs"] = "required"
                if self.tls_ca_file:
                    kwargs["ssl_ca_certs"] = self.tls_ca_file
                if self.tls_cert_file:
                    kwargs["ssl_certfile"] = self.tls_cert_file
                if self.tls_key_file:
                    kwargs["ssl_keyfile"] = self.tls_key_file
        else:
            raise ConfigError("REDIS_HOST is not set and no embedded Redis has been started yet")
        return kwargs

    def safe_description(self) -> str:
        """For logs: user but no password."""
        user = f"{self.username}@" if self.username else ""
        if self.unix_socket:
            return f"unix://{user}{self.unix_socket}?db={self.db} (prefix {self.prefix!r})"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db} (prefix {self.prefix!r})"


@dataclass(frozen=True)
class Settings:
    """All of COBY's settings, loaded once from the environment."""

    db: DatabaseSettings
    redis: RedisSettings
    data_dir: Path
    bucket_sizes: dict[str, Decimal]
    heatmap_depth: int = 50
    snapshot_interval: float = 1.0
    #: When set, periodic snapshots keep the levels within +/- this percent of mid
    #: instead of the top ``heatmap_depth`` levels per side.
    snapshot_band_pct: float | None = None
    data_buffer_size: int = 10_000
    batch_write_size: int = 5_000
    max_memory_mb: int = 1024
    #: Seconds between returns of the C heap's free pages to the system (0: never; see streamer.heap).
    heap_trim_interval: float = 5.0
    #: Disk budget of each feed's journal (the spool while PostgreSQL is down).
    spool_budget_mb: int = 1024
    #: Depth of the Kraken book subscription (10, 25, 100, 500 or 1000 levels).
    kraken_book_depth: int = 100
    retention_days: int = 30
    partitions_ahead_days: int = 2
    trade_stream_maxlen: int = 10_000
    #: Milliseconds a changed book waits for further changes before the live
    #: cache writes it. 0 (the default): written as soon as the frames already
    #: received are processed, one write at a time, each carrying the changes
    #: made while the one before it was on the wire; a delay makes fewer,
    #: larger writes (less CPU per frame) and adds itself to every write.
    redis_coalesce_ms: float = 0.0
    #: Seconds without any frame after which a connection counts as stalled and reconnects.
    stall_timeout: float = 30.0
    #: Frames larger than this many bytes are quarantined (the connection stays up).
    max_frame_bytes: int = 4 * 1024 * 1024
    captures_dir: Path = Path("../shared/fixtures/captures")
    #: Address the Dagster UI of ``coby demo`` listens on (loopback unless configured).
    ui_host: str = "127.0.0.1"

    def with_db(self, **changes) -> "Settings":
        return replace(self, db=replace(self.db, **changes))

    def with_redis(self, **changes) -> "Settings":
        return replace(self, redis=replace(self.redis, **changes))

    def get_bucket_size(self, symbol: str, reference_price: float | None = None) -> Decimal:
        return get_bucket_size(symbol, reference_price, self.bucket_sizes)


def _bucket_sizes(env: Mapping[str, str]) -> dict[str, Decimal]:
    sizes = dict(DEFAULT_BUCKET_SIZES)
    for name, raw in env.items():
        if name.endswith("_BUCKET_SIZE") and raw.strip():
            base = name[: -len("_BUCKET_SIZE")]
            if re.fullmatch(r"[A-Z0-9]{1,20}", base):
                sizes[base] = _decimal(env, name, Decimal("1"))
    return sizes


def _pg_cert_file(env: Mapping[str, str], name: str) -> str | None:
    """A certificate or key file for libpq; it must exist (``system`` is libpq's
    own keyword for the operating system's CA store)."""
    value = _get(env, name)
    if value is None or (name == "DB_SSLROOTCERT" and value == "system"):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name} must name an existing file, got {value!r}")
    return str(path)


def _redis_tls_file(env: Mapping[str, str], name: str) -> str | None:
    value = _get(env, name)
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name} must name an existing file, got {value!r}")
    return str(path)


def _redis_settings(env: Mapping[str, str], prefix: str, password: str | None, url: str | None) -> RedisSettings:
    """``REDIS_URL`` when set (it then decides host, port or socket, db and TLS,
    and its credentials win over ``REDIS_USERNAME``/``REDIS_PASSWORD``), else the
    separate ``REDIS_*`` variables."""
    username = _get(env, "REDIS_USERNAME")
    if username is not None and not re.fullmatch(r"[^\s]{1,256}", username):
        raise ConfigError("REDIS_USERNAME must not contain whitespace")
    if url is not None:
        location = _parse_redis_url(url)
        username = location.pop("username") or username
        password = location.pop("password") or password
    else:
        tls_raw = (_get(env, "REDIS_TLS") or "0").lower()
        if tls_raw not in {"0", "1", "true", "false", "yes", "no"}:
            raise ConfigError(f"REDIS_TLS must be true or false, got {tls_raw!r}")
        location = dict(
            host=_get(env, "REDIS_HOST"),
            port=_int(env, "REDIS_PORT", 6379, maximum=65535),
            db=_int(env, "REDIS_DB", 0, minimum=0, maximum=15),
            unix_socket=_get(env, "REDIS_SOCKET"),
            tls=tls_raw in {"1", "true", "yes"},
        )
    register_secret(password)
    tls_files = {
        key: _redis_tls_file(env, name)
        for key, name in (("tls_ca_file", "REDIS_TLS_CA_FILE"), ("tls_cert_file", "REDIS_TLS_CERT_FILE"),
                          ("tls_key_file", "REDIS_TLS_KEY_FILE"))
    }
    if not location["tls"]:
        for name, value in zip(("REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"), tls_files.values()):
            if value is not None:
                raise ConfigError(f"{name} is set but TLS is off: set REDIS_TLS=1 or use a rediss:// REDIS_URL")
    return RedisSettings(prefix=prefix, password=password, username=username, **location, **tls_files)


def _parse_redis_url(url: str) -> dict:
    """``redis://[user[:password]@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix://[user[:password]@]/path/to/socket[?db=N]``. Errors never echo the
    URL: it may hold a password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("REDIS_URL is not a valid URL (bad port or brackets)") from None
    scheme = parts.scheme.lower()
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {scheme + '://' if scheme else 'no scheme'}")
    query: dict[str, str] = {}
    for item in filter(None, parts.query.split("&")):
        key, _, value = item.partition("=")
        if key != "db":
            raise ConfigError(f"REDIS_URL: unsupported query parameter {key!r} (only db is accepted)")
        query[key] = unquote(value)
    db_text = query.get("db")
    if scheme == "unix":
        if not parts.path.startswith("/"):
            raise ConfigError("REDIS_URL: a unix:// URL needs an absolute socket path (unix:///run/redis.sock)")
        host, unix_socket = None, unquote(parts.path)
    else:
        if not parts.hostname:
            raise ConfigError("REDIS_URL names no host")
        host, unix_socket = parts.hostname, None
        path_db = parts.path.strip("/")
        if path_db:
            if db_text is not None:
                raise ConfigError("REDIS_URL gives the database twice (path and ?db=)")
            db_text = path_db
    try:
        db = int(db_text) if db_text is not None else 0
    except ValueError:
        raise ConfigError(f"REDIS_URL: the database must be an integer, got {db_text!r}") from None
    if not 0 <= db <= 15:
        raise ConfigError(f"REDIS_URL: the database must be between 0 and 15, got {db}")
    return dict(
        host=host,
        port=port or 6379,
        db=db,
        unix_socket=unix_socket,
        tls=scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _listen_host(env: Mapping[str, str], name: str) -> str:
    """A listen address: loopback by default; anything else must be asked for."""
    value = _get(env, name) or "127.0.0.1"
    if not re.fullmatch(r"[A-Za-z0-9.:\-]{1,253}", value):
        raise ConfigError(f"{name} must be a host name or an IP address, got {value!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    data_dir = Path(_get(env, "COBY_DATA_DIR") or ".coby").expanduser()
    secrets = resolve_secrets(env)  # DB_PASSWORD, REDIS_PASSWORD, REDIS_URL from env, *_FILE or COBY_SECRETS_FILE
    db = DatabaseSettings(
        host=_get(env, "DB_HOST"),
        port=_int(env, "DB_PORT", 5432, maximum=65535),
        name=_get(env, "DB_NAME") or "coby",
        user=_get(env, "DB_USER") or "postgres",
        password=secrets["DB_PASSWORD"],
        sslmode=_get(env, "DB_SSLMODE"),
        schema=_ident(env, "COBY_DB_SCHEMA", "coby"),
        sslrootcert=_pg_cert_file(env, "DB_SSLROOTCERT"),
        sslcert=_pg_cert_file(env, "DB_SSLCERT"),
        sslkey=_pg_cert_file(env, "DB_SSLKEY"),
    )
    register_secret(db.password)
    if db.sslmode is not None and db.sslmode not in {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}:
        raise ConfigError(f"DB_SSLMODE must be a libpq sslmode, got {db.sslmode!r}")
    prefix = _get(env, "COBY_REDIS_PREFIX") or "coby:"
    if not re.fullmatch(r"[A-Za-z0-9_:.\-]{1,64}", prefix):
        raise ConfigError(f"COBY_REDIS_PREFIX may hold only letters, digits and _:.- , got {prefix!r}")
    redis = _redis_settings(env, prefix, secrets["REDIS_PASSWORD"], secrets["REDIS_URL"])
    return Settings(
        db=db,
        redis=redis,
        data_dir=data_dir,
        bucket_sizes=_bucket_sizes(env),
        heatmap_depth=_int(env, "HEATMAP_DEPTH", 50, maximum=5000),
        snapshot_interval=_float(env, "UPDATE_FREQUENCY", 1.0),
        snapshot_band_pct=_float(env, "COBY_SNAPSHOT_BAND_PCT", 0.0) or None,
        data_buffer_size=_int(env, "DATA_BUFFER_SIZE", 10_000, minimum=10),
        batch_write_size=_int(env, "BATCH_WRITE_SIZE", 5_000),
        max_memory_mb=_int(env, "MAX_MEMORY_USAGE", 1024, minimum=64),
        heap_trim_interval=_float(env, "COBY_HEAP_TRIM_S", 5.0, minimum=0.0, inclusive=True),
        spool_budget_mb=_int(env, "COBY_SPOOL_BUDGET_MB", 1024, minimum=1),
        kraken_book_depth=_choice(env, "COBY_KRAKEN_BOOK_DEPTH", 100, (10, 25, 100, 500, 1000)),
        retention_days=_int(env, "COBY_RETENTION_DAYS", 30),
        partitions_ahead_days=_int(env, "COBY_PARTITIONS_AHEAD_DAYS", 2, minimum=0),
        trade_stream_maxlen=_int(env, "COBY_TRADE_STREAM_MAXLEN", 10_000, minimum=10),
        redis_coalesce_ms=_float(env, "COBY_REDIS_COALESCE_MS", 0.0, minimum=0.0, inclusive=True),
        stall_timeout=_float(env, "COBY_STALL_TIMEOUT", 30.0),
        max_frame_bytes=_int(env, "COBY_MAX_FRAME_BYTES", 4 * 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024),
        captures_dir=Path(_get(env, "COBY_CAPTURES_DIR") or "../shared/fixtures/captures"),
        ui_host=_listen_host(env, "COBY_UI_HOST"),
    )


def get_bucket_size(
    symbol: str,
    reference_price: float | None = None,
    sizes: Mapping[str, Decimal] | None = None,
) -> Decimal:
    """Price-bucket width for a normalized symbol such as ``BTC-USDT``.

    ``$10`` for BTC and ``$1`` for ETH by default, ``<BASE>_BUCKET_SIZE`` for any
    base asset. A symbol without a configured size gets about 1/1000 of its
    ``reference_price`` (see :func:`default_bucket_size_for_price`).
    """
    if sizes is None:
        sizes = _bucket_sizes(os.environ)
    base = symbol.split("-", 1)[0].upper()
    if base == "XBT":  # Kraken's name for bitcoin
        base = "BTC"
    if base in sizes:
        return sizes[base]
    if reference_price is None:
        raise ConfigError(f"no bucket size configured for {symbol}: set {base}_BUCKET_SIZE or pass a reference price")
    return Decimal(repr(default_bucket_size_for_price(reference_price)))


def default_bucket_size_for_price(price: float) -> float:
    """The rule for symbols without a configured size: about 1/1000 of the price,
    rounded down to 1, 2 or 5 times a power of ten (0.05 for a $60 asset)."""
    if not math.isfinite(price) or price <= 0:
        return 1.0
    raw = price / 1000.0
    exponent = math.floor(math.log10(raw))
    base = 10.0**exponent
    for step in (5.0, 2.0, 1.0):
        if step * base <= raw * (1 + 1e-12):
            return float(f"{step * base:.12g}")
    return float(f"{base:.12g}")


def get_database_url(settings: Settings | None = None) -> str:
    """The PostgreSQL URL COBY writes to (embedded servers must be started first)."""
    settings = settings or load_settings()
    return settings.db.url()
