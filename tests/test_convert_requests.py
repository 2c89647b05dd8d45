"""The legacy GET format, the attribution it needs, and money formatting."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from webhooks.attribution.pairs import from_attributes
from webhooks.convert.legacy import build_hits, format_value, safe_transaction_id
from webhooks.core.errors import PayloadError
from webhooks.core.hits import Hit, HitFormat, Purchase
from webhooks.core.money import from_decimal_string, from_minor_units
from webhooks.core.settings import ConvertSettings, GoalSet
from webhooks.delivery.retry import RetryPolicy

SETTINGS = ConvertSettings(
    "1111", "2222", "https://{project_id}.track.convertexperiments.com/track/", False, 3.0, 10.0
)


def build_requests(
    settings: ConvertSettings,
    goals: GoalSet,
    pairs: list[str],
    order_id: str,
    amount: Decimal,
    items: int,
) -> list[Hit]:
    hits = build_hits(settings, goals, Purchase(7, order_id, amount, items), pairs)
    assert {(hit.event_id, hit.format) for hit in hits} == {(7, HitFormat.LEGACY_GET)}
    assert [hit.pair for hit in hits] == pairs  # the send records each hit under its pair
    return hits


def test_conversion_and_transaction_in_one_request_per_pair() -> None:
    goals = GoalSet(conversion=("100", "101", "102"), transaction=("100", "101"))
    requests = build_requests(SETTINGS, goals, ["1-2", "3-4"], "pi_9", Decimal("49.9"), 2)
    assert [r.payload for r in requests] == [
        "https://2222.track.convertexperiments.com/track/?c=1111&p=2222&e=1-2"
        "&g=100%2C101%2C102&ga=3&t=100.101%7Cpi_9%7C49.90%7C2",
        "https://2222.track.convertexperiments.com/track/?c=1111&p=2222&e=3-4"
        "&g=100%2C101%2C102&ga=3&t=100.101%7Cpi_9%7C49.90%7C2",
    ]


def test_conversion_only_and_transaction_only() -> None:
    only_g = build_requests(SETTINGS, GoalSet(("7",), ()), ["1-2"], "x", Decimal(1), 1)
    assert only_g[0].payload.endswith("?c=1111&p=2222&e=1-2&g=7&ga=1")
    only_t = build_requests(SETTINGS, GoalSet((), ("7",)), ["1-2"], "x", Decimal(1), 1)
    assert only_t[0].payload.endswith("?c=1111&p=2222&e=1-2&t=7%7Cx%7C1.00%7C1")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("pi_3RopAi08MTe1bJmc1MMrv98y", "pi_3RopAi08MTe1bJmc1MMrv98y"),
        ("820982911946154508", "820982911946154508"),
        ("A|B", "A~7CB"),
        ("a,b", "a~2Cb"),
        ("x&y=z", "x~26y~3Dz"),
        ("50~", "50~7E"),
        ("é", "~C3~A9"),
        ("sub_1:inv.2-3", "sub_1:inv.2-3"),
    ],
)
def test_transaction_ids_are_made_safe_stably(raw: str, safe: str) -> None:
    assert safe_transaction_id(raw) == safe


def test_escaping_never_merges_two_ids() -> None:
    ids = ["a|b", "a~7Cb", "a_b", "a b", "a%7Cb"]
    assert len({safe_transaction_id(i) for i in ids}) == len(ids)


def test_transaction_id_with_separator_survives_in_the_url() -> None:
    (request,) = build_requests(SETTINGS, GoalSet((), ("1",)), ["1-2"], "A|B", Decimal(1), 1)
    assert request.payload.endswith("t=1%7CA~7CB%7C1.00%7C1")


@pytest.mark.parametrize(("items", "text"), [(0, "0"), (-3, "0"), (12, "12")])
def test_the_products_count_is_as_given_and_never_negative(items: int, text: str) -> None:
    (request,) = build_requests(SETTINGS, GoalSet((), ("1",)), ["1-2"], "x", Decimal(1), items)
    assert request.payload.endswith(f"t=1%7Cx%7C1.00%7C{text}")


def test_an_endpoint_with_its_own_query_gets_the_parameters_after_an_ampersand() -> None:
    settings = ConvertSettings("1111", "2222", "https://t.example/track/?via=proxy", False, 3, 10)
    (request,) = build_requests(settings, GoalSet(("7",), ()), ["1-2"], "x", Decimal(1), 1)
    assert request.payload == "https://t.example/track/?via=proxy&c=1111&p=2222&e=1-2&g=7&ga=1"


@pytest.mark.parametrize(
    ("amount", "text"),
    [("10", "10.00"), ("0.005", "0.01"), ("12.345", "12.35"), ("4999", "4999.00"), ("0", "0.00")],
)
def test_values_have_exactly_two_decimals(amount: str, text: str) -> None:
    assert format_value(Decimal(amount)) == text


@pytest.mark.parametrize("amount", ["NaN", "sNaN", "Infinity", "-Infinity"])
def test_an_amount_that_is_not_a_finite_number_is_refused(amount: str) -> None:
    with pytest.raises(ValueError, match=r"^the amount is not a finite number$"):
        format_value(Decimal(amount))


@pytest.mark.parametrize(
    ("value", "pairs", "code"),
    [
        ("100-200", ("100-200",), None),
        (" 1-2 , 3-4 ,1-2", ("1-2", "3-4"), None),
        ("1-2,bad,3-x", ("1-2",), None),
        ("", (), "no_experiment_data"),
        ("abc", (), "malformed_experiment_data"),
        ("1-2-3", (), "malformed_experiment_data"),
        ("-1-2", (), "malformed_experiment_data"),
        ("1.5-2", (), "malformed_experiment_data"),
    ],
)
def test_experiment_pairs_from_the_order(
    value: str, pairs: tuple[str, ...], code: str | None
) -> None:
    attribution = from_attributes({"convert_experiments": value}, "convert_experiments")
    assert attribution.pairs == pairs
    assert attribution.reason_code == code


def test_missing_attribute_and_custom_key() -> None:
    assert from_attributes({}, "k").reason_code == "no_experiment_data"
    assert from_attributes({"ab": "5-6"}, "ab").pairs == ("5-6",)


def test_money_never_goes_through_float() -> None:
    assert from_minor_units(99_999_999_999_999, 2) == Decimal("999999999999.99")
    assert from_decimal_string("0.10", "x") + from_decimal_string("0.20", "x") == Decimal("0.30")
    for bad in (1.5, True, None, "1"):
        with pytest.raises(PayloadError):
            from_minor_units(bad, 2)
    for bad_string in ("NaN", "abc", "Infinity", None, 1.5):
        with pytest.raises(PayloadError):
            from_decimal_string(bad_string, "x")


def test_backoff_grows_with_jitter_and_stops_at_horizon() -> None:
    policy = RetryPolicy(base_seconds=10, max_delay_seconds=100, horizon_seconds=1000)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(100, 10 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert policy.next_attempt(now=500, attempts=1, horizon_start=0) is not None
    assert policy.next_attempt(now=995, attempts=10, horizon_start=0) is None
