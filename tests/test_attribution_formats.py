"""Every format experiment data comes in: real values from Convert's documentation, bad values
refused with a reason naming the format, property-based proofs that no input crashes a parser
and that every well-formed value round-trips, and the service end to end.

Where the real values come from (../shared/reference/convert-tracking.md):
- `_conv_v` cookies: section 5.1, the support article's example and two real cookies.
- `__data`: section 7.1, the shape in Convert's support article "Developing a Custom Web Pixel
  for the Convert Shopify App" (base64 of the JSON shown there, ids as in the article).
- `convert.getAllVisitorData()`: section 6, `VisitorData` in `@convertcom/tracking-types`.
- `_conv_attrs`: section 7.2, the object older Convert-style Shopify snippets build.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import shopify_order
from webhooks.attribution.formats import (
    _COOKIE_JSON_KEY,
    FORMATS,
    MAX_JSON_DEPTH,
    Parsed,
    Parser,
    Project,
    Refused,
    Result,
    parse_any,
    parse_conv_attrs,
    parse_conv_v_cookie,
    parse_json,
    parse_plain,
    parse_shopify_app_data,
    parse_visitor_data,
)
from webhooks.attribution.pairs import MAX_VALUE_CHARS
from webhooks.storage.schema import events

CONFIGURED = Project("1111", "2222")  # tests/config_file.py's Convert account and project

COOKIE_ARTICLE = (
    "vi:1374074822644-0.8675333885475993*sc:2*cs:1374079443*fs:1374074823*pv:4*exp:{10001236.{v."
    "10008683-g.{10001841.1}}-10001237.{v.10008687-g.{10001841.1}}}*ps:1374074823"
)
COOKIE_REAL = (
    "vi:1*sc:71*cs:1645954599*fs:1600416923*pv:233*exp:{100024594.{v.1000184260-g.{100022024.1-"
    "100022025.1}}-100026246.{v.1000188724-g.{100022024.1}}}*ps:1644924857"
)
COOKIE_NO_EXPERIMENT = "vi:1*sc:4*cs:1541383837*fs:1541147440*pv:5*exp:{}*ps:1541221464"

APP_DATA = {  # the support article's __data, with this test config's account and project
    "visitorId": "1738012108903-0.269766",
    "bucketing": [{"experienceId": "100341351", "variationId": "1003177123", "goals": []}],
    "segments": {
        "country": "CA",
        "browser": "CH",
        "devices": ["DESK"],
        "source": "direct",
        "visitorType": "new",
    },
    "accountId": "1111",
    "projectId": "2222",
    "currency": "CAD",
}

VISITOR_DATA = {  # VisitorData: {visitorId, segments, bucketing: BucketingData[]}
    "visitorId": "1004-0.5",
    "segments": {"browser": "FF", "devices": ["DESK"], "source": "direct"},
    "bucketing": [
        {
            "experienceId": "100341351",
            "variationId": "1003177123",
            "firstTime": False,
            "goals": [{"goalId": "100136097", "thisRun": True, "timestamp": 1738012108903}],
        },
        {"experienceId": "100341352", "variationId": "1003177130", "firstTime": True, "goals": []},
    ],
}

CONV_ATTRS = {  # convert_attributes of the older Shopify snippets
    "cid": "1111",
    "pid": "2222",
    "vid": "1645954599379-0.9359638172097431",
    "exps": ["100024594", "100026246"],
    "vars": ["1000184260", "1000188724"],
    "goals": {"100022024": 1},
    "defaultSegments": {"browser": "CH", "devices": ["DESK"], "new": 1, "ctry": "RO"},
    "conversionRate": 1,
    "min_order_value": 0,
    "max_order_value": 999999999,
}

PARSERS: list[Parser] = [
    parse_plain,
    parse_json,
    parse_visitor_data,
    parse_shopify_app_data,
    parse_conv_attrs,
    parse_conv_v_cookie,
    parse_any,
]


def b64(data: object) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


# --- real values -----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [lambda c: c, lambda c: quote(c, safe="")], ids=["raw", "url"])
def test_the_three_documented_conv_v_cookies(encode: Any) -> None:
    assert parse_conv_v_cookie(encode(COOKIE_ARTICLE)) == Parsed(
        "conv_v_cookie",
        ("10001236-10008683", "10001237-10008687"),
        visitor_id="1374074822644-0.8675333885475993",  # a generated id: not "1"
    )
    assert parse_conv_v_cookie(encode(COOKIE_REAL)) == Parsed(
        "conv_v_cookie", ("100024594-1000184260", "100026246-1000188724")  # vi:1: no id
    )
    assert parse_conv_v_cookie(encode(COOKIE_NO_EXPERIMENT)) == Parsed("conv_v_cookie", ())
    # The configured key may hold the cookie too: told by its `key:value*...` shape.
    assert parse_any(encode(COOKIE_REAL)) == parse_conv_v_cookie(COOKIE_REAL)


def test_the_cookie_key_quoting_is_convert_s_recipe() -> None:
    """The article's decoded `exp`, by Convert's own recipe (its regex, not ours)."""
    exp = COOKIE_ARTICLE.split("*exp:")[1].split("*")[0]
    decoded = re.sub(r"([a-z0-9]+):", r'"\1":', exp.replace("-", ",").replace(".", ":"))
    assert json.loads(decoded) == {
        "10001236": {"v": 10008683, "g": {"10001841": 1}},
        "10001237": {"v": 10008687, "g": {"10001841": 1}},
    }


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("ab09:.,-{}Z_ "), max_size=60))
def test_our_linear_key_quoting_is_exactly_convert_s_regex(exp: str) -> None:
    """formats.py quotes keys with a lookbehind so a long run is scanned once; the output
    must be the one Convert's `([a-z0-9]+):` gives."""
    convert = re.sub(r"([a-z0-9]+):", r'"\1":', exp)
    assert _COOKIE_JSON_KEY.sub(r'"\1":', exp) == convert


