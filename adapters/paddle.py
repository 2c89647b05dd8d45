"""Paddle Billing: `Paddle-Signature` verification and event mapping.

Signature (developer.paddle.com/webhooks/about/signature-verification, paddle-python-sdk
`Notifications/Verifier.py`): `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>...]`, hex
HMAC-SHA256 of `"{ts}:{raw body}"` keyed with the notification destination's secret. Any h1 may
match (one per active secret while a secret is rotated); a malformed h1 is skipped, as the SDK's
own test expects. Paddle's SDKs allow 5 s; a source's `tolerance_seconds` overrides it.

The whole envelope `{event_id, event_type, occurred_at, notification_id, data}` is signed, so
what a delivery means comes from the body alone. `event_id` is the delivery key (an event sent
to two destinations shares it; `notification_id` is per destination).

- `transaction.paid` and `transaction.completed` describe one payment: both are keyed by the
  transaction id (`txn_...`), so they count once. `origin: subscription_recurring` (and
  `subscription_update`, a proration charge, as Stripe's `subscription_update`) is a renewal;
  `web`, `api` and `subscription_charge` are purchases; `subscription_payment_method_change` is
  no sale (a zero-amount transaction that only saves a card).
- `adjustment.created` / `adjustment.updated` with `action: refund` and `status: approved`: a
  refund keyed by the adjustment id (`adj_...`), refund_of its transaction. Refunds need
  Paddle's approval, so a pending one is stored with a reason and the approved update counts.
- Amounts are strings of digits in the currency's lowest unit (ISO 4217 exponents: JPY, KRW,
  CLP and VND have none). "total" is `details.totals.grand_total`, what the buyer paid after
  any account credit; "subtotal" is before tax and discounts.
- Experiment data: the transaction's own `custom_data` (the products and prices in the same
  body carry theirs, which describe the catalogue, not the buyer: never read).
- Sandbox: a separate Paddle account with its own secret and no flag in the payload, so a
  source says `sandbox = true` and its events are test mode.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from marshmallow import Schema, fields

from adapters.base import Parse, PlatformSpec, Sample
from adapters.payload import (
    attribute_map,
    described,
    get_id,
    get_key,
    get_object,
    load_json_object,
    optional_id,
    quantity_sum,
    rfc3339_seconds,
)
from adapters.schemes import TimestampedHmac
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_ID_CHARS,
    MAX_TOPIC_CHARS,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
)
from webhooks.core.money import currency_code, from_iso_minor_units

platform = "paddle"

SCHEME = TimestampedHmac.paddle_style("Paddle-Signature")

# --- helpers Lemon Squeezy shares (candidates for adapters/payload.py and core/money.py) ------

# Paddle's lowest-denomination amounts: ASCII digits only (no sign, point, exponent, "٣").
# 24 digits bound the int() below; money.py then refuses anything past 10**12 major units.
_DIGITS = re.compile(r"[0-9]{1,24}")


def lowest_denomination(value: object, currency: str, what: str) -> Decimal:
    """A Paddle amount string in the currency's lowest unit, in major units."""
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        raise PayloadError(f"field '{what}' must be a string of digits in the lowest unit")
    return from_iso_minor_units(int(value), currency, what)


# --- events ----------------------------------------------------------------------------------

# Transaction statuses (paddle-python-sdk Entities/Shared/TransactionStatus.py). Paid and
# completed both mean the payment was captured.
PAID_STATUSES = frozenset({"paid", "completed"})

# Nested custom_data is kept as JSON as deep as attribution reads it (formats.MAX_JSON_DEPTH).
MAX_NESTING = 8


def custom_data_attributes(value: object) -> dict[str, str]:
    """The transaction's custom_data as attributes (payload.attribute_map)."""
    return attribute_map(value, MAX_NESTING)


TRANSACTION_STATUSES = frozenset(
    {"draft", "ready", "billed", "paid", "completed", "canceled", "past_due"}
)
# Transaction origins (Entities/Shared/TransactionOrigin.py) that are not a first purchase.
ORIGIN_KINDS: Mapping[str, EventKind] = {
    "subscription_recurring": EventKind.SUBSCRIPTION_RENEWAL,
    "subscription_update": EventKind.SUBSCRIPTION_RENEWAL,
}
NO_SALE_ORIGINS = frozenset({"subscription_payment_method_change"})
# Adjustment actions and statuses (Entities/Shared/Action.py, AdjustmentStatus.py).
ADJUSTMENT_ACTIONS = frozenset(
    {"credit", "credit_reverse", "refund", "chargeback", "chargeback_reverse", "chargeback_warning"}
)
ADJUSTMENT_STATUSES = frozenset({"pending_approval", "approved", "rejected", "reversed"})


class _Context:
    def __init__(self, test_mode: bool, occurred_at: float) -> None:
        self.test_mode = test_mode
        self.occurred_at = occurred_at

    def event(
        self, kind: EventKind, order_id: str, obj: Mapping[str, Any], **fields: Any
    ) -> NormalizedEvent:
        return NormalizedEvent(
            kind=kind,
            platform=platform,
            order_id=order_id,
            test_mode=self.test_mode,
            occurred_at=self.occurred_at,
            customer_id=optional_id(obj, "customer_id"),
            raw=obj,
            **fields,
        )


