"""The normalized event every adapter produces, whatever the platform.

Every value is checked where the object is made (`__post_init__`), so no adapter, today's or
a future one, can hand storage or the dispatcher a value they cannot hold: ids within their
column sizes and free of control characters and unpaired surrogates, amounts in range with
bounded decimal places, counts that fit a 32-bit column, timestamps a datetime can show, and
bounded attribute maps. A failed check is a PayloadError (400); its message names the field,
never the value (the value may be personal data). Adapters check with field names first
(adapters/payload.py, webhooks/money.py); these checks are the floor no adapter can skip.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from webhooks.core.errors import PayloadError
from webhooks.core.money import is_canonical_amount, is_currency_code


class EventKind(StrEnum):
    PURCHASE = "purchase"
    SUBSCRIPTION_RENEWAL = "subscription_renewal"
    REFUND = "refund"


# Kinds that can become Convert requests; the rest are stored for the record only.
SENDABLE_KINDS = frozenset({EventKind.PURCHASE, EventKind.SUBSCRIPTION_RENEWAL})

# Column sizes (webhooks/schema.py). An id longer than its column is refused, never cut:
# a cut id could merge two orders under one business key.
MAX_ID_CHARS = 255  # delivery_key, order_id, refund_of, customer_id
MAX_TOPIC_CHARS = 128
MAX_PLATFORM_CHARS = 32
MAX_ITEM_COUNT = 2**31 - 1  # events.item_count is a 32-bit signed INTEGER
MAX_LINE_QUANTITY = 10**6  # per line item: no shop sells a million of one line
# 9999-12-31T23:59:59Z: the last second `datetime` (CLI, logs) can show.
MAX_TIMESTAMP = 253_402_300_799.0
MAX_REASON_CHARS = 500
MAX_EVENTS_PER_DELIVERY = 100
# A redaction names at most this many orders: each id is a bound parameter of one statement,
# twice (order_id and refund_of), under SQLite's 32,766 and PostgreSQL's 65,535.
MAX_REDACTION_ORDERS = 10_000
# Attribute maps hold buyer-controlled text (Shopify cart attributes): bounded per event.
# Stripe itself allows 50 keys of 40 characters and values of 500; Shopify sets no limit, and
# the entries kept are the first ones, so the count is generous (a shop's own cart attributes
# before the experiment attribute must not push it out); the total below bounds the size.
MAX_ATTRIBUTES = 250
MAX_ATTRIBUTE_KEY_CHARS = 255
MAX_ATTRIBUTE_VALUE_CHARS = 65_536  # also what attribution reads of one value
MAX_ATTRIBUTES_TOTAL_CHARS = 131_072
# ISO 4217's "no currency": the amount of an event whose amount only the platform's API
# knows (adapters/base.py, provisional_amount). A purchase in it must name its details_ref.
PROVISIONAL_CURRENCY = "XXX"

# C0 and C1 controls, DEL, line/paragraph separators, bidi overrides and unpaired surrogates
# (JSON "\ud800" decodes to one): none belongs in an id, a log line or a terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# What attribute values may not hold: NUL and unpaired surrogates cannot be stored as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_id(value: object, what: str, limit: int = MAX_ID_CHARS) -> str:
    """An id as given, or PayloadError naming `what`: non-blank, at most `limit` characters,
    no control characters or unpaired surrogates. Never shortened."""
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise PayloadError(f"{what} is longer than {limit} characters")
    if _UNSAFE.search(value):
        raise PayloadError(f"{what} holds a control character or an unpaired surrogate")
    return value


def check_key(value: object, what: str, limit: int) -> str:
    """A machine key (event type, topic, delivery key): 1..limit printable ASCII characters."""
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise PayloadError(f"{what} is longer than {limit} characters")
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise PayloadError(f"{what} must be printable ASCII without spaces")
    return value


def is_storable_text(value: str) -> bool:
    """Free of NUL and unpaired surrogates: text any database can hold as UTF-8.

    Values reach 64 K characters: `in` is a memchr and isascii() is O(1) in CPython, so only
    non-ASCII text pays for the regex scan."""
    if "\x00" in value:
        return False
    return value.isascii() or _SURROGATE.search(value) is None


def is_attribute_key(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ATTRIBUTE_KEY_CHARS
        and _UNSAFE.search(value) is None
    )


def check_attributes(attributes: Mapping[str, str]) -> None:
    """The attribute map is bounded in entries, key and value sizes, and total size."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise PayloadError(f"attributes hold more than {MAX_ATTRIBUTES} entries")
    total = 0
    for key, value in attributes.items():
        if not is_attribute_key(key):
            raise PayloadError("an attribute name is empty, too long or not printable")
        if not isinstance(value, str) or len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
            raise PayloadError("an attribute value is not a string or is too long")
        if not is_storable_text(value):
            raise PayloadError("an attribute value holds NUL or an unpaired surrogate")
        total += len(key) + len(value)
    if total > MAX_ATTRIBUTES_TOTAL_CHARS:
        raise PayloadError(f"attributes hold more than {MAX_ATTRIBUTES_TOTAL_CHARS} characters")