def test_the_shopify_app_data_attribute() -> None:
    expected = Parsed("shopify_app_data", ("100341351-1003177123",), "1738012108903-0.269766")
    assert parse_shopify_app_data(b64(APP_DATA), 20, CONFIGURED) == expected
    assert parse_any(b64(APP_DATA), 20, CONFIGURED) == expected  # base64 JSON, told by shape
    # A visitor id whose standard base64 holds both "+" and "/": the URL-safe alphabet has
    # "-" and "_" there, and some encoders leave the padding out.
    both = {**APP_DATA, "visitorId": "?>?>~~"}
    standard = b64(both)
    assert "+" in standard and "/" in standard and standard.endswith("=")
    url_safe = standard.rstrip("=").replace("+", "-").replace("/", "_")
    assert parse_shopify_app_data(url_safe, 20, CONFIGURED) == Parsed(
        "shopify_app_data", ("100341351-1003177123",), "?>?>~~"
    )
    anonymous = {k: v for k, v in APP_DATA.items() if k not in ("accountId", "projectId")}
    assert parse_shopify_app_data(b64(anonymous), 20, CONFIGURED) == expected


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"accountId": "123456"},
            "holds no valid shopify_app_data: it belongs to Convert account 123456"
            " ('accountId'), not the configured 1111",
        ),
        (
            {"projectId": 789012},
            "holds no valid shopify_app_data: it belongs to Convert project 789012"
            " ('projectId'), not the configured 2222",
        ),
        (
            {"projectId": "Robert'); DROP TABLE"},  # not an id: not quoted back either
            "holds no valid shopify_app_data: it belongs to Convert project an unreadable id"
            " ('projectId'), not the configured 2222",
        ),
    ],
)
def test_app_data_of_another_convert_project_is_refused(
    changes: dict[str, object], reason: str
) -> None:
    value = b64({**APP_DATA, **changes})
    assert parse_shopify_app_data(value, 20, CONFIGURED) == Refused("shopify_app_data", reason)
    # Without a configured project nothing is compared: the ids are only checked when known.
    assert isinstance(parse_shopify_app_data(value), Parsed)


def test_get_all_visitor_data_gives_the_pairs_and_the_visitor_id() -> None:
    expected = Parsed("visitor_data", ("100341351-1003177123", "100341352-1003177130"), "1004-0.5")
    assert parse_visitor_data(json.dumps(VISITOR_DATA)) == expected
    assert parse_any(json.dumps(VISITOR_DATA)) == expected


