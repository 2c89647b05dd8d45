"""Convert hits: one purchase x one experiment pair, as the delivery layer sends and the
storage records them. A hit is stored with its format and payload, so a second Convert format
(the JSON tracking API, several hits per request) needs no change to the round or the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from webhooks.core.states import Outcome


class HitFormat(StrEnum):
    LEGACY_GET = "legacy_get"  # the payload is the track URL


@dataclass(frozen=True)
class Purchase:
    """What a Convert format needs of an event."""

    event_id: int
    order_id: str
    amount: Decimal
    item_count: int


@dataclass(frozen=True)
class Hit:
    event_id: int
    pair: str  # "experiment-variation"
    format: HitFormat
    payload: str


@dataclass(frozen=True)
class HitResult:
    outcome: Outcome
    status_code: int | None
    detail: str
    retry_after: float | None = None  # seconds Convert asked us to wait (Retry-After), capped
    seconds: float | None = None  # how long the request took; None when none was made


@dataclass(frozen=True)
class SendOutcome:
    """A hit and what sending it came to."""

    hit: Hit
    result: HitResult

    @property
    def event_id(self) -> int:
        return self.hit.event_id