def bounded_attributes(entries: Iterable[tuple[object, object]]) -> dict[str, str]:
    """An attribute map storage can hold, from buyer- or merchant-controlled entries
    (adapters; storage merging two stored maps uses it too).

    Entries are kept in order, a later duplicate name replacing the earlier value. Dropped:
    a name that is not a string of 1..255 printable characters, a value that is not a string
    or holds NUL or an unpaired surrogate. A value longer than 64 KB is cut to 64 KB
    (attribution reads no more and ignores a cut last piece). At most the first 50 entries
    are kept, and only while the map stays within 128 K characters; the rest are dropped,
    so a megabyte of cart attributes is not stored with every event."""
    found: dict[str, str] = {}
    for key, value in entries:
        if not isinstance(value, str) or not is_attribute_key(key):
            continue
        value = value[:MAX_ATTRIBUTE_VALUE_CHARS]
        if is_storable_text(value):
            found[str(key)] = value
    kept: dict[str, str] = {}
    budget = MAX_ATTRIBUTES_TOTAL_CHARS
    for key, value in found.items():
        if len(kept) == MAX_ATTRIBUTES:
            break
        if len(key) + len(value) <= budget:
            kept[key] = value
            budget -= len(key) + len(value)
    return kept


def check_count(value: object, what: str, limit: int = MAX_ITEM_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise PayloadError(f"{what} must be an integer from 0 to {limit}")
    return value


def check_timestamp(value: object, what: str) -> float:
    """Unix seconds from 1970 to the year 9999."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{what} must be a number of seconds")
    if not (math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP):
        raise PayloadError(f"{what} is out of range")
    return float(value)


def check_reason(value: str, what: str = "reason") -> str:
    """Reasons are our sentences, stored and shown: bounded and free of control characters."""
    if len(value) > MAX_REASON_CHARS or _UNSAFE.search(value):
        raise PayloadError(f"{what} is too long or holds a control character")
    return value


@dataclass(frozen=True)
class Money:
    """A non-negative amount below 10**12 major units with at most 6 decimal places, in
    canonical form (no exponent notation, no negative zero), and an upper-case ISO code."""

    amount: Decimal
    currency: str  # ISO 4217, upper case

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal) or not is_canonical_amount(self.amount):
            raise PayloadError("amount is not a canonical amount in range")
        if not is_currency_code(self.currency):
            raise PayloadError("currency must be three upper-case ASCII letters")


@dataclass(frozen=True)
class NormalizedEvent:
    """One business fact (a purchase, a renewal, a refund) taken from one platform delivery.

    `order_id` is the platform's id of the purchase, used for business-level idempotency and
    as the Convert transaction id. `amounts` names each revenue basis the payload offers
    ("total" always, "presentment_total" and "subtotal" where known); the source's config picks
    one. `attributes` holds the order's string metadata (Stripe metadata, Shopify
    note_attributes) where the experiment pairs are looked up later, bounded (see above).
    `occurred_at` is Unix seconds in [0, MAX_TIMESTAMP]. `details_ref`, when set, says the
    event awaits its details from the platform's API (its spec's details step reads it to
    find the order); an amount in PROVISIONAL_CURRENCY needs one.
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
    details_ref: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EventKind):
            raise PayloadError("event kind is unknown")
        check_key(self.platform, "platform", MAX_PLATFORM_CHARS)
        check_id(self.order_id, "order id")
        self._check_amounts()
        check_count(self.item_count, "item count")
        if not isinstance(self.test_mode, bool):
            raise PayloadError("test mode must be true or false")
        check_timestamp(self.occurred_at, "occurred_at")
        check_attributes(self.attributes)
        if self.customer_id is not None:
            check_id(self.customer_id, "customer id")
        if self.refund_of is not None:
            check_id(self.refund_of, "refunded order id")
        if self.details_ref is not None:
            check_id(self.details_ref, "details reference")
        if self.email_digest is not None and not (
            isinstance(self.email_digest, str) and _DIGEST.fullmatch(self.email_digest)
        ):
            raise PayloadError("email digest must be 64 lower-case hex digits")

    def _check_amounts(self) -> None:
        if "total" not in self.amounts:
            raise PayloadError("the event has no total amount")
        for basis, money in self.amounts.items():
            check_key(basis, "revenue basis", 32)
            if not isinstance(money, Money):
                raise PayloadError("an amount is not Money")
            # A purchase in ISO 4217's "no currency" code has an amount that is not known:
            # it must await its details. (A refund, recorded only, may say "no currency".)
            unknown = money.currency == PROVISIONAL_CURRENCY and self.details_ref is None
            if unknown and self.kind in SENDABLE_KINDS:
                raise PayloadError("an amount not known yet needs a details reference")

    def revenue(self, basis: str) -> Money:
        """The amount for the configured basis, falling back to the order total."""
        return self.amounts.get(basis) or self.amounts["total"]


