"""WooCommerce: `X-WC-Webhook-Signature` verification, the creation ping, and order mapping.

Everything below was read in woocommerce/woocommerce
`plugins/woocommerce/includes/class-wc-webhook.php` (tests/fixtures/woocommerce/SOURCES.md):

- Signature (`generate_signature`): base64 of HMAC-SHA256 of the raw body, keyed with the
  webhook's secret. Only the body is signed: no timestamp, so no window.
- The body (`build_payload`) is the REST order (`/wc/v3/orders/<id>`) as it is when the
  delivery is SENT, not when the order changed; the topic is only in the unsigned
  X-WC-Webhook-Topic header. WooCommerce never retries, and X-WC-Webhook-Delivery-ID is new on
  every send (`wp_hash(id . time)`), so it cannot identify a delivery.
- `order.updated` fires on any change: payment, notes, a refund, a deleted refund.
- The ping (`deliver_ping`): when a webhook is saved active, WooCommerce POSTs the form body
  `webhook_id=<id>`, unsigned, and refuses to activate the webhook unless the answer is 200.

So, here:
- Meaning comes from the signed body only. A purchase counts when the order's own status is
  processing or completed (or refunded: paid, then refunded) AND `date_paid` is set, whatever
  the topic header says; its business key is the order id, so every later order.updated of the
  same order is a duplicate of that purchase. Each entry of the order's `refunds[]` is a refund
  event keyed by the refund id: recorded once, and kept when a later body no longer lists it
  (a deleted refund).
- The delivery key is the topic, the order id and the SHA-256 of the body: the same order state
  sent twice (a second hook in the same change, the 10-minute hold of a pending delivery) is
  one delivery; any change to the order is a new delivery whose purchase is a duplicate and
  whose new meta data still reaches the stored event. The topic is in the key so that a body
  replayed under another topic header never takes the place of the real delivery.
- WooCommerce has no test-mode flag in orders: test_mode is always False.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from adapters.base import PlatformSpec, Sample
from adapters.payload import (
    attribute_text,
    described,
    email_digest,
    get_int_id,
    int_id,
    load_json_object,
    quantity_sum,
)
from adapters.schemes import BodyHmac
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_EVENTS_PER_DELIVERY,
    MAX_TIMESTAMP,
    MAX_TOPIC_CHARS,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
    bounded_attributes,
    check_key,
)
from webhooks.core.money import checked_amount, currency_code, from_decimal_string

platform = "woocommerce"

# A base64 SHA-256 digest is 44 characters; a header past 128 is refused unread.
SCHEME = BodyHmac("X-WC-Webhook-Signature", "base64", max_chars=128)

# Topics whose body is a whole REST order (class-wc-webhook.php, get_default_topic_hooks).
# `order.deleted` sends only {"id": N}; `action.*` topics only {"action", "arg"}.
ORDER_TOPICS = frozenset({"order.created", "order.updated", "order.restored"})
DELETED_TOPIC = "order.deleted"
# The statuses of a paid order (wc_get_is_paid_statuses: processing, completed). A refunded
# order was paid: counting it keeps a purchase whose processing delivery was never seen (no
# retries; the 10-minute hold can skip states), as Shopify's refunded orders count.
PAID_STATUSES = frozenset({"processing", "completed", "refunded"})
# WooCommerce's own statuses (REST v3 schema), named in reasons; plugins add others, which a
# reason only calls unexpected.
ORDER_STATUSES = frozenset(
    {
        "pending",
        "processing",
        "on-hold",
        "completed",
        "cancelled",
        "refunded",
        "failed",
        "trash",
        "checkout-draft",
    }
)
# WooCommerce Subscriptions marks each renewal order with this meta (its subscription id).
RENEWAL_META_KEY = "_subscription_renewal"
# One event per refund next to the purchase. WooCommerce lists refunds newest first, and each
# refund sent its own order.updated, so past this many only the oldest are left out.
MAX_REFUNDS = MAX_EVENTS_PER_DELIVERY - 1
# Meta values that are arrays or objects are kept as compact JSON, at most this deep.
MAX_META_DEPTH = 32

PING_TOPIC = "ping"
# Exactly what deliver_ping sends: `webhook_id=` and the id, nothing before or after.
_PING = re.compile(rb"webhook_id=([0-9]{1,20})")
_PING_MAX_BYTES = len(b"webhook_id=") + 20
_FORM = "application/x-www-form-urlencoded"
# REST dates: "2017-03-22T19:28:08" (wc_rest_prepare_date_response), the _gmt ones in UTC.
_WC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}", re.ASCII)


# --- the ping ---------------------------------------------------------------------------------


def ping(headers: Mapping[str, str], raw: bytes) -> ParseResult | None:
    """The unsigned `webhook_id=N` WooCommerce posts when a webhook is saved active, as an
    ignored delivery (answered 200), or None for anything else, which is then verified.

    Strict on purpose, since nothing here is signed: the whole body must be `webhook_id=`
    and 1-20 ASCII digits, and the content type absent (WooCommerce does not always set one)
    or form-urlencoded. A key per webhook id: a second ping of the same webhook is a
    duplicate, still answered 200."""
    if len(raw) > _PING_MAX_BYTES or not _form_or_absent(headers.get("content-type")):
        return None
    match = _PING.fullmatch(raw)
    if match is None:
        return None
    webhook_id = match.group(1).decode("ascii")
    reason = "WooCommerce webhook ping (webhook saved active); nothing to count"
    return ParseResult(f"ping:{webhook_id}", PING_TOPIC, reason=reason)


def _form_or_absent(content_type: str | None) -> bool:
    if not content_type:
        return True
    return content_type.split(";", 1)[0].strip().lower() == _FORM


# --- deliveries -------------------------------------------------------------------------------


def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
    topic = headers.get("x-wc-webhook-topic")
    if not topic:
        # A stored ping read again (`replay`): the same ignored delivery. The routes answer a
        # ping before verification and never call this with one.
        if (hello := ping(headers, raw)) is not None:
            return hello
        raise PayloadError("missing X-WC-Webhook-Topic header")
    # Unsigned header text: printable ASCII within the column before it is stored or named.
    check_key(topic, "header X-WC-Webhook-Topic", MAX_TOPIC_CHARS)
    body = load_json_object(raw)
    digest = hashlib.sha256(raw).hexdigest()
    if topic not in ORDER_TOPICS:
        reason = (
            "order moved to the trash; a counted purchase stays counted"
            if topic == DELETED_TOPIC
            else "this topic is not used"
        )
        return ParseResult(f"{topic}:sha256:{digest}", topic, reason=reason)
    _check_order_shape(body)
    order_id = get_int_id(body, "id")
    return _order_result(f"{topic}:{order_id}:sha256:{digest}", topic, order_id, body)


# Field -> JSON type a REST order always has; anything else is not an order body.
_ORDER_SHAPE: Mapping[str, type] = {
    "id": int,
    "status": str,
    "currency": str,
    "total": str,
    "line_items": list,
}


def _check_order_shape(body: Mapping[str, Any]) -> None:
    for name, kind in _ORDER_SHAPE.items():
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise PayloadError(
                f"body is not a WooCommerce order: field '{name}' is missing or wrong"
            )


def _order_result(key: str, topic: str, order_id: str, order: dict[str, Any]) -> ParseResult:
    currency = currency_code(order["currency"], "currency")
    refunds = _refund_events(order, order_id, currency)
    purchase = _purchase(order, order_id, currency)
    if isinstance(purchase, str):
        return ParseResult(key, topic, events=refunds, reason=purchase)
    return ParseResult(key, topic, events=(purchase, *refunds))


def _purchase(order: dict[str, Any], order_id: str, currency: str) -> NormalizedEvent | str:
    """The purchase, or why the order does not count (yet). Decided from the body alone."""
    status = order["status"]
    paid_at = _paid_at(order)
    if status not in PAID_STATUSES or paid_at is None:
        shown = described(status, ORDER_STATUSES)
        missing = "" if paid_at is not None else " without date_paid"
        return (
            f"order status {shown}{missing}; a purchase counts once the order is"
            " processing or completed with date_paid set"
        )
    attributes = _attributes(order)
    kind = EventKind.SUBSCRIPTION_RENEWAL if _is_renewal(order) else EventKind.PURCHASE
    return NormalizedEvent(
        kind=kind,
        platform=platform,
        order_id=order_id,
        amounts=_amounts(order, currency),
        item_count=quantity_sum(order["line_items"], "line_items[].quantity"),
        test_mode=False,  # WooCommerce orders carry no test flag
        occurred_at=paid_at,
        attributes=attributes,
        customer_id=_customer_id(order),
        email_digest=email_digest(_object(order.get("billing")).get("email")),
        raw=order,
    )


def _paid_at(order: Mapping[str, Any]) -> float | None:
    """When the order was paid (Unix seconds; 0.0 when the time is out of range), or None
    when `date_paid` is not set. A value that is set must be a WooCommerce date."""
    for name in ("date_paid_gmt", "date_paid"):
        value = order.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not _WC_TIME.fullmatch(value):
            raise PayloadError(f"field '{name}' must be a date or null")
        seconds = _seconds(value)
        if seconds is None:
            raise PayloadError(f"field '{name}' must be a date or null")
        # date_paid is in the shop's time zone: read as UTC only when no _gmt twin is set.
        return seconds
    return None


def _seconds(value: str) -> float | None:
    """A REST date (no offset; the _gmt fields are UTC) in Unix seconds, 0.0 when outside
    1970..9999, None when it is no date at all (month 13)."""
    try:
        seconds = datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    except (ValueError, OverflowError):
        return None
    return seconds if 0 <= seconds <= MAX_TIMESTAMP else 0.0


def _modified_at(order: Mapping[str, Any]) -> float:
    """When the order last changed, for refunds (the order lists no refund dates): 0.0 when
    unknown or unreadable (it decides nothing)."""
    for name in ("date_modified_gmt", "date_created_gmt"):
        value = order.get(name)
        if isinstance(value, str) and _WC_TIME.fullmatch(value):
            seconds = _seconds(value)
            if seconds is not None:
                return seconds
    return 0.0


def _amount(value: object, what: str) -> Decimal:
    """WooCommerce amounts are decimal strings ("29.35"); a JSON number is not what it sends."""
    if not isinstance(value, str):
        raise PayloadError(f"field '{what}' must be a decimal string")
    return from_decimal_string(value, what)


def _amounts(order: Mapping[str, Any], currency: str) -> dict[str, Money]:
    """`total` (what the buyer paid), and `subtotal` as WooCommerce's order screen shows it:
    the line items' subtotals (before discounts, without tax and shipping)."""
    amounts = {"total": Money(_amount(order["total"], "total"), currency)}
    lines = order["line_items"]
    if lines:
        subtotal = Decimal(0)
        for line in lines:
            subtotal += _amount(_object(line).get("subtotal"), "line_items[].subtotal")
        amounts["subtotal"] = Money(checked_amount(subtotal, "line_items[].subtotal"), currency)
    return amounts


