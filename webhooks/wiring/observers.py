"""The observer a service runs with: Prometheus counters (wiring/metrics.py) and one log line
per Convert attempt. The webhook's own line is written by the route (web/routes.py), which
knows the request."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from webhooks.core.hits import SendOutcome
from webhooks.core.logs import fields
from webhooks.core.observe import DispatcherSeen, IngestSeen, Observer, RoundSeen
from webhooks.core.settings import Settings
from webhooks.core.states import Outcome
from webhooks.wiring.metrics import ServiceMetrics, make_metrics

log = logging.getLogger(__name__)

DETAIL_CHARS = 200  # of Convert's answer, on a failed attempt's line
_WARN = frozenset({Outcome.PERMANENT, Outcome.ERROR})  # retrying cannot help: worth a look
_QUIET = frozenset({Outcome.SENT, Outcome.DRY_RUN})


class ServiceObserver:
    """Counters only (no I/O, no database) and log lines: quick on the request thread."""

    def __init__(self, metrics: ServiceMetrics | None) -> None:
        self.metrics = metrics  # None: metrics are off

    def ingest(self, seen: IngestSeen) -> None:
        if self.metrics is not None:
            self.metrics.ingest(seen)

    def round(self, seen: RoundSeen) -> None:
        if self.metrics is not None:
            self.metrics.round(seen)

    def sends(self, outcomes: Sequence[SendOutcome]) -> None:
        if self.metrics is not None:
            self.metrics.sends(outcomes)
        for outcome in outcomes:
            log_attempt(outcome)

    def dispatcher(self, seen: DispatcherSeen) -> None:
        if self.metrics is not None:
            self.metrics.dispatcher(seen)


def log_attempt(outcome: SendOutcome) -> None:
    """`convert attempt event_id=.. pair=.. format=.. outcome=.. status=.. latency_ms=..`;
    a failed one adds the start of Convert's answer (ids and amounts, never personal data)."""
    result = outcome.result
    seconds = result.seconds
    values = fields(
        event_id=outcome.hit.event_id,
        pair=outcome.hit.pair,
        format=str(outcome.hit.format),
        outcome=str(result.outcome),
        status=result.status_code,
        latency_ms=None if seconds is None else round(seconds * 1000, 1),
        retry_after=result.retry_after,
        detail=None if result.outcome in _QUIET else result.detail[:DETAIL_CHARS],
    )
    level = logging.WARNING if result.outcome in _WARN else logging.INFO
    log.log(level, "convert attempt", extra=values)


def default_observer(settings: Settings) -> Observer:
    return ServiceObserver(make_metrics() if settings.metrics.enabled else None)