Handler = Callable[[dict[str, Any], _Context], NormalizedEvent | str]


def _parser(test_mode: bool) -> Parse:
    def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
        envelope = load_json_object(raw)
        event_id = get_key(envelope, "event_id", MAX_ID_CHARS)
        event_type = get_key(envelope, "event_type", MAX_TOPIC_CHARS)
        handler = EVENT_HANDLERS.get(event_type)
        if handler is None:
            # event_type is printable ASCII of at most 128 characters (get_key): safe to name.
            return ParseResult(event_id, event_type, reason="this event type is not used")
        data = get_object(envelope, "data")
        outcome = handler(data, _Context(test_mode, _occurred_at(envelope)))
        if isinstance(outcome, str):
            return ParseResult(event_id, event_type, reason=outcome)
        return ParseResult(event_id, event_type, events=(outcome,))

    return parse


def _occurred_at(envelope: Mapping[str, Any]) -> float:
    seconds = rfc3339_seconds(envelope.get("occurred_at"))
    if seconds is None:
        raise PayloadError("field 'occurred_at' must be an RFC 3339 date-time")
    return seconds


def _currency(obj: Mapping[str, Any], totals: Mapping[str, Any], where: str) -> str:
    """The totals' currency, else the object's (both name the same one in Paddle's bodies)."""
    if "currency_code" in totals:
        return currency_code(totals["currency_code"], f"{where}.currency_code")
    return currency_code(obj.get("currency_code"), "currency_code")


def _transaction(txn: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    status = txn.get("status")
    if not (isinstance(status, str) and status in PAID_STATUSES):  # a list is unhashable
        shown = described(status, TRANSACTION_STATUSES)
        return f"transaction status is {shown}; only a paid or completed transaction counts"
    origin = txn.get("origin")
    if isinstance(origin, str) and origin in NO_SALE_ORIGINS:
        return f"transaction origin {origin!r} only saves a payment method; not a sale"
    kind = ORIGIN_KINDS.get(origin) if isinstance(origin, str) else None
    return ctx.event(
        kind or EventKind.PURCHASE,
        get_id(txn, "id"),
        txn,
        amounts=_transaction_amounts(txn),
        item_count=_item_count(txn.get("items")),
        attributes=custom_data_attributes(txn.get("custom_data")),
    )


def _item_count(items: object) -> int:
    """Sum of the items' quantities (bounded); 1 when the body lists none."""
    return quantity_sum(items if isinstance(items, list) else [], "items[].quantity") or 1


def _transaction_amounts(txn: Mapping[str, Any]) -> dict[str, Money]:
    totals = get_object(get_object(txn, "details"), "totals")
    currency = _currency(txn, totals, "details.totals")
    # grand_total is what the buyer paid (total less account credit); older bodies lack it.
    key = "grand_total" if totals.get("grand_total") is not None else "total"
    total = lowest_denomination(totals.get(key), currency, f"details.totals.{key}")
    amounts = {"total": Money(total, currency)}
    if totals.get("subtotal") is not None:
        subtotal = lowest_denomination(totals["subtotal"], currency, "details.totals.subtotal")
        amounts["subtotal"] = Money(subtotal, currency)
    return amounts


def _adjustment(adjustment: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    action = adjustment.get("action")
    if action != "refund":
        return f"adjustment action is {described(action, ADJUSTMENT_ACTIONS)}; only a refund counts"
    status = adjustment.get("status")
    if status != "approved":
        shown = described(status, ADJUSTMENT_STATUSES)
        return f"refund status is {shown}; only an approved refund is recorded"
    totals = get_object(adjustment, "totals")
    currency = _currency(adjustment, totals, "totals")
    amount = lowest_denomination(totals.get("total"), currency, "totals.total")
    return ctx.event(
        EventKind.REFUND,
        get_id(adjustment, "id"),
        adjustment,
        amounts={"total": Money(amount, currency)},
        item_count=0,
        refund_of=get_id(adjustment, "transaction_id"),
    )


EVENT_HANDLERS: Mapping[str, Handler] = {
    "transaction.paid": _transaction,
    "transaction.completed": _transaction,
    "adjustment.created": _adjustment,
    "adjustment.updated": _adjustment,
}

# Live and sandbox parsing, made once: `configure` is called per source at start-up.
parse = _parser(test_mode=False)
_parse_sandbox = _parser(test_mode=True)


# --- options: the sandbox account ------------------------------------------------------------


class Options(Schema):
    """`sources.<name>` keys of a Paddle source."""

    # A notification destination of a Paddle sandbox account (its own secret; no flag in the
    # payload): its events are stored as test mode, sent only with allow_test_events.
    sandbox = fields.Boolean(load_default=False)


def configure(options: Mapping[str, Any]) -> Parse:
    return _parse_sandbox if options.get("sandbox") is True else parse


def _add_pairs(event: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    event["event_id"] = f"evt_{uuid.uuid4().hex[:26]}"  # a new event each time, not a retry
    event["data"]["custom_data"] = {"convert_experiments": pairs}


# The sample: the SDK's transaction.completed simulation payload (tests/fixtures/paddle/SOURCES.md).
SAMPLE = Sample("transaction_completed.json", add_pairs=_add_pairs)
SPEC = PlatformSpec(platform, SCHEME, parse, SAMPLE, options=Options, configure=configure)
