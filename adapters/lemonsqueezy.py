"""Lemon Squeezy: `X-Signature` verification and event mapping.

Signature (docs.lemonsqueezy.com/help/webhooks/signing-requests, lmsqueezy/laravel
`VerifyWebhookSignature`): hex HMAC-SHA256 of the raw body keyed with the webhook's signing
secret. Nothing else is signed: no timestamp, no window. `X-Event-Name` is not signed either,
so the event is read from the body's `meta.event_name`: a captured body replayed under another
header means what it says, nothing else.

The body is a JSON:API resource `{meta: {event_name, custom_data?}, data: {type, id,
attributes}}`; each event we act on checks `data.type` (an order body is not an invoice).
- `order_created` with a paid status: a purchase keyed by the order id (`data.id`).
- `subscription_payment_success`: a renewal keyed by the subscription invoice id (as
  `subscription-invoice:<id>`: order and invoice ids are separate sequences). The first
  payment of a subscription fires it too (`billing_reason: initial`) next to `order_created`
  for the same sale: that one is stored with a reason, so the sale counts once.
- `order_refunded` / `subscription_payment_refunded`: a refund of the order / invoice. The body
  is the refunded object with its cumulative `refunded_amount`, so the refund is keyed by
  (id, refunded amount): a second partial refund is a new refund, a resend is not.
- No event id is documented: the delivery key is (event name, `data.id`[, refunded amount]),
  so a resend from the dashboard dedupes; events we do not use are keyed by the body's hash.
- Amounts are integers in the currency's minor unit ("cents"); ISO 4217 exponents.
- Test mode: `data.attributes.test_mode` (the documented flag; `meta.test_mode` is not).
- Experiment data: `meta.custom_data`, the checkout's `custom` object, on every order and
  subscription event.
- Item count: `first_order_item.quantity` (in responses, undocumented per the official JS SDK)
  when it is a sane positive integer, else 1: a Lemon Squeezy checkout sells one variant, so
  the first item is the order's only line. A renewal counts 1, a refund 0.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.base import PlatformSpec, Sample
from adapters.payload import (
    attribute_map,
    described,
    email_digest,
    get_key,
    get_object,
    load_json_object,
    optional_id,
    rfc3339_seconds,
)
from adapters.schemes import BodyHmac
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_LINE_QUANTITY,
    MAX_TOPIC_CHARS,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
)
from webhooks.core.money import currency_code, from_iso_minor_units

platform = "lemonsqueezy"

# A hex SHA-256 digest is 64 characters; a header past 128 is refused unread.
SCHEME = BodyHmac("X-Signature", "hex", max_chars=128)

# JSON:API ids are strings ("1"); Lemon Squeezy's are decimal numbers. Bounded so the delivery
# key (event name + id + amount) stays within its 255-character column.
MAX_RESOURCE_ID_CHARS = 64

# Order statuses (lemonsqueezy.js src/orders/types.ts: pending, failed, paid, refunded).
# An order refunded later was still paid when it was created: the purchase counts and the
# refund is recorded from order_refunded. "partial_refund" (named by third parties, not in the
# SDK's type: UNVERIFIED) would mean the same.
PAID_ORDER_STATUSES = frozenset({"paid", "refunded", "partial_refund"})
ORDER_STATUSES = frozenset({"pending", "failed", "paid", "refunded", "partial_refund"})
# Subscription invoices (src/subscriptionInvoices/types.ts).
INVOICE_STATUSES = frozenset({"pending", "paid", "void", "refunded"})
PAID_INVOICE_STATUSES = frozenset({"paid", "refunded"})
INITIAL_BILLING_REASON = "initial"
# JSON:API type -> what its id is prefixed with as a business id (see _Resource.order_id).
BUSINESS_ID_PREFIXES: Mapping[str, str] = {
    "orders": "",
    "subscription-invoices": "subscription-invoice:",
}


@dataclass(frozen=True)
class _Resource:
    """What a handler reads of the body: the event name, `data.id`, `data.attributes` and
    `meta.custom_data`."""

    event_name: str
    id: str
    attributes: dict[str, Any]
    custom_data: object
    # The business id: order ids and invoice ids are separate sequences (order 7 and invoice
    # 7 both exist), and both reach Convert as transaction ids, so invoices carry a prefix.
    order_id: str

    def event(self, kind: EventKind, order_id: str, **fields: Any) -> NormalizedEvent:
        attributes = self.attributes
        return NormalizedEvent(
            kind=kind,
            platform=platform,
            order_id=order_id,
            test_mode=_test_mode(attributes),
            customer_id=optional_id(attributes, "customer_id"),
            email_digest=email_digest(attributes.get("user_email")),
            raw=attributes,
            **fields,
        )

    def result(self, delivery_key: str, event: NormalizedEvent | str) -> ParseResult:
        if isinstance(event, str):
            return ParseResult(delivery_key, self.event_name, reason=event)
        return ParseResult(delivery_key, self.event_name, events=(event,))


def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
    body = load_json_object(raw)
    meta = get_object(body, "meta")
    # The body's event name, never the unsigned X-Event-Name header.
    event_name = get_key(meta, "event_name", MAX_TOPIC_CHARS)
    handler = EVENT_HANDLERS.get(event_name)
    if handler is None:
        # A resend of the same body is a duplicate; any other body is a new delivery.
        key = f"{event_name}:sha256:{hashlib.sha256(raw).hexdigest()}"
        return ParseResult(key, event_name, reason="this event is not used")
    expected_type, act = handler
    data = get_object(body, "data")
    if data.get("type") != expected_type:
        raise PayloadError(f"body does not fit {event_name}: 'data.type' must be {expected_type}")
    resource_id = get_key(data, "id", MAX_RESOURCE_ID_CHARS)
    resource = _Resource(
        event_name,
        resource_id,
        get_object(data, "attributes"),
        meta.get("custom_data"),
        BUSINESS_ID_PREFIXES[expected_type] + resource_id,
    )
    return act(resource)


def _test_mode(attributes: Mapping[str, Any]) -> bool:
    value = attributes.get("test_mode", False)
    if not isinstance(value, bool):
        raise PayloadError("field 'test_mode' must be true or false")
    return value


def _money(attributes: Mapping[str, Any], key: str) -> Money:
    currency = currency_code(attributes.get("currency"), "currency")
    return Money(from_iso_minor_units(attributes.get(key), currency, key), currency)


def _amounts(attributes: Mapping[str, Any]) -> dict[str, Money]:
    amounts = {"total": _money(attributes, "total")}
    if attributes.get("subtotal") is not None:
        amounts["subtotal"] = _money(attributes, "subtotal")
    return amounts


def _occurred_at(attributes: Mapping[str, Any], *keys: str) -> float:
    """The first readable time among `keys`; 0.0 (unknown) when none is."""
    for key in keys:
        seconds = rfc3339_seconds(attributes.get(key))
        if seconds is not None:
            return seconds
    return 0.0


def _item_count(attributes: Mapping[str, Any]) -> int:
    item = attributes.get("first_order_item")
    quantity = item.get("quantity") if isinstance(item, dict) else None
    if type(quantity) is int and 0 < quantity <= MAX_LINE_QUANTITY:
        return quantity
    return 1  # absent or not believable: one line, at least one item


def _status(attributes: Mapping[str, Any], paid: frozenset[str]) -> str | None:
    status = attributes.get("status")
    return status if isinstance(status, str) and status in paid else None


def _order_created(order: _Resource) -> ParseResult:
    key = f"{order.event_name}:{order.id}"
    attributes = order.attributes
    if _status(attributes, PAID_ORDER_STATUSES) is None:
        shown = described(attributes.get("status"), ORDER_STATUSES)
        return order.result(key, f"order status is {shown}; only a paid order counts")
    event = order.event(
        EventKind.PURCHASE,
        order.order_id,
        amounts=_amounts(attributes),
        item_count=_item_count(attributes),
        attributes=attribute_map(order.custom_data),
        occurred_at=_occurred_at(attributes, "created_at"),
    )
    return order.result(key, event)


def _payment_success(invoice: _Resource) -> ParseResult:
    key = f"{invoice.event_name}:{invoice.id}"
    attributes = invoice.attributes
    if _status(attributes, PAID_INVOICE_STATUSES) is None:
        shown = described(attributes.get("status"), INVOICE_STATUSES)
        return invoice.result(key, f"invoice status is {shown}; only a paid invoice counts")
    if attributes.get("billing_reason") == INITIAL_BILLING_REASON:
        reason = "the first payment of a subscription: order_created counts that sale"
        return invoice.result(key, reason)
    event = invoice.event(
        EventKind.SUBSCRIPTION_RENEWAL,
        invoice.order_id,
        amounts=_amounts(attributes),
        item_count=1,
        attributes=attribute_map(invoice.custom_data),
        occurred_at=_occurred_at(attributes, "created_at"),
    )
    return invoice.result(key, event)


def _refunded(resource: _Resource) -> ParseResult:
    attributes = resource.attributes
    refunded, amount_key = _refunded_amount(attributes)
    key = f"{resource.event_name}:{resource.id}:{refunded}"
    if refunded == 0:
        return resource.result(key, "the body shows nothing refunded")
    event = resource.event(
        EventKind.REFUND,
        f"{resource.order_id}:refunded:{refunded}",
        amounts={"total": _money(attributes, amount_key)},
        item_count=0,
        refund_of=resource.order_id,
        occurred_at=_occurred_at(attributes, "refunded_at", "updated_at"),
    )
    return resource.result(key, event)


def _refunded_amount(attributes: Mapping[str, Any]) -> tuple[int, str]:
    """The cumulative refunded amount in minor units and the field it came from. Bodies from
    before `refunded_amount` existed say only `refunded: true`: the whole total."""
    if "refunded_amount" in attributes:
        key = "refunded_amount"
    elif attributes.get("refunded") is True:
        key = "total"
    else:
        raise PayloadError("field 'refunded_amount' is missing and 'refunded' is not true")
    _money(attributes, key)  # checked here: the key below must not hold an unchecked value
    amount: int = attributes[key]
    return amount, key


EVENT_HANDLERS: Mapping[str, tuple[str, Callable[[_Resource], ParseResult]]] = {
    "order_created": ("orders", _order_created),
    "order_refunded": ("orders", _refunded),
    "subscription_payment_success": ("subscription-invoices", _payment_success),
    "subscription_payment_refunded": ("subscription-invoices", _refunded),
}


def _add_pairs(body: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    # A new order each time (the delivery key is the order id), with the shop's checkout data.
    body["data"]["id"] = str(random.SystemRandom().randrange(10**8, 10**9))
    body["meta"]["custom_data"] = {"convert_experiments": pairs}


# The sample: the docs' order_created example (tests/fixtures/lemonsqueezy/SOURCES.md).
SAMPLE = Sample("order_created.json", {"X-Event-Name": "order_created"}, add_pairs=_add_pairs)
SPEC = PlatformSpec(platform, SCHEME, parse, SAMPLE)
