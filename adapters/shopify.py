"""Shopify: `X-Shopify-Hmac-Sha256` verification and topic mapping.

Signature (shopify.dev/docs/apps/build/webhooks/verify-deliveries): base64 of HMAC-SHA256 of
the raw body, keyed with the app's client secret (or the store's notification key for
webhooks made in the admin). Nothing else is signed, so there is no timestamp window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from adapters.base import PlatformAdapter, VerifySettings
from adapters.payload import email_digest, get_int, load_json_object, optional_str
from adapters.signing import any_base64_matches
from webhooks.errors import PayloadError, SignatureError
from webhooks.events import (
    CustomerRedaction,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
)
from webhooks.money import from_decimal_string

platform = "shopify"


PAID_STATUSES = frozenset({"paid"})
# ISO 4217's code for "no currency": a refund whose payload names no currency anywhere.
NO_CURRENCY = "XXX"


def verify(headers: Mapping[str, str], raw: bytes, settings: VerifySettings, now: float) -> None:
    given = headers.get("x-shopify-hmac-sha256")
    if not given:
        raise SignatureError("missing X-Shopify-Hmac-Sha256 header")
    if not any_base64_matches(settings.secrets, raw, given):
        raise SignatureError("X-Shopify-Hmac-Sha256 does not match a configured secret")


def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
    topic = headers.get("x-shopify-topic")
    if not topic:
        raise PayloadError("missing X-Shopify-Topic header")
    body = load_json_object(raw)
    key = _delivery_key(headers, topic, raw)
    handler = TOPIC_HANDLERS.get(topic)
    if handler is None:
        return ParseResult(key, topic, reason=f"topic {topic} is not used")
    return handler(key, topic, body)


def _delivery_key(headers: Mapping[str, str], topic: str, raw: bytes) -> str:
    """One key per platform event: a retried delivery repeats X-Shopify-Event-Id."""
    if event_id := headers.get("x-shopify-event-id"):
        return f"{topic}:event:{event_id}"
    if webhook_id := headers.get("x-shopify-webhook-id"):
        return f"{topic}:webhook:{webhook_id}"
    return f"{topic}:sha256:{hashlib.sha256(raw).hexdigest()}"


def _order_paid(key: str, topic: str, order: dict[str, Any]) -> ParseResult:
    return ParseResult(key, topic, events=(_order_event(order),))


def _order_created(key: str, topic: str, order: dict[str, Any]) -> ParseResult:
    status = order.get("financial_status")
    if status not in PAID_STATUSES:
        reason = f"order is not paid yet (financial_status {status!r}); orders/paid will count it"
        return ParseResult(key, topic, reason=reason)
    return ParseResult(key, topic, events=(_order_event(order),))


def _order_event(order: dict[str, Any]) -> NormalizedEvent:
    order_id = get_int(order, "id")
    currency = _currency(order.get("currency"), "currency")
    amounts = {
        "total": Money(from_decimal_string(order.get("total_price"), "total_price"), currency)
    }
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
        order_id=str(order_id),
        amounts=amounts,
        item_count=_item_count(order.get("line_items")),
        test_mode=order.get("test") is True,
        occurred_at=_timestamp(order.get("processed_at") or order.get("created_at")),
        attributes=_note_attributes(order.get("note_attributes")),
        customer_id=optional_str(customer, "id"),
        email_digest=email_digest(email),
        raw=order,
    )


def _presentment_total(order: Mapping[str, Any]) -> Money | None:
    price_set = order.get("total_price_set")
    money = price_set.get("presentment_money") if isinstance(price_set, dict) else None
    if not isinstance(money, dict):
        return None
    currency = _currency(money.get("currency_code"), "presentment_money.currency_code")
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
            currency = _currency(transaction["currency"], "transactions[].currency")
    event = NormalizedEvent(
        kind=EventKind.REFUND,
        platform=platform,
        order_id=str(get_int(refund, "id")),
        amounts={"total": Money(total, currency)},
        item_count=0,
        test_mode=False,
        occurred_at=_timestamp(refund.get("processed_at") or refund.get("created_at")),
        refund_of=optional_str(refund, "order_id"),
        raw=refund,
    )
    return ParseResult(key, topic, events=(event,))


def _refund_line_currency(refund: Mapping[str, Any]) -> str:
    """The shop currency of the refunded line items: refund transactions may carry none
    (Shopify's own sample has `currency: null`)."""
    for item in _list(refund.get("refund_line_items")):
        price_set = _object(_object(_object(item).get("line_item")).get("price_set"))
        code = _object(price_set.get("shop_money")).get("currency_code")
        if isinstance(code, str) and len(code) == 3 and code.isalpha():
            return code.upper()
    return NO_CURRENCY


def _customers_redact(key: str, topic: str, body: dict[str, Any]) -> ParseResult:
    customer = _object(body.get("customer"))
    orders = _list(body.get("orders_to_redact"))
    order_ids = tuple(str(o) for o in orders if isinstance(o, int) and not isinstance(o, bool))
    redaction = CustomerRedaction(customer_id=optional_str(customer, "id"), order_ids=order_ids)
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


def _item_count(line_items: object) -> int:
    if not isinstance(line_items, list):
        return 0
    return sum(
        item["quantity"]
        for item in line_items
        if isinstance(item, dict) and type(item.get("quantity")) is int and item["quantity"] > 0
    )


def _note_attributes(value: object) -> dict[str, str]:
    if isinstance(value, dict):  # some apps send a plain object
        return {str(k): str(v) for k, v in value.items() if isinstance(v, str | int)}
    if not isinstance(value, list):
        return {}
    result: dict[str, str] = {}
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            raw_value = item.get("value")
            if isinstance(raw_value, str | int) and not isinstance(raw_value, bool):
                result[item["name"]] = str(raw_value)
    return result


def _currency(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise PayloadError(f"{what} must be a three-letter currency code")
    return value.upper()


def _timestamp(value: object) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


TOPIC_HANDLERS: Mapping[str, Callable[[str, str, dict[str, Any]], ParseResult]] = {
    "orders/paid": _order_paid,
    "orders/create": _order_created,
    "refunds/create": _refund_created,
    "customers/data_request": _data_request,
    "customers/redact": _customers_redact,
    "shop/redact": _shop_redact,
}

ADAPTER = PlatformAdapter(platform, verify, parse)
