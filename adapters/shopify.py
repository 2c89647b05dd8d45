"""Shopify: `X-Shopify-Hmac-Sha256` verification and topic mapping.

Signature (shopify.dev/docs/apps/build/webhooks/verify-deliveries): base64 of HMAC-SHA256 of
the raw body, keyed with the app's client secret (or the store's notification key for
webhooks made in the admin). Nothing else is signed, so there is no timestamp window.

Only the body is signed: the `X-Shopify-Topic` header is not. A captured orders/paid body
replayed as `shop/redact` must not erase the shop, and an unpaid orders/create body replayed
as orders/paid must not count. So every topic we act on checks that the body has that topic's
shape (TOPIC_SHAPES; a mismatch is a PayloadError, 400, kept as rejected), and a purchase
counts only when the body itself shows it paid (PAID_STATUSES), whatever the topic says.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from adapters.base import PlatformSpec, Sample
from adapters.options import api_base_field
from adapters.payload import (
    described,
    email_digest,
    get_int_id,
    int_id,
    load_json_object,
    optional_id,
    quantity_sum,
)
from adapters.schemes import BodyHmac
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_ID_CHARS,
    MAX_TIMESTAMP,
    MAX_TOPIC_CHARS,
    CustomerRedaction,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
    bounded_attributes,
    check_key,
)
from webhooks.core.money import as_currency_code, checked_amount, currency_code, from_decimal_string

platform = "shopify"

# financial_status values that mean the buyer paid (shopify.dev Order resource). An order
# paid and later refunded, in part or in full, was still paid: the purchase counts and the
# refund is recorded from refunds/create. "partially_paid", "authorized" (not captured),
# "pending" and "voided" do not count.
PAID_STATUSES = frozenset({"paid", "partially_refunded", "refunded"})
FINANCIAL_STATUSES = frozenset(
    {
        "pending",
        "authorized",
        "partially_paid",
        "paid",
        "partially_refunded",
        "refunded",
        "voided",
        "expired",
    }
)
# ISO 4217's code for "no currency": a refund whose payload names no currency anywhere.
NO_CURRENCY = "XXX"
# A base64 SHA-256 digest is 44 characters; a header past 128 is refused unread.
SCHEME = BodyHmac("X-Shopify-Hmac-Sha256", "base64", max_chars=128)


@dataclass(frozen=True)
class Shape:
    """What a topic's body must hold (field -> JSON type) and must not hold (fields of the
    other topics' bodies)."""

    required: Mapping[str, type | tuple[type, ...]]
    forbidden: frozenset[str]


_ORDER_FIELDS = frozenset({"total_price", "line_items", "financial_status"})
_REFUND_FIELDS = frozenset({"order_id", "refund_line_items", "transactions"})
_COMPLIANCE_FIELDS = frozenset(
    {"shop_id", "shop_domain", "orders_to_redact", "orders_requested", "data_request"}
)
_ORDER = Shape(
    {"id": int, "total_price": (str, int, Decimal), "line_items": list},
    frozenset({"order_id", "refund_line_items", "orders_to_redact", "orders_requested"}),
)
TOPIC_SHAPES: Mapping[str, Shape] = {
    "orders/paid": _ORDER,
    "orders/create": _ORDER,
    "refunds/create": Shape(
        {"id": int, "order_id": int, "refund_line_items": list, "transactions": list},
        _ORDER_FIELDS | _COMPLIANCE_FIELDS,
    ),
    "customers/redact": Shape(
        {"shop_id": int, "shop_domain": str, "customer": dict, "orders_to_redact": list},
        _ORDER_FIELDS | _REFUND_FIELDS | {"id", "orders_requested", "data_request"},
    ),
    "customers/data_request": Shape(
        {"shop_id": int, "shop_domain": str, "customer": dict, "orders_requested": list},
        _ORDER_FIELDS | _REFUND_FIELDS | {"id", "orders_to_redact"},
    ),
    "shop/redact": Shape(
        {"shop_id": int, "shop_domain": str},
        _ORDER_FIELDS
        | _REFUND_FIELDS
        | {"id", "customer", "orders_to_redact", "orders_requested", "data_request"},
    ),
}


