"""BigCommerce: Standard Webhooks signatures keyed with the app's client secret, thin order
webhooks, and the order itself read from the store's API by the dispatcher (the details step).

Signature (bigcommerce/docs `docs/integrations/webhooks/https-webhook-overview.mdx`): the
Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`),
base64 HMAC-SHA256 of `"{id}.{timestamp}.{body}"`. BigCommerce's own example hands the
standardwebhooks library `base64(client_secret)`, which the library decodes again: the key is
the client secret's bytes, as the merchant copies it from the Developer Portal. The 5-minute
window of Standard Webhooks applies.

Payload (`docs/integrations/webhooks/events/index.mdx`): `{scope, store_id, data: {type, id,
status?, refund?}, hash, created_at, producer: "stores/<hash>"}` and nothing else: the amount,
items, currency and customer come from `GET /stores/<hash>/v2/orders/<id>` (its `items_total`
is the item count, so `/v2/orders/<id>/products` is not read) and the experiment data from the
order's metafields (`GET /stores/<hash>/v3/orders/<id>/metafields`).

What counts: `store/order/statusUpdated` to a paid status (11 Awaiting Fulfillment, 9 Awaiting
Shipment, 8 Awaiting Pickup, 3 Partially Shipped, 2 Shipped, 10 Completed), and
`store/order/created`, which also fires for incomplete orders: it is a candidate the details
step settles (an order read while unpaid is recorded as not a purchase, and the status change
that follows asks again). Both are keyed by the order id, so one order counts once.

Delivery key: the body's `hash`. BigCommerce documents it as the same when a hook fires twice
for one event; it is inside the signed body. The `webhook-id` header is signed too, but
BigCommerce does not say it stays the same across its own retries; it is the key only for a
body without a hash.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, ClassVar

from marshmallow import Schema, fields, validate

from adapters.base import (
    Details,
    DetailsOutcome,
    Later,
    NotAPurchase,
    PlatformSpec,
    Sample,
    StoredEvent,
    provisional_amount,
)
from adapters.options import api_base_field
from adapters.payload import (
    email_digest,
    get_key,
    get_object,
    get_timestamp,
    int_id,
    load_json_object,
)
from adapters.schemes import Fetch, StandardWebhooks
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_ID_CHARS,
    MAX_TOPIC_CHARS,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
    bounded_attributes,
    check_count,
)
from webhooks.core.money import currency_code, from_decimal_string

platform = "bigcommerce"
API_BASE = "https://api.bigcommerce.com"  # used when `api_base` is not set


class ClientSecretWebhooks(StandardWebhooks):
    """Standard Webhooks keyed with the secret's own bytes (BigCommerce's client secret),
    not with a `whsec_` base64 secret."""

    secret_prefix: ClassVar[str] = ""

    @classmethod
    def key(cls, secret: str) -> bytes | None:
        try:
            return secret.encode("utf-8") or None
        except UnicodeEncodeError:  # a lone surrogate
            return None

    def secret_problem(self, secret: str) -> str | None:
        if not re.fullmatch(r"[\x21-\x7e]+", secret):
            return "must be the app's client secret as BigCommerce shows it (printable ASCII)"
        return None


SCHEME = ClientSecretWebhooks()

# Order status ids (bigcommerce/docs reference/orders.v2.oas2.yml, order statuses).
STATUS_NAMES: Mapping[int, str] = {
    0: "Incomplete",
    1: "Pending",
    2: "Shipped",
    3: "Partially Shipped",
    4: "Refunded",
    5: "Cancelled",
    6: "Declined",
    7: "Awaiting Payment",
    8: "Awaiting Pickup",
    9: "Awaiting Shipment",
    10: "Completed",
    11: "Awaiting Fulfillment",
    12: "Manual Verification Required",
    13: "Disputed",
    14: "Partially Refunded",
}
PAID_STATUSES = frozenset({11, 9, 8, 3, 2, 10})
# An order read in one of these was paid before (a refund or a dispute needs a payment): the
# purchase counts; the refund is recorded from store/order/refund/created.
PAID_BEFORE = frozenset({4, 14, 13})

_PRODUCER = re.compile(r"\Astores/([a-z0-9]{1,64})\Z", re.ASCII)
_STORE_HASH = re.compile(r"\A[a-z0-9]{1,64}\Z", re.ASCII)
_REFERENCE = re.compile(r"\A([a-z0-9]{1,64})/([1-9][0-9]{0,19})\Z", re.ASCII)
MAX_METAFIELDS = 250  # one page (BigCommerce's largest); more are not read


def status_name(value: object) -> str:
    """A status id for a reason text: its documented name, or only that it is unexpected."""
    if isinstance(value, int) and not isinstance(value, bool) and value in STATUS_NAMES:
        return f"'{STATUS_NAMES[value]}' ({value})"
    return "an unexpected status"


# --- parse -----------------------------------------------------------------------------------


class _Delivery:
    """The envelope's facts every handler shares."""

    def __init__(self, envelope: Mapping[str, Any], store: str, occurred_at: float) -> None:
        self.envelope = envelope
        self.store = store
        self.occurred_at = occurred_at

    def purchase(self, order_id: str) -> NormalizedEvent:
        # Only the order id is known: the amount and count come with the details.
        return NormalizedEvent(
            kind=EventKind.PURCHASE,
            platform=platform,
            order_id=order_id,
            amounts={"total": provisional_amount()},
            item_count=0,
            test_mode=False,  # BigCommerce has no test flag: sandbox stores are other stores
            occurred_at=self.occurred_at,
            details_ref=f"{self.store}/{order_id}",
            raw=self.envelope,
        )


