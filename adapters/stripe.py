"""Stripe: `Stripe-Signature` verification and event mapping.

Signature scheme (docs.stripe.com/webhooks/signatures, stripe-python `_webhook.py`): header
`t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 of `"{t}.{raw body}"` keyed with the endpoint
secret as UTF-8, hex. Any v1 may match (secret rolling); `v0` entries are ignored. The window
is the source's `tolerance_seconds` (300 by default, as in Stripe's libraries), both ways.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from adapters.base import PlatformSpec, Sample
from adapters.options import api_base_field
from adapters.payload import (
    described,
    email_digest,
    get_id,
    get_int,
    get_key,
    get_object,
    get_timestamp,
    load_json_object,
    optional_id,
    quantity_sum,
    string_map,
)
from adapters.schemes import TimestampedHmac
from webhooks.core.events import (
    MAX_ID_CHARS,
    MAX_TOPIC_CHARS,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
    bounded_attributes,
)
from webhooks.core.money import currency_code, from_minor_units

platform = "stripe"

# t: 1-12 ASCII digits, v1: 64 lower-case hex digits, the header at most 4 KB (schemes.py).
SCHEME = TimestampedHmac.stripe_style("Stripe-Signature")

# Stripe's currency exponents (docs.stripe.com/currencies). ISK and UGX are whole-unit
# currencies that Stripe represents with two decimals, so they stay in the default case.
STRIPE_ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
STRIPE_THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])


def stripe_exponent(currency: str) -> int:
    code = currency.upper()
    if code in STRIPE_ZERO_DECIMAL:
        return 0
    if code in STRIPE_THREE_DECIMAL:
        return 3
    return 2


def minor_units(amount: object, currency: str, what: str) -> Decimal:
    """A Stripe integer amount in the currency's minor units, in major units."""
    return from_minor_units(amount, stripe_exponent(currency), what)


# invoice.billing_reason -> what the paid invoice means. The first invoice of a subscription
# is keyed by the subscription id, so the Checkout Session that created it counts once.
INVOICE_KINDS: Mapping[str, EventKind] = {
    "subscription_create": EventKind.PURCHASE,
    "subscription_cycle": EventKind.SUBSCRIPTION_RENEWAL,
    "subscription_update": EventKind.SUBSCRIPTION_RENEWAL,
    "subscription_threshold": EventKind.SUBSCRIPTION_RENEWAL,
}
PAID_SESSION_STATUSES = frozenset({"paid"})
# Documented values, named in reasons; any other value is only called unexpected.
SESSION_PAYMENT_STATUSES = frozenset({"paid", "unpaid", "no_payment_required"})
SESSION_MODES = frozenset({"payment", "subscription", "setup"})


def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
    envelope = load_json_object(raw)
    event_id = get_key(envelope, "id", MAX_ID_CHARS)
    event_type = get_key(envelope, "type", MAX_TOPIC_CHARS)
    obj = get_object(get_object(envelope, "data"), "object")
    handler = EVENT_HANDLERS.get(event_type)
    if handler is None:
        # event_type is printable ASCII of at most 128 characters (get_key): safe to name.
        return ParseResult(event_id, event_type, reason="this event type is not used")
    context = _Context(
        test_mode=envelope.get("livemode") is not True,
        occurred_at=get_timestamp(envelope, "created"),
    )
    outcome = handler(obj, context)
    if isinstance(outcome, str):
        return ParseResult(event_id, event_type, reason=outcome)
    return ParseResult(event_id, event_type, events=(outcome,))


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
            customer_id=optional_id(obj, "customer"),
            raw=obj,
            **fields,
        )


def _money(obj: Mapping[str, Any], amount_key: str) -> Money:
    currency = currency_code(obj.get("currency"), "currency")
    return Money(minor_units(obj.get(amount_key), currency, amount_key), currency)