def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
    topic = headers.get("x-shopify-topic")
    if not topic:
        raise PayloadError("missing X-Shopify-Topic header")
    # Unsigned header text: printable ASCII within the column before it is stored or named.
    check_key(topic, "header X-Shopify-Topic", MAX_TOPIC_CHARS)
    body = load_json_object(raw)
    key = _delivery_key(headers, topic, raw)
    handler = TOPIC_HANDLERS.get(topic)
    if handler is None:
        return ParseResult(key, topic, reason="this topic is not used")
    _check_shape(topic, body)
    return handler(key, topic, body)


def _check_shape(topic: str, body: Mapping[str, Any]) -> None:
    shape = TOPIC_SHAPES[topic]
    for name, kind in shape.required.items():
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise PayloadError(f"body is not a {topic} body: field '{name}' is missing or wrong")
    for name in sorted(shape.forbidden):
        if name in body:
            raise PayloadError(f"body is not a {topic} body: it has field '{name}'")


def _delivery_key(headers: Mapping[str, str], topic: str, raw: bytes) -> str:
    """One key per platform event: a retried delivery repeats X-Shopify-Event-Id."""
    if event_id := headers.get("x-shopify-event-id"):
        key = f"{topic}:event:{event_id}"
    elif webhook_id := headers.get("x-shopify-webhook-id"):
        key = f"{topic}:webhook:{webhook_id}"
    else:
        return f"{topic}:sha256:{hashlib.sha256(raw).hexdigest()}"
    # Never cut to fit: a cut key could make two events one.
    return check_key(key, "header X-Shopify-Event-Id or X-Shopify-Webhook-Id", MAX_ID_CHARS)


def _is_paid(order: Mapping[str, Any]) -> bool:
    status = order.get("financial_status")
    return isinstance(status, str) and status in PAID_STATUSES  # a list is unhashable


def _order_paid(key: str, topic: str, order: dict[str, Any]) -> ParseResult:
    status = order.get("financial_status")
    if not _is_paid(order):  # the unsigned topic says paid; the body must agree
        shown = described(status, FINANCIAL_STATUSES)
        reason = f"orders/paid body is not paid (financial_status {shown}); not counted"
        return ParseResult(key, topic, reason=reason)
    return ParseResult(key, topic, events=(_order_event(order),))


def _order_created(key: str, topic: str, order: dict[str, Any]) -> ParseResult:
    status = order.get("financial_status")
    if not _is_paid(order):
        shown = described(status, FINANCIAL_STATUSES)
        reason = f"order is not paid yet (financial_status {shown}); orders/paid will count it"
        return ParseResult(key, topic, reason=reason)
    return ParseResult(key, topic, events=(_order_event(order),))


def _order_event(order: dict[str, Any]) -> NormalizedEvent:
    currency = currency_code(order.get("currency"), "currency")
    total = from_decimal_string(order.get("total_price"), "total_price")
    amounts = {"total": Money(total, currency)}
    if order.get("subtotal_price") is not None:
        subtotal = from_decimal_string(order["subtotal_price"], "subtotal_price")
        amounts["subtotal"] = Money(subtotal, currency)
    if presentment := _presentment_total(order):
        amounts["presentment_total"] = presentment
    customer = _object(order.get("customer"))
    email = order.get("email") or order.get("contact_email") or customer.get("email")
    return NormalizedEvent(
        kind=EventKind.PURCHASE,
        platform=platform,
        order_id=get_int_id(order, "id"),
        amounts=amounts,
        item_count=quantity_sum(_list(order.get("line_items")), "line_items[].quantity"),
        test_mode=order.get("test") is True,
        occurred_at=_timestamp(order.get("processed_at") or order.get("created_at")),
        attributes=_order_attributes(order),
        customer_id=optional_id(customer, "id"),
        email_digest=email_digest(email),
        raw=order,
    )


