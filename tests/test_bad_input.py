"""Whatever a signed sender puts in a request gets a clear answer, never a 500: the platforms'
real payloads with fields replaced by values of the wrong type, cut short, or not UTF-8.

Each replaced field has an expected outcome written down here from the adapters' contract
(which fields each topic reads, and how): rejected (400 naming the field, the body kept as
`rejected` with that reason), the same purchase as the unchanged payload (a duplicate), a
different purchase (a changed id), or ignored with a given reason. A field the adapter does
not read changes nothing. After the dispatcher runs, Convert has received exactly one request
per purchase the answers said was new, and nothing else."""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import body, experiments, fixture, shopify_order, stripe_event
from webhooks.storage.schema import deliveries, events

WRONG_VALUES: list[Any] = [None, [], {}, "x", "", 1.5, -1, True, 2**70, [{"quantity": "2"}]]
PAIRS = "100-200"
GOAL = {"purchase": "100", "subscription_renewal": "300"}  # tests/config_file.py
ALREADY_COUNTED = "purchase already counted from an earlier delivery"


# --- what each replaced field should do -----------------------------------------------------


@dataclass(frozen=True)
class Expect:
    outcome: str  # rejected | same | new | ignored
    detail: str = ""  # the field named (rejected), the order id (new), the reason (ignored)
    kind: str = ""  # the new event's kind (new)


SAME = Expect("same")


def rejected(field: str) -> Expect:
    return Expect("rejected", field)


def new(order_id: str, kind: str = "purchase") -> Expect:
    return Expect("new", order_id, kind)


def ignored(reason: str) -> Expect:
    return Expect("ignored", reason)


Rule = Callable[[Any], Expect]


def always(expect: Expect) -> Rule:
    return lambda value: expect


def only(valid: list[Any], field: str, then: Expect = SAME) -> Rule:
    """`then` for the listed values (compared with their JSON type), rejected otherwise."""
    return lambda value: then if any(_same_json(value, v) for v in valid) else rejected(field)