def _status_updated(data: dict[str, Any], order_id: str, d: _Delivery) -> NormalizedEvent | str:
    status = get_object(data, "status")
    new = status.get("new_status_id")
    if isinstance(new, bool) or not isinstance(new, int) or new not in PAID_STATUSES:
        return f"the order's new status is {status_name(new)}; only a paid status counts"
    return d.purchase(order_id)


def _created(data: dict[str, Any], order_id: str, d: _Delivery) -> NormalizedEvent | str:
    return d.purchase(order_id)  # paid or not: the details step reads the order's status


def _refund_created(data: dict[str, Any], order_id: str, d: _Delivery) -> NormalizedEvent | str:
    refund_id = int_id(get_object(data, "refund").get("refund_id"), "data.refund.refund_id")
    # Recorded, not sent; its amount is only in the API (refunds are not read: it stays
    # provisional: 0 in ISO 4217's "no currency" code).
    return NormalizedEvent(
        kind=EventKind.REFUND,
        platform=platform,
        order_id=f"{order_id}:refund:{refund_id}",
        amounts={"total": provisional_amount()},
        item_count=0,
        test_mode=False,
        occurred_at=d.occurred_at,
        refund_of=order_id,
        details_ref=f"{d.store}/{order_id}",
        raw=d.envelope,
    )


Handler = Callable[[dict[str, Any], str, _Delivery], NormalizedEvent | str]
SCOPE_HANDLERS: Mapping[str, Handler] = {
    "store/order/statusUpdated": _status_updated,
    "store/order/created": _created,
    "store/order/refund/created": _refund_created,
}


def configure(options: Mapping[str, Any]) -> Callable[[Mapping[str, str], bytes], ParseResult]:
    """The parse function of a source: deliveries from a store other than its `store_hash`
    are ignored (an app installed on several stores signs all of them with one secret)."""
    store_hash = options.get("store_hash")

    def parse_for_source(headers: Mapping[str, str], raw: bytes) -> ParseResult:
        return _parse(headers, raw, store_hash if isinstance(store_hash, str) else None)

    return parse_for_source


def _parse(headers: Mapping[str, str], raw: bytes, store_hash: str | None) -> ParseResult:
    envelope = load_json_object(raw)
    scope = get_key(envelope, "scope", MAX_TOPIC_CHARS)
    key = _delivery_key(envelope, headers)
    handler = SCOPE_HANDLERS.get(scope)
    if handler is None:
        return ParseResult(key, scope, reason="this scope is not used")
    producer = envelope.get("producer")
    found = _PRODUCER.match(producer) if isinstance(producer, str) else None
    if found is None:
        raise PayloadError("field 'producer' must be stores/<store hash>")
    store = found.group(1)
    if store_hash is not None and store != store_hash:
        return ParseResult(key, scope, reason="the delivery is from another store than store_hash")
    data = get_object(envelope, "data")
    if data.get("type") != "order":
        raise PayloadError("field 'data.type' must be 'order'")
    order_id = int_id(data.get("id"), "data.id")
    delivery = _Delivery(envelope, store, get_timestamp(envelope, "created_at"))
    outcome = handler(data, order_id, delivery)
    if isinstance(outcome, str):
        return ParseResult(key, scope, reason=outcome)
    return ParseResult(key, scope, events=(outcome,))


