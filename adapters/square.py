"""Square: `x-square-hmacsha256-signature` verification, payment and refund events, and the
payment's order read from the Orders API by the dispatcher (the details step).

Signature (developer.squareup.com/docs/webhooks/step3validate, square-python-sdk
`src/square/utils/webhooks_helper.py`): base64 HMAC-SHA256 of the notification URL followed by
the raw body, keyed with the subscription's signature key. The URL is the source's configured
`url`, exactly as entered in the subscription (never rebuilt from Host). No timestamp: no
window; the delivery key (`event_id`) makes a replay a duplicate.

What counts: `payment.created` or `payment.updated` whose payment is COMPLETED, keyed by the
payment id: `payment.updated` fires again for a completed payment (fees, refunds), so the
event id alone would count it twice. Refunds: `refund.created` / `refund.updated` when
COMPLETED, recorded, not sent. Amounts are integers in the currency's smallest unit (ISO 4217
exponents).

Test mode: the `square-environment` header (Production or Sandbox) is not signed, so it does
not decide: the source's `environment` option does (Sandbox and Production subscriptions have
different signature keys, so a signed body belongs to the environment its key is from). A
delivery whose header names the other environment is refused (400, kept as rejected): a
misconfigured source shows at once, and a signed body replayed under another header changes
nothing.

Experiment data: the payment's `note` and `reference_id` (attributes of those names: set the
source's `experiments_key` to one of them), or the order's `metadata` (readable only by the
application that wrote it), read with the order's line items (their `quantity` is a decimal
string) through `GET /v2/orders/{id}` when the payment names an order and the source has an
`access_token`. Without a token the payment alone is used (one item).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from marshmallow import Schema, fields, validate

from adapters.base import (
    Details,
    DetailsOutcome,
    Later,
    PlatformSpec,
    Sample,
    StoredEvent,
)
from adapters.options import api_base_field
from adapters.payload import (
    described,
    email_digest,
    get_id,
    get_key,
    get_object,
    load_json_object,
    optional_id,
    string_map,
)
from adapters.schemes import Fetch, UrlBodyHmac
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_ID_CHARS,
    MAX_ITEM_COUNT,
    MAX_LINE_QUANTITY,
    MAX_TOPIC_CHARS,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
    bounded_attributes,
    check_timestamp,
)
from webhooks.core.money import currency_code, from_minor_units

platform = "square"
SCHEME = UrlBodyHmac("x-square-hmacsha256-signature")
API_BASES = {
    "production": "https://connect.squareup.com",
    "sandbox": "https://connect.squareupsandbox.com",
}
API_VERSION = "2025-01-23"  # Square-Version sent when `api_version` is not set
ENVIRONMENTS = ("production", "sandbox")

# ISO 4217 minor units where they are not 2 (Square: "the smallest denomination of the
# currency"). Square takes few currencies; the table is ISO's, not a guess per country.
ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "ISK",
        "JPY",
        "KMF",
        "KRW",
        "PYG",
        "RWF",
        "UGX",
        "UYI",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
THREE_DECIMAL = frozenset(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"])

PAYMENT_STATUSES = frozenset({"APPROVED", "PENDING", "COMPLETED", "CANCELED", "FAILED"})
REFUND_STATUSES = frozenset({"PENDING", "COMPLETED", "REJECTED", "FAILED"})
# Square object ids: letters, digits, "-" and "_" (what may go into a URL path as is).
_SQUARE_ID = re.compile(r"\A[A-Za-z0-9_-]{1,192}\Z", re.ASCII)
_RFC3339 = re.compile(
    r"\A([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})\Z",
    re.ASCII,
)
# A line item's quantity: a decimal string ("1", "2", "1.5" for an item sold by weight).
_QUANTITY = re.compile(r"\A([0-9]{1,9})(?:\.([0-9]{1,5}))?\Z", re.ASCII)


def exponent(currency: str) -> int:
    if currency in ZERO_DECIMAL:
        return 0
    return 3 if currency in THREE_DECIMAL else 2


def money(obj: Mapping[str, Any], key: str) -> Money:
    """A Square Money object `{amount, currency}` (integer smallest units) in major units."""
    value = get_object(obj, key)
    currency = currency_code(value.get("currency"), f"{key}.currency")
    amount = from_minor_units(value.get("amount"), exponent(currency), f"{key}.amount")
    return Money(amount, currency)


def rfc3339(value: object, what: str) -> float:
    """An RFC 3339 time (Square's `created_at`, nanoseconds allowed) as Unix seconds."""
    found = _RFC3339.match(value) if isinstance(value, str) else None
    if found is None:
        raise PayloadError(f"field '{what}' must be an RFC 3339 time")
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    try:
        offset = timedelta(0)
        if zone != "Z":
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            offset = -offset if zone[0] == "-" else offset
        when = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(offset) if offset else UTC,
        )
        seconds = when.timestamp()
    except (ValueError, OverflowError) as exc:  # month 13, an offset of 24 h or more, ...
        raise PayloadError(f"field '{what}' must be an RFC 3339 time") from exc
    if fraction:
        seconds += int(fraction) / 10 ** len(fraction)
    return check_timestamp(seconds, f"field '{what}'")


