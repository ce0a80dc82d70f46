"""Resources: where the raw tables are, where datasets go, and the analytics knobs.

Values come from the same environment variables the streamer reads (see the
README), bound with :class:`dagster.EnvVar` where set, so the Dagster UI shows
which variable each setting comes from and secrets are never displayed.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import dagster as dg
import psycopg
from pydantic import Field

from streamer.config import load_settings
from streamer.contract import validate_identifier
from streamer.errors import ConfigError
from streamer.secrets import resolve_secrets

#: Default score under which the quality check warns (``COBY_QUALITY_WARN_SCORE``).
DEFAULT_WARN_SCORE = 80.0


class CobyDatabase(dg.ConfigurableResource):
    """The PostgreSQL database the streamer writes its raw tables to."""

    host: str = Field(description="DB_HOST: host name, or a unix-socket directory (a path starting with /).")
    port: int = Field(default=5432, description="DB_PORT")
    dbname: str = Field(default="coby", description="DB_NAME")
    user: str = Field(default="postgres", description="DB_USER")
    password: str | None = Field(default=None, description="DB_PASSWORD (never shown or logged)")
    sslmode: str | None = Field(default=None, description="DB_SSLMODE")
    db_schema: str = Field(default="coby", description="COBY_DB_SCHEMA: schema holding the raw tables.")

    @property
    def schema_name(self) -> str:
        """The validated schema name (identifiers are never interpolated unchecked)."""
        return validate_identifier(self.db_schema)

    def describe(self) -> str:
        """Where this resource points, for logs and metadata (no password)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname} (schema {self.db_schema})"

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection, closed on exit."""
        kwargs = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "autocommit": True,
            "application_name": "coby-pipeline",
            "connect_timeout": 15,
        }
        # DB_PASSWORD binds the field (shown in the UI as the variable's name
        # only); DB_PASSWORD_FILE and COBY_SECRETS_FILE are read here, at
        # connect time, so the value never becomes visible configuration.
        password = self.password or resolve_secrets(os.environ).get("DB_PASSWORD")
        if password:
            kwargs["password"] = password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        with psycopg.connect(**kwargs) as conn:
            yield conn


class DatasetStorage(dg.ConfigurableResource):
    """The folder the pipeline writes its Parquet datasets and images to."""

    root: str = Field(description="COBY_DATASETS_DIR (default: <COBY_DATA_DIR or .coby>/datasets)")

    @property
    def path(self) -> Path:
        return Path(self.root).expanduser()


class AnalyticsSettings(dg.ConfigurableResource):
    """How buckets, heatmaps and quality scores are computed."""

    bucket_sizes: dict[str, str] = Field(
        description="Price-bucket size per base asset (BTC_BUCKET_SIZE, ETH_BUCKET_SIZE, <BASE>_BUCKET_SIZE)."
    )
    snapshot_interval_s: float = Field(
        default=1.0, gt=0, description="UPDATE_FREQUENCY: seconds between book snapshots the streamer writes."
    )
    quality_warn_score: float = Field(
        default=DEFAULT_WARN_SCORE, ge=0, le=100, description="COBY_QUALITY_WARN_SCORE: warn below this score."
    )

    def configured_bucket_sizes(self) -> dict[str, Decimal]:
        return {base.upper(): Decimal(size) for base, size in self.bucket_sizes.items()}

    def heatmap_stale_after_s(self) -> float:
        """How long a snapshot still counts in the consolidated heatmap."""
        return max(5.0, 3 * self.snapshot_interval_s)


def _env_str(name: str, default: str | None) -> str | dg.EnvVar | None:
    """Bind to the variable when it is set (the UI then names it), else the default."""
    return dg.EnvVar(name) if (os.environ.get(name) or "").strip() else default


def _env_int(name: str, default: int) -> int | dg.EnvVar:
    return dg.EnvVar.int(name) if (os.environ.get(name) or "").strip() else default


def datasets_root(env: dict[str, str] | None = None) -> Path:
    """``COBY_DATASETS_DIR``, else ``<COBY_DATA_DIR or .coby>/datasets``, made absolute."""
    env = os.environ if env is None else env
    configured = (env.get("COBY_DATASETS_DIR") or "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    return (Path((env.get("COBY_DATA_DIR") or "").strip() or ".coby").expanduser() / "datasets").resolve()


def warn_score_from_env(env: dict[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    raw = (env.get("COBY_QUALITY_WARN_SCORE") or "").strip()
    if not raw:
        return DEFAULT_WARN_SCORE
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"COBY_QUALITY_WARN_SCORE must be a number between 0 and 100, got {raw!r}") from None
    if not 0 <= value <= 100:
        raise ConfigError(f"COBY_QUALITY_WARN_SCORE must be between 0 and 100, got {raw!r}")
    return value


def database_from_env() -> CobyDatabase:
    """The database resource bound to DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, COBY_DB_SCHEMA."""
    return CobyDatabase(
        # Always bound: the pipeline needs a server address (the streamer's
        # embedded PostgreSQL exports its socket directory as DB_HOST).
        host=dg.EnvVar("DB_HOST"),
        port=_env_int("DB_PORT", 5432),
        dbname=_env_str("DB_NAME", "coby"),
        user=_env_str("DB_USER", "postgres"),
        password=_env_str("DB_PASSWORD", None),
        sslmode=_env_str("DB_SSLMODE", None),
        db_schema=_env_str("COBY_DB_SCHEMA", "coby"),
    )


def storage_from_env() -> DatasetStorage:
    if (os.environ.get("COBY_DATASETS_DIR") or "").strip():
        return DatasetStorage(root=dg.EnvVar("COBY_DATASETS_DIR"))
    return DatasetStorage(root=str(datasets_root()))


def analytics_from_env() -> AnalyticsSettings:
    settings = load_settings()  # validates every variable it reads (ConfigError names it)
    return AnalyticsSettings(
        bucket_sizes={base: str(size) for base, size in sorted(settings.bucket_sizes.items())},
        snapshot_interval_s=settings.snapshot_interval,
        quality_warn_score=warn_score_from_env(),
    )


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "database": database_from_env(),
            "storage": storage_from_env(),
            "analytics": analytics_from_env(),
        }
    )