@dataclass(frozen=True)
class CustomerRedaction:
    """A platform's request to erase what we hold about one customer."""

    customer_id: str | None
    order_ids: tuple[str, ...] = ()
    whole_shop: bool = False

    def __post_init__(self) -> None:
        if self.customer_id is not None:
            check_id(self.customer_id, "customer id")
        if len(self.order_ids) > MAX_REDACTION_ORDERS:
            raise PayloadError(f"a redaction names more than {MAX_REDACTION_ORDERS} orders")
        for order_id in self.order_ids:
            check_id(order_id, "order id to redact")


@dataclass(frozen=True)
class ParseResult:
    """What one delivery holds: its platform id, its topic and 0..n events.

    An empty `events` list comes with `reason` saying why the delivery is ignored. The
    delivery key and topic are printable ASCII within their columns (255 and 128); the reason
    is at most 500 characters with no control characters.
    """

    delivery_key: str
    topic: str
    events: tuple[NormalizedEvent, ...] = ()
    reason: str | None = None
    redaction: CustomerRedaction | None = None

    def __post_init__(self) -> None:
        check_key(self.delivery_key, "delivery key", MAX_ID_CHARS)
        check_key(self.topic, "topic", MAX_TOPIC_CHARS)
        if not isinstance(self.events, tuple) or len(self.events) > MAX_EVENTS_PER_DELIVERY:
            raise PayloadError(f"a delivery holds at most {MAX_EVENTS_PER_DELIVERY} events")
        if not all(isinstance(event, NormalizedEvent) for event in self.events):
            raise PayloadError("a delivery holds something other than events")
        if self.reason is not None:
            check_reason(self.reason)
        if self.redaction is not None and not isinstance(self.redaction, CustomerRedaction):
            raise PayloadError("redaction must be a CustomerRedaction")