# --- parse -----------------------------------------------------------------------------------


class _Context:
    def __init__(self, test_mode: bool, occurred_at: float, reads_orders: bool) -> None:
        self.test_mode = test_mode
        self.occurred_at = occurred_at
        self.reads_orders = reads_orders  # an access token is configured


def _payment(obj: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    payment = get_object(obj, "payment")
    status = payment.get("status")
    if status != "COMPLETED":
        shown = described(status, PAYMENT_STATUSES)
        return f"payment status is {shown}; only a COMPLETED payment counts"
    # total_money includes the tip: what the buyer paid.
    total = money(payment, "total_money" if "total_money" in payment else "amount_money")
    amounts = {"total": total}
    if "total_money" in payment and "amount_money" in payment:
        amounts["subtotal"] = money(payment, "amount_money")
    order = payment.get("order_id")
    names_order = isinstance(order, str) and _SQUARE_ID.match(order) is not None
    return NormalizedEvent(
        kind=EventKind.PURCHASE,
        platform=platform,
        order_id=get_id(payment, "id"),
        amounts=amounts,
        item_count=1,  # the payment names no items; the order's line items replace this
        test_mode=ctx.test_mode,
        occurred_at=ctx.occurred_at,
        attributes=bounded_attributes(
            [("note", payment.get("note")), ("reference_id", payment.get("reference_id"))]
        ),
        customer_id=optional_id(payment, "customer_id"),
        email_digest=email_digest(payment.get("buyer_email_address")),
        details_ref=order if ctx.reads_orders and names_order else None,
        raw=payment,
    )


def _refund(obj: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    refund = get_object(obj, "refund")
    status = refund.get("status")
    if status != "COMPLETED":
        return f"refund status is {described(status, REFUND_STATUSES)}; only a COMPLETED one counts"
    return NormalizedEvent(
        kind=EventKind.REFUND,
        platform=platform,
        order_id=get_id(refund, "id"),
        amounts={"total": money(refund, "amount_money")},
        item_count=0,
        test_mode=ctx.test_mode,
        occurred_at=ctx.occurred_at,
        refund_of=optional_id(refund, "payment_id"),
        raw=refund,
    )


EVENT_HANDLERS: Mapping[str, Callable[[dict[str, Any], _Context], NormalizedEvent | str]] = {
    "payment.created": _payment,
    "payment.updated": _payment,
    "refund.created": _refund,
    "refund.updated": _refund,
}


def configure(options: Mapping[str, Any]) -> Callable[[Mapping[str, str], bytes], ParseResult]:
    """The parse function of a source: its environment decides test mode; its access token
    whether payments that name an order wait for the order's details."""
    pinned = str(options.get("environment") or "production")
    reads_orders = bool(options.get("access_token"))

    def parse_for_source(headers: Mapping[str, str], raw: bytes) -> ParseResult:
        return _parse(headers, raw, pinned, reads_orders)

    return parse_for_source


def _parse(headers: Mapping[str, str], raw: bytes, pinned: str, reads_orders: bool) -> ParseResult:
    envelope = load_json_object(raw)
    event_id = get_key(envelope, "event_id", MAX_ID_CHARS)
    event_type = get_key(envelope, "type", MAX_TOPIC_CHARS)
    _check_environment(headers, pinned)
    handler = EVENT_HANDLERS.get(event_type)
    if handler is None:
        return ParseResult(event_id, event_type, reason="this event type is not used")
    obj = get_object(get_object(envelope, "data"), "object")
    occurred_at = rfc3339(envelope.get("created_at"), "created_at")
    ctx = _Context(pinned == "sandbox", occurred_at, reads_orders)
    outcome = handler(obj, ctx)
    if isinstance(outcome, str):
        return ParseResult(event_id, event_type, reason=outcome)
    return ParseResult(event_id, event_type, events=(outcome,))


def _check_environment(headers: Mapping[str, str], pinned: str) -> None:
    said = headers.get("square-environment")
    if said is None:
        return
    if said.strip().lower() != pinned:
        shown = "Sandbox" if pinned == "production" else "Production"
        if said.strip().lower() not in ENVIRONMENTS:
            raise PayloadError("header 'square-environment' must be Production or Sandbox")
        raise PayloadError(
            f"header 'square-environment' says {shown}; the source's environment is {pinned}"
        )


parse = configure({})

# --- details: the payment's order from the Orders API ----------------------------------------


def details(event: StoredEvent, options: Mapping[str, Any], fetch: Fetch) -> DetailsOutcome:
    """The order's line-item count, metadata and customer; the payment's amount stays."""
    token = options.get("access_token")
    if not token:
        return Details()  # the token was removed since: the payment alone
    if not _SQUARE_ID.match(event.reference):
        raise PayloadError("the stored details reference is not a Square order id")
    environment = str(options.get("environment") or "production")
    base = str(options.get("api_base") or API_BASES[environment]).rstrip("/")
    headers = {
        "Authorization": f"Bearer {token}",
        "Square-Version": str(options.get("api_version") or API_VERSION),
        "Accept": "application/json",
    }
    status, body = fetch("GET", f"{base}/v2/orders/{quote(event.reference)}", headers, None)
    if status == 404:
        # The payment is COMPLETED: a real purchase. An order the token cannot see is a
        # configuration problem (a token of another seller or environment): wait, then dead
        # at the retry horizon and replayable once the token is fixed; never dropped.
        return Later(
            "the payment's order was not found with the source's access_token "
            "(a token of another seller or environment?)"
        )
    if status != 200:
        return Later(f"the order answered HTTP {status}")
    answer = load_json_object(body)
    if answer.get("errors"):
        return Later("the order answer holds errors")
    order = get_object(answer, "order")
    if order.get("id") != event.reference:
        raise PayloadError("field 'order.id' is not the order asked for")
    return Details(
        item_count=line_item_count(order.get("line_items")),
        attributes=string_map(order.get("metadata")),
        customer_id=optional_id(order, "customer_id"),
    )


def line_item_count(lines: object) -> int | None:
    """The sum of the line items' quantities; an item sold by weight ("1.5") counts once.
    None when the order lists no items (the payment's count of one stays)."""
    if not isinstance(lines, list) or not lines:
        return None
    total = 0
    for line in lines:
        quantity = line.get("quantity") if isinstance(line, dict) else None
        found = _QUANTITY.match(quantity) if isinstance(quantity, str) else None
        if found is None:
            raise PayloadError("field 'line_items[].quantity' must be a decimal string")
        whole, fraction = int(found.group(1)), found.group(2)
        count = 1 if fraction and int(fraction) else whole
        if count > MAX_LINE_QUANTITY:
            raise PayloadError(f"field 'line_items[].quantity' is more than {MAX_LINE_QUANTITY}")
        total += count
        if total > MAX_ITEM_COUNT:
            raise PayloadError(f"field 'line_items' adds up to more than {MAX_ITEM_COUNT}")
    return total


# --- options ---------------------------------------------------------------------------------


class Options(Schema):
    """`sources.<name>` keys of a Square source. `environment` pins test mode (Sandbox: the
    events are test events) and the default API base. `access_token` (read the order: scope
    ORDERS_READ) is optional; write it as `"${SQUARE_ACCESS_TOKEN}"` so the loader reads it
    from the environment."""

    environment = fields.String(validate=validate.OneOf(ENVIRONMENTS))
    access_token = fields.String(
        validate=validate.Regexp(r"\A[\x21-\x7e]{8,512}\Z", error="must be an access token")
    )
    api_base = api_base_field()
    api_version = fields.String(
        validate=validate.Regexp(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z", error="must be YYYY-MM-DD")
    )


def _add_pairs(payload: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    payload["event_id"] = str(uuid.uuid4())  # a new event, not a retry
    payload["data"]["object"]["payment"]["note"] = pairs  # experiments_key = "note"


# The sample: payment.updated around the Square SDK's documented Payment (SOURCES.md). The
# url is the one the contract suite configures (Square signs the URL it calls).
SAMPLE = Sample(
    "payment_updated.json",
    headers={"square-environment": "Production"},
    options={"url": "https://hooks.example.com/webhooks/contract"},
    add_pairs=_add_pairs,
)
SPEC = PlatformSpec(
    platform,
    SCHEME,
    parse,
    SAMPLE,
    options=Options,
    configure=configure,
    details=details,
)
