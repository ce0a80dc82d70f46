"""Settings from the environment: bad values name their variable; export_env round-trips."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from streamer.config import default_bucket_size_for_price, get_bucket_size, load_settings
from streamer.embedded import export_env
from streamer.errors import ConfigError, ServerError

BAD_VALUES = [
    ("DB_PORT", "abc"),
    ("DB_PORT", "70000"),
    ("DB_PORT", "0"),
    ("DB_SSLMODE", "sometimes"),
    ("COBY_DB_SCHEMA", "Coby-Schema"),
    ("COBY_DB_SCHEMA", "x; drop table trades"),
    ("COBY_REDIS_PREFIX", "has space:"),
    ("REDIS_TLS", "maybe"),
    ("REDIS_PORT", "-1"),
    ("REDIS_DB", "16"),
    ("REDIS_DB", "one"),
    ("HEATMAP_DEPTH", "0"),
    ("HEATMAP_DEPTH", "5001"),
    ("UPDATE_FREQUENCY", "nan"),
    ("UPDATE_FREQUENCY", "-1"),
    ("UPDATE_FREQUENCY", "fast"),
    ("COBY_SNAPSHOT_BAND_PCT", "inf"),
    ("DATA_BUFFER_SIZE", "5"),
    ("BATCH_WRITE_SIZE", "1.5"),
    ("MAX_MEMORY_USAGE", "10"),
    ("COBY_RETENTION_DAYS", "0"),
    ("COBY_PARTITIONS_AHEAD_DAYS", "-1"),
    ("COBY_TRADE_STREAM_MAXLEN", "1"),
    ("BTC_BUCKET_SIZE", "-10"),
    ("ETH_BUCKET_SIZE", "one"),
    ("SOL_BUCKET_SIZE", "NaN"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_raises_config_error_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert name in str(info.value)
    assert info.value.code == "CFG-001"


def test_defaults_mean_embedded_servers():
    settings = load_settings({})
    assert settings.db.embedded and settings.redis.embedded
    assert settings.db.schema == "coby" and settings.redis.prefix == "coby:"
    with pytest.raises(ConfigError, match="DB_HOST"):
        settings.db.url()
    with pytest.raises(ConfigError, match="REDIS_HOST"):
        settings.redis.client_kwargs()


def test_blank_values_fall_back_to_defaults():
    settings = load_settings({"DB_PORT": "  ", "HEATMAP_DEPTH": ""})
    assert settings.db.port == 5432 and settings.heatmap_depth == 50


def test_password_is_in_the_url_but_never_in_descriptions_or_repr():
    settings = load_settings({"DB_HOST": "db.internal", "DB_PASSWORD": "s3cr:t@", "REDIS_HOST": "cache", "REDIS_PASSWORD": "r3d"})
    assert "s3cr%3At%40" in settings.db.url()
    for text in (settings.db.safe_description(), repr(settings), settings.redis.safe_description()):
        assert "s3cr" not in text and "r3d" not in text


def test_redis_socket_wins_over_host():
    settings = load_settings({"REDIS_SOCKET": "/run/redis.sock", "REDIS_HOST": "cache"})
    assert settings.redis.client_kwargs()["unix_socket_path"] == "/run/redis.sock"
    assert "host" not in settings.redis.client_kwargs()


def _rich_env(tmp_path: Path) -> dict[str, str]:
    return {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "6543",
        "DB_NAME": "coby_other",
        "DB_USER": "writer",
        "DB_PASSWORD": "pw",
        "DB_SSLMODE": "require",
        "COBY_DB_SCHEMA": "market_data",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": "6390",
        "REDIS_DB": "3",
        "REDIS_PASSWORD": "rpw",
        "REDIS_TLS": "yes",
        "COBY_REDIS_PREFIX": "mkt:",
        "COBY_DATA_DIR": str(tmp_path / "data"),
        "HEATMAP_DEPTH": "25",
        "UPDATE_FREQUENCY": "0.25",
        "COBY_SNAPSHOT_BAND_PCT": "1.5",
        "DATA_BUFFER_SIZE": "2000",
        "BATCH_WRITE_SIZE": "700",
        "MAX_MEMORY_USAGE": "512",
        "COBY_RETENTION_DAYS": "9",
        "COBY_PARTITIONS_AHEAD_DAYS": "4",
        "COBY_TRADE_STREAM_MAXLEN": "123",
        "COBY_CAPTURES_DIR": str(tmp_path / "captures"),
        "SOL_BUCKET_SIZE": "0.05",
        "BTC_BUCKET_SIZE": "25",
    }


def test_export_env_round_trips_through_load_settings(tmp_path):
    settings = load_settings(_rich_env(tmp_path))
    again = load_settings(export_env(settings))
    assert again == settings
    assert again.db.password == "pw" and again.redis.password == "rpw"  # compare=True fields, but be explicit


def test_export_env_round_trips_a_unix_socket_redis(tmp_path):
    env = _rich_env(tmp_path)
    del env["REDIS_HOST"], env["REDIS_PORT"]
    env["REDIS_SOCKET"] = str(tmp_path / "redis.sock")
    env["DB_HOST"] = str(tmp_path / "pgsocket")  # a socket directory, as the embedded server gives
    settings = load_settings(env)
    exported = export_env(settings)
    assert "REDIS_HOST" not in exported and exported["REDIS_SOCKET"] == env["REDIS_SOCKET"]
    assert load_settings(exported) == settings


def test_export_env_resolves_a_relative_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"DB_HOST": "h", "REDIS_HOST": "r", "COBY_DATA_DIR": "rel"})
    exported = export_env(settings)
    assert exported["COBY_DATA_DIR"] == str(tmp_path / "rel")
    assert load_settings(exported).data_dir == tmp_path / "rel"


def test_export_env_refuses_servers_without_an_address():
    with pytest.raises(ServerError, match="PostgreSQL"):
        export_env(load_settings({"REDIS_HOST": "r"}))
    with pytest.raises(ServerError, match="Redis"):
        export_env(load_settings({"DB_HOST": "h"}))


def test_bucket_sizes_defaults_overrides_and_fallback():
    settings = load_settings({"ETH_BUCKET_SIZE": "0.5"})
    assert settings.get_bucket_size("BTC-USDT") == Decimal("10")
    assert settings.get_bucket_size("XBT-USD") == Decimal("10")
    assert settings.get_bucket_size("ETH-USDT") == Decimal("0.5")
    with pytest.raises(ConfigError, match="SOL_BUCKET_SIZE"):
        settings.get_bucket_size("SOL-USDT")
    assert settings.get_bucket_size("SOL-USDT", reference_price=60.0) == Decimal("0.05")
    assert get_bucket_size("DOGE-USDT", 0.2, {}) == Decimal("0.0002")


@pytest.mark.parametrize(
    ("price", "expected"),
    [(60.0, 0.05), (100_000.0, 100.0), (250.0, 0.2), (3.0, 0.002), (float("nan"), 1.0), (-5.0, 1.0)],
)
def test_default_bucket_size_for_price(price, expected):
    assert default_bucket_size_for_price(price) == expected


def test_kraken_book_depth_is_one_of_krakens_depths():
    from streamer.config import load_settings
    from streamer.errors import ConfigError

    assert load_settings({"COBY_KRAKEN_BOOK_DEPTH": "1000"}).kraken_book_depth == 1000
    assert load_settings({}).kraken_book_depth == 100
    with pytest.raises(ConfigError, match="COBY_KRAKEN_BOOK_DEPTH"):
        load_settings({"COBY_KRAKEN_BOOK_DEPTH": "50"})


def test_redis_coalesce_delay_accepts_zero_and_refuses_negative_values():
    from streamer.config import load_settings
    from streamer.errors import ConfigError

    assert load_settings({"COBY_REDIS_COALESCE_MS": "0"}).redis_coalesce_ms == 0.0
    assert load_settings({"COBY_REDIS_COALESCE_MS": "2.5"}).redis_coalesce_ms == 2.5
    assert load_settings({}).redis_coalesce_ms == 0.0
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(ConfigError, match="COBY_REDIS_COALESCE_MS"):
            load_settings({"COBY_REDIS_COALESCE_MS": bad})


def test_heap_trim_interval_accepts_zero_to_turn_it_off_and_refuses_negative_values():
    assert load_settings({}).heap_trim_interval == 5.0
    assert load_settings({"COBY_HEAP_TRIM_S": "0"}).heap_trim_interval == 0.0
    assert load_settings({"COBY_HEAP_TRIM_S": "30"}).heap_trim_interval == 30.0
    for bad in ("-1", "inf", "often"):
        with pytest.raises(ConfigError, match="COBY_HEAP_TRIM_S"):
            load_settings({"COBY_HEAP_TRIM_S": bad})