def test_conv_attrs_pair_exps_with_vars_by_index() -> None:
    expected = Parsed(
        "conv_attrs",
        ("100024594-1000184260", "100026246-1000188724"),
        "1645954599379-0.9359638172097431",
    )
    assert parse_conv_attrs(json.dumps(CONV_ATTRS), 20, CONFIGURED) == expected
    assert parse_any(json.dumps(CONV_ATTRS), 20, CONFIGURED) == expected
    other = json.dumps({**CONV_ATTRS, "cid": "9"})
    assert parse_conv_attrs(other, 20, CONFIGURED) == Refused(
        "conv_attrs",
        "holds no valid conv_attrs: it belongs to Convert account 9 ('cid'), not the configured"
        " 1111",
    )


@pytest.mark.parametrize(
    "value",
    [
        '[{"experienceId": "1", "variationId": "2"}, {"experimentId": 3, "variation_id": 4}]',
        '[{"experience_id": "1", "variation_id": "2"}, {"experiment_id": "3", "variationId": 4}]',
        '{"1": "2", "3": 4}',
        '{"1": {"variation_id": "2"}, "3": {"variationId": 4}}',  # convert.historicalData
    ],
)
def test_json_lists_in_either_naming_style_and_maps(value: str) -> None:
    assert parse_json(value) == Parsed("json", ("1-2", "3-4"))
    assert parse_any(value) == Parsed("json", ("1-2", "3-4"))


def test_leading_zeros_and_repeats_are_one_pair_and_bad_entries_are_left_out() -> None:
    value = '[{"experienceId": "01", "variationId": 2}, {"experienceId": 1, "variationId": "2"},'
    value += ' {"experienceId": "x", "variationId": 3}, 7, {"experienceId": "5", "variationId": 6}]'
    assert parse_json(value) == Parsed("json", ("1-2", "5-6"))


def test_the_cap_keeps_the_first_pairs_and_says_so_in_every_format() -> None:
    pairs = [(n, n + 1000) for n in range(1, 31)]
    for value, parser in [
        (json.dumps({str(e): v for e, v in pairs}), parse_json),
        (json.dumps({"bucketing": [bucket(e, v) for e, v in pairs]}), parse_visitor_data),
        (b64({"bucketing": [bucket(e, v) for e, v in pairs]}), parse_shopify_app_data),
        (json.dumps({"exps": [e for e, _ in pairs], "vars": [v for _, v in pairs]}),
         parse_conv_attrs),
        (cookie(pairs), parse_conv_v_cookie),
    ]:
        result = parser(value, 20, CONFIGURED)
        assert isinstance(result, Parsed), result
        assert result.pairs == tuple(f"{e}-{v}" for e, v in pairs[:20])
        assert (result.dropped, result.note) == (10, "kept the first 20 of 30 experiment pairs")


# --- bad values: a reason naming the format, never an exception, never a guess ---------------


