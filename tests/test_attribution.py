"""Attribution from order attributes: experiment data is buyer-controlled (a Shopify cart
attribute), so it is read in linear time, with ASCII digit ids, and capped per order."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.attribution.chain import Absent, Found, Subject
from webhooks.attribution.order import OrderAttributes
from webhooks.attribution.pairs import (
    MAX_VALUE_CHARS,
    PLAIN_NO_PAIR,
    Attribution,
    from_attributes,
    plain_pairs,
)
from webhooks.core.states import Reason

KEY = "convert_experiments"


def pairs_value(count: int, start: int = 1) -> str:
    return ",".join(f"{n}-{n + 1}" for n in range(start, start + count))


def test_ten_thousand_pairs_keep_the_first_twenty() -> None:
    pairs = [f"{e}-{v}" for e in range(100) for v in range(100)]  # 10,000 distinct, < 64 KB
    # Linear time (one pass with a dict, not `pair not in list`) is measured by
    # bench/attribution_scaling.py, not timed here.
    result = from_attributes({KEY: ",".join(pairs)}, KEY)
    assert result.pairs == tuple(pairs[:20])
    assert result.dropped == 10_000 - 20
    assert result.note == "kept the first 20 of 10000 experiment pairs"
    assert result.reason_code is None


def test_max_pairs_is_a_parameter_and_repeats_do_not_count() -> None:
    result = from_attributes({KEY: "1-2,1-2,3-4,01-2,5-6,7-8"}, KEY, max_pairs=2)
    assert result.pairs == ("1-2", "3-4")
    assert (result.dropped, result.note) == (2, "kept the first 2 of 4 experiment pairs")


def test_within_the_cap_nothing_is_dropped_and_there_is_no_note() -> None:
    result = from_attributes({KEY: pairs_value(20)}, KEY)
    assert (len(result.pairs), result.dropped, result.note) == (20, 0, None)


def test_max_pairs_below_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"^max_pairs must be at least 1$"):
        from_attributes({KEY: "1-2"}, KEY, max_pairs=0)


def test_a_cap_of_one_pair_keeps_the_first() -> None:
    result = from_attributes({KEY: "1-2,3-4"}, KEY, max_pairs=1)
    assert (result.pairs, result.dropped) == (("1-2",), 1)
    assert result.note == "kept the first 1 of 2 experiment pairs"


def test_data_without_a_valid_pair_says_so_in_the_order_lookup_too() -> None:
    reason = "'ab' holds no valid EXP-VAR pair (ids must be digits)"
    result = from_attributes({"ab": "1-x,y"}, "ab")
    assert (result.pairs, result.reason_code, result.reason) == (
        (),
        Reason.MALFORMED_EXPERIMENT_DATA,
        reason,
    )
    # The lookup keeps the code: malformed data is worth a look, unlike no data at all.
    lookup = OrderAttributes(lambda source: "ab", max_pairs=20)
    subject = Subject(1, "stripe", "stripe", "pi_1", None, None, {"ab": "1-x,y"})
    assert lookup.find(subject) == Absent(Reason.MALFORMED_EXPERIMENT_DATA, reason)


@pytest.mark.parametrize(
    "value",
    [
        "\u0663-\u0664",  # Arabic-Indic digits: `\d` and int() accept them
        "\uff11-\uff12",  # full-width digits
        "\u00b2-3",  # superscript two: str.isdigit() is true
        "+1-2",
        "1-+2",
        "-1-2",
        "1-2-3",
        "1" * 21 + "-2",
        "1 - 2",
        "\ud800-1",
    ],
)
def test_ids_are_one_to_twenty_ascii_digits(value: str) -> None:
    result = from_attributes({KEY: value}, KEY)
    assert result.pairs == ()
    assert result.reason_code == Reason.MALFORMED_EXPERIMENT_DATA


def test_twenty_digit_ids_and_padding_are_accepted() -> None:
    big = "9" * 20
    assert from_attributes({KEY: f" {big}-{big} , 007-8"}, KEY).pairs == (f"{big}-{big}", "7-8")


def test_only_the_first_64k_characters_are_read_and_a_cut_last_piece_is_ignored() -> None:
    head = "1-2," + " " * (MAX_VALUE_CHARS - 4 - 4)  # "1-2," then padding
    value = head + "3-45678,9-10"  # the cut falls inside "3-45678"
    result = from_attributes({KEY: value}, KEY)
    assert result.pairs == ("1-2",)  # not "3-4", a pair the buyer never had
    assert result.note == (
        f"kept the first 1 of 1 experiment pairs (read the first {MAX_VALUE_CHARS} characters"
        " of the attribute)"
    )


def test_a_megabyte_of_experiment_data_is_bounded_work() -> None:
    result = from_attributes({KEY: "1-2," * 250_000}, KEY)
    assert result.pairs == ("1-2",)


def test_missing_empty_or_non_string_value_is_no_experiment_data() -> None:
    for attributes in ({}, {KEY: ""}, {KEY: "  "}, {KEY: 5}):
        result = from_attributes(attributes, KEY)  # type: ignore[arg-type]
        assert result.reason_code == Reason.NO_EXPERIMENT_DATA


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("0123456789-, +\u0663\u00b2x"), max_size=200))
def test_any_value_gives_bounded_ascii_pairs(value: str) -> None:
    result = from_attributes({KEY: value}, KEY, max_pairs=3)
    assert len(result.pairs) <= 3
    assert len(set(result.pairs)) == len(result.pairs)
    for pair in result.pairs:
        experiment, variation = pair.split("-")
        assert experiment.isascii() and experiment.isdigit() and len(experiment) <= 20
        assert variation.isascii() and variation.isdigit() and len(variation) <= 20
    assert result.dropped >= 0
    assert (result.note is None) == (result.dropped == 0)


@pytest.mark.parametrize(
    ("length", "pairs"),
    [
        (MAX_VALUE_CHARS - 1, ("1-2", "3-4")),  # under the cap: read whole
        # At the cap the value may be one an adapter cut to 64 K (bounded_attributes), so its
        # last piece cannot be trusted and is skipped, complete or not.
        (MAX_VALUE_CHARS, ("1-2",)),
        (MAX_VALUE_CHARS + 1, ("1-2",)),
    ],
)
def test_a_value_of_the_cap_plus_or_minus_one(length: int, pairs: tuple[str, ...]) -> None:
    value = "1-2," + " " * (length - 4 - 3) + "3-4"
    assert len(value) == length
    result = from_attributes({KEY: value}, KEY)
    assert result.pairs == pairs
    assert (result.note is None) == (length < MAX_VALUE_CHARS)


# --- the order lookup: the configured key, then Convert's own attribute names ---------------

APP_DATA = {
    "visitorId": "1738012108903-0.269766",
    "bucketing": [{"experienceId": "100341351", "variationId": "1003177123", "goals": []}],
    "accountId": "1111",
    "projectId": "2222",
}
CONV_ATTRS = {"cid": "1111", "pid": "2222", "vid": "77-0.5", "exps": ["5"], "vars": ["6"]}
COOKIE = "vi:1*sc:2*exp:{7.{v.8-g.{}}}*ps:1"


def b64(data: object) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def order_lookup(key: str = KEY) -> OrderAttributes:
    return OrderAttributes(lambda source: key, 20, account_id="1111", project_id="2222")


def subject(attributes: dict[str, str]) -> Subject:
    return Subject(1, "shop", "shopify", "1", None, None, attributes)


EVERYWHERE = {
    KEY: "1-2",
    "__data": b64(APP_DATA),
    "_conv_attrs": json.dumps(CONV_ATTRS),
    "_conv_v": COOKIE,
}


@pytest.mark.parametrize(
    ("absent", "found"),
    [
        ((), Found(("1-2",), f"order attribute '{KEY}'", "plain")),
        (
            (KEY,),
            Found(
                ("100341351-1003177123",),
                "order attribute '__data'",
                "shopify_app_data",
                visitor_id="1738012108903-0.269766",
            ),
        ),
        (
            (KEY, "__data"),
            Found(("5-6",), "order attribute '_conv_attrs'", "conv_attrs", visitor_id="77-0.5"),
        ),
        (
            (KEY, "__data", "_conv_attrs"),
            Found(("7-8",), "order attribute '_conv_v'", "conv_v_cookie"),
        ),
    ],
)
def test_the_first_place_with_pairs_wins_in_a_fixed_order(
    absent: tuple[str, ...], found: Found
) -> None:
    attributes = {k: v for k, v in EVERYWHERE.items() if k not in absent}
    assert order_lookup().find(subject(attributes)) == found


@pytest.mark.parametrize(
    ("value", "format", "visitor_id"),
    [
        ('[{"experienceId": "1", "variationId": "2"}]', "json", None),
        ('{"1": "2"}', "json", None),
        ('{"visitorId": "v-1", "bucketing": [{"experienceId": 1, "variationId": 2}]}',
         "visitor_data", "v-1"),
        (b64({"visitorId": "v-1", "bucketing": [{"experienceId": 1, "variationId": 2}]}),
         "shopify_app_data", "v-1"),
        ('{"vid": "v-1", "exps": [1], "vars": [2]}', "conv_attrs", "v-1"),
        ("vi:v-1*exp:{1.{v.2-g.{}}}", "conv_v_cookie", "v-1"),
        ("vi%3Av-1%2Aexp%3A%7B1.%7Bv.2-g.%7B%7D%7D%7D", "conv_v_cookie", "v-1"),
        (" 1-2 ", "plain", None),
    ],
)
def test_the_configured_key_may_hold_any_format(
    value: str, format: str, visitor_id: str | None
) -> None:
    assert order_lookup().find(subject({KEY: value})) == Found(
        ("1-2",), f"order attribute '{KEY}'", format, visitor_id=visitor_id
    )


def test_malformed_data_in_an_earlier_place_does_not_hide_pairs_in_a_later_one() -> None:
    attributes = {KEY: "1-x", "__data": "not base64!", "_conv_v": COOKIE}
    assert order_lookup().find(subject(attributes)) == Found(
        ("7-8",), "order attribute '_conv_v'", "conv_v_cookie"
    )


def test_with_no_pairs_malformed_data_is_named_with_its_place_and_format() -> None:
    attributes = {
        KEY: "1-x",
        "__data": b64({**APP_DATA, "accountId": "9"}),
        "_conv_attrs": '{"exps": [1], "vars": []}',
        "_conv_v": "vi:1*exp:{}",  # well-formed, no experiment: not malformed
    }
    assert order_lookup().find(subject(attributes)) == Absent(
        Reason.MALFORMED_EXPERIMENT_DATA,
        f"'{KEY}' holds no valid EXP-VAR pair (ids must be digits); '__data' holds no valid"
        " shopify_app_data: it belongs to Convert account 9 ('accountId'), not the configured"
        " 1111; '_conv_attrs' holds no valid conv_attrs: 'exps' and 'vars' differ in length",
    )


def test_with_nothing_anywhere_every_place_looked_at_is_named() -> None:
    assert order_lookup().find(subject({"other": "1-2", KEY: "  "})) == Absent(
        Reason.NO_EXPERIMENT_DATA,
        f"no '{KEY}', '__data', '_conv_attrs' or '_conv_v' attribute on the order",
    )
    empty = {"__data": b64({**APP_DATA, "bucketing": []}), "_conv_v": "vi:1*exp:{}"}
    assert order_lookup().find(subject(empty)) == Absent(
        Reason.NO_EXPERIMENT_DATA,
        f"no '{KEY}' or '_conv_attrs' attribute on the order; '__data' names no experiment"
        " (shopify_app_data); '_conv_v' names no experiment (conv_v_cookie)",
    )


def test_a_configured_key_that_is_a_convert_name_is_read_once() -> None:
    lookup = order_lookup("_conv_v")
    assert [name for name, _ in lookup.places("shop")] == [
        "_conv_v",
        "__data",
        "_conv_attrs",
        "client_reference_id",  # read when present, not named when absent
    ]
    assert lookup.find(subject({"_conv_v": COOKIE})) == Found(
        ("7-8",), "order attribute '_conv_v'", "conv_v_cookie"
    )
    assert lookup.find(subject({})) == Absent(
        Reason.NO_EXPERIMENT_DATA, "no '_conv_v', '__data' or '_conv_attrs' attribute on the order"
    )


def test_without_a_configured_project_convert_data_is_not_compared() -> None:
    other = b64({**APP_DATA, "accountId": "9", "projectId": "8"})
    unchecked = OrderAttributes(lambda source: KEY, 20)
    assert unchecked.find(subject({"__data": other})) == Found(
        ("100341351-1003177123",),
        "order attribute '__data'",
        "shopify_app_data",
        visitor_id="1738012108903-0.269766",
    )


def test_a_missing_attribute_and_a_blank_plain_value_say_so() -> None:
    assert from_attributes({}, "ab") == Attribution(
        (), Reason.NO_EXPERIMENT_DATA, "no 'ab' attribute on the order"
    )
    assert plain_pairs("  ") == Attribution((), Reason.NO_EXPERIMENT_DATA, "is empty")
    assert plain_pairs("x-y") == Attribution((), Reason.MALFORMED_EXPERIMENT_DATA, PLAIN_NO_PAIR)


def _order(attributes: dict[str, str]) -> Absent | Found:
    lookup = OrderAttributes(lambda source: "ab", 20, account_id="1111", project_id="2222")
    answer = lookup.find(Subject(1, "stripe", "stripe", "pi_1", None, None, attributes))
    assert isinstance(answer, Absent | Found)
    return answer


NO_EXPERIMENT = {
    "ab": "[]",
    "__data": base64.b64encode(json.dumps({"bucketing": []}).encode()).decode(),
    "_conv_attrs": json.dumps({"exps": [], "vars": []}),
}


def test_well_formed_data_naming_no_experiment_is_said_place_by_place() -> None:
    one_missing = _order(NO_EXPERIMENT)
    assert one_missing == Absent(
        Reason.NO_EXPERIMENT_DATA,
        "no '_conv_v' attribute on the order; 'ab' names no experiment (json); '__data' names"
        " no experiment (shopify_app_data); '_conv_attrs' names no experiment (conv_attrs)",
    )
    none_missing = _order({**NO_EXPERIMENT, "_conv_v": "vi:1*sc:1"})
    assert none_missing == Absent(
        Reason.NO_EXPERIMENT_DATA,
        "'ab' names no experiment (json); '__data' names no experiment (shopify_app_data);"
        " '_conv_attrs' names no experiment (conv_attrs); '_conv_v' names no experiment"
        " (conv_v_cookie)",
    )
