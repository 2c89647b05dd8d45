"""The one interface delivery sends through: a Convert client takes a batch of hits and
returns one result per hit, in order. It also builds the hits of a purchase, so the round
never knows a format.

- `LegacyGetClient`: the legacy GET push, one hit per request (the first implementation);
- `DryRunClient`: wraps any client, logs the payloads and sends nothing.

A client for the JSON tracking API (several hits per request) fits here: the round already
batches hits up to `max_hits`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from webhooks.convert.http import Sender
from webhooks.convert.legacy import build_hits
from webhooks.core.hits import Hit, HitFormat, HitResult, Purchase
from webhooks.core.settings import ConvertSettings, GoalSet
from webhooks.core.states import Outcome

log = logging.getLogger(__name__)
_DRY_RUN_VERB = {HitFormat.LEGACY_GET: "GET"}  # what the log says a hit would have been


class ConvertClient(Protocol):
    @property
    def max_hits(self) -> int:
        """Hits per request (a batch the round hands to `send`)."""

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        """The hits for these pairs of one purchase; raises ValueError for an amount the
        format cannot carry."""

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        """Send one batch (at most `max_hits`); one result per hit, in order. Network and
        HTTP failures are results, never exceptions."""

    def close(self) -> None: ...


class LegacyGetClient:
    max_hits = 1

    def __init__(self, settings: ConvertSettings, sender: Sender) -> None:
        self.settings = settings
        self.sender = sender

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        return build_hits(self.settings, goals, purchase, pairs)

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        return [self.sender.get(hit.payload) for hit in hits]

    def close(self) -> None:
        self.sender.close()


class DryRunClient:
    def __init__(self, inner: ConvertClient) -> None:
        self.inner = inner

    @property
    def max_hits(self) -> int:
        return self.inner.max_hits

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        return self.inner.hits(goals, purchase, pairs)

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        for hit in hits:
            log.info("dry run: would %s %s", _DRY_RUN_VERB.get(hit.format, "send"), hit.payload)
        return [HitResult(Outcome.DRY_RUN, None, "dry run: logged, not sent") for _ in hits]

    def close(self) -> None:
        self.inner.close()


def make_client(settings: ConvertSettings) -> ConvertClient:
    sender = Sender(settings.connect_timeout, settings.read_timeout)
    client: ConvertClient = LegacyGetClient(settings, sender)
    return DryRunClient(client) if settings.dry_run else client