def _same_json(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def optional_id(field: str, text: Expect, absent: Expect) -> Rule:
    """Stripe optional ids: a non-empty string is an id; a non-positive or past-64-bit
    integer is refused; anything else (empty, a list, a float, a bool, an object without id)
    is absent."""

    def rule(value: Any) -> Expect:
        if isinstance(value, str) and value:
            return text
        if isinstance(value, int) and not isinstance(value, bool) and not 0 < value < 2**64:
            return rejected(field)
        return absent

    return rule


def optional_minor_units(field: str) -> Rule:
    """An amount read only when it is a JSON integer; the integers among WRONG_VALUES (-1,
    true, 2**70) are all refused. Any other value leaves the amount it stands beside."""
    return lambda value: rejected(field) if isinstance(value, int) else SAME


def shown(value: Any) -> str:
    return "missing" if value is None else "an unexpected value"


CUSTOMER = {"customer": optional_id("customer", SAME, SAME)}
STRIPE_ENVELOPE: dict[str, Rule] = {
    "id": only(["x"], "id"),
    "type": only(["x"], "type", ignored("this event type is not used")),
    "created": always(rejected("created")),
    "data": lambda v: rejected("object" if v == {} else "data"),
    # livemode false is a test-mode copy of the same purchase: still one purchase
}


def stripe_rules(name: str, obj: Mapping[str, Any]) -> dict[str, Rule]:
    if name.startswith("checkout_session"):
        return {
            **CUSTOMER,
            "payment_status": lambda v: ignored(
                f"checkout session payment_status is {shown(v)}; only a paid session counts"
            ),
            "mode": lambda v: ignored(f"checkout session mode {shown(v)} takes no payment"),
            # no payment intent: the session's own id is the order
            "payment_intent": optional_id("payment_intent", new("x"), new(obj["id"])),
            "amount_total": always(rejected("amount_total")),
            "amount_subtotal": optional_minor_units("amount_subtotal"),
            "currency": always(rejected("currency")),
        }
    if name == "payment_intent_succeeded":
        return {
            **CUSTOMER,
            "id": only(["x"], "id", new("x")),
            # not an integer: `amount` (the same 10.99) is read instead
            "amount_received": optional_minor_units("amount_received"),
            "currency": always(rejected("currency")),
        }
    if name == "invoice_paid_pre_basil":  # subscription_create: the subscription is the order
        return {
            **CUSTOMER,
            "id": only(["x"], "id"),
            "billing_reason": always(new(obj["id"])),
            "subscription": optional_id("subscription", new("x"), new(obj["id"])),
            "amount_paid": always(rejected("amount_paid")),
            "subtotal": optional_minor_units("subtotal"),
            "currency": always(rejected("currency")),
        }
    if name == "invoice_paid_basil":  # subscription_cycle: a renewal, the invoice is the order
        return {
            **CUSTOMER,
            "id": only(["x"], "id", new("x", "subscription_renewal")),
            "billing_reason": always(new(obj["id"])),
            "amount_paid": always(rejected("amount_paid")),
            "subtotal": optional_minor_units("subtotal"),
            "currency": always(rejected("currency")),
        }
    if name == "charge_refunded":
        return {
            **CUSTOMER,
            "id": only(["x"], "id", new("x:refunded:100", "refund")),
            "amount_refunded": always(rejected("amount_refunded")),
            "payment_intent": optional_id("payment_intent", SAME, SAME),
            "currency": always(rejected("currency")),
        }
    assert name == "refund_created"
    return {
        **CUSTOMER,
        "id": only(["x"], "id", new("x", "refund")),
        "amount": always(rejected("amount")),
        "payment_intent": optional_id("payment_intent", SAME, SAME),
        "charge": optional_id("charge", SAME, SAME),  # read: the fixture has no payment_intent
        "currency": always(rejected("currency")),
    }


ORDER_RULES: dict[str, Rule] = {
    "id": always(rejected("id")),
    "total_price": only([1.5], "total_price"),  # 1.5 is a JSON number: a decimal amount
    "subtotal_price": only([None, 1.5], "subtotal_price"),
    "line_items": only([[], [{"quantity": "2"}]], "line_items"),
    "currency": always(rejected("currency")),
}
NOT_PAID = {
    "orders/paid": "orders/paid body is not paid (financial_status {}); not counted",
    "orders/create": "order is not paid yet (financial_status {}); orders/paid will count it",
}
SHOPIFY_RULES: dict[str, dict[str, Rule]] = {
    "refunds/create": {
        "id": always(rejected("id")),
        "order_id": always(rejected("order_id")),
        "refund_line_items": only([[], [{"quantity": "2"}]], "refund_line_items"),
        "transactions": only([[], [{"quantity": "2"}]], "transactions"),
    },
    "customers/redact": {
        "shop_id": only([-1, 2**70], "shop_id"),
        "shop_domain": only(["x", ""], "shop_domain"),
        "customer": only([{}], "customer"),
        "orders_to_redact": lambda v: (
            SAME
            if v == []
            else rejected("orders_to_redact[]" if v == [{"quantity": "2"}] else "orders_to_redact")
        ),
    },
}


def shopify_rules(topic: str) -> dict[str, Rule]:
    if topic in NOT_PAID:
        return {
            **ORDER_RULES,
            "financial_status": lambda v: ignored(NOT_PAID[topic].format(shown(v))),
        }
    return SHOPIFY_RULES[topic]


# --- posting and checking ---------------------------------------------------------------


class Ledger:
    """What the answers so far say must be stored and sent."""

    def __init__(self, service: Service, base: tuple[str, str] | None, same: dict[str, Any]):
        self.service = service
        self.base = base  # the unchanged payload's (order id, kind), if it is an event
        self.same = same  # the answer a copy of the unchanged payload gets
        self.events: set[tuple[str, str]] = {base} if base else set()
        self.last_delivery = self.newest_delivery_id()

    def newest_delivery_id(self) -> int:
        with self.service.runtime.engine.connect() as conn:
            rows = conn.execute(select(deliveries.c.id)).scalars().all()
        return max(rows, default=0)

    def new_deliveries(self) -> list[Any]:
        with self.service.runtime.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries).where(deliveries.c.id > self.last_delivery)
            ).all()
        self.last_delivery = self.newest_delivery_id()
        return list(rows)

    def check(self, response: Any, raw: bytes, expect: Expect, what: str) -> None:
        """One answer, and the one delivery row it left."""
        answer = response.json
        (row,) = self.new_deliveries()
        if expect.outcome == "rejected":
            assert response.status_code == 400, (what, answer)
            assert list(answer) == ["error"] and f"'{expect.detail}'" in answer["error"], what
            assert (row.status, row.reason, row.body) == ("rejected", answer["error"], raw), what
            return
        assert response.status_code == 200, (what, answer)
        found = [(e["order_id"], e["kind"]) for e in answer.get("events", [])]
        if expect.outcome == "same":
            wanted = self.same
            assert found == ([self.base] if self.base else []), what
        elif expect.outcome == "ignored":
            wanted = {"status": "ignored", "reason": expect.detail}
            assert found == [], what
        else:
            event = (expect.detail, expect.kind)
            wanted = {"status": "duplicate" if event in self.events else "accepted"}
            self.events.add(event)
            assert found == [event], what
        assert {k: answer.get(k) for k in wanted} == wanted, (what, answer)
        assert (row.status, row.reason) == (answer["status"], answer.get("reason")), what

    def check_dispatch(self, recorder: ConvertRecorder, sendable: Callable[[str], bool]) -> None:
        """Convert got one request per new sendable purchase; every event ended as it should."""
        self.service.drain()
        expected = Counter((GOAL[kind], order) for order, kind in self.events if sendable(kind))
        assert Counter(goal_and_order(path) for path in recorder.paths) == expected
        with self.service.runtime.engine.connect() as conn:
            rows = conn.execute(select(events)).all()
        assert sorted((r.order_id, r.kind, r.state, r.reason_code) for r in rows) == sorted(
            (order, kind, *(("sent", None) if sendable(kind) else ("skipped", "not_sent_kind")))
            for order, kind in self.events
        )