@pytest.mark.parametrize(
    ("parser", "value", "reason"),
    [
        (parse_plain, "1-x,y", "holds no valid EXP-VAR pair (ids must be digits)"),
        (parse_json, "[1, 2", "holds no valid json: not valid JSON"),
        (parse_json, '{"1": 2, "1": 3}', "holds no valid json: a JSON object names a key twice"),
        (parse_json, '{"1": NaN}', "holds no valid json: not valid JSON (NaN or Infinity)"),
        (parse_json, '"1-2"', "holds no valid json: neither a list of pairs nor an"
         " {experience: variation} map"),
        (parse_json, '{"1": 2.0}', "holds no valid json: no valid pair: the entry is not two"
         " ids of 1 to 20 ASCII digits"),
        (parse_json, '{"1": true, "2": -3, "3": "\u0663", "4": 123456789012345678901}',
         "holds no valid json: no valid pair: the 4 entries are not two ids of 1 to 20 ASCII"
         " digits"),
        (parse_json, '[{"experienceId": "1", "experimentId": "2", "variationId": "3"}]',
         "holds no valid json: no valid pair: the entry is not two ids of 1 to 20 ASCII digits"),
        (parse_json, "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
         f"holds no valid json: JSON nested deeper than {MAX_JSON_DEPTH} levels"),
        (parse_visitor_data, '{"visitorId": "1"}', "holds no valid visitor_data: no 'bucketing'"
         " list"),
        (parse_visitor_data, "[]", "holds no valid visitor_data: not a JSON object"),
        (parse_shopify_app_data, "not base64!", "holds no valid shopify_app_data: not base64"),
        (parse_shopify_app_data, "A", "holds no valid shopify_app_data: not base64 (wrong"
         " length)"),
        (parse_shopify_app_data, base64.b64encode(b"\xff\xfe").decode(),
         "holds no valid shopify_app_data: not base64 of UTF-8 text"),
        (parse_shopify_app_data, base64.b64encode(b"{nope").decode(),
         "holds no valid shopify_app_data: not valid JSON"),
        (parse_conv_attrs, '{"exps": ["1", "2"], "vars": ["3"]}',
         "holds no valid conv_attrs: 'exps' and 'vars' differ in length"),
        (parse_conv_attrs, '{"exps": ["1"]}', "holds no valid conv_attrs: no 'exps' and 'vars'"
         " lists"),
        (parse_conv_v_cookie, "hello", "holds no valid conv_v_cookie: a piece is not"
         " 'key:value'"),
        (parse_conv_v_cookie, "*", "holds no valid conv_v_cookie: no 'key:value' piece"),
        (parse_conv_v_cookie, "exp:{}*exp:{}", "holds no valid conv_v_cookie: the 'exp' piece"
         " appears twice"),
        (parse_conv_v_cookie, "exp:{1.{v.2}", "holds no valid conv_v_cookie: not valid JSON"),
        (parse_conv_v_cookie, "exp:{1.{g.{}}}", "holds no valid conv_v_cookie: no valid pair:"
         " the entry is not two ids of 1 to 20 ASCII digits"),
        (parse_conv_v_cookie, "exp:{1.2-3.[4]}", "holds no valid conv_v_cookie: no valid pair:"
         " the 2 entries are not two ids of 1 to 20 ASCII digits"),
        (parse_conv_v_cookie, "exp:%FF", "holds no valid conv_v_cookie: URL-encoding that is"
         " not UTF-8"),
    ],
)
def test_malformed_values_are_refused_naming_the_format(
    parser: Parser, value: str, reason: str
) -> None:
    result = parser(value, 20, CONFIGURED)
    assert isinstance(result, Refused)
    assert result.reason == reason


@pytest.mark.parametrize("parser", PARSERS[1:6])
def test_a_structured_value_longer_than_the_cap_is_refused_unread(parser: Parser) -> None:
    value = json.dumps([{"experienceId": "1", "variationId": "2"}]).ljust(MAX_VALUE_CHARS + 1)
    result = parser(value, 20, CONFIGURED)
    assert isinstance(result, Refused)
    assert result.reason.endswith(f"longer than {MAX_VALUE_CHARS} characters")


@pytest.mark.parametrize(
    "value",
    [
        "[" * 60_000,  # json.loads would recurse 60,000 deep
        '["' + '\\"' * 30_000,  # an escaped quote, again and again, never closed
        "exp:" + "a" * 65_000,  # a key run without its colon
        '{"visitorId": "' + "9" * 60_000 + '", "bucketing": []}',
        "[" + "1" * 60_000 + "]",  # a 60,000-digit integer is never built
    ],
)
def test_hostile_values_are_bounded_work_with_an_answer(value: str) -> None:
    # Linear by construction (see formats.py); benches time it, this proves the answers.
    for parser in PARSERS:
        assert isinstance(parser(value, 20, CONFIGURED), Parsed | Refused)


def test_a_visitor_id_that_is_not_printable_ascii_is_left_out_and_the_pairs_kept() -> None:
    for visitor in ["", "a b", "\u00e9", "x" * 256, 5.5, True, None, ["1"]]:
        data = {"visitorId": visitor, "bucketing": [bucket(1, 2)]}
        assert parse_visitor_data(json.dumps(data)) == Parsed("visitor_data", ("1-2",))
    # A site's own numeric id (BYOID) written as a JSON integer is its decimal text.
    data = {"visitorId": 5, "bucketing": [bucket(1, 2)]}
    assert parse_visitor_data(json.dumps(data)) == Parsed("visitor_data", ("1-2",), "5")


# --- properties ------------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis folder in the shared tree
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
# JSON documents shaped like each format, with arbitrary values in the places that matter.
SHAPED = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {"visitorId": JSON_VALUES, "bucketing": st.lists(JSON_VALUES | st.fixed_dictionaries(
            {"experienceId": JSON_VALUES, "variationId": JSON_VALUES}), max_size=4)},
        optional={"accountId": JSON_VALUES, "projectId": JSON_VALUES},
    ),
    st.fixed_dictionaries(
        {"exps": st.lists(JSON_VALUES, max_size=4), "vars": st.lists(JSON_VALUES, max_size=4)},
        optional={"cid": JSON_VALUES, "pid": JSON_VALUES, "vid": JSON_VALUES},
    ),
)
IDS = st.integers(min_value=0, max_value=10**20 - 1)


