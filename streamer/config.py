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
from urllib.parse import quote

from .errors import ConfigError

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


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= minimum:
        raise ConfigError(f"{name} must be a finite number > {minimum}, got {raw!r}")
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
        return f"postgresql://{auth}@/{db}?" + "&".join(params)

    def safe_description(self) -> str:
        """For logs: no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name} (schema {self.schema})"


@dataclass(frozen=True)
class RedisSettings:
    host: str | None
    port: int = 6379
    password: str | None = field(default=None, repr=False)
    db: int = 0
    prefix: str = "coby:"
    unix_socket: str | None = None
    tls: bool = False

    @property
    def embedded(self) -> bool:
        return self.host is None and self.unix_socket is None

    def client_kwargs(self) -> dict:
        """Keyword arguments for ``redis.Redis`` / ``redis.asyncio.Redis``."""
        kwargs: dict = {"db": self.db, "password": self.password}
        if self.unix_socket:
            kwargs["unix_socket_path"] = self.unix_socket
        elif self.host is not None:
            kwargs.update(host=self.host, port=self.port, ssl=self.tls)
        else:
            raise ConfigError("REDIS_HOST is not set and no embedded Redis has been started yet")
        return kwargs

    def safe_description(self) -> str:
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"redis://{where}/{self.db} (prefix {self.prefix!r})"


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
    retention_days: int = 30
    partitions_ahead_days: int = 2
    trade_stream_maxlen: int = 10_000
    captures_dir: Path = Path("../shared/fixtures/captures")

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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    data_dir = Path(_get(env, "COBY_DATA_DIR") or ".coby").expanduser()
    db = DatabaseSettings(
        host=_get(env, "DB_HOST"),
        port=_int(env, "DB_PORT", 5432, maximum=65535),
        name=_get(env, "DB_NAME") or "coby",
        user=_get(env, "DB_USER") or "postgres",
        password=_get(env, "DB_PASSWORD"),
        sslmode=_get(env, "DB_SSLMODE"),
        schema=_ident(env, "COBY_DB_SCHEMA", "coby"),
    )
    if db.sslmode is not None and db.sslmode not in {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}:
        raise ConfigError(f"DB_SSLMODE must be a libpq sslmode, got {db.sslmode!r}")
    prefix = _get(env, "COBY_REDIS_PREFIX") or "coby:"
    if not re.fullmatch(r"[A-Za-z0-9_:.\-]{1,64}", prefix):
        raise ConfigError(f"COBY_REDIS_PREFIX may hold only letters, digits and _:.- , got {prefix!r}")
    tls_raw = (_get(env, "REDIS_TLS") or "0").lower()
    if tls_raw not in {"0", "1", "true", "false", "yes", "no"}:
        raise ConfigError(f"REDIS_TLS must be true or false, got {tls_raw!r}")
    redis = RedisSettings(
        host=_get(env, "REDIS_HOST"),
        port=_int(env, "REDIS_PORT", 6379, maximum=65535),
        password=_get(env, "REDIS_PASSWORD"),
        db=_int(env, "REDIS_DB", 0, minimum=0, maximum=15),
        prefix=prefix,
        unix_socket=_get(env, "REDIS_SOCKET"),
        tls=tls_raw in {"1", "true", "yes"},
    )
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
        retention_days=_int(env, "COBY_RETENTION_DAYS", 30),
        partitions_ahead_days=_int(env, "COBY_PARTITIONS_AHEAD_DAYS", 2, minimum=0),
        trade_stream_maxlen=_int(env, "COBY_TRADE_STREAM_MAXLEN", 10_000, minimum=10),
        captures_dir=Path(_get(env, "COBY_CAPTURES_DIR") or "../shared/fixtures/captures"),
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
