"""Capped exponential backoff with full jitter (AWS architecture blog's variant).

Jitter spreads reconnects of many symbols or processes so that an exchange
outage does not end in a synchronized reconnect storm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    attempts: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self, minimum: float = 0.0) -> float:
        """Delay before the next attempt; ``minimum`` honours a server's Retry-After."""
        ceiling = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        return max(minimum, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.attempts = 0


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Stateless variant for retry loops that count their own attempts:
    exponential, capped, with jitter in [delay/2, delay] (never near zero,
    so a down server is not hammered)."""
    delay = min(cap, base * (2 ** min(attempt, 16)))
    return delay * (0.5 + random.random() / 2)