def _checkout_session(session: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    status = session.get("payment_status")
    if not (isinstance(status, str) and status in PAID_SESSION_STATUSES):  # lists: unhashable
        shown = described(status, SESSION_PAYMENT_STATUSES)
        return f"checkout session payment_status is {shown}; only a paid session counts"
    mode = session.get("mode")
    if mode == "subscription":
        order_id = optional_id(session, "subscription") or get_id(session, "id")
    elif mode == "payment":
        order_id = optional_id(session, "payment_intent") or get_id(session, "id")
    else:
        return f"checkout session mode {described(mode, SESSION_MODES)} takes no payment"
    amounts = {"total": _money(session, "amount_total")}
    if isinstance(session.get("amount_subtotal"), int):
        amounts["subtotal"] = _money(session, "amount_subtotal")
    details = session.get("presentment_details")
    if isinstance(details, dict) and details.get("presentment_currency"):
        currency = currency_code(details["presentment_currency"], "presentment_currency")
        value = minor_units(details.get("presentment_amount"), currency, "presentment_amount")
        amounts["presentment_total"] = Money(value, currency)
    customer_details = session.get("customer_details")
    email = customer_details.get("email") if isinstance(customer_details, dict) else None
    return ctx.event(
        EventKind.PURCHASE,
        order_id,
        session,
        amounts=amounts,
        item_count=_line_item_count(session.get("line_items")),
        attributes=_session_attributes(session),
        email_digest=email_digest(email or session.get("customer_email")),
    )


def _session_attributes(session: Mapping[str, Any]) -> dict[str, str]:
    """The session's metadata, and its `client_reference_id` (a shop may put the experiment
    pairs or Convert's visitor data there) unless the metadata has a key of that name."""
    reference = session.get("client_reference_id")
    entries: list[tuple[object, object]] = list(string_map(session.get("metadata")).items())
    if isinstance(reference, str) and reference:
        entries.append(("client_reference_id", reference))
    return bounded_attributes(entries)


def _payment_intent(intent: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    received = "amount_received" if isinstance(intent.get("amount_received"), int) else "amount"
    return ctx.event(
        EventKind.PURCHASE,
        get_id(intent, "id"),
        intent,
        amounts={"total": _money(intent, received)},
        item_count=1,
        attributes=string_map(intent.get("metadata")),
        email_digest=email_digest(intent.get("receipt_email")),
    )


def _invoice(invoice: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    reason = invoice.get("billing_reason")
    kind = INVOICE_KINDS.get(reason) if isinstance(reason, str) else None  # str(): unbounded
    subscription, sub_metadata = _invoice_subscription(invoice)
    invoice_id = get_id(invoice, "id")
    order_id = subscription if reason == "subscription_create" and subscription else invoice_id
    attributes = _invoice_attributes(invoice, sub_metadata)
    amounts = {"total": _money(invoice, "amount_paid")}
    if isinstance(invoice.get("subtotal"), int):
        amounts["subtotal"] = _money(invoice, "subtotal")
    return ctx.event(
        kind or EventKind.PURCHASE,
        order_id,
        invoice,
        amounts=amounts,
        item_count=_line_item_count(invoice.get("lines")),
        attributes=attributes,
        email_digest=email_digest(invoice.get("customer_email")),
    )


def _invoice_attributes(invoice: Mapping[str, Any], sub_metadata: dict[str, str]) -> dict[str, str]:
    """Invoice metadata over subscription metadata over line metadata (a later line over an
    earlier one). Merged highest precedence first, so the 50-entry bound drops line keys, never
    an invoice or subscription key such as the experiment pairs."""
    lines = invoice.get("lines")
    line_data = lines.get("data") if isinstance(lines, dict) else None
    line_maps = [
        string_map(line.get("metadata"))
        for line in (line_data if isinstance(line_data, list) else [])
        if isinstance(line, dict)
    ]
    merged: dict[str, str] = {}
    for source in (string_map(invoice.get("metadata")), sub_metadata, *reversed(line_maps)):
        for key, value in source.items():
            merged.setdefault(key, value)
    # Each map is bounded; their merge is bounded again (many lines, 50 keys each).
    return bounded_attributes(merged.items())


def _invoice_subscription(invoice: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    """Subscription id and metadata snapshot, in both invoice shapes.

    Before API version 2025-03-31.basil: top-level `subscription` and `subscription_details`.
    From basil on: `parent.subscription_details.{subscription, metadata}`.
    """
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    if isinstance(details, dict):
        return optional_id(details, "subscription"), string_map(details.get("metadata"))
    legacy = invoice.get("subscription_details")
    metadata = string_map(legacy.get("metadata")) if isinstance(legacy, dict) else {}
    return optional_id(invoice, "subscription"), metadata


def _line_item_count(lines: object) -> int:
    """Sum of quantities when the payload carries line items; 1 when it does not."""
    data = lines.get("data") if isinstance(lines, dict) else None
    if not isinstance(data, list):
        return 1
    return quantity_sum(data, "lines.data[].quantity") or 1


def _charge_refunded(charge: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    refunded = get_int(charge, "amount_refunded")
    charge_id = get_id(charge, "id")
    # amount_refunded is cumulative: each partial refund gives a distinct key.
    return ctx.event(
        EventKind.REFUND,
        f"{charge_id}:refunded:{refunded}",
        charge,
        amounts={"total": _money(charge, "amount_refunded")},
        item_count=0,
        refund_of=optional_id(charge, "payment_intent") or charge_id,
    )


def _refund(refund: dict[str, Any], ctx: _Context) -> NormalizedEvent | str:
    return ctx.event(
        EventKind.REFUND,
        get_id(refund, "id"),
        refund,
        amounts={"total": _money(refund, "amount")},
        item_count=0,
        refund_of=optional_id(refund, "payment_intent") or optional_id(refund, "charge"),
    )


EVENT_HANDLERS: Mapping[str, Callable[[dict[str, Any], _Context], NormalizedEvent | str]] = {
    "checkout.session.completed": _checkout_session,
    "checkout.session.async_payment_succeeded": _checkout_session,
    "payment_intent.succeeded": _payment_intent,
    "invoice.paid": _invoice,
    "invoice.payment_succeeded": _invoice,
    "charge.refunded": _charge_refunded,
    "refund.created": _refund,
}

# --- options: the API credentials for the customer record and Checkout line items ---------

API_BASE = "https://api.stripe.com"  # used when `api_base` is not set
# Secret (sk_) or, better, restricted (rk_) keys: docs.stripe.com/keys. A restricted key with
# read access to Customers and Checkout Sessions is all the service needs.
_API_KEY = re.compile(r"\A(?:rk|sk)_(?:test|live)_[0-9A-Za-z]{8,247}\Z", re.ASCII)


class Options(Schema):
    """`sources.<name>` keys of a Stripe source. No defaults are filled in, so a source without
    them loads as {}; the customer lookup applies API_BASE."""

    # Put `${STRIPE_API_KEY}` in the file: the loader reads it from the environment.
    api_key = fields.String(
        validate=validate.Regexp(_API_KEY, error="must be a Stripe rk_ or sk_ (test/live) key")
    )
    api_base = api_base_field()

    @validates_schema
    def _base_needs_key(self, data: Mapping[str, Any], **_: Any) -> None:
        if "api_base" in data and "api_key" not in data:
            raise ValidationError("is required when api_base is set", "api_key")


def _add_pairs(event: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    event["id"] = f"evt_sample_{uuid.uuid4().hex[:12]}"  # a new event each time, not a retry
    event["data"]["object"]["metadata"] = {"convert_experiments": pairs}


# The sample: Stripe CLI's checkout.session.completed (tests/fixtures/stripe/SOURCES.md [A]).
SAMPLE = Sample("checkout_session_completed.json", add_pairs=_add_pairs)
SPEC = PlatformSpec(platform, SCHEME, parse, SAMPLE, options=Options)
