"""Whatever a signed sender puts in a request gets a clear answer, never a 500: the platforms'
real payloads with fields replaced by values of the wrong type, cut short, or not UTF-8."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from tests.conftest import Service
from tests.payloads import fixture, stripe_event

WRONG_VALUES: list[Any] = [None, [], {}, "x", "", 1.5, -1, True, 2**70, [{"quantity": "2"}]]
STRIPE = [
    "checkout_session_completed",
    "payment_intent_succeeded",
    "invoice_paid_pre_basil",
    "invoice_paid_basil",
    "charge_refunded",
    "refund_created",
]
SHOPIFY = [
    ("orders_paid", "orders/paid"),
    ("orders_create", "orders/create"),
    ("refunds_create", "refunds/create"),
    ("customers_redact", "customers/redact"),
]


def mutations(payload: dict[str, Any], rng: random.Random, count: int) -> list[dict[str, Any]]:
    keys = sorted(payload)
    out = []
    for _ in range(count):
        mutated = copy.deepcopy(payload)
        mutated[rng.choice(keys)] = rng.choice(WRONG_VALUES)
        out.append(mutated)
    return out


@pytest.mark.parametrize("name", STRIPE)
def test_stripe_objects_with_wrong_types_never_500(
    service: Service, name: str, caplog: Any
) -> None:
    rng = random.Random(name)
    event = stripe_event(name)
    event["livemode"] = True
    statuses = set()
    for i, obj in enumerate(mutations(event["data"]["object"], rng, 25)):
        mutated = {**event, "id": f"evt_{name}_{i}", "data": {"object": obj}}
        statuses.add(service.post_stripe(mutated).status_code)
    envelope = {k: v for k, v in event.items() if k != "data"}
    for changed in mutations(envelope, rng, 10):
        changed["data"] = event["data"]
        statuses.add(service.post_stripe(changed).status_code)
    assert statuses <= {200, 400}
    assert "mapping failed" not in caplog.text  # each bad shape is named, not a stray error
    service.drain()  # the dispatcher copes with whatever was stored, too


@pytest.mark.parametrize(("name", "topic"), SHOPIFY)
def test_shopify_payloads_with_wrong_types_never_500(
    service: Service, name: str, topic: str, caplog: Any
) -> None:
    rng = random.Random(name)
    statuses = {
        service.post_shopify(topic, payload, event_id=f"{name}-{i}").status_code
        for i, payload in enumerate(mutations(fixture("shopify", name), rng, 30))
    }
    assert statuses <= {200, 400}
    assert "mapping failed" not in caplog.text
    service.drain()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"\xff\xfe\x00", 400),
        (b'{"id": "evt_1", "type": ', 400),
        (b"null", 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        # a huge float quantity is not a count: the invoice counts as one item, not a crash
        (
            b'{"id": "evt", "type": "invoice.paid", "created": 1, "livemode": true, "data":'
            b' {"object": {"id": "in_1", "currency": "usd", "amount_paid": 10, "lines":'
            b' {"data": [{"quantity": 1e400}]}}}}',
            200,
        ),
    ],
)
def test_broken_stripe_bodies_get_a_clear_answer(service: Service, raw: bytes, status: int) -> None:
    response = service.post_stripe({}, raw=raw)
    assert response.status_code == status
    assert response.is_json
