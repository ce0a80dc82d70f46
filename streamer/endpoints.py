"""Per-exchange endpoints: the mapper's defaults, overridden from the environment.

``COBY_<EXCHANGE>_WS_URL`` and ``COBY_<EXCHANGE>_REST_URL`` (for example
``COBY_BINANCE_WS_URL=ws://127.0.0.1:9001``) point a connector anywhere, such
as the local capture-replay server or the market simulator.
"""

from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import urlparse

from .errors import ConfigError
from .exchanges.base import Endpoints, ExchangeMapper


def _check_url(name: str, value: str, schemes: set[str]) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not parsed.netloc:
        raise ConfigError(f"{name} must be a {'/'.join(sorted(schemes))} URL, got {value!r}")
    return value.rstrip("/")


def resolve_endpoints(mapper: ExchangeMapper, env: Mapping[str, str] | None = None) -> Endpoints:
    env = os.environ if env is None else env
    key = mapper.exchange.upper().replace("-", "_").replace(".", "_")
    ws_name, rest_name = f"COBY_{key}_WS_URL", f"COBY_{key}_REST_URL"
    ws = env.get(ws_name) or mapper.default_endpoints.ws_url
    rest = env.get(rest_name) or mapper.default_endpoints.rest_url
    return Endpoints(
        ws_url=_check_url(ws_name, ws, {"ws", "wss"}),
        rest_url=_check_url(rest_name, rest, {"http", "https"}) if rest else None,
    )
