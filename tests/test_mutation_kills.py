"""Planning one claimed event, checked piece by piece (written for issue 6: the mutation run of
scripts/mutation showed that the dispatcher tests pass with most of the planner broken, since
they only look at what reaches Convert in the end). The event is a real row of a real SQLite
file, claimed the way a round claims it; the settings come from a config document through the
real loader; the Convert client is the real one (planning builds hits and sends nothing).
Also here: the attribution chain hands each lookup the event itself."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, Row, insert

from adapters import shopify, stripe
from adapters.base import Reply, json_reply
from adapters.payload import email_digest, int_id, load_json_object, optional_id, quantity_sum
from adapters.request import Headers, SignedRequest
from adapters.schemes import (
    MAX_HEADER_CHARS,
    BasicAuth,
    BodyHmac,
    StandardWebhooks,
    TimestampedHmac,
    UrlSignedScheme,
)
from tests.config_file import STRIPE_SECRET, config_document
from tests.conftest import FakeClock
from tests.payloads import body, fixture, shopify_order, stripe_event
from webhooks.attribution.chain import Absent, Answer, Chain, Found, NotYet, Subject
from webhooks.attribution.customers import (
    Backoff,
    CustomerRecords,
    PlatformApi,
    ShopifyCustomerMetafield,
    StripeCustomerMetadata,
)
from webhooks.attribution.enrich import CheckoutItemCounts
from webhooks.attribution.formats import (
    CONV_ATTRS,
    CONV_V_COOKIE,
    JSON,
    MAX_JSON_DEPTH,
    PLAIN,
    SHOPIFY_APP_DATA,
    VISITOR_DATA,
    Parsed,
    Project,
    Refused,
    parse_any,
    parse_conv_attrs,
    parse_conv_v_cookie,
    parse_plain,
    parse_shopify_app_data,
)
from webhooks.attribution.pairs import MAX_VALUE_CHARS
from webhooks.convert.client import ConvertClient, make_client
from webhooks.core.errors import PayloadError, SignatureError
from webhooks.core.events import (
    MAX_TIMESTAMP,
    CustomerRedaction,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
)
from webhooks.core.hits import Hit, HitFormat
from webhooks.core.settings import GoalSet, Settings
from webhooks.core.states import EventState, Reason
from webhooks.delivery.planner import Planned, Planner, default_chain
from webhooks.storage.database import make_engine, transaction
from webhooks.storage.digests import stored_digest
from webhooks.storage.exposures import Exposure, store_exposures
from webhooks.storage.migrations import migrate
from webhooks.storage.queue import Attributed, Finish, claim_due
from webhooks.storage.schema import deliveries, events
from webhooks.wiring.config import settings_from_mapping

NOW = 1_800_000_000.0
LATER = NOW + 3600  # past the grace period in which "nothing found" still means "not yet"
ENDPOINT = "http://127.0.0.1:9/track/"  # never contacted: planning sends nothing
TRACK = f"{ENDPOINT}?c=1111&p=2222"


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    migrate(engine)
    yield engine
    engine.dispose()


def settings_for(sqlite_url: str, **sections: Any) -> Settings:
    return settings_from_mapping(config_document(sqlite_url, ENDPOINT, **sections), {})


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return settings_for(
        sqlite_url,
        sources={
            "stripe": {
                "platform": "stripe",
                "secrets": [STRIPE_SECRET],
                "experiments_key": "ab_tests",
            },
        },
        attribution={"max_pairs_per_order": 2},
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[ConvertClient]:
    made = make_client(settings.convert)
    yield made
    made.close()


@pytest.fixture
def chain(settings: Settings, engine: Engine) -> Iterator[Chain]:
    """The chain the dispatcher builds: order attributes, customer records (no API
    credentials are configured, so no call is made), the exposure store."""
    clock = FakeClock(LATER)
    api = PlatformApi()
    yield default_chain(settings, engine, clock, api, Backoff(clock))
    api.close()


def claimed(engine: Engine, **values: Any) -> Row[Any]:
    """One pending event stored with these values, claimed as a round claims it."""
    event: dict[str, Any] = {
        "source": "stripe",
        "platform": "stripe",
        "project_id": "2222",
        "kind": "purchase",
        "order_id": "pi_1",
        "amount": "49.90",
        "currency": "EUR",
        "item_count": 2,
        "customer_id": "cus_1",
        "email_digest": "d" * 64,
        "attributes": {"ab_tests": "1-2,3-4,5-6"},
        "test_mode": False,
        "occurred_at": NOW,
        "state": EventState.PENDING,
        "revision": 3,
        "created_at": NOW,
        "horizon_start": NOW,
        "next_attempt_at": NOW,
        "updated_at": NOW,
        **values,
    }
    event["attributes"] = json.dumps(event["attributes"])
    with transaction(engine) as conn:
        delivery_id = conn.execute(
            insert(deliveries).values(
                source=event["source"], platform=event["platform"], delivery_key="evt_1",
                topic="payment_intent.succeeded", status="accepted", received_at=NOW,
                headers="{}", body=b"{}",
            ).returning(deliveries.c.id)
        ).scalar_one()
        conn.execute(insert(events).values(delivery_id=delivery_id, **event))
        (row,) = claim_due(conn, "planner-test", NOW, 10, 60)
    return row


def test_the_pairs_found_become_one_hit_each_with_the_purchase_and_the_note(
    engine: Engine, settings: Settings, client: ConvertClient, chain: Chain
) -> None:
    row = claimed(engine)
    plan = Planner(settings, client, chain).plan(row, LATER)
    shared = "&g=100%2C101&ga=2&t=100%7Cpi_1%7C49.90%7C2"
    assert plan == Planned(
        [
            Hit(row.id, "1-2", HitFormat.LEGACY_GET, f"{TRACK}&e=1-2{shared}"),
            Hit(row.id, "3-4", HitFormat.LEGACY_GET, f"{TRACK}&e=3-4{shared}"),
        ],
        Attributed("order attribute 'ab_tests'", "plain"),
        "kept the first 2 of 3 experiment pairs",
    )


def test_a_renewal_with_transaction_goals_only_is_planned(
    engine: Engine, settings: Settings, client: ConvertClient, chain: Chain
) -> None:
    row = claimed(engine, kind="subscription_renewal", attributes={"ab_tests": "1-2"})
    plan = Planner(settings, client, chain).plan(row, LATER)
    assert plan == Planned(
        [Hit(row.id, "1-2", HitFormat.LEGACY_GET, f"{TRACK}&e=1-2&t=300%7Cpi_1%7C49.90%7C2")],
        Attributed("order attribute 'ab_tests'", "plain"),
    )


def test_an_event_of_a_source_no_longer_configured_is_read_under_the_default_key(
    engine: Engine, settings: Settings, client: ConvertClient, chain: Chain
) -> None:
    row = claimed(
        engine, source="old-shop", attributes={"ab_tests": "1-2", "convert_experiments": "7-8"}
    )
    plan = Planner(settings, client, chain).plan(row, LATER)
    assert isinstance(plan, Planned) and [hit.pair for hit in plan.hits] == ["7-8"]


@pytest.mark.parametrize(
    ("kind", "goals"),
    [
        ("subscription_renewal", GoalSet((), ())),  # configured, but with no goal at all
        ("refund", None),  # a kind without goals in the config
    ],
)
def test_a_kind_without_goals_is_skipped_and_says_so(
    engine: Engine,
    settings: Settings,
    client: ConvertClient,
    chain: Chain,
    kind: str,
    goals: GoalSet | None,
) -> None:
    kinds = dict(settings.goals)
    if goals is None:
        kinds.pop(EventKind(kind), None)
    else:
        kinds[EventKind(kind)] = goals
    planner = Planner(replace(settings, goals=kinds), client, chain)
    assert planner.plan(claimed(engine, kind=kind), LATER) == Finish(
        EventState.SKIPPED, Reason.NO_GOALS, f"no Convert goals configured for {kind}"
    )


def test_no_pairs_skips_the_event_unless_a_new_delivery_revised_it(
    engine: Engine, settings: Settings, client: ConvertClient, chain: Chain
) -> None:
    row = claimed(engine, attributes={"other": "1-2"})
    plan = Planner(settings, client, chain).plan(row, LATER)
    assert isinstance(plan, Finish) and plan.reason is not None
    # Every place the chain looked is named (their own tests pin each sentence).
    assert plan.reason.startswith("no 'ab_tests', '__data', '_conv_attrs' or '_conv_v' attr")
    assert plan == Finish(
        EventState.SKIPPED, Reason.NO_EXPERIMENT_DATA, plan.reason, only_if_revision=3
    )


def test_within_the_grace_period_no_pairs_means_look_again_soon(
    engine: Engine,
    settings: Settings,
    client: ConvertClient,
    chain: Chain,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The back end may record the exposure a moment after the order (grace 900 s, a new
    look every 60 s, counted from when the event was stored)."""
    row = claimed(engine, attributes={"other": "1-2"})
    graced = replace(settings, attribution=replace(settings.attribution, grace_seconds=900.0))
    planner = Planner(graced, client, chain)
    monkeypatch.setenv("TZ", "America/New_York")  # the time said is UTC whatever the zone
    time.tzset()
    try:
        soon = planner.plan(row, NOW + 30)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert isinstance(soon, Finish) and soon.reason is not None
    assert soon.reason.endswith("; looking again until 2027-01-15T08:15:00Z")
    assert soon == Finish(
        EventState.PENDING,
        Reason.LOOKUP_LATER,
        soon.reason,
        next_attempt_at=NOW + 90,
        only_if_revision=3,
    )
    last = planner.plan(row, NOW + 899)
    assert isinstance(last, Finish)
    assert (last.state, last.next_attempt_at) == (EventState.PENDING, NOW + 900)
    over = planner.plan(row, NOW + 900)
    assert isinstance(over, Finish) and over.state == EventState.SKIPPED


