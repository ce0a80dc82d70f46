"""Local exchanges on loopback: one aiohttp server, pluggable backends (capture replay, simulator)."""

from .server import (
    ExchangeBackend,
    FaultPlan,
    LocalExchangeServer,
    WsSession,
    WsSessionClosed,
    json_error,
)

__all__ = ["ExchangeBackend", "FaultPlan", "LocalExchangeServer", "WsSession", "WsSessionClosed", "json_error"]