def _presentment_total(order: Mapping[str, Any]) -> Money | None:
    price_set = order.get("total_price_set")
    money = price_set.get("presentment_money") if isinstance(price_set, dict) else None
    if not isinstance(money, dict):
        return None
    currency = currency_code(money.get("currency_code"), "presentment_money.currency_code")
    return Money(from_decimal_string(money.get("amount"), "presentment_money.amount"), currency)


def _refund_created(key: str, topic: str, refund: dict[str, Any]) -> ParseResult:
    total = Decimal(0)
    currency = _refund_line_currency(refund)
    for transaction in _list(refund.get("transactions")):
        if not isinstance(transaction, dict) or transaction.get("kind") != "refund":
            continue
        if transaction.get("status") not in (None, "success"):
            continue
        total += from_decimal_string(transaction.get("amount"), "transactions[].amount")
        if transaction.get("currency") is not None:  # null in Shopify's own sample
            currency = currency_code(transaction["currency"], "transactions[].currency")
    event = NormalizedEvent(
        kind=EventKind.REFUND,
        platform=platform,
        order_id=get_int_id(refund, "id"),
        amounts={"total": Money(checked_amount(total, "transactions[].amount"), currency)},
        item_count=0,
        test_mode=False,
        occurred_at=_timestamp(refund.get("processed_at") or refund.get("created_at")),
        refund_of=get_int_id(refund, "order_id"),
        raw=refund,
    )
    return ParseResult(key, topic, events=(event,))


def _refund_line_currency(refund: Mapping[str, Any]) -> str:
    """The shop currency of the refunded line items: refund transactions may carry none
    (Shopify's own sample has `currency: null`)."""
    for item in _list(refund.get("refund_line_items")):
        price_set = _object(_object(_object(item).get("line_item")).get("price_set"))
        code = _object(price_set.get("shop_money")).get("currency_code")
        if currency := as_currency_code(code):
            return currency
    return NO_CURRENCY


def _customers_redact(key: str, topic: str, body: dict[str, Any]) -> ParseResult:
    customer = _object(body.get("customer"))
    order_ids = tuple(int_id(o, "orders_to_redact[]") for o in _list(body.get("orders_to_redact")))
    redaction = CustomerRedaction(customer_id=optional_id(customer, "id"), order_ids=order_ids)
    return ParseResult(key, topic, reason="customer data erased", redaction=redaction)


def _shop_redact(key: str, topic: str, body: dict[str, Any]) -> ParseResult:
    return ParseResult(
        key, topic, reason="shop data erased", redaction=CustomerRedaction(None, whole_shop=True)
    )


def _data_request(key: str, topic: str, body: dict[str, Any]) -> ParseResult:
    reason = "data request noted: order records are listed with `convert-webhooks events`"
    return ParseResult(key, topic, reason=reason)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _order_attributes(order: Mapping[str, Any]) -> dict[str, str]:
    """Cart attributes, then the line items' properties (a storefront may write the pairs on
    a line); a cart attribute wins over a property of the same name, an earlier line over a
    later one. Bounded like every attribute map."""
    notes = _note_attributes(order.get("note_attributes"))
    merged: dict[str, object] = dict(notes)
    for line in _list(order.get("line_items")):
        if isinstance(line, dict):
            for name, value in _note_attributes(line.get("properties")).items():
                merged.setdefault(name, value)
    return bounded_attributes(merged.items())


def _note_attributes(value: object) -> dict[str, str]:
    """Cart attributes (buyer-controlled), bounded like every attribute map. Integer values
    are kept as their decimal text; other non-string values are dropped."""
    entries: Iterable[tuple[object, object]]
    if isinstance(value, dict):  # some apps send a plain object
        entries = value.items()
    elif isinstance(value, list):
        entries = (
            (item.get("name"), item.get("value")) for item in value if isinstance(item, dict)
        )
    else:
        return {}
    return bounded_attributes((k, _text(v)) for k, v in entries)


