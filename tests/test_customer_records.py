"""Experiment pairs on the platform's customer record (Stripe Customer metadata, Shopify
customer metafield) and the real item count of a Stripe Checkout purchase, read through the
platforms' APIs. Local HTTP servers stand in for the APIs (tests/stripe_api_standin.py,
tests/shopify_api_standin.py): they check the credential, answer in the documented shapes, and
can fail, be slow or hang. Settings come from a config document through the real loader, so
the per-platform options are loaded as a user would write them; the clock is a fake one."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.config_file import config_document
from tests.conftest import START, FakeClock
from tests.platform_api_standin import Reply
from tests.shopify_api_standin import ADMIN_TOKEN, THROTTLED, ShopifyApiStandin
from tests.stripe_api_standin import API_KEY, StripeApiStandin, error
from webhooks.attribution.chain import Absent, Chain, Found, NotYet, Subject
from webhooks.attribution.customers import (
    Backoff,
    PlatformApi,
    ShopifyCustomerMetafield,
    StripeCustomerMetadata,
    customer_records,
)
from webhooks.attribution.enrich import CheckoutItemCounts
from webhooks.attribution.order import OrderAttributes
from webhooks.core.errors import ConfigError
from webhooks.core.settings import Settings
from webhooks.core.states import Reason
from webhooks.wiring.config import settings_from_mapping

READ_TIMEOUT = 0.5


@pytest.fixture
def stripe_api() -> Iterator[StripeApiStandin]:
    server = StripeApiStandin().start()
    yield server
    server.stop()


@pytest.fixture
def shopify_api() -> Iterator[ShopifyApiStandin]:
    server = ShopifyApiStandin().start()
    yield server
    server.stop()


@pytest.fixture
def api() -> Iterator[PlatformApi]:
    client = PlatformApi(connect_timeout=0.5, read_timeout=READ_TIMEOUT, total_seconds=2.0)
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def settings(
    sqlite_url: str,
    stripe: dict[str, Any] | None = None,
    shop: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    doc = config_document(sqlite_url, "http://127.0.0.1:9")
    doc["sources"]["stripe"].update(stripe or {})
    doc["sources"]["shop"].update(shop or {})
    return settings_from_mapping(doc, env or {})


def stripe_options(server: StripeApiStandin) -> dict[str, Any]:
    # The key comes from the environment, as the README tells users to do.
    return {"api_key": "${STRIPE_API_KEY}", "api_base": server.base_url}


STRIPE_ENV = {"STRIPE_API_KEY": API_KEY}


def shop_options(server: ShopifyApiStandin, **more: str) -> dict[str, Any]:
    return {"admin_token": ADMIN_TOKEN, "api_base": server.base_url, **more}


def stripe_subject(customer: str | None = "cus_NffrFeUfNV2Hib", order: str = "pi_1") -> Subject:
    return Subject(7, "stripe", "stripe", order, customer, None, {})


def shop_subject(customer: str | None = "115310627314723954") -> Subject:
    return Subject(8, "shop", "shopify", "820982911946154508", customer, None, {})


def no_jitter() -> float:
    return 0.0


def stripe_lookup(
    sqlite_url: str, server: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> StripeCustomerMetadata:
    s = settings(sqlite_url, stripe=stripe_options(server), env=STRIPE_ENV)
    return StripeCustomerMetadata(s.sources, api, clock, backoff=Backoff(clock, jitter=no_jitter))


def shopify_lookup(
    sqlite_url: str, server: ShopifyApiStandin, api: PlatformApi, clock: FakeClock, **more: str
) -> ShopifyCustomerMetafield:
    s = settings(sqlite_url, shop=shop_options(server, **more))
    backoff = Backoff(clock, jitter=no_jitter)
    return ShopifyCustomerMetafield(s.sources, api, clock, backoff=backoff)


# --- Stripe Customer metadata ------------------------------------------------------------------


def test_stripe_customer_metadata_gives_the_pairs_with_the_restricted_key(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_NffrFeUfNV2Hib", {"convert_experiments": "100-200, 101-201"})
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject())
    assert answer == Found(
        ("100-200", "101-201"), "Stripe customer metadata 'convert_experiments'", "plain"
    )
    (seen,) = stripe_api.requests
    assert (seen.method, seen.path) == ("GET", "/v1/customers/cus_NffrFeUfNV2Hib")
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"


def test_the_source_s_experiments_key_is_the_metadata_key_read(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2", "ab": "5-6"})
    options = {**stripe_options(stripe_api), "experiments_key": "ab"}
    s = settings(sqlite_url, stripe=options, env=STRIPE_ENV)
    answer = StripeCustomerMetadata(s.sources, api, clock).find(stripe_subject("cus_1"))
    assert isinstance(answer, Found) and answer.pairs == ("5-6",)
    assert answer.place == "Stripe customer metadata 'ab'"


def test_any_format_the_chain_reads_works_on_the_customer_too(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    visitor_data = {
        "visitorId": "1004817394556.1012345",
        "bucketing": [{"experienceId": "100", "variationId": "200"}],
    }
    stripe_api.add_customer("cus_1", {"convert_experiments": json.dumps(visitor_data)})
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    assert isinstance(answer, Found)
    assert (answer.pairs, answer.format) == (("100-200",), "visitor_data")
    assert answer.visitor_id == "1004817394556.1012345"


def test_a_customer_without_the_key_is_absent_naming_the_place(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"plan": "gold"})
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    assert answer == Absent(
        Reason.NO_EXPERIMENT_DATA, "nothing in Stripe customer metadata 'convert_experiments'"
    )


def test_a_malformed_value_is_absent_naming_the_place_and_the_format_tried(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "100-abc,1e3-2"})
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    assert isinstance(answer, Absent)
    assert answer.reason_code == Reason.MALFORMED_EXPERIMENT_DATA
    assert answer.reason.startswith("Stripe customer metadata 'convert_experiments' ")
    assert "format tried: plain" in answer.reason


def test_a_deleted_customer_is_absent(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    # Stripe answers a deleted customer with 200 and a stub (docs: "deleted" set to true).
    deleted = {"id": "cus_1", "object": "customer", "deleted": True}
    stripe_api.answer_next(Reply(200, deleted))
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    assert answer == Absent(
        Reason.NO_EXPERIMENT_DATA, "Stripe customer record: the customer was deleted"
    )


def test_without_an_api_key_or_a_customer_nothing_is_asked(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    bare = StripeCustomerMetadata(settings(sqlite_url).sources, api, clock)
    no_key = bare.find(stripe_subject())
    assert no_key == Absent(
        Reason.NO_EXPERIMENT_DATA,
        "Stripe customer record not read: no api_key configured for the source",
    )
    lookup = stripe_lookup(sqlite_url, stripe_api, api, clock)
    assert lookup.find(stripe_subject(None)) == Absent(
        Reason.NO_EXPERIMENT_DATA, "Stripe customer record: the order names no customer"
    )
    # An id that is not one (it would change the URL's path) is never put in a request.
    assert isinstance(lookup.find(stripe_subject("cus_1/../../v1/charges")), Absent)
    assert stripe_api.count() == 0


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (error(401, "Invalid API Key provided: rk_test_****"), "HTTP 401"),
        (error(404, "No such customer: 'cus_1'", "resource_missing", "id"), "HTTP 404"),
        (Reply(500, {"error": {"type": "api_error"}}), "HTTP 500"),
        (Reply(200, b"<html>proxy error</html>"), "the answer is not JSON"),
        (Reply(200, {"object": "list", "data": []}), "the answer is not a Customer object"),
    ],
)
def test_an_api_failure_is_not_yet_never_unattributed(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    api: PlatformApi,
    clock: FakeClock,
    reply: Reply,
    said: str,
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2"})
    stripe_api.answer_next(reply)
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    assert isinstance(answer, NotYet)
    assert answer.at == START + 30.0  # the first backoff step
    assert answer.reason.startswith(f"Stripe customer record: {said}; asking again at ")


def test_a_wrong_key_is_refused_by_the_api_and_waits(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2"})
    env = {"STRIPE_API_KEY": "rk_test_51SomeOtherAccountKey0002"}
    s = settings(sqlite_url, stripe=stripe_options(stripe_api), env=env)
    answer = StripeCustomerMetadata(s.sources, api, clock).find(stripe_subject("cus_1"))
    assert isinstance(answer, NotYet) and "HTTP 401" in answer.reason


def test_a_hanging_api_times_out_within_the_bound_and_waits(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2"})
    stripe_api.delay = 5.0
    started = time.monotonic()
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    elapsed = time.monotonic() - started
    assert isinstance(answer, NotYet) and "timed out" in answer.reason
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 1.0


def test_a_slow_api_within_the_timeout_still_answers(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2"})
    stripe_api.delay = READ_TIMEOUT / 4
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    assert isinstance(answer, Found)


def test_an_oversized_answer_is_not_read_and_waits(
    sqlite_url: str, stripe_api: StripeApiStandin, clock: FakeClock
) -> None:
    big = {"id": "cus_1", "object": "customer", "metadata": {"x": "y" * 5000}}
    stripe_api.answer_next(Reply(200, big))
    small = PlatformApi(read_timeout=READ_TIMEOUT, max_answer_bytes=4096)
    try:
        lookup = stripe_lookup(sqlite_url, stripe_api, small, clock)
        answer = lookup.find(stripe_subject("cus_1"))
    finally:
        small.close()
    assert isinstance(answer, NotYet) and "larger than 4096 bytes" in answer.reason


def test_the_cache_answers_a_second_event_of_the_same_customer_until_it_expires(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2"})
    lookup = stripe_lookup(sqlite_url, stripe_api, api, clock)
    first = lookup.find(stripe_subject("cus_1", order="pi_1"))
    clock.advance(59)
    stripe_api.add_customer("cus_1", {"convert_experiments": "3-4"})
    assert lookup.find(stripe_subject("cus_1", order="sub_1")) == first
    assert stripe_api.count() == 1
    clock.advance(2)  # past the 60 s: read again, and the new value is seen
    again = lookup.find(stripe_subject("cus_1"))
    assert isinstance(again, Found) and again.pairs == ("3-4",)
    assert stripe_api.count() == 2


def test_absent_is_cached_too_but_a_failure_is_not(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {})
    lookup = stripe_lookup(sqlite_url, stripe_api, api, clock)
    assert isinstance(lookup.find(stripe_subject("cus_1")), Absent)
    assert isinstance(lookup.find(stripe_subject("cus_1")), Absent)
    assert stripe_api.count() == 1
    stripe_api.answer_next(Reply(500, {}))
    assert isinstance(lookup.find(stripe_subject("cus_2")), NotYet)
    clock.advance(31)
    stripe_api.add_customer("cus_2", {"convert_experiments": "1-2"})
    assert isinstance(lookup.find(stripe_subject("cus_2")), Found)


def test_while_the_api_backs_off_no_request_is_made_and_the_wait_doubles(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2"})
    lookup = stripe_lookup(sqlite_url, stripe_api, api, clock)
    stripe_api.answer_next(Reply(503, {}), Reply(503, {}))
    first = lookup.find(stripe_subject("cus_1"))
    assert isinstance(first, NotYet) and first.at == START + 30
    clock.advance(10)
    # Another customer of the same source: the API is known to fail, so no request.
    waiting = lookup.find(stripe_subject("cus_2"))
    assert isinstance(waiting, NotYet) and waiting.at == START + 30
    assert "the API is failing" in waiting.reason
    assert stripe_api.count() == 1
    clock.advance(20)
    second = lookup.find(stripe_subject("cus_1"))
    assert isinstance(second, NotYet) and second.at == clock.now() + 60
    clock.advance(60)
    assert isinstance(lookup.find(stripe_subject("cus_1")), Found)
    assert stripe_api.count() == 3
    # Success resets the backoff: the next failure waits the first step again.
    stripe_api.answer_next(Reply(500, {}))
    after = lookup.find(stripe_subject("cus_9"))
    assert isinstance(after, NotYet) and after.at == clock.now() + 30


def test_retry_after_of_a_429_is_honoured(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.answer_next(Reply(429, {"error": {}}, {"Retry-After": "120"}))
    answer = stripe_lookup(sqlite_url, stripe_api, api, clock).find(stripe_subject("cus_1"))
    assert isinstance(answer, NotYet) and answer.at == START + 120


# --- Shopify customer metafield ----------------------------------------------------------------


def test_shopify_metafield_gives_the_pairs_through_admin_graphql(
    sqlite_url: str, shopify_api: ShopifyApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    shopify_api.add_customer("115310627314723954", {("convert", "experiments"): "100-200"})
    answer = shopify_lookup(sqlite_url, shopify_api, api, clock).find(shop_subject())
    assert answer == Found(
        ("100-200",), "Shopify customer metafield 'convert.experiments'", "plain"
    )
    (seen,) = shopify_api.requests
    assert (seen.method, seen.path) == ("POST", "/admin/api/2025-10/graphql.json")
    assert seen.headers["x-shopify-access-token"] == ADMIN_TOKEN
    assert seen.headers["content-type"] == "application/json"
    assert shopify_api.variables() == {
        "id": "gid://shopify/Customer/115310627314723954",
        "namespace": "convert",
        "key": "experiments",
    }


def test_shopify_namespace_key_and_version_are_configurable(
    sqlite_url: str, clock: FakeClock, api: PlatformApi
) -> None:
    server = ShopifyApiStandin(version="2026-01").start()
    try:
        server.add_customer("5", {("ab", "pairs"): "7-8", ("convert", "experiments"): "1-2"})
        more = {"api_version": "2026-01", "metafield_namespace": "ab", "metafield_key": "pairs"}
        lookup = shopify_lookup(sqlite_url, server, api, clock, **more)
        answer = lookup.find(shop_subject("5"))
    finally:
        server.stop()
    assert answer == Found(("7-8",), "Shopify customer metafield 'ab.pairs'", "plain")


def test_shopify_unknown_customer_missing_or_malformed_metafield_are_absent(
    sqlite_url: str, shopify_api: ShopifyApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    shopify_api.add_customer("1", {})
    shopify_api.add_customer("2", {("convert", "experiments"): "not pairs"})
    lookup = shopify_lookup(sqlite_url, shopify_api, api, clock)
    assert lookup.find(shop_subject("9")) == Absent(
        Reason.NO_EXPERIMENT_DATA, "Shopify customer metafield: no such customer in the shop"
    )
    assert lookup.find(shop_subject("1")) == Absent(
        Reason.NO_EXPERIMENT_DATA, "nothing in Shopify customer metafield 'convert.experiments'"
    )
    malformed = lookup.find(shop_subject("2"))
    assert isinstance(malformed, Absent)
    assert malformed.reason_code == Reason.MALFORMED_EXPERIMENT_DATA
    assert malformed.reason.startswith("Shopify customer metafield 'convert.experiments' ")
    assert "format tried: plain" in malformed.reason


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (THROTTLED, "GraphQL error THROTTLED"),
        (Reply(401, {"errors": "[API] Invalid API key or access token"}), "HTTP 401"),
        (Reply(404, {"errors": "Not Found"}), "HTTP 404"),
        (Reply(502, b"Bad Gateway"), "HTTP 502"),
        (Reply(200, {"data": None}), "the answer has no data.customer"),
    ],
)
def test_shopify_api_failures_are_not_yet(
    sqlite_url: str,
    shopify_api: ShopifyApiStandin,
    api: PlatformApi,
    clock: FakeClock,
    reply: Reply,
    said: str,
) -> None:
    shopify_api.add_customer("1", {("convert", "experiments"): "1-2"})
    shopify_api.answer_next(reply)
    answer = shopify_lookup(sqlite_url, shopify_api, api, clock).find(shop_subject("1"))
    assert isinstance(answer, NotYet) and answer.at == START + 30
    assert answer.reason.startswith(f"Shopify customer metafield: {said}; asking again at ")


def test_shopify_wrong_token_and_timeout_wait(
    sqlite_url: str, shopify_api: ShopifyApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    shopify_api.add_customer("1", {("convert", "experiments"): "1-2"})
    s = settings(sqlite_url, shop={**shop_options(shopify_api), "admin_token": "shpat_wrong_0001"})
    wrong = ShopifyCustomerMetafield(s.sources, api, clock).find(shop_subject("1"))
    assert isinstance(wrong, NotYet) and "HTTP 401" in wrong.reason
    shopify_api.delay = 5.0
    started = time.monotonic()
    slow = shopify_lookup(sqlite_url, shopify_api, api, clock).find(shop_subject("1"))
    assert isinstance(slow, NotYet) and "timed out" in slow.reason
    assert time.monotonic() - started < READ_TIMEOUT + 1.0


def test_shopify_customer_ids_must_be_digits(
    sqlite_url: str, shopify_api: ShopifyApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    lookup = shopify_lookup(sqlite_url, shopify_api, api, clock)
    answer = lookup.find(shop_subject('1") { id } x: customer(id: "2'))
    assert answer == Absent(
        Reason.NO_EXPERIMENT_DATA, "Shopify customer metafield: not a customer id"
    )
    assert shopify_api.count() == 0


# --- in the chain ------------------------------------------------------------------------------


def test_in_the_chain_the_order_comes_first_then_the_customer_record(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "3-4"})
    s = settings(sqlite_url, stripe=stripe_options(stripe_api), env=STRIPE_ENV)
    chain = Chain(
        [OrderAttributes(lambda _: "convert_experiments", 20), customer_records(s, clock, api)]
    )
    on_order = Subject(1, "stripe", "stripe", "pi_1", "cus_1", None, {"convert_experiments": "1-2"})
    assert isinstance(found := chain.find(on_order), Found) and found.pairs == ("1-2",)
    assert stripe_api.count() == 0  # the order had them: the API is not called
    from_customer = chain.find(stripe_subject("cus_1"))
    assert isinstance(from_customer, Found) and from_customer.pairs == ("3-4",)
    stripe_api.answer_next(Reply(500, {}))
    waiting = chain.find(stripe_subject("cus_2"))
    # An API failure never settles the event as unattributed: it waits.
    assert isinstance(waiting, NotYet) and "Stripe customer record: HTTP 500" in waiting.reason


def test_a_platform_without_a_customer_lookup_is_named(
    sqlite_url: str, api: PlatformApi, clock: FakeClock
) -> None:
    records = customer_records(settings(sqlite_url), clock, api)
    other = Subject(1, "woo", "woocommerce", "1", "1", None, {})
    assert records.find(other) == Absent(
        Reason.NO_EXPERIMENT_DATA, "customer record: not read for woocommerce (no lookup)"
    )


# --- Stripe Checkout item count ---------------------------------------------------------------


def item_counts(
    sqlite_url: str, server: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> CheckoutItemCounts:
    s = settings(sqlite_url, stripe=stripe_options(server), env=STRIPE_ENV)
    return CheckoutItemCounts(s.sources, api, clock, backoff=Backoff(clock, jitter=no_jitter))


def test_a_checkout_purchase_gets_the_sum_of_its_line_item_quantities(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_session("cs_test_a1", [2, 3, None], payment_intent="pi_3N")
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    assert counts.item_count(stripe_subject(order="pi_3N")) == 5
    listed, items = stripe_api.requests
    assert listed.path == "/v1/checkout/sessions?payment_intent=pi_3N&limit=1"
    assert items.path == "/v1/checkout/sessions/cs_test_a1/line_items?limit=100"
    assert items.headers["authorization"] == f"Bearer {API_KEY}"
    assert counts.item_count(stripe_subject(order="pi_3N")) == 5  # cached
    assert stripe_api.count() == 2


def test_subscriptions_sessions_and_every_page_are_counted(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_session("cs_test_sub", [1] * 150 + [2], subscription="sub_1")
    stripe_api.add_session("cs_test_direct", [4])
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    assert counts.item_count(stripe_subject(order="sub_1")) == 152
    assert stripe_api.requests[-1].path.endswith("limit=100&starting_after=li_cs_test_sub_99")
    assert counts.item_count(stripe_subject(order="cs_test_direct")) == 4


def test_without_a_session_or_without_a_key_the_count_is_kept(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    assert counts.item_count(stripe_subject(order="pi_not_checkout")) is None
    assert counts.item_count(stripe_subject(order="in_1")) is None  # an invoice has its lines
    bare = CheckoutItemCounts(settings(sqlite_url).sources, api, clock)
    assert bare.item_count(stripe_subject(order="pi_3N")) is None
    assert counts.item_count(shop_subject()) is None
    assert stripe_api.count() == 1


def test_an_api_failure_keeps_the_count_and_backs_off(
    sqlite_url: str, stripe_api: StripeApiStandin, api: PlatformApi, clock: FakeClock
) -> None:
    stripe_api.add_session("cs_test_a1", [2], payment_intent="pi_1")
    counts = item_counts(sqlite_url, stripe_api, api, clock)
    stripe_api.answer_next(Reply(500, {}))
    assert counts.item_count(stripe_subject(order="pi_1")) is None
    assert counts.item_count(stripe_subject(order="pi_1")) is None  # backing off: not asked
    assert stripe_api.count() == 1
    clock.advance(31)
    assert counts.item_count(stripe_subject(order="pi_1")) == 2


# --- options in the config ---------------------------------------------------------------------


def test_options_load_and_bad_ones_are_named(sqlite_url: str) -> None:
    loaded = settings(
        sqlite_url,
        stripe={"api_key": API_KEY},
        shop={"admin_token": ADMIN_TOKEN, "shop_domain": "example.myshopify.com"},
    )
    assert dict(loaded.sources["stripe"].options) == {"api_key": API_KEY}
    assert dict(loaded.sources["shop"].options) == {
        "admin_token": ADMIN_TOKEN,
        "shop_domain": "example.myshopify.com",
    }
    with pytest.raises(ConfigError) as caught:
        settings(
            sqlite_url,
            stripe={"api_key": "pk_live_publishable0001", "api_base": "ftp://x"},
            shop={"api_version": "2025-02", "shop_domain": "evil.example.com"},
        )
    problems = caught.value.problems
    assert "sources.stripe.api_key" in problems
    assert "sources.stripe.api_base" in problems
    assert "sources.shop.api_version" in problems
    assert "sources.shop.shop_domain" in problems


def test_options_that_need_a_credential_say_so(sqlite_url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(
            sqlite_url,
            stripe={"api_base": "http://127.0.0.1:1"},
            shop={"metafield_key": "pairs"},
        )
    assert caught.value.problems["sources.stripe.api_key"] == "is required when api_base is set"
    assert "sources.shop.admin_token" in caught.value.problems
    with pytest.raises(ConfigError) as caught:
        settings(sqlite_url, shop={"admin_token": ADMIN_TOKEN})
    assert "sources.shop.shop_domain" in caught.value.problems


def test_the_factory_checks_the_convert_project_and_shares_one_backoff(
    sqlite_url: str,
    stripe_api: StripeApiStandin,
    shopify_api: ShopifyApiStandin,
    api: PlatformApi,
    clock: FakeClock,
) -> None:
    def app_data(account: str, project: str) -> str:
        data = {
            "visitorId": "1004817394556.1012345",
            "bucketing": [{"experienceId": "100", "variationId": "200"}],
            "accountId": account,
            "projectId": project,
        }
        return base64.b64encode(json.dumps(data).encode()).decode()

    shopify_api.add_customer("1", {("convert", "experiments"): app_data("1111", "2222")})
    shopify_api.add_customer("2", {("convert", "experiments"): app_data("9999", "8888")})
    s = settings(
        sqlite_url,
        stripe=stripe_options(stripe_api),
        shop=shop_options(shopify_api),
        env=STRIPE_ENV,
    )
    backoff = Backoff(clock, jitter=no_jitter)
    records = customer_records(s, clock, api, backoff)
    ours = records.find(shop_subject("1"))
    assert isinstance(ours, Found) and ours.format == "shopify_app_data"
    theirs = records.find(shop_subject("2"))  # another Convert project's data: refused
    assert isinstance(theirs, Absent)
    assert theirs.reason_code == Reason.MALFORMED_EXPERIMENT_DATA
    # The Stripe source's API failing for the customer holds its item counts back too.
    stripe_api.add_session("cs_test_a1", [2], payment_intent="pi_1")
    stripe_api.answer_next(Reply(500, {}))
    assert isinstance(records.find(stripe_subject("cus_1")), NotYet)
    counts = CheckoutItemCounts(s.sources, api, clock, backoff=backoff)
    assert counts.item_count(stripe_subject(order="pi_1")) is None
    assert stripe_api.count() == 1


def test_an_answer_that_trickles_in_is_cut_at_the_total_deadline(
    sqlite_url: str, stripe_api: StripeApiStandin, clock: FakeClock
) -> None:
    stripe_api.add_customer("cus_1", {"convert_experiments": "1-2"})
    stripe_api.trickle = True  # a byte every 5 ms: the read timeout alone never fires
    bounded = PlatformApi(read_timeout=READ_TIMEOUT, total_seconds=1.0)
    started = time.monotonic()
    try:
        answer = stripe_lookup(sqlite_url, stripe_api, bounded, clock).find(stripe_subject("cus_1"))
    finally:
        bounded.close()
    assert isinstance(answer, NotYet)
    assert 1.0 <= time.monotonic() - started < 2.5
