"""Convert hits, as the delivery layer sends and the storage records them: in the legacy GET
format one purchase x one experiment pair, in the JSON tracking API one purchase (every pair
rides in its bucketingData). A hit is stored with its format and payload; its own state and
attempts are kept whatever request it was batched into.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from webhooks.core.settings import ConvertFormat
from webhooks.core.states import Outcome


class HitFormat(StrEnum):
    LEGACY_GET = "legacy_get"  # the payload is the track URL
    V1_JSON = "v1_json"  # the payload is the /v1/track request body for this purchase alone


# The pair a V1_JSON hit is stored under: it carries every pair of its purchase.
WHOLE_PURCHASE = "*"
FORMAT_OF = {ConvertFormat.LEGACY: HitFormat.LEGACY_GET, ConvertFormat.V1: HitFormat.V1_JSON}


@dataclass(frozen=True)
class Purchase:
    """What a Convert format needs of an event."""

    event_id: int
    order_id: str
    amount: Decimal
    item_count: int
    format: ConvertFormat = ConvertFormat.LEGACY
    visitor_id: str | None = None  # the v1 format's visitorId (the legacy GET has none)


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