def check_answer(result: Result, max_pairs: int) -> None:
    assert isinstance(result, Parsed | Refused)
    assert result.format in FORMATS
    if isinstance(result, Refused):
        assert result.reason.startswith("holds no valid ")
        return
    assert len(result.pairs) <= max_pairs and len(set(result.pairs)) == len(result.pairs)
    for pair in result.pairs:
        assert re.fullmatch(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})", pair), pair
    if result.visitor_id is not None:
        assert re.fullmatch(r"[\x21-\x7e]{1,255}", result.visitor_id)
    assert (result.note is None) == (result.dropped == 0)


@PROPERTY
@given(st.text(max_size=300), st.integers(min_value=1, max_value=5))
def test_no_text_crashes_any_parser(value: str, max_pairs: int) -> None:
    for parser in PARSERS:
        check_answer(parser(value, max_pairs, CONFIGURED), max_pairs)


@PROPERTY
@given(
    st.text(alphabet=st.sampled_from("{}[].-:*,%\"'\\0123456789abcgvexpi _=+/"), max_size=200)
)
def test_no_text_of_format_characters_crashes_any_parser(value: str) -> None:
    for parser in PARSERS:
        check_answer(parser(value, 3, CONFIGURED), 3)


@PROPERTY
@given(SHAPED, st.integers(min_value=1, max_value=5))
def test_no_json_crashes_any_parser(data: object, max_pairs: int) -> None:
    text = json.dumps(data)  # NaN and Infinity included: Python writes them, we refuse them
    for value in (text, b64(data)):
        for parser in PARSERS:
            check_answer(parser(value, max_pairs, CONFIGURED), max_pairs)


def convert_encoded(data: object) -> str:
    """JSON as Convert writes a cookie's `exp`: unquoted, `.` for `:`, `-` for `,`."""
    text = json.dumps(data, separators=(",", ":")).replace('"', "")
    return text.replace(":", ".").replace(",", "-")


@PROPERTY
@given(SHAPED | st.dictionaries(st.from_regex(r"[0-9]{1,3}", fullmatch=True), JSON_VALUES))
def test_no_json_in_a_cookie_crashes_any_parser(data: object) -> None:
    for value in (f"vi:1*exp:{convert_encoded(data)}", f"exp:{json.dumps(data)}"):
        for parser in PARSERS:
            check_answer(parser(value, 3, CONFIGURED), 3)


@PROPERTY
@given(st.binary(max_size=300))
def test_no_base64_crashes_any_parser(raw: bytes) -> None:
    for value in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        for parser in PARSERS:
            check_answer(parser(value, 3, CONFIGURED), 3)


def bucket(experience: object, variation: object) -> dict[str, object]:
    return {"experienceId": experience, "variationId": variation, "goals": []}


def cookie(pairs: list[tuple[int, int]], visitor: str = "1") -> str:
    """A `_conv_v` value as Convert writes it: JSON with `.` for `:` and `-` for `,`."""
    exp = "-".join(f"{e}.{{v.{v}-g.{{}}}}" for e, v in pairs)
    return f"vi:{visitor}*sc:1*cs:1541383837*fs:1541147440*pv:1*exp:{{{exp}}}*ps:1541221464"


def encodings(
    pairs: list[tuple[int, int]], visitor: str, as_text: bool
) -> list[tuple[str, Parser, str, str | None]]:
    """Each format's encoding of `pairs`: (value, its parser, format name, visitor id)."""
    ids: Any = str if as_text else int  # JSON may give ids as strings or as integers
    experiences = [ids(e) for e, _ in pairs]
    variations = [ids(v) for _, v in pairs]
    buckets = [bucket(e, v) for e, v in zip(experiences, variations, strict=True)]
    app = {"visitorId": visitor, "bucketing": buckets, "accountId": "1111", "projectId": 2222}
    attrs = {"cid": 1111, "pid": "2222", "vid": visitor, "exps": experiences, "vars": variations}
    return [
        (",".join(f"{e}-{v}" for e, v in pairs), parse_plain, "plain", None),
        (json.dumps([{"experimentId": e, "variation_id": v} for e, v in pairs]), parse_json,
         "json", None),
        (json.dumps({str(e): v for e, v in zip(experiences, variations, strict=True)}),
         parse_json, "json", None),
        (json.dumps({"visitorId": visitor, "bucketing": buckets}), parse_visitor_data,
         "visitor_data", visitor),
        (b64(app), parse_shopify_app_data, "shopify_app_data", visitor),
        (json.dumps(attrs), parse_conv_attrs, "conv_attrs", visitor),
        (cookie(pairs, visitor), parse_conv_v_cookie, "conv_v_cookie", visitor),
        (quote(cookie(pairs, visitor), safe=""), parse_conv_v_cookie, "conv_v_cookie", visitor),
    ]


