"""The dispatcher's circuit breaker: when every request of a round fails in a retryable way
(Convert down, 5xx, 429), pause, then probe with one event, instead of spending the database
and the network on whole batches of attempts that will fail too."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from webhooks.core.hits import HitResult
from webhooks.core.states import Outcome

log = logging.getLogger(__name__)
# Short, so a recovered Convert is noticed within seconds; Convert's own Retry-After may ask
# for longer, and is honoured.
MAX_PAUSE = 8.0


class Breaker:
    def __init__(self) -> None:
        self.failed_rounds = 0
        self.retry_after = 0.0  # the longest Retry-After of the last failed round
        self.since: float | None = None  # wall clock of the first failed round
        self.failed_at = 0.0  # monotonic clock of the last failed round

    @property
    def open(self) -> bool:
        return self.failed_rounds > 0

    def probe_due(self, monotonic: float) -> bool:
        """The pause after a failed round is over: the next round probes with the earliest
        pending event even if its backoff has not run out, so a recovered Convert is noticed
        within the pause (a loop that does not pause, like `drain`, keeps to due events)."""
        return self.open and monotonic >= self.failed_at + self.pause()

    def observe(self, results: Sequence[HitResult], now: float, monotonic: float) -> float | None:
        """Count a round's results; when they end an outage, the time it began (the events
        deferred since then can go out at once)."""
        if not results:
            return None
        if all(r.outcome is Outcome.RETRY for r in results):
            if not self.failed_rounds:
                self.since = now
                log.warning(
                    "Convert unreachable (%s); pausing, then probing with one event",
                    results[0].detail,
                )
            self.failed_rounds += 1
            self.failed_at = monotonic
            self.retry_after = max(r.retry_after or 0.0 for r in results)
            return None
        if not self.failed_rounds:
            return None
        log.info("Convert reachable again after %d failed rounds", self.failed_rounds)
        since, self.since = self.since, None
        self.failed_rounds, self.retry_after = 0, 0.0
        return since

    def pause(self) -> float:
        """Seconds before the next probe: doubling from 1 s up to MAX_PAUSE, and never
        shorter than Convert's Retry-After (which the sender caps)."""
        if not self.failed_rounds:
            return 0.0
        return max(min(MAX_PAUSE, float(2 ** min(self.failed_rounds - 1, 16))), self.retry_after)
