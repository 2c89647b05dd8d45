"""Retry schedule: exponential backoff with jitter, up to a horizon."""

from __future__ import annotations

import random
from dataclasses import dataclass

from webhooks.core.settings import DispatcherSettings


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_delay_seconds: float
    horizon_seconds: float

    @classmethod
    def from_settings(cls, settings: DispatcherSettings) -> RetryPolicy:
        return cls(
            settings.retry_base_seconds,
            settings.retry_max_delay_seconds,
            settings.retry_horizon_seconds,
        )

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds before the next try after `attempts` failed tries (equal jitter: half fixed,
        half random, so workers retrying together spread out but never retry at once)."""
        # The exponent is capped: 2.0 ** 1024 overflows, and an event probed through a long
        # outage (one every few seconds) gets there. 2 ** 64 is past any max_delay anyway.
        doublings = min(max(attempts - 1, 0), 64)
        ceiling = min(self.max_delay_seconds, self.base_seconds * 2**doublings)
        uniform = rng.uniform if rng else random.uniform
        return float(ceiling / 2 + uniform(0, ceiling / 2))

    def next_attempt(
        self, now: float, attempts: int, horizon_start: float, not_before: float = 0.0
    ) -> float | None:
        """When to try again, or None once the horizon is passed (the event is then dead).
        Never before `not_before` (Convert's Retry-After, capped by the sender), which may
        move the last try past the horizon but never makes an event die sooner."""
        at = now + self.delay(attempts)
        if at > horizon_start + self.horizon_seconds:
            return None
        return max(at, not_before)