@PROPERTY
@given(
    st.lists(st.tuples(IDS, IDS), min_size=1, max_size=20, unique_by=lambda pair: pair[0]),
    # A visitor id as Convert makes them; `*` and `%` would be cookie syntax, "1" means none.
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="*%"),
            min_size=1, max_size=255).filter(lambda v: v != "1"),
    st.booleans(),
)
def test_every_well_formed_value_round_trips(
    pairs: list[tuple[int, int]], visitor: str, as_text: bool
) -> None:
    expected = tuple(f"{e}-{v}" for e, v in pairs)
    for value, parser, name, visitor_id in encodings(pairs, visitor, as_text):
        parsed = Parsed(name, expected, visitor_id)
        assert parser(value, 20, CONFIGURED) == parsed, value
        assert parse_any(value, 20, CONFIGURED) == parsed, value  # the configured key


# --- through the service ---------------------------------------------------------------------

PURCHASE = "g=100%2C101&ga=2&t=100"


def track(pair: str, order: dict[str, Any]) -> str:
    items = sum(item["quantity"] for item in order["line_items"])
    txn = f"{order['id']}%7C{order['total_price']}%7C{items}"
    return f"/track/?c=1111&p=2222&e={pair}&{PURCHASE}%7C{txn}"


def attribution_of(service: Service) -> tuple[Any, ...]:
    with service.runtime.engine.connect() as conn:
        row = conn.execute(select(events)).one()
    return (row.state, row.attributed_from, row.attribution_format, row.visitor_id)


def test_a_shopify_order_with_the_convert_app_s_data_is_sent_with_its_pairs(
    service: Service, recorder: ConvertRecorder
) -> None:
    app = {**APP_DATA, "bucketing": [bucket("100341351", "1003177123"), bucket(7, 8)]}
    order = shopify_order(note_attributes=[{"name": "__data", "value": b64(app)}], test=False)
    service.post_shopify("orders/paid", order, event_id="1")
    service.drain()
    assert sorted(recorder.paths) == [track("100341351-1003177123", order), track("7-8", order)]
    assert attribution_of(service) == (
        "sent",
        "order attribute '__data'",
        "shopify_app_data",
        "1738012108903-0.269766",
    )


def test_a_shopify_order_with_the_conv_v_cookie_is_sent_with_its_pairs(
    service: Service, recorder: ConvertRecorder
) -> None:
    attributes = [{"name": "_conv_v", "value": COOKIE_ARTICLE}]
    order = shopify_order(note_attributes=attributes, test=False)
    service.post_shopify("orders/paid", order, event_id="1")
    service.drain()
    assert sorted(recorder.paths) == [
        track("10001236-10008683", order),
        track("10001237-10008687", order),
    ]
    assert attribution_of(service) == (
        "sent",
        "order attribute '_conv_v'",
        "conv_v_cookie",
        "1374074822644-0.8675333885475993",
    )


def test_app_data_of_another_convert_project_sends_nothing_and_says_why(
    service: Service, recorder: ConvertRecorder
) -> None:
    value = b64({**APP_DATA, "projectId": "789012"})
    order = shopify_order(note_attributes=[{"name": "__data", "value": value}], test=False)
    service.post_shopify("orders/paid", order, event_id="1")
    service.drain()
    assert recorder.paths == []
    with service.runtime.engine.connect() as conn:
        row = conn.execute(select(events)).one()
    assert (row.state, row.reason_code, row.reason) == (
        "skipped",
        "malformed_experiment_data",
        "'__data' holds no valid shopify_app_data: it belongs to Convert project 789012"
        " ('projectId'), not the configured 2222; Shopify customer metafield not read: no"
        " admin_token configured for the source; exposure store: no exposure before the"
        " purchase for its customer id",
    )