def goal_and_order(path: str) -> tuple[str, str]:
    found = re.search(r"[?&]t=([0-9.]+)%7C([^%]+)%7C", path)
    assert found and f"e={PAIRS}&" in path, path
    return found.group(1), found.group(2)


def cases(
    payload: Mapping[str, Any], rules: Mapping[str, Rule], rng: random.Random, unread: int
) -> list[tuple[str, Any]]:
    """Every wrong value in every field with a rule, then `unread` random (field, value)
    pairs among the fields the adapter does not read."""
    read = [(key, value) for key in sorted(rules) if key in payload for value in WRONG_VALUES]
    others = sorted(set(payload) - set(rules))
    count = unread if others else 0
    return read + [(rng.choice(others), rng.choice(WRONG_VALUES)) for _ in range(count)]


def replaced(payload: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(payload)
    changed[key] = copy.deepcopy(value)
    return changed


def unchanged(payload: dict[str, Any], key: str, value: Any) -> bool:
    return _same_json(payload[key], value)


# --- the tests ----------------------------------------------------------------------------

STRIPE = [
    "checkout_session_completed",
    "payment_intent_succeeded",
    "invoice_paid_pre_basil",
    "invoice_paid_basil",
    "charge_refunded",
    "refund_created",
]
STRIPE_ORDERS = {  # the unchanged payload's (order id, kind)
    "checkout_session_completed": ("pi_3RopAi08MTe1bJmc1MMrv98y", "purchase"),
    "payment_intent_succeeded": ("pi_1MoS6tLgUG5tbmjcQ62U6djv", "purchase"),
    "invoice_paid_pre_basil": ("sub_1PBXo5RxqlZt79sD3kdxoDVi", "purchase"),
    "invoice_paid_basil": ("in_1RopD708MTe1bJmcHAXjEg2o", "subscription_renewal"),
    "charge_refunded": ("ch_1MoS30LgUG5tbmjcjfsQqpHI:refunded:100", "refund"),
    "refund_created": ("re_1MoqxHLgUG5tbmjcYO7PFWn6", "refund"),
}
SHOPIFY = [
    ("orders_paid", "orders/paid"),
    ("orders_create", "orders/create"),
    ("refunds_create", "refunds/create"),
    ("customers_redact", "customers/redact"),
]


@pytest.mark.parametrize("name", STRIPE)
def test_stripe_fields_with_wrong_types_get_the_expected_answer(
    service: Service, recorder: ConvertRecorder, name: str, caplog: Any
) -> None:
    rng = random.Random(name)
    event = stripe_event(name, event_id=f"evt_{name}_base")
    event["livemode"] = True
    obj = event["data"]["object"]
    obj["metadata"] = {"convert_experiments": PAIRS}
    first = service.post_stripe(event).json
    base = STRIPE_ORDERS[name]
    assert (first["status"], first["events"][0]["order_id"]) == ("accepted", base[0])
    ledger = Ledger(service, base, {"status": "duplicate", "reason": ALREADY_COUNTED})
    object_rules = stripe_rules(name, obj)
    for i, (key, value) in enumerate(cases(obj, object_rules, rng, 15)):
        mutated = {**event, "id": f"evt_{name}_{i}", "data": {"object": replaced(obj, key, value)}}
        expect = SAME if unchanged(obj, key, value) else object_rules.get(key, always(SAME))(value)
        what = f"data.object.{key}={value!r}"
        ledger.check(service.post_stripe(mutated), body(mutated), expect, what)
    for i, (key, value) in enumerate(cases(event, STRIPE_ENVELOPE, rng, 5)):
        mutated = replaced({**event, "id": f"evt_{name}_envelope_{i}"}, key, value)
        rule = STRIPE_ENVELOPE.get(key, always(SAME))
        expect = SAME if unchanged(event, key, value) else rule(value)
        what = f"{key}={value!r}"
        ledger.check(service.post_stripe(mutated), body(mutated), expect, what)
    assert "mapping failed" not in caplog.text  # each bad shape is named, not a stray error
    ledger.check_dispatch(recorder, lambda kind: kind != "refund")


@pytest.mark.parametrize(("name", "topic"), SHOPIFY)
def test_shopify_fields_with_wrong_types_get_the_expected_answer(
    service: Service, recorder: ConvertRecorder, name: str, topic: str, caplog: Any
) -> None:
    rng = random.Random(name)
    if name.startswith("orders"):
        payload = shopify_order(
            name, financial_status="paid", test=False, note_attributes=experiments(PAIRS)
        )
    else:
        payload = fixture("shopify", name)
    first = service.post_shopify(topic, payload, event_id=f"{name}-base").json
    if topic == "customers/redact":
        base, same = None, {"status": "ignored", "reason": "customer data erased"}
        assert (first["status"], first["reason"]) == ("ignored", "customer data erased")
    else:
        kind = "refund" if topic == "refunds/create" else "purchase"
        base, same = (str(payload["id"]), kind), {"status": "duplicate", "reason": ALREADY_COUNTED}
        assert (first["status"], first["events"][0]["order_id"]) == ("accepted", base[0])
    ledger = Ledger(service, base, same)
    rules = shopify_rules(topic)
    for i, (key, value) in enumerate(cases(payload, rules, rng, 15)):
        expect = SAME if unchanged(payload, key, value) else rules.get(key, always(SAME))(value)
        mutated = replaced(payload, key, value)
        response = service.post_shopify(topic, mutated, f"{name}-{i}")
        ledger.check(response, body(mutated), expect, f"{key}={value!r}")
    assert "mapping failed" not in caplog.text
    ledger.check_dispatch(recorder, lambda kind: kind == "purchase")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "body is not JSON (line 1, column 1)"),
        (b"\xff\xfe\x00", "body is not UTF-8 JSON"),
        (b'{"id": "evt_1", "type": ', "body is not JSON (line 1, column 25)"),
        (b"null", "body is not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "body nests too deeply"),
    ],
)
def test_broken_stripe_bodies_are_a_400_naming_the_fault_and_kept(
    service: Service, raw: bytes, error: str
) -> None:
    response = service.post_stripe({}, raw=raw)
    assert (response.status_code, response.json) == (400, {"error": error})
    with service.runtime.engine.connect() as conn:
        stored = conn.execute(select(deliveries)).all()
    assert [(d.status, d.reason, d.body) for d in stored] == [("rejected", error, raw)]
    with service.runtime.engine.connect() as conn:
        assert conn.execute(select(events)).all() == []


def test_a_huge_float_quantity_is_not_a_count_the_invoice_counts_one_item(
    service: Service,
) -> None:
    raw = (
        b'{"id": "evt", "type": "invoice.paid", "created": 1, "livemode": true, "data":'
        b' {"object": {"id": "in_1", "currency": "usd", "amount_paid": 10, "lines":'
        b' {"data": [{"quantity": 1e400}]}}}}'
    )
    response = service.post_stripe({}, raw=raw)
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    with service.runtime.engine.connect() as conn:
        (row,) = conn.execute(select(events)).all()
    assert (row.order_id, row.kind, row.amount, row.item_count) == ("in_1", "purchase", "0.10", 1)