def _customer_id(order: Mapping[str, Any]) -> str | None:
    """The WordPress user id; 0 is a guest checkout (no customer)."""
    value = order.get("customer_id")
    if value is None or (type(value) is int and value == 0):
        return None
    return int_id(value, "customer_id")


def _is_renewal(order: Mapping[str, Any]) -> bool:
    for item in _list(order.get("meta_data")):
        if isinstance(item, dict) and item.get("key") == RENEWAL_META_KEY:
            value = item.get("value")
            return value not in (None, "", 0, "0") and not isinstance(value, bool)
    return False


def _refund_events(
    order: Mapping[str, Any], order_id: str, currency: str
) -> tuple[NormalizedEvent, ...]:
    """One refund event per entry of `refunds[]` ({id, reason, total}, total negative:
    "-10.00"), keyed by the refund id, whatever the order's status."""
    refunds = order.get("refunds")
    if refunds is None:
        return ()
    if not isinstance(refunds, list):
        raise PayloadError("field 'refunds' must be a list")
    occurred_at = _modified_at(order)
    found: dict[str, NormalizedEvent] = {}
    for entry in refunds:
        if not isinstance(entry, dict):
            raise PayloadError("field 'refunds[]' must hold objects")
        refund_id = int_id(entry.get("id"), "refunds[].id")
        amount = _refund_amount(entry.get("total"))
        if refund_id in found or len(found) == MAX_REFUNDS:
            continue
        found[refund_id] = NormalizedEvent(
            kind=EventKind.REFUND,
            platform=platform,
            order_id=refund_id,
            amounts={"total": Money(amount, currency)},
            item_count=0,
            test_mode=False,
            occurred_at=occurred_at,
            refund_of=order_id,
            raw=entry,
        )
    return tuple(found.values())


