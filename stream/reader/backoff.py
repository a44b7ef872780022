"""Capped exponential backoff with jitter between reconnect attempts."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

log = logging.getLogger("stream.reader")


# ------------------------------------------------------------------------------------------- backoff


@dataclass(frozen=True)
class BackoffPolicy:
    """Capped exponential backoff: ``initial * 2**n`` up to ``maximum``, each delay jittered by +/- ``jitter``."""

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 60.0  # seconds of healthy streaming after which the next failure starts again at initial
    jitter: float = 0.2  # fraction
    multiplier: float = 2.0


class Backoff:
    """Stateful delays for one camera. Jitter spreads reconnect storms when many cameras share a server."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None):
        self.policy = policy
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        p = self.policy
        base = min(p.maximum, p.initial * p.multiplier ** self.attempt)
        self.attempt += 1
        if p.jitter > 0:
            base *= 1.0 + self._rng.uniform(-p.jitter, p.jitter)
        return max(0.0, min(p.maximum, base))

    def reset(self) -> None:
        self.attempt = 0