def _text(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**20:
        return str(value)
    return value


def _timestamp(value: object) -> float:
    """ISO 8601 time to Unix seconds; 0.0 (unknown) when absent, unreadable, or outside
    1970..9999. A time without an offset is read as UTC, not as the server's local time."""
    if not isinstance(value, str) or len(value) > 64:
        return 0.0
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    except (ValueError, OverflowError):
        return 0.0
    return seconds if 0 <= seconds <= MAX_TIMESTAMP else 0.0


TOPIC_HANDLERS: Mapping[str, Callable[[str, str, dict[str, Any]], ParseResult]] = {
    "orders/paid": _order_paid,
    "orders/create": _order_created,
    "refunds/create": _refund_created,
    "customers/data_request": _data_request,
    "customers/redact": _customers_redact,
    "shop/redact": _shop_redact,
}


# The sample: Shopify's orders/paid sample order (tests/fixtures/shopify/SOURCES.md). It says
# "voided", so it is stored and ignored with a reason; send_sample.py marks it paid.
def _add_pairs(order: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    order["note_attributes"] = [{"name": "convert_experiments", "value": pairs}]
    order["financial_status"] = "paid"  # the published sample says "voided" (SOURCES.md)
    headers["X-Shopify-Event-Id"] = str(uuid.uuid4())


SAMPLE = Sample(
    "orders_paid.json",
    {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Shop-Domain": "example.myshopify.com",
        "X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5",  # the same on retries
    },
    add_pairs=_add_pairs,
)

# --- options: Admin API access for the customer metafield -----------------------------------

# A supported stable version (shopify.dev/docs/api/usage/versioning: four a year, each kept
# twelve months); an expired one is served as the oldest supported, so this ages gracefully.
API_VERSION = "2025-10"
METAFIELD_NAMESPACE = "convert"
METAFIELD_KEY = "experiments"
# The shop's own domain, never a custom one: the Admin API lives only on *.myshopify.com.
SHOP_DOMAIN = re.compile(r"\A[a-z0-9][a-z0-9-]{0,99}\.myshopify\.com\Z", re.ASCII)
# Metafield namespaces and keys: 2..255 characters of letters, digits, '-' and '_'
# (shopify.dev/docs/apps/build/custom-data/metafields); "$app" namespaces too.
_METAFIELD_NAME = r"\A(?:\$app:?)?[A-Za-z0-9_-]{2,255}\Z"


class Options(Schema):
    """`sources.<name>` keys of a Shopify source. No defaults are filled in here (a source
    without them loads as {}); the customer lookup applies the constants above."""

    # Put `${SHOPIFY_ADMIN_TOKEN}` in the file (custom app, scope read_customers).
    admin_token = fields.String(
        validate=validate.Regexp(r"\A[\x21-\x7e]{8,255}\Z", error="must be an Admin API token")
    )
    api_version = fields.String(
        validate=validate.Regexp(
            r"\A(?:20[0-9]{2}-(?:01|04|07|10)|unstable)\Z",
            error="must be a Shopify API version such as 2025-10",
        )
    )
    metafield_namespace = fields.String(
        validate=validate.Regexp(_METAFIELD_NAME, error="must be a metafield namespace")
    )
    metafield_key = fields.String(
        validate=validate.Regexp(_METAFIELD_NAME, error="must be a metafield key")
    )
    # The store the token belongs to (the X-Shopify-Shop-Domain of its deliveries).
    shop_domain = fields.String(
        validate=validate.Regexp(SHOP_DOMAIN, error="must be the shop's *.myshopify.com domain")
    )
    # Overrides https://{shop_domain} (tests, proxies).
    api_base = api_base_field()

    @validates_schema
    def _complete(self, data: Mapping[str, Any], **_: Any) -> None:
        if data and "admin_token" not in data:
            raise ValidationError("is required to read customer metafields", "admin_token")
        if "admin_token" in data and not ("shop_domain" in data or "api_base" in data):
            raise ValidationError("or api_base is required with admin_token", "shop_domain")


SPEC = PlatformSpec(platform, SCHEME, parse, SAMPLE, options=Options)