def test_a_lookup_that_keeps_failing_ends_at_the_retry_horizon(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    later = Recording(NotYet(NOW + 10**6, "customer API timed out"))
    planner = Planner(settings, client, Chain([later]))
    horizon = NOW + settings.dispatcher.retry_horizon_seconds
    row = claimed(engine)
    waiting = planner.plan(row, horizon - 1)
    assert isinstance(waiting, Finish) and waiting.state == EventState.PENDING
    assert planner.plan(row, horizon) == Finish(
        EventState.DEAD,
        Reason.RETRIES_EXHAUSTED,
        "gave up waiting for the experiment data: customer API timed out",
        only_if_revision=3,
    )


@pytest.mark.parametrize(
    ("ids", "refused"),
    [
        ({"cid": "9999", "pid": "2222"}, "account 9999 ('cid'), not the configured 1111"),
        ({"cid": "1111", "pid": "2223"}, "project 2223 ('pid'), not the configured 2222"),
    ],
)
def test_convert_data_of_another_account_or_project_is_refused(
    engine: Engine,
    settings: Settings,
    client: ConvertClient,
    chain: Chain,
    ids: dict[str, str],
    refused: str,
) -> None:
    conv = json.dumps({**ids, "exps": ["1"], "vars": ["2"]})
    row = claimed(engine, attributes={"_conv_attrs": conv})
    plan = Planner(settings, client, chain).plan(row, LATER)
    assert isinstance(plan, Finish) and plan.reason is not None
    assert (plan.state, plan.reason_code) == (
        EventState.SKIPPED,
        Reason.MALFORMED_EXPERIMENT_DATA,
    )
    assert plan.reason.startswith(
        f"'_conv_attrs' holds no valid conv_attrs: it belongs to Convert {refused}; "
    )


def test_the_checkout_item_count_replaces_the_webhooks_where_known(
    sqlite_url: str, engine: Engine, client: ConvertClient
) -> None:
    """Stripe's webhook says nothing of a payment's items; the session's line items do
    (enrich.py). A cached count stands in for the API here: no request is made."""
    key = "rk_test_" + "a" * 24
    settings = settings_for(
        sqlite_url,
        sources={"stripe": {"platform": "stripe", "secrets": [STRIPE_SECRET], "api_key": key}},
    )
    clock = FakeClock(LATER)
    api = PlatformApi()
    try:
        counts = CheckoutItemCounts(settings.sources, api, clock)
        counts.cache.put(("stripe", "pi_1"), 5)
        chain = default_chain(settings, engine, clock, api, Backoff(clock))
        row = claimed(engine, attributes={"convert_experiments": "1-2"})
        counted = Planner(settings, client, chain, counts).plan(row, LATER)
        assert isinstance(counted, Planned)
        assert counted.hits[0].payload.endswith("%7Cpi_1%7C49.90%7C5")
        plain = Planner(settings, client, chain).plan(row, LATER)
        assert isinstance(plain, Planned)
        assert plain.hits[0].payload.endswith("%7Cpi_1%7C49.90%7C2")  # the stored count
    finally:
        api.close()


def test_the_exposure_store_is_read_by_keyed_email_and_capped(
    sqlite_url: str, engine: Engine, client: ConvertClient
) -> None:
    """What the shop's back end reported for the buyer's email (keyed with the configured
    key), the latest per experiment, at most max_pairs_per_order of them."""
    key = "k" * 32
    settings = settings_for(
        sqlite_url, privacy={"email_key": key}, attribution={"max_pairs_per_order": 2}
    )
    plain = "d" * 64
    keyed = stored_digest(key.encode(), plain)
    reports = [
        Exposure(None, None, keyed, ((str(experiment), "7"),), NOW - 60 * experiment)
        for experiment in (1, 2, 3)
    ]
    store_exposures(engine, reports, NOW)
    clock = FakeClock(LATER)
    api = PlatformApi()
    try:
        chain = default_chain(settings, engine, clock, api, Backoff(clock))
        row = claimed(engine, customer_id=None, email_digest=plain, attributes={})
        plan = Planner(settings, client, chain).plan(row, LATER)
    finally:
        api.close()
    assert isinstance(plan, Planned)
    assert [hit.pair for hit in plan.hits] == ["1-7", "2-7"]  # the newest first
    assert plan.attributed == Attributed("exposure store (email)", "exposure")


def test_the_default_chain_shares_the_dispatchers_api_client_and_backoff(
    settings: Settings, engine: Engine
) -> None:
    """customer_records' contract: one PlatformApi (closed by its owner) and one Backoff per
    dispatcher, shared with the item counts, so a failing API is one thing that recovers."""
    clock = FakeClock(LATER)
    api = PlatformApi()
    backoff = Backoff(clock)
    try:
        chain = default_chain(settings, engine, clock, api, backoff)
    finally:
        api.close()
    records = chain.lookups[1]
    assert isinstance(records, CustomerRecords)
    for lookup in records.by_platform.values():
        assert isinstance(lookup, StripeCustomerMetadata | ShopifyCustomerMetafield)
        assert (lookup.api, lookup.backoff, lookup.clock) == (api, backoff, clock)


def test_not_yet_leaves_the_event_pending_until_then_unless_revised(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    later = Recording(NotYet(NOW + 900, "customer API timed out"))
    plan = Planner(settings, client, Chain([later])).plan(claimed(engine), NOW)
    assert plan == Finish(
        EventState.PENDING,
        Reason.LOOKUP_LATER,
        "customer API timed out",
        next_attempt_at=NOW + 900,
        only_if_revision=3,
    )


class Recording:
    """A lookup that answers as told and keeps what it was asked about."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[Subject] = []

    def find(self, subject: Subject) -> Answer:
        self.asked.append(subject)
        return self.answer


def test_each_lookup_is_asked_about_the_claimed_event_and_the_finder_is_kept(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    row = claimed(engine)
    first = Recording(Absent(Reason.NO_EXPERIMENT_DATA, "no exposures"))
    second = Recording(Found(("1-2",), "exposure store", "plain", visitor_id="1004"))
    plan = Planner(settings, client, Chain([first, second])).plan(row, NOW)
    subject = Subject(
        row.id, "stripe", "stripe", "pi_1", "cus_1", "d" * 64, {"ab_tests": "1-2,3-4,5-6"}
    )
    assert first.asked == second.asked == [subject]
    assert isinstance(plan, Planned)
    assert plan.attributed == Attributed("exposure store", "plain", "1004")


def test_an_empty_chain_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"^a chain needs at least one lookup$"):
        Chain([])


# --- Adapters ------------------------------------------------------------------------------
# The platform tests check what decides a delivery's fate; these pin every field a parsed
# event carries (the revenue bases, the customer references, the refunded order), the exact
# words a refused request or body is answered with (they are the 401/400 body and the stored
# reason), and each bound at its edge.

SESSION_ID = "cs_test_a1AiZLTUecpdBdEdFQHPUuU5kyj0MHkGtPzluErlxP1kRiieLFISbQr5eu"
CHARGE_ID = "ch_1MoS30LgUG5tbmjcjfsQqpHI"


def sha(text: str) -> str:
    """What an email digest must be: SHA-256 of the trimmed, lower-cased address."""
    return hashlib.sha256(text.encode()).hexdigest()


def usd(amount: str, currency: str = "USD") -> Money:
    return Money(Decimal(amount), currency)


def fields_of(event: NormalizedEvent) -> tuple[Any, ...]:
    return (
        event.kind,
        event.order_id,
        dict(event.amounts),
        event.item_count,
        event.test_mode,
        event.occurred_at,
        event.customer_id,
        event.email_digest,
        event.refund_of,
    )


def stripe_one(event: dict[str, Any]) -> NormalizedEvent:
    (parsed,) = stripe.parse({}, body(event)).events
    return parsed


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("checkout_session_completed", (
            EventKind.PURCHASE, "pi_3RopAi08MTe1bJmc1MMrv98y",
            {"total": usd("30.00"), "subtotal": usd("30.00")}, 1, True, 1753463561.0, None,
            sha("stripe@example.com"), None)),
        ("checkout_session_async_payment_succeeded", (
            EventKind.PURCHASE, "pi_3RopAi08MTe1bJmc1MMrv98y",
            {"total": usd("30.00"), "subtotal": usd("30.00")}, 1, True, 1753463561.0, None,
            sha("stripe@example.com"), None)),
        ("invoice_paid_basil", (
            EventKind.SUBSCRIPTION_RENEWAL, "in_1RopD708MTe1bJmcHAXjEg2o",
            {"total": usd("15.00"), "subtotal": usd("15.00")}, 1, True, 1753463711.0,
            "cus_SkJqpBcslIPSdj", None, None)),
        ("invoice_paid_pre_basil", (
            EventKind.PURCHASE, "sub_1PBXo5RxqlZt79sD3kdxoDVi",
            {"total": usd("700.00"), "subtotal": usd("700.00")}, 7, True, 1714549347.0,
            "cus_Q1b0Yi7UkcAh2A", sha("test12@email.com"), None)),
        ("payment_intent_succeeded", (
            EventKind.PURCHASE, "pi_1MoS6tLgUG5tbmjcQ62U6djv", {"total": usd("10.99")}, 1,
            True, 1234567890.0, None, None, None)),
        ("refund_created", (
            EventKind.REFUND, "re_1MoqxHLgUG5tbmjcYO7PFWn6", {"total": usd("1.00")}, 0, True,
            1234567890.0, None, None, CHARGE_ID)),
        ("charge_refunded", (
            EventKind.REFUND, f"{CHARGE_ID}:refunded:100", {"total": usd("1.00")}, 0, True,
            1234567890.0, None, None, CHARGE_ID)),
    ],
)
def test_every_field_of_each_stripe_fixture(name: str, expected: tuple[Any, ...]) -> None:
    assert fields_of(stripe_one(stripe_event(name))) == expected


def test_a_live_stripe_event_is_not_test_mode() -> None:
    event = stripe_event("payment_intent_succeeded")
    event["livemode"] = True
    assert stripe_one(event).test_mode is False


@pytest.mark.parametrize(
    ("changes", "order_id"),
    [
        ({"mode": "subscription", "subscription": "sub_9"}, "sub_9"),
        ({"mode": "subscription", "subscription": {"id": "sub_9"}}, "sub_9"),  # expanded
        ({"mode": "subscription", "subscription": None}, SESSION_ID),
        ({"mode": "payment", "payment_intent": None}, SESSION_ID),
    ],
)
def test_a_checkout_session_is_keyed_by_what_it_paid_for(
    changes: dict[str, Any], order_id: str
) -> None:
    assert stripe_one(stripe_event("checkout_session_completed", **changes)).order_id == order_id


@pytest.mark.parametrize(
    ("details", "money"),
    [
        ({"presentment_currency": "eur", "presentment_amount": 2799}, usd("27.99", "EUR")),
        ({"presentment_currency": "jpy", "presentment_amount": 4500}, usd("4500", "JPY")),
    ],
)
def test_the_session_presentment_amount_is_a_revenue_basis(
    details: dict[str, Any], money: Money
) -> None:
    event = stripe_one(stripe_event("checkout_session_completed", presentment_details=details))
    assert event.amounts["presentment_total"] == money


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"presentment_currency": "euro", "presentment_amount": 1},
         "field 'presentment_currency' must be a three-letter currency code"),
        ({"presentment_currency": "eur", "presentment_amount": "1"},
         "field 'presentment_amount' must be an integer number of minor units"),
    ],
)
def test_a_bad_presentment_amount_is_named(details: dict[str, Any], message: str) -> None:
    event = stripe_event("checkout_session_completed", presentment_details=details)
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}$"):
        stripe.parse({}, body(event))


@pytest.mark.parametrize(
    ("changes", "digest"),
    [
        ({"customer_details": None, "customer_email": " Buyer@Example.COM "},
         sha("buyer@example.com")),
        ({"customer_details": {"email": None}, "customer_email": "b@example.com"},
         sha("b@example.com")),
        ({"customer_details": {"email": "a@example.com"}, "customer_email": "b@example.com"},
         sha("a@example.com")),
    ],
)
def test_the_session_email_digest_falls_back_to_customer_email(
    changes: dict[str, Any], digest: str
) -> None:
    assert stripe_one(stripe_event("checkout_session_completed", **changes)).email_digest == digest


@pytest.mark.parametrize(
    ("line_items", "count"),
    [
        ({"data": [{"quantity": 2}, {"quantity": "x"}, {"quantity": 3}]}, 5),
        ({"data": []}, 1),  # no quantities: one purchase, one item
        ({"data": [{"quantity": 0}]}, 1),
        ({"object": "list"}, 1),
    ],
)
def test_the_session_item_count_sums_its_line_items(line_items: object, count: int) -> None:
    event = stripe_event("checkout_session_completed", line_items=line_items)
    assert stripe_one(event).item_count == count


def test_a_bad_line_item_quantity_is_named() -> None:
    event = stripe_event("checkout_session_completed", line_items={"data": [{"quantity": -1}]})
    message = "field 'lines.data[].quantity' must be an integer from 0 to 1000000"
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}$"):
        stripe.parse({}, body(event))


@pytest.mark.parametrize(("reference", "kept"), [("ref_1", {"client_reference_id": "ref_1"}),
                                                  ("", {}), (None, {})])
def test_a_sessions_client_reference_id_is_an_attribute_when_it_has_one(
    reference: object, kept: dict[str, str]
) -> None:
    event = stripe_event("checkout_session_completed", client_reference_id=reference)
    assert dict(stripe_one(event).attributes) == kept


def test_a_payment_intent_counts_what_was_received_and_digests_the_receipt_email() -> None:
    partly = stripe_event("payment_intent_succeeded", amount=1099, amount_received=700)
    assert stripe_one(partly).amounts["total"] == usd("7.00")
    unknown = stripe_event("payment_intent_succeeded", amount=500, amount_received=None)
    assert stripe_one(unknown).amounts["total"] == usd("5.00")
    emailed = stripe_event("payment_intent_succeeded", receipt_email="Pay@Example.com")
    assert stripe_one(emailed).email_digest == sha("pay@example.com")


def test_a_refund_names_the_payment_it_refunds() -> None:
    charge = stripe_one(stripe_event("charge_refunded", payment_intent="pi_9", amount_refunded=250))
    assert (charge.order_id, charge.refund_of) == (f"{CHARGE_ID}:refunded:250", "pi_9")
    assert charge.amounts["total"] == usd("2.50")
    refund = stripe_one(stripe_event("refund_created", payment_intent="pi_9"))
    assert refund.refund_of == "pi_9"
    orphan = stripe_one(stripe_event("refund_created", payment_intent=None, charge=None))
    assert orphan.refund_of is None


def test_an_unpaid_session_says_what_its_status_is() -> None:
    missing = stripe_event("checkout_session_completed")
    del missing["data"]["object"]["payment_status"]
    assert stripe.parse({}, body(missing)).reason == (
        "checkout session payment_status is missing; only a paid session counts"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("id"), "field 'id' must be a non-empty string"),
        (lambda e: e.update(created="123"), "field 'created' must be an integer"),
        (lambda e: e["data"].update(object=[]), "field 'object' must be an object"),
        (lambda e: e["data"]["object"].update(amount_refunded="5"),
         "field 'amount_refunded' must be an integer"),
    ],
)
def test_a_bad_stripe_field_is_named(change: Any, message: str) -> None:
    event = stripe_event("charge_refunded")
    change(event)
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}$"):
        stripe.parse({}, body(event))


def shopify_parse(topic: str, payload: object, **headers: str) -> ParseResult:
    sent = {"x-shopify-topic": topic, "x-shopify-webhook-id": "wh-1", **headers}
    return shopify.parse(sent, json.dumps(payload).encode())


def shopify_one(order: dict[str, Any]) -> NormalizedEvent:
    (event,) = shopify_parse("orders/paid", order).events
    return event


def test_every_field_of_a_paid_shopify_order() -> None:
    assert fields_of(shopify_one(shopify_order())) == (
        EventKind.PURCHASE,
        "820982911946154508",
        {"total": usd("404.95"), "subtotal": usd("404.95"), "presentment_total": usd("404.95")},
        5,
        True,
        1640995200.0,  # 2021-12-31T19:00:00-05:00
        "115310627314723954",
        sha("jon@example.com"),
        None,
    )


@pytest.mark.parametrize(
    ("changes", "email"),
    [
        ({"email": None, "contact_email": "Contact@Example.com"}, "contact@example.com"),
        ({"email": "", "contact_email": None}, "john@example.com"),  # the customer's
        ({"email": "Own@Example.com", "contact_email": "c@example.com"}, "own@example.com"),
    ],
)
def test_the_order_email_falls_back_to_contact_then_customer(
    changes: dict[str, Any], email: str
) -> None:
    assert shopify_one(shopify_order(**changes)).email_digest == sha(email)


@pytest.mark.parametrize(
    ("processed_at", "created_at", "seconds"),
    [
        (None, "2022-01-02T00:00:00Z", 1641081600.0),
        (None, None, 0.0),
        (12345, None, 0.0),  # not text: unknown
        ("1970-01-01T00:00:00.5Z", None, 0.5),
        ("9999-12-31T23:59:59Z", None, MAX_TIMESTAMP),
        ("1969-12-31T23:59:59Z", None, 0.0),
    ],
)
def test_the_order_time_is_when_it_was_processed_else_created(
    processed_at: object, created_at: object, seconds: float
) -> None:
    order = shopify_order(processed_at=processed_at, created_at=created_at)
    assert shopify_one(order).occurred_at == seconds


def test_an_order_time_without_an_offset_is_utc_whatever_the_servers_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        order = shopify_order(processed_at="2022-01-01T00:00:00")
        assert shopify_one(order).occurred_at == 1640995200.0
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"total_price_set": {"presentment_money": {"amount": "1.00", "currency_code": "euro"}}},
         "field 'presentment_money.currency_code' must be a three-letter currency code"),
        ({"total_price_set": {"presentment_money": {"amount": "x", "currency_code": "EUR"}}},
         "field 'presentment_money.amount' is not a decimal number"),
        ({"subtotal_price": "x"}, "field 'subtotal_price' is not a decimal number"),
        ({"line_items": [{"quantity": -1}]},
         "field 'line_items[].quantity' must be an integer from 0 to 1000000"),
    ],
)
def test_a_bad_shopify_order_field_is_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}$"):
        shopify_parse("orders/paid", shopify_order(**changes))


def test_an_order_without_presentment_money_has_no_presentment_basis() -> None:
    event = shopify_one(shopify_order(total_price_set="not an object"))
    assert "presentment_total" not in event.amounts


def test_integer_cart_attributes_are_kept_as_text_up_to_twenty_digits() -> None:
    notes = {"convert_experiments": "1-2", "n": 10**20 - 1, "neg": -(10**20 - 1), "big": 10**20}
    event = shopify_one(shopify_order(note_attributes=notes))  # an object, as some apps send
    assert dict(event.attributes) == {
        "convert_experiments": "1-2",
        "n": "99999999999999999999",
        "neg": "-99999999999999999999",
    }


def test_every_field_of_a_shopify_refund() -> None:
    (event,) = shopify_parse("refunds/create", fixture("shopify", "refunds_create")).events
    assert fields_of(event) == (
        EventKind.REFUND, "890088186047892319", {"total": usd("85.00")}, 0, False,
        1640995200.0, None, None, "820982911946154508",
    )


def test_a_refund_naming_no_currency_anywhere_is_in_xxx() -> None:
    refund = fixture("shopify", "refunds_create")
    refund["refund_line_items"] = []  # and its transactions say `currency: null`
    (event,) = shopify_parse("refunds/create", refund).events
    assert event.amounts["total"] == usd("85.00", "XXX")  # ISO 4217: no currency


def test_a_refund_adds_up_its_successful_refund_transactions() -> None:
    refund = fixture("shopify", "refunds_create")
    refund["processed_at"] = None
    refund["created_at"] = "2022-01-02T00:00:00Z"
    processed = {**refund, "processed_at": "2022-01-03T00:00:00Z"}
    (first,) = shopify_parse("refunds/create", processed).events
    assert first.occurred_at == 1641168000.0  # processed wins over created
    refund["transactions"] = [
        {"kind": "capture", "amount": "5.00"},
        {"kind": "refund", "status": "failure", "amount": "7.00"},
        {"kind": "refund", "status": "success", "amount": "10.00", "currency": "EUR"},
        {"kind": "refund", "amount": "2.50"},
    ]
    (event,) = shopify_parse("refunds/create", refund).events
    assert (event.amounts["total"], event.occurred_at) == (usd("12.50", "EUR"), 1641081600.0)


@pytest.mark.parametrize(
    ("transaction", "message"),
    [
        ({"kind": "refund", "amount": "1.00", "currency": "euro"},
         "field 'transactions[].currency' must be a three-letter currency code"),
        ({"kind": "refund", "amount": "x"},
         "field 'transactions[].amount' is not a decimal number"),
        ({"kind": "refund", "amount": "999999999999.99"},  # twice: past the amount bound
         "field 'transactions[].amount' is not below 1000000000000"),
    ],
)
def test_a_bad_refund_transaction_is_named(transaction: dict[str, Any], message: str) -> None:
    refund = fixture("shopify", "refunds_create")
    refund["transactions"] = [transaction, transaction]
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}$"):
        shopify_parse("refunds/create", refund)


def test_privacy_topics_say_what_was_done() -> None:
    redact = shopify_parse("customers/redact", fixture("shopify", "customers_redact"))
    assert (redact.reason, redact.redaction) == (
        "customer data erased",
        CustomerRedaction("191167", ("299938", "280263", "220458")),
    )
    shop = shopify_parse("shop/redact", fixture("shopify", "shop_redact"))
    assert (shop.reason, shop.redaction) == (
        "shop data erased",
        CustomerRedaction(None, whole_shop=True),
    )
    asked = shopify_parse("customers/data_request", fixture("shopify", "customers_data_request"))
    assert asked.reason == (
        "data request noted: order records are listed with `convert-webhooks events`"
    )


@pytest.mark.parametrize(
    ("topic", "payload", "headers", "message"),
    [
        ("", {}, {}, "missing X-Shopify-Topic header"),
        ("orders paid", {}, {}, "header X-Shopify-Topic must be printable ASCII without spaces"),
        ("orders/paid", shopify_order(), {"x-shopify-event-id": "a b"},
         "header X-Shopify-Event-Id or X-Shopify-Webhook-Id must be printable ASCII without "
         "spaces"),
        ("customers/redact", {**fixture("shopify", "customers_redact"), "orders_to_redact": [0]},
         {}, "field 'orders_to_redact[]' must be a positive 64-bit integer id"),
    ],
)
def test_a_bad_shopify_delivery_is_named(
    topic: str, payload: object, headers: dict[str, str], message: str
) -> None:
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}$"):
        shopify_parse(topic, payload, **headers)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "body is not JSON (line 1, column 2)"),
        (b"\xff", "body is not UTF-8 JSON"),
        (b"[" * 100_000, "body nests too deeply"),
        (b"1" * 5_000, "body holds a number with too many digits"),
        (b"[]", "body is not a JSON object"),
        (b'{"a": 1E+1000000000000000000}', "body holds a number out of range"),
        (b'{"a": NaN}', "body holds NaN or Infinity, which JSON does not allow"),
    ],
)
def test_an_unreadable_body_is_named(raw: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}$"):
        load_json_object(raw)


def test_integer_ids_are_positive_and_fit_64_bits() -> None:
    assert (int_id(1, "id"), int_id(2**64 - 1, "id")) == ("1", str(2**64 - 1))
    for bad in (0, 2**64, True):
        with pytest.raises(PayloadError, match=r"^field 'id' must be a positive 64-bit "):
            int_id(bad, "id")


def test_an_optional_id_may_be_text_a_number_or_an_expanded_object() -> None:
    found = {"a": "cus_1", "b": 5, "c": {"id": "cus_2"}, "d": "", "e": False, "f": None}
    kept = [optional_id(found, key) for key in "abcdef"]
    assert kept == ["cus_1", "5", "cus_2", None, None, None]
    with pytest.raises(PayloadError, match=r"^field 'g' must be a positive 64-bit integer id$"):
        optional_id({"g": 0}, "g")


def test_lines_that_are_not_objects_count_nothing() -> None:
    assert quantity_sum(["x", 7, None, {"quantity": 2}], "q") == 2


def test_item_counts_are_bounded_by_the_column_at_the_edge() -> None:
    full = [{"quantity": 10**6}] * 2147 + [{"quantity": 483_647}]
    assert quantity_sum(full, "q") == 2**31 - 1
    with pytest.raises(PayloadError, match=r"^field 'q' adds up to more than 2147483647$"):
        quantity_sum([*full, {"quantity": 1}], "q")


def test_an_email_digest_is_of_an_address_of_at_most_320_characters() -> None:
    longest = "a" * 64 + "@" + "b" * 255
    assert email_digest(longest) == sha(longest)
    assert email_digest(longest + "c") is None
    assert email_digest(" Mixed@Case.Example ") == sha("mixed@case.example")


# Signature schemes: each refusal is the 401 body, so its words are pinned; lengths at the edge.

SECRET = "contract_secret_current_1"
BODY = b'{"id": 1}'
T = 1_800_000_000


def refusal(scheme: Any, headers: dict[str, str], now: float = T, **kw: Any) -> str:
    with pytest.raises(SignatureError) as caught:
        scheme.verify(SignedRequest.post(BODY, headers), [SECRET], now, **kw)
    return str(caught.value)


def test_body_hmac_refusals() -> None:
    scheme = BodyHmac("X-Sig", prefix="sha256=")
    assert refusal(scheme, {"X-Sig": "x" * 129}) == "X-Sig is too long to be a signature"
    assert refusal(scheme, {"X-Sig": "x" * 128}) == "malformed X-Sig header"
    assert refusal(scheme, {"X-Sig": "sha256=" + "0" * 64}) == (
        "X-Sig does not match a configured secret"
    )


def test_timestamped_hmac_refusals_and_the_header_bound() -> None:
    scheme = stripe.SCHEME
    good = scheme.sign(BODY, SECRET, T)["Stripe-Signature"]
    hexsig = good.split("v1=")[1]
    assert refusal(scheme, {"Stripe-Signature": f"t=1=2,v1={hexsig}"}) == (
        "malformed Stripe-Signature timestamp"
    )
    assert refusal(scheme, {"Stripe-Signature": f"t={T},t={T},v1={hexsig}"}) == (
        "malformed Stripe-Signature timestamp"
    )
    assert refusal(scheme, {"Stripe-Signature": f"t={T},v1=xyz"}) == (
        "malformed Stripe-Signature v1 signature"
    )
    assert refusal(scheme, {"Stripe-Signature": good}, now=T - 400) == (
        "Stripe-Signature timestamp is 400 s in the future"
    )
    padded = good + ",v0=" + "a" * (MAX_HEADER_CHARS - len(good) - 4)
    assert len(padded) == MAX_HEADER_CHARS
    scheme.verify(SignedRequest.post(BODY, {"Stripe-Signature": padded}), [SECRET], T)
    assert refusal(scheme, {"Stripe-Signature": padded + "a"}) == (
        "Stripe-Signature header is too long"
    )


WHSEC = "whsec_" + base64.b64encode(b"standard webhooks key").decode()


def test_the_stripe_style_reads_stripe_signature_in_a_five_minute_window() -> None:
    assert TimestampedHmac.stripe_style() == TimestampedHmac("Stripe-Signature", ",", "t", "v1")
    assert TimestampedHmac.stripe_style("X-Sig", window=600) == TimestampedHmac(
        "X-Sig", window_seconds=600
    )


def test_standard_webhooks_refusals_tolerance_and_the_header_bound() -> None:
    scheme = StandardWebhooks()
    headers = scheme.sign(BODY, WHSEC, T, delivery_id="msg_1")

    def refused(changed: dict[str, str], now: float = T, **kw: Any) -> str:
        with pytest.raises(SignatureError) as caught:
            scheme.verify(SignedRequest.post(BODY, {**headers, **changed}), [WHSEC], now, **kw)
        return str(caught.value)

    assert refused({"webhook-timestamp": "x"}) == "malformed webhook-timestamp header"
    assert refused({"webhook-signature": "v1," + "A" * 43 + "="}) == (
        "no webhook-signature v1 signature matches a configured secret"
    )
    assert refused({"webhook-signature": "v1,abc,def"}) == (
        "malformed webhook-signature v1 signature"
    )
    assert refused({}, now=T + 400) == "webhook-timestamp is 400 s old"
    request = SignedRequest.post(BODY, headers)
    scheme.verify(request, [WHSEC], T + 400, tolerance=600)  # the source's own window
    signature = headers["webhook-signature"]
    padded = signature + " v1a," + "x" * (MAX_HEADER_CHARS - len(signature) - 5)
    assert len(padded) == MAX_HEADER_CHARS
    scheme.verify(SignedRequest.post(BODY, {**headers, "webhook-signature": padded}), [WHSEC], T)
    assert refused({"webhook-signature": padded + "x"}) == "webhook-signature header is too long"


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_a_standard_webhooks_secret_may_leave_out_its_base64_padding(size: int) -> None:
    key = bytes(range(1, size + 1))
    unpadded = base64.b64encode(key).decode().rstrip("=")
    assert StandardWebhooks.key("whsec_" + unpadded) == key


def test_standard_webhooks_signing_ids_and_secret_messages() -> None:
    scheme = StandardWebhooks()
    derived = scheme.sign(BODY, WHSEC, T)["webhook-id"]
    assert derived == "msg_" + hashlib.sha256(BODY).hexdigest()[:27]  # the same on each retry
    with pytest.raises(
        ValueError, match=r"^not a Standard Webhooks secret \(whsec_ followed by base64\)$"
    ):
        scheme.sign(BODY, "whsec_!!", T)
    assert scheme.secret_problem("whsec_!!") == (
        "is not a Standard Webhooks secret (whsec_ followed by base64)"
    )


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_basic_auth_refusals_and_the_header_bound() -> None:
    scheme = BasicAuth()

    def refused(value: str) -> str:
        with pytest.raises(SignatureError) as caught:
            scheme.verify(SignedRequest.post(BODY, {"Authorization": value}), ["user:pass"], T)
        return str(caught.value)

    assert refused(basic("user:pass") + " extra") == "malformed Authorization Basic credentials"
    token = basic("user:pass")[len("Basic "):]
    assert refused(f"Basic {token[:4]}*{token[4:]}") == (  # never decoded past a stray byte
        "malformed Authorization Basic credentials"
    )
    assert refused("Bearer abc") == "Authorization does not hold Basic credentials"
    assert refused(basic("user:wrong")) == (
        "Authorization does not match a configured user and password"
    )
    long_secret = "u:" + "p" * 760  # base64 of 762 bytes: 1,016 characters
    value = basic(long_secret) + "  "
    assert len(value) == 1024
    scheme.verify(SignedRequest.post(BODY, {"Authorization": value}), [long_secret], T)
    assert refused(value + " ") == "Authorization header is too long"
    for secret in (":a:b", "nocolon"):
        assert scheme.secret_problem(secret) == "must be user:password for Basic authentication"


def test_a_url_signing_scheme_needs_the_configured_url() -> None:
    with pytest.raises(SignatureError) as caught:
        UrlSignedScheme.signed_url(SignedRequest("POST", None, Headers(), BODY))
    assert str(caught.value) == "the source has no url configured, and this platform signs it"


@dataclass(frozen=True)
class Verifying:
    secrets: tuple[str, ...]
    tolerance_seconds: int
    options: Mapping[str, Any] = field(default_factory=dict)


def test_the_spec_verifies_with_the_sources_window() -> None:
    request = SignedRequest.post(BODY, stripe.SCHEME.sign(BODY, SECRET, T))
    stripe.SPEC.verify(request, Verifying((SECRET,), 600), T + 400)
    with pytest.raises(SignatureError, match=r"^Stripe-Signature timestamp is 400 s old$"):
        stripe.SPEC.verify(request, Verifying((SECRET,), 300), T + 400)


def test_requests_and_replies_keep_what_they_are_given() -> None:
    assert list(Headers({"X-One": "1", "two": "2"})) == ["x-one", "two"]
    assert SignedRequest.post(BODY).method == "POST"
    assert json_reply({"status": "accepted"}) == Reply(200, {"status": "accepted"})


# --- Experiment data formats (attribution/formats.py): what tells a format, and the bounds ---

PROJECT = Project("1111", "2222")
NO_LISTS = "holds no valid conv_attrs: no 'exps' and 'vars' lists"
NO_BUCKETING = "holds no valid shopify_app_data: no 'bucketing' list"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"bucketing": [{"experienceId": "1", "variationId": "2"}]}',
         Parsed(VISITOR_DATA, ("1-2",))),
        ('{"visitorId": "v1"}',
         Refused(VISITOR_DATA, "holds no valid visitor_data: no 'bucketing' list")),
        ('{"exps": ["1"]}', Refused(CONV_ATTRS, NO_LISTS)),
        ('{"vars": ["2"]}', Refused(CONV_ATTRS, NO_LISTS)),
        # four base64 characters are enough for app data: "{}" is "e30="
        ("e30=", Refused(SHOPIFY_APP_DATA, NO_BUCKETING)),
    ],
)
def test_a_json_object_is_told_apart_by_its_keys(value: str, expected: object) -> None:
    assert parse_any(value, 20, PROJECT) == expected


DEEPER = "holds no valid json: JSON nested deeper than 8 levels"


@pytest.mark.parametrize(
    ("value", "refused_for_depth"),
    [
        ("[" * 8 + "]" * 8, False),
        ("[" * 9 + "]" * 9, True),
        ("[[[]," + "[" * 7 + "]" * 7 + "]]", True),  # depth goes back to 2, then up to 9
        ('["' + "[" * 12 + '"]', False),  # brackets inside a string do not nest
        ('["a", ' + "[" * 9 + "]" * 9 + "]", True),  # nor does a string end the check
    ],
)
def test_json_deeper_than_eight_levels_is_refused_before_it_is_parsed(
    value: str, refused_for_depth: bool
) -> None:
    assert MAX_JSON_DEPTH == 8
    result = parse_any(value, 20, PROJECT)
    assert (isinstance(result, Refused) and result.reason == DEEPER) is refused_for_depth


def test_json_of_exactly_the_value_bound_is_read_and_one_more_character_is_not() -> None:
    exact = "[" + " " * (MAX_VALUE_CHARS - 2) + "]"
    assert parse_any(exact, 20, PROJECT) == Parsed(JSON, ())
    assert parse_any(exact + " ", 20, PROJECT) == Refused(
        JSON, f"holds no valid json: longer than {MAX_VALUE_CHARS} characters"
    )


@pytest.mark.parametrize("value", ["abcde=", "abcdX"])
def test_base64_of_a_wrong_length_is_said_to_be_so(value: str) -> None:
    assert parse_shopify_app_data(value, 20, PROJECT) == Refused(
        SHOPIFY_APP_DATA, "holds no valid shopify_app_data: not base64 (wrong length)"
    )


def test_what_was_left_out_and_the_visitor_survive_the_cap() -> None:
    assert parse_plain("1-2,3-4,5-6", 2) == Parsed(
        PLAIN, ("1-2", "3-4"), dropped=1, note="kept the first 2 of 3 experiment pairs"
    )
    three = [{"experienceId": str(n), "variationId": "2"} for n in (1, 2, 3)]
    visitor = json.dumps({"visitorId": "v1", "bucketing": three})
    assert parse_any(visitor, 2, PROJECT) == Parsed(
        VISITOR_DATA, ("1-2", "2-2"), "v1", 1, "kept the first 2 of 3 experiment pairs"
    )


def test_convert_attribute_formats_say_what_is_wrong() -> None:
    assert parse_conv_attrs("[]", 20, PROJECT) == Refused(
        CONV_ATTRS, "holds no valid conv_attrs: not a JSON object"
    )
    # Without an account id the project is still checked.
    other = json.dumps({"pid": "2223", "exps": ["1"], "vars": ["2"]})
    assert parse_conv_attrs(other, 20, PROJECT) == Refused(
        CONV_ATTRS,
        "holds no valid conv_attrs: it belongs to Convert project 2223 ('pid'), not the "
        "configured 2222",
    )
    assert parse_conv_v_cookie("exp:[1]", 20, PROJECT) == Refused(
        CONV_V_COOKIE,
        "holds no valid conv_v_cookie: its 'exp' piece is not a map of experiences",
    )
    # An empty piece is skipped, not the end of the cookie.
    assert parse_conv_v_cookie("vi:v9**exp:{100.{v.200}}", 20, PROJECT) == Parsed(
        CONV_V_COOKIE, ("100-200",), "v9"
    )
