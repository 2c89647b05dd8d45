"""The one interface delivery sends through: a Convert client takes a batch of hits and
returns one result per hit, in order. It also builds the hits of a purchase, so the round
never knows a format.

- `LegacyGetClient`: the legacy GET push, one hit (pair) per request;
- `V1Client` (v1.py): the JSON tracking API, one hit per purchase, many per request;
- `FormatClients`: both, each event sent in the format it was stored with;
- `DryRunClient`: wraps any client, logs what it would send and sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from webhooks.convert.http import Sender
from webhooks.convert.legacy import build_hits
from webhooks.convert.v1 import V1Client
from webhooks.core.hits import FORMAT_OF, Hit, HitFormat, HitResult, Purchase
from webhooks.core.settings import ConvertSettings, GoalSet
from webhooks.core.states import Outcome

log = logging.getLogger(__name__)


class ConvertClient(Protocol):
    def max_hits(self, fmt: HitFormat) -> int:
        """Hits of this format per request (the size of a batch the round hands to `send`)."""

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        """The hits for these pairs of one purchase; raises ValueError for an amount the
        format cannot carry."""

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        """Send one batch (at most `max_hits`, one format); one result per hit, in order.
        Network and HTTP failures are results, never exceptions."""

    def describe(self, hit: Hit) -> str:
        """The request a hit is, for a log line: method, URL and any body."""

    def close(self) -> None: ...


class LegacyGetClient:
    def __init__(self, settings: ConvertSettings, sender: Sender) -> None:
        self.settings = settings
        self.sender = sender

    def max_hits(self, fmt: HitFormat) -> int:
        return 1

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        return build_hits(self.settings, goals, purchase, pairs)

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        return [self.sender.get(hit.payload) for hit in hits]

    def describe(self, hit: Hit) -> str:
        return f"GET {hit.payload}"

    def close(self) -> None:
        self.sender.close()


class FormatClients:
    """Each purchase in the format its event was stored with (Purchase.format), each batch
    to the client of its hits' format."""

    def __init__(self, clients: Mapping[HitFormat, ConvertClient]) -> None:
        self.clients = dict(clients)

    def _of(self, fmt: HitFormat) -> ConvertClient:
        found = self.clients.get(fmt)
        if found is None:
            raise ValueError(f"no Convert client for the {fmt} format")
        return found

    def max_hits(self, fmt: HitFormat) -> int:
        return self._of(fmt).max_hits(fmt)

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        return self._of(FORMAT_OF[purchase.format]).hits(goals, purchase, pairs)

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        formats = {hit.format for hit in hits}
        if len(formats) > 1:
            raise ValueError("a batch mixes Convert formats")
        return self._of(formats.pop()).send(hits) if hits else []

    def describe(self, hit: Hit) -> str:
        return self._of(hit.format).describe(hit)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


class DryRunClient:
    def __init__(self, inner: ConvertClient) -> None:
        self.inner = inner

    def max_hits(self, fmt: HitFormat) -> int:
        return self.inner.max_hits(fmt)

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        return self.inner.hits(goals, purchase, pairs)

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        for hit in hits:
            log.info("dry run: would %s", self.inner.describe(hit))
        return [HitResult(Outcome.DRY_RUN, None, "dry run: logged, not sent") for _ in hits]

    def describe(self, hit: Hit) -> str:
        return self.inner.describe(hit)

    def close(self) -> None:
        self.inner.close()


def make_client(settings: ConvertSettings) -> ConvertClient:
    """Both formats, always: an event keeps the format it was stored with, so events stored
    before a switch still go out as they were meant to (the two share one HTTP session)."""
    sender = Sender(settings.connect_timeout, settings.read_timeout)
    client: ConvertClient = FormatClients(
        {
            HitFormat.LEGACY_GET: LegacyGetClient(settings, sender),
            HitFormat.V1_JSON: V1Client(settings, sender),
        }
    )
    return DryRunClient(client) if settings.dry_run else client
