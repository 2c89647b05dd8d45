"""The normalized event every adapter produces, whatever the platform."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    PURCHASE = "purchase"
    SUBSCRIPTION_RENEWAL = "subscription_renewal"
    REFUND = "refund"


# Kinds that can become Convert requests; the rest are stored for the record only.
SENDABLE_KINDS = frozenset({EventKind.PURCHASE, EventKind.SUBSCRIPTION_RENEWAL})


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str  # ISO 4217, upper case


@dataclass(frozen=True)
class NormalizedEvent:
    """One business fact (a purchase, a renewal, a refund) taken from one platform delivery.

    `order_id` is the platform's id of the purchase, used for business-level idempotency and
    as the Convert transaction id. `amounts` names each revenue basis the payload offers
    ("total" always, "presentment_total" and "subtotal" where known); the source's config picks
    one. `attributes` holds the order's string metadata (Stripe metadata, Shopify
    note_attributes) where the experiment pairs are looked up later.
    """

    kind: EventKind
    platform: str
    order_id: str
    amounts: Mapping[str, Money]
    item_count: int
    test_mode: bool
    occurred_at: float
    attributes: Mapping[str, str] = field(default_factory=dict)
    customer_id: str | None = None
    email_digest: str | None = None
    refund_of: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def revenue(self, basis: str) -> Money:
        """The amount for the configured basis, falling back to the order total."""
        return self.amounts.get(basis) or self.amounts["total"]


@dataclass(frozen=True)
class CustomerRedaction:
    """A platform's request to erase what we hold about one customer."""

    customer_id: str | None
    order_ids: tuple[str, ...] = ()
    whole_shop: bool = False


@dataclass(frozen=True)
class ParseResult:
    """What one delivery holds: its platform id, its topic and 0..n events.

    An empty `events` list comes with `reason` saying why the delivery is ignored.
    """

    delivery_key: str
    topic: str
    events: tuple[NormalizedEvent, ...] = ()
    reason: str | None = None
    redaction: CustomerRedaction | None = None