def _delivery_key(envelope: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    if "hash" in envelope:
        return get_key(envelope, "hash", MAX_ID_CHARS)
    return get_key(headers, "webhook-id", MAX_ID_CHARS)  # verified: signed, printable, no "."


parse = configure({})

# --- details: the order from the store's API -------------------------------------------------


def details(event: StoredEvent, options: Mapping[str, Any], fetch: Fetch) -> DetailsOutcome:
    """The order's amount, items, customer and metafields (the experiment data), or why it
    does not count. An answer that is not the documented order is a PayloadError: the
    dispatcher waits and asks again, and never sends a guess."""
    found = _REFERENCE.match(event.reference)
    if found is None:
        raise PayloadError("the stored details reference is not <store hash>/<order id>")
    store, order_id = found.groups()
    if store != options.get("store_hash"):
        return NotAPurchase("the order is from another store than the source's store_hash")
    base = f"{str(options.get('api_base') or API_BASE).rstrip('/')}/stores/{store}"
    headers = {"X-Auth-Token": str(options.get("api_token", "")), "Accept": "application/json"}
    status, body = fetch("GET", f"{base}/v2/orders/{order_id}", headers, None)
    if status == 404:
        return NotAPurchase(f"order {order_id} was not found in the store")
    if status != 200:
        return Later(f"the order answered HTTP {status}")
    order = load_json_object(body)
    if order.get("id") != int(order_id):
        raise PayloadError("field 'id' is not the order asked for")
    status_id = order.get("status_id")
    if isinstance(status_id, bool) or not isinstance(status_id, int):
        raise PayloadError("field 'status_id' must be an integer")
    if order.get("is_deleted") is True:
        return NotAPurchase("the order was deleted")
    if status_id not in PAID_STATUSES | PAID_BEFORE:
        return NotAPurchase(f"the order's status is {status_name(status_id)}; it is not paid")
    attributes = _metafields(fetch, f"{base}/v3/orders/{order_id}/metafields", headers)
    if isinstance(attributes, Later):
        return attributes
    return _order_details(order, attributes)


def _order_details(order: Mapping[str, Any], attributes: dict[str, str]) -> Details:
    # default_currency_code is the transactional currency, the one the shopper paid in;
    # currency_code is only the storefront's display currency (orders.v2.oas2.yml).
    currency = currency_code(order.get("default_currency_code"), "default_currency_code")
    amounts = {"total": Money(_amount(order, "total_inc_tax"), currency)}
    if order.get("subtotal_ex_tax") is not None:
        amounts["subtotal"] = Money(_amount(order, "subtotal_ex_tax"), currency)
    customer = order.get("customer_id")
    if isinstance(customer, bool) or not isinstance(customer, int) or customer < 0:
        raise PayloadError("field 'customer_id' must be an integer (0 for a guest)")
    billing = order.get("billing_address")
    email = billing.get("email") if isinstance(billing, dict) else None
    return Details(
        amounts=amounts,
        item_count=check_count(order.get("items_total"), "field 'items_total'"),
        attributes=attributes,
        customer_id=int_id(customer, "customer_id") if customer else None,  # 0: a guest
        email_digest=email_digest(email),
    )


def _amount(order: Mapping[str, Any], key: str) -> Decimal:
    return from_decimal_string(order.get(key), key)


def _metafields(fetch: Fetch, url: str, headers: Mapping[str, str]) -> dict[str, str] | Later:
    """The order's metafields as attributes (key -> value; the first of a repeated key
    wins). None (404) is no metafields."""
    status, body = fetch("GET", f"{url}?limit={MAX_METAFIELDS}", headers, None)
    if status == 404:
        return {}
    if status != 200:
        return Later(f"the order's metafields answered HTTP {status}")
    data = load_json_object(body).get("data")
    if not isinstance(data, list):
        raise PayloadError("field 'data' of the metafields must be a list")
    first: dict[str, object] = {}
    for entry in data[:MAX_METAFIELDS]:
        if not isinstance(entry, dict):
            continue
        key = entry.get("key")
        if isinstance(key, str) and key not in first:
            first[key] = entry.get("value")
    return bounded_attributes(first.items())


# --- options ---------------------------------------------------------------------------------


class Options(Schema):
    """`sources.<name>` keys of a BigCommerce source: the store and an API account token
    (scope Orders: read-only) to read its orders. Put the token in the file as
    `"${BIGCOMMERCE_API_TOKEN}"`: the loader reads it from the environment."""

    store_hash = fields.String(
        required=True,
        validate=validate.Regexp(_STORE_HASH, error="must be the store hash (stores/<hash>)"),
    )
    api_token = fields.String(
        required=True,
        validate=validate.Regexp(r"\A[\x21-\x7e]{8,512}\Z", error="must be an API token"),
    )
    api_base = api_base_field()


def _add_pairs(payload: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    # The pairs live in the order's metafields (read through the API), not in the webhook:
    # only a new delivery is made here.
    payload["hash"] = uuid.uuid4().hex + "00000000"


# The sample: the documented store/order/statusUpdated payload (tests/fixtures/bigcommerce/).
SAMPLE = Sample(
    "store_order_statusUpdated.json",
    secrets=("contract_client_secret_current_1", "contract_client_secret_previous_2"),
    options={"store_hash": "abcde", "api_token": "contract_api_token_0001"},
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