def _refund_amount(value: object) -> Decimal:
    """The refunded amount, non-negative: the REST API writes it with a minus sign."""
    if isinstance(value, str) and value.startswith("-"):
        value = value[1:]
    return _amount(value, "refunds[].total")


# --- experiment data: meta_data ---------------------------------------------------------------


def _attributes(order: Mapping[str, Any]) -> dict[str, str]:
    """The order's meta data, then its line items' meta data (a shop may write the pairs on a
    line item), as name -> text. The first entry of a name wins, as WooCommerce's own
    `get_meta($key, true)` reads it; an order entry wins over a line item's.

    Keys starting with "_" are kept: WooCommerce leaves out of `meta_data` only its own
    internal keys (its data stores' `internal_meta_keys`), so `_convert_experiments` saved by
    the shop is there, and Convert's own names start with "_" (`_conv_attrs`, `__data`)."""
    entries = list(_meta_entries(order.get("meta_data")))
    for line in _list(order.get("line_items")):
        if isinstance(line, dict):
            entries.extend(_meta_entries(line.get("meta_data")))
    first: dict[str, str] = {}
    for key, value in entries:
        first.setdefault(key, value)
    return bounded_attributes(first.items())


def _meta_entries(meta: object) -> Iterable[tuple[str, str]]:
    for item in _list(meta):
        if not isinstance(item, dict):
            continue
        key, value = item.get("key"), attribute_text(item.get("value"), MAX_META_DEPTH)
        if isinstance(key, str) and value is not None:
            yield key, value


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# --- the sample -------------------------------------------------------------------------------


