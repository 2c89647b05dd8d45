"""More tests written against mutants the mutation run (scripts/mutation) left alive: the
Checkout item count read from the Stripe API (enrich.py) through the local Stripe stand-in,
the exposure store's note and its failures, the legacy GET's encoding, the retry schedule's
`not_before`, the default chain's exposure store and a few adapter bounds. Each test names
what it pins."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.payload import get_str
from tests import test_customer_records, test_exposures_store
from tests.conftest import START, FakeClock, Service
from tests.platform_api_standin import Reply
from tests.stripe_api_standin import StripeApiStandin, line_item
from tests.test_convert_requests import SETTINGS, build_requests
from tests.test_customer_records import (
    STRIPE_ENV,
    item_counts,
    settings,
    stripe_options,
    stripe_subject,
)
from tests.test_exposures_store import (
    HOUR,
    KEY,
    PURCHASE,
    by_customer,
    lookup,
    the_event,
)
from tests.test_mutation_kills import settings_for
from tests.test_shopify_adapter import paid_order, parse
from webhooks.attribution.chain import Absent, Found, NotYet, Subject
from webhooks.attribution.customers import Backoff, PlatformApi
from webhooks.attribution.enrich import CheckoutItemCounts
from webhooks.attribution.exposures import ExposureStore
from webhooks.core.errors import PayloadError
from webhooks.core.events import MAX_ITEM_COUNT, MAX_LINE_QUANTITY
from webhooks.core.settings import GoalSet
from webhooks.core.states import Reason
from webhooks.delivery.planner import default_chain, subject_of
from webhooks.delivery.retry import RetryPolicy
from webhooks.storage.database import make_engine
from webhooks.storage.exposures import store_exposures

# The fixtures of those modules, used here by name: the Stripe API stand-in, the API client,
# a service that stored one Shopify order without pairs.
api = test_customer_records.api
stripe_api = test_customer_records.stripe_api
shop = test_exposures_store.shop

# --- Stripe Checkout item counts (attribution/enrich.py) ---------------------------------------

SESSION = "cs_test_a1"  # an order id that is the session itself: line items are asked at once


def page(data: list[Any], has_more: bool = False) -> Reply:
    """A page of line items as Stripe lists them (data, has_more), whatever it holds."""
    url = f"/v1/checkout/sessions/{SESSION}/line_items"
    return Reply(200, {"object": "list", "data": data, "has_more": has_more, "url": url})


def listed(data: list[Any]) -> Reply:
    """The answer of `GET /v1/checkout/sessions?payment_intent=...`."""
    url = "/v1/checkout/sessions"
    return Reply(200, {"object": "list", "data": data, "has_more": False, "url": url})


def count_of(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
    quantities: list[int | None],
) -> int | None:
    stripe_api.add_session(SESSION, quantities)
    return item_counts(sqlite_url, stripe_api, api, clock).item_count(stripe_subject(order=SESSION))


@pytest.mark.parametrize(
    ("quantities", "count"),
    [
        ([0, 2], 2),  # a line of 0 is read (and counts nothing), not an answer to distrust
        ([MAX_LINE_QUANTITY, 1], MAX_LINE_QUANTITY + 1),  # the line bound itself is fine
        ([1, MAX_LINE_QUANTITY + 1], None),  # one past it: the answer is not trusted
        ([None, 3], 3),  # a null quantity is skipped, and the lines after it still count
        ([None, None], None),  # only null quantities: nothing was read, the count stays
        ([], None),  # no line items at all: the count stays too
    ],
    ids=["zero-line", "line-bound", "past-line-bound", "null-then-real", "only-nulls", "no-lines"],
)
def test_line_quantities_at_their_bounds_and_null_ones(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
    quantities: list[int | None],
    count: int | None,
) -> None:
    assert count_of(sqlite_url, stripe_api, api, clock, quantities) == count


@pytest.mark.parametrize("extra", [0, 1])
def test_the_total_may_reach_the_column_bound_but_not_pass_it(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
    extra: int,
) -> None:
    """Ten pages of 100 lines cannot pass 2**31 - 1, but an API answering longer pages than
    asked for can: the total is checked, and exactly the bound is still a count."""
    full, rest = divmod(MAX_ITEM_COUNT, MAX_LINE_QUANTITY)
    lines = [{"id": f"li_{n}", "quantity": MAX_LINE_QUANTITY} for n in range(full)]
    lines.append({"id": "li_last", "quantity": rest + extra})
    stripe_api.answer_next(page(lines))
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    expected = MAX_ITEM_COUNT if extra == 0 else None
    assert counts.item_count(stripe_subject(order=SESSION)) == expected


def test_an_item_that_is_not_an_object_is_skipped_first_or_last(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
) -> None:
    stripe_api.answer_next(page(["li_x", line_item("li_1", 3), 7]))
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    assert counts.item_count(stripe_subject(order=SESSION)) == 3


def assert_failed_and_backed_off(
    counts: CheckoutItemCounts,
    stripe_api: StripeApiStandin,
    clock: FakeClock,
    order: str,
    asked: int,
) -> None:
    """The answer was a failure, not "no Checkout session": None now, nothing asked while the
    backoff runs (30 s), nothing cached, so the real count is read once it is over."""
    assert counts.item_count(stripe_subject(order=order)) is None
    assert stripe_api.count() == asked
    clock.advance(29)
    assert counts.item_count(stripe_subject(order=order)) is None
    assert stripe_api.count() == asked
    clock.advance(2)
    stripe_api.add_session(SESSION, [4], payment_intent="pi_1")
    assert counts.item_count(stripe_subject(order=order)) == 4


@pytest.mark.parametrize(
    "first",
    [
        "cs_test_a1",  # the listed session is not an object
        {"object": "checkout.session"},  # it has no id
        {"id": "cs_test/../v1/customers", "object": "checkout.session"},  # not an id
    ],
    ids=["not-an-object", "no-id", "bad-id"],
)
def test_a_listed_session_that_is_unusable_is_a_failure(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
    first: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_api.answer_next(listed([first]))
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    with caplog.at_level(logging.INFO, "webhooks.attribution.enrich"):
        assert_failed_and_backed_off(counts, stripe_api, clock, "pi_1", asked=1)
    # The reason is our own sentence, logged once: a count that keeps failing leaves a trace.
    said = [r.getMessage() for r in caplog.records if r.name == "webhooks.attribution.enrich"]
    assert said == ["source=stripe: item count not read: the listed session has no id"]


@pytest.mark.parametrize(
    "data",
    [
        [],  # more pages said, none given
        [line_item("li_1", 2), {"object": "item", "quantity": 1}],  # the last item has no id
        [line_item("li_1", 2), "li_2"],  # the last item is not an object
        [line_item("li_1", 2), line_item("li_2?x=1", 1)],  # its id would change the query
    ],
    ids=["empty", "no-last-id", "last-not-an-object", "bad-last-id"],
)
def test_a_page_with_more_to_come_but_no_last_id_is_a_failure(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
    data: list[Any],
) -> None:
    stripe_api.answer_next(page(data, has_more=True))
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    assert_failed_and_backed_off(counts, stripe_api, clock, SESSION, asked=1)


def test_a_source_that_is_not_configured_keeps_the_count(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
) -> None:
    """An event of a source removed from the config since it was stored."""
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    gone = Subject(7, "old-stripe", "stripe", "pi_1", None, None, {})
    assert counts.item_count(gone) is None
    assert stripe_api.count() == 0


def test_the_retry_after_of_a_429_holds_the_next_request_back(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
) -> None:
    stripe_api.add_session(SESSION, [2])
    stripe_api.answer_next(Reply(429, {"error": {}}, {"Retry-After": "120"}))
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    assert counts.item_count(stripe_subject(order=SESSION)) is None
    clock.advance(119)  # far past the 30 s of the backoff alone
    assert counts.item_count(stripe_subject(order=SESSION)) is None
    assert stripe_api.count() == 1
    clock.advance(1)
    assert counts.item_count(stripe_subject(order=SESSION)) == 2
    assert stripe_api.count() == 2


def test_a_success_resets_the_backoff(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
) -> None:
    stripe_api.add_session(SESSION, [2])
    stripe_api.add_session("cs_test_b2", [5])
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    stripe_api.answer_next(Reply(500, {}))
    assert counts.item_count(stripe_subject(order=SESSION)) is None
    clock.advance(31)
    assert counts.item_count(stripe_subject(order=SESSION)) == 2
    stripe_api.answer_next(Reply(500, {}))
    assert counts.item_count(stripe_subject(order="cs_test_b2")) is None
    assert stripe_api.count() == 3
    clock.advance(31)  # the first step (30 s) again, not a doubled one
    assert counts.item_count(stripe_subject(order="cs_test_b2")) == 5
    assert stripe_api.count() == 4


def test_without_a_backoff_given_it_makes_its_own_on_the_same_clock(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
) -> None:
    stripe_api.add_session(SESSION, [2])
    s = settings(sqlite_url, stripe=stripe_options(stripe_api), env=STRIPE_ENV)
    counts = CheckoutItemCounts(s.sources, api, clock)
    stripe_api.answer_next(Reply(500, {}))
    assert counts.item_count(stripe_subject(order=SESSION)) is None
    assert counts.item_count(stripe_subject(order=SESSION)) is None  # backing off
    assert stripe_api.count() == 1
    clock.advance(34)  # 30 s and at most 10 % of jitter
    assert counts.item_count(stripe_subject(order=SESSION)) == 2


# --- the exposure store (attribution/exposures.py) ---------------------------------------------


def test_the_note_names_every_earlier_variation_of_each_experiment(
    shop: Service,
) -> None:
    store_exposures(
        shop.runtime.engine,
        [
            by_customer("100-1", PURCHASE - 4 * HOUR),
            by_customer("100-3", PURCHASE - 3 * HOUR),
            by_customer("100-2", PURCHASE - 2 * HOUR),
            by_customer("100-4", PURCHASE - 60),
            by_customer("200-5", PURCHASE - HOUR),
            by_customer("200-6", PURCHASE - 120),
        ],
        shop.clock.now(),
    )
    answer = lookup(shop).find(subject_of(the_event(shop)))
    assert isinstance(answer, Found) and answer.pairs == ("100-4", "200-6")
    assert answer.note == (
        "experiment 100: variation 4 exposed 2021-12-31T23:59:00Z is the latest before the "
        "purchase (earlier: 1, 2, 3); "
        "experiment 200: variation 6 exposed 2021-12-31T23:58:00Z is the latest before the "
        "purchase (earlier: 5)"
    )


def test_the_notes_times_are_utc_whatever_the_servers_zone(
    shop: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store_exposures(
        shop.runtime.engine,
        [by_customer("100-1", PURCHASE - HOUR), by_customer("100-2", PURCHASE - 60)],
        shop.clock.now(),
    )
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        answer = lookup(shop).find(subject_of(the_event(shop)))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert isinstance(answer, Found)
    assert answer.note == (
        "experiment 100: variation 2 exposed 2021-12-31T23:59:00Z is the latest before the "
        "purchase (earlier: 1)"
    )


def test_a_store_that_cannot_be_read_names_the_errors_type(
    shop: Service,
    tmp_path: Path,
) -> None:
    gone = make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", 100)
    try:
        answer = ExposureStore(gone, shop.clock, KEY, 20).find(subject_of(the_event(shop)))
    finally:
        gone.dispose()
    assert answer == NotYet(
        shop.clock.now() + 60, "exposure store could not be read (OperationalError)"
    )


def test_with_a_key_but_no_email_only_the_customer_id_is_looked_up(
    shop: Service,
) -> None:
    store_exposures(shop.runtime.engine, [by_customer("100-1", PURCHASE + 60)], shop.clock.now())
    subject = replace(subject_of(the_event(shop)), email_digest=None)
    assert lookup(shop).find(subject) == Absent(
        Reason.NO_EXPERIMENT_DATA,
        "exposure store: no exposure before the purchase for its customer id",
    )


def test_the_default_chains_exposure_store_answers_not_yet_on_its_clock(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = settings_for(sqlite_url)
    clock = FakeClock(START)
    gone = make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", 100)
    client = PlatformApi()
    try:
        chain = default_chain(settings, gone, clock, client, Backoff(clock))
        answer = chain.find(Subject(1, "stripe", "stripe", "pi_1", "cus_1", None, {}))
    finally:
        client.close()
        gone.dispose()
    assert answer == NotYet(START + 60, "exposure store could not be read (OperationalError)")


# --- the legacy GET (convert/legacy.py) --------------------------------------------------------


def test_every_query_value_is_percent_encoded_slash_included() -> None:
    """Config validation keeps goal ids to digits today; build_hits does not rely on it. The
    order id never reaches the query raw: its own escaping turns every unsafe character,
    `/` too, into ~XX first."""
    goals = GoalSet(("7/8",), ("9",))
    (hit,) = build_requests(SETTINGS, goals, ["1-2"], "a/b?c&d#e%f g", Decimal(1), 1)
    assert hit.payload == (
        "https://2222.track.convertexperiments.com/track/?c=1111&p=2222&e=1-2"
        "&g=7%2F8&ga=1&t=9%7Ca~2Fb~3Fc~26d~23e~25f~20g%7C1.00%7C1"
    )


# --- the retry schedule (delivery/retry.py) ----------------------------------------------------


def test_without_a_retry_after_the_schedule_alone_decides() -> None:
    policy = RetryPolicy(base_seconds=0.2, max_delay_seconds=0.2, horizon_seconds=100.0)
    for _ in range(20):  # the jitter: any draw is within [0.1, 0.2]
        at = policy.next_attempt(0.0, 1, 0.0)
        assert at is not None and 0.1 <= at <= 0.2


# --- adapters: a payload reader, Shopify's times --------------------------------------


@pytest.mark.parametrize("value", ["", 5, None, ["id"]])
def test_get_str_refuses_what_is_not_a_non_empty_string(value: object) -> None:
    with pytest.raises(PayloadError, match=r"^field 'k' must be a non-empty string$"):
        get_str({"k": value}, "k")
    assert get_str({"k": "x"}, "k") == "x"


ISO_FRACTION = "2021-12-31T19:00:00."  # 20 characters, then fraction digits, then the offset


@pytest.mark.parametrize(("length", "occurred_at"), [(64, PURCHASE), (65, 0.0)])
def test_a_shopify_time_of_64_characters_is_read_and_one_longer_is_not(
    length: int, occurred_at: float
) -> None:
    value = ISO_FRACTION + "0" * (length - len(ISO_FRACTION) - len("-05:00")) + "-05:00"
    assert len(value) == length
    (purchase,) = parse("orders/paid", paid_order(processed_at=value)).events
    assert purchase.occurred_at == occurred_at
