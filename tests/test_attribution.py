"""Attribution from order attributes: experiment data is buyer-controlled (a Shopify cart
attribute), so it is read in linear time, with ASCII digit ids, and capped per order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.attribution.chain import Absent, Subject
from webhooks.attribution.order import OrderAttributes
from webhooks.attribution.pairs import MAX_VALUE_CHARS, from_attributes
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
