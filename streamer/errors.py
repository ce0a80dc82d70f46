"""Exception hierarchy. Every COBY error carries a stable machine-readable code.

Codes are grouped by area so that logs, quarantine records and the operator can
tell at a glance where a problem came from:

- ``CFG-*``: configuration (bad environment variables, unknown exchanges)
- ``MAP-*``: an exchange frame that could not be mapped (quarantined, never fatal)
- ``SYN-*``: book synchronisation (sequence gaps, checksum failures)
- ``SNK-*``: storage sinks (PostgreSQL, Redis)
- ``SRV-*``: embedded or local servers
"""

from __future__ import annotations


class CobyError(Exception):
    """Base class of every error COBY raises on purpose."""

    code = "COBY-000"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {super().__str__()}"


class ConfigError(CobyError):
    """A configuration value is missing or invalid. The message names the variable."""

    code = "CFG-001"


class UnknownExchangeError(ConfigError):
    code = "CFG-002"


class InvalidSymbolError(CobyError):
    """A symbol does not match the normalized ``BASE-QUOTE`` form or is not served."""

    code = "CFG-003"


class MappingError(CobyError):
    """An exchange frame could not be turned into normalized events.

    Raised by mappers; the connection layer catches it and writes the raw frame
    to quarantine with ``reason``. It never stops a connection.
    """

    code = "MAP-001"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason, code=code)
        self.reason = reason


class MalformedFrameError(MappingError):
    """Not valid JSON, or not the structure the exchange documents."""

    code = "MAP-002"


class InvalidValueError(MappingError):
    """A price or size is negative, NaN, infinite or not a decimal number."""

    code = "MAP-003"


class UnknownSymbolError(MappingError):
    """A frame names a symbol the connector did not subscribe to."""

    code = "MAP-004"


class ExchangeErrorFrame(MappingError):
    """The exchange sent an error message (rejected subscription, rate limit...)."""

    code = "MAP-005"


class SyncError(CobyError):
    """A book lost synchronisation. Handled by resyncing that one symbol."""

    code = "SYN-001"


class SequenceGapError(SyncError):
    code = "SYN-002"


class ChecksumMismatchError(SyncError):
    code = "SYN-003"


class CrossedBookError(SyncError):
    code = "SYN-004"


class SinkError(CobyError):
    code = "SNK-001"


class SchemaError(SinkError):
    code = "SNK-002"


class ServerError(CobyError):
    """An embedded or local server could not be started or reached."""

    code = "SRV-001"