def _add_pairs(order: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    """Where a shop keeps the pairs: order meta saved at checkout
    (`$order->update_meta_data('convert_experiments', ...)`). A new meta row changes the body,
    so this is a new delivery; WooCommerce also sends a new delivery id each time."""
    meta_id = uuid.uuid4().int % 10**9 + 1
    order.setdefault("meta_data", []).append(
        {"id": meta_id, "key": "convert_experiments", "value": pairs}
    )
    headers["X-WC-Webhook-Delivery-ID"] = uuid.uuid4().hex


# The sample: the REST v3 docs' "Retrieve an order" example, a paid (processing) order
# (tests/fixtures/woocommerce/SOURCES.md), with the headers class-wc-webhook.php sends.
SAMPLE = Sample(
    "order_updated_processing.json",
    {
        "X-WC-Webhook-Source": "https://example.com/",
        "X-WC-Webhook-Topic": "order.updated",
        "X-WC-Webhook-Resource": "order",
        "X-WC-Webhook-Event": "updated",
        "X-WC-Webhook-ID": "1",
        "X-WC-Webhook-Delivery-ID": "7a0a5b6b3f3f4e0c9b1d2e3f4a5b6c7d",
    },
    add_pairs=_add_pairs,
)
SPEC = PlatformSpec(platform, SCHEME, parse, SAMPLE, ping=ping)
