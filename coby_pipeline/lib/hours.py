"""Hour windows: the unit every asset of the pipeline works on.

A partition key is Dagster's hourly key ``YYYY-MM-DD-HH:MM`` (UTC). The
window it names is half-open, ``[start, end)``, and maps to the Hive folders
``date=YYYY-MM-DD/hour=HH`` of every dataset the pipeline writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from streamer.errors import ConfigError

#: Dagster's format for hourly partition keys.
HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class HourWindow:
    """One UTC hour, ``[start, end)``."""

    start: datetime
    end: datetime

    @classmethod
    def from_key(cls, key: str) -> "HourWindow":
        """Parse an hourly partition key such as ``2025-01-01-05:00``."""
        try:
            start = datetime.strptime(key, HOUR_KEY_FORMAT).replace(tzinfo=timezone.utc)
        except (TypeError, ValueError):
            raise ConfigError(f"not an hourly partition key (YYYY-MM-DD-HH:00): {key!r}") from None
        if start.minute != 0:
            raise ConfigError(f"hourly partition keys start on the hour, got {key!r}")
        return cls(start, start + timedelta(hours=1))

    @classmethod
    def from_bounds(cls, start: datetime, end: datetime) -> "HourWindow":
        """From Dagster's partition time window (any tz-aware datetimes)."""
        return cls(start.astimezone(timezone.utc), end.astimezone(timezone.utc))

    @property
    def key(self) -> str:
        return self.start.strftime(HOUR_KEY_FORMAT)

    @property
    def date(self) -> str:
        return self.start.strftime("%Y-%m-%d")

    @property
    def hour(self) -> str:
        return self.start.strftime("%H")

    @property
    def hive_path(self) -> str:
        """The ``date=/hour=`` folder suffix of this hour."""
        return f"date={self.date}/hour={self.hour}"

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def start_us(self) -> int:
        return to_us(self.start)

    @property
    def end_us(self) -> int:
        return to_us(self.end)


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
