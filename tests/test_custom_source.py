"""The custom source: its signature choices against published HMAC vectors (RFC 4231, Slack's
SDK), the field mapping key by key on a home-grown order body (tests/fixtures/custom, written
for this project: SOURCES.md), hostile bodies and hostile mapping values, check-config naming
each bad key, `check-config --sample`, and a signed post through the app to Convert."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import custom
from adapters.mapping import MAX_LINES, load_mapping, path_problem
from adapters.mapping import Path as FieldPath
from adapters.request import SignedRequest
from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from webhooks.cli import main
from webhooks.core.errors import ConfigError, PayloadError, SignatureError
from webhooks.core.events import EventKind, NormalizedEvent, ParseResult
from webhooks.core.money import iso_exponent
from webhooks.core.settings import SourceSettings
from webhooks.wiring.config import settings_from_mapping

FIXTURES = Path(__file__).parent / "fixtures" / "custom"
SECRET = "shop_signing_secret_0001"
NOW = 1_800_000_000
PAID = json.loads((FIXTURES / "order_paid.json").read_text())
REFUNDED = json.loads((FIXTURES / "order_refunded.json").read_text())
KNOWN = json.loads((FIXTURES / "signatures" / "known_answer.json").read_text())


def options(**mapping_changes: Any) -> dict[str, Any]:
    """The sample source's options with mapping keys replaced (None: removed)."""
    opts = copy.deepcopy(dict(custom.SAMPLE_OPTIONS))
    for key, value in mapping_changes.items():
        if value is None:
            opts["mapping"].pop(key, None)
        else:
            opts["mapping"][key] = value
    return opts


def parse(body: Any, opts: dict[str, Any] | None = None, **headers: str) -> ParseResult:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return custom.configure(opts or options())({k.lower(): v for k, v in headers.items()}, raw)


def event(body: Any, opts: dict[str, Any] | None = None) -> NormalizedEvent:
    result = parse(body, opts)
    assert len(result.events) == 1, result.reason
    return result.events[0]


def paid(**order_changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(PAID)
    body["order"].update(order_changes)
    return body


def refused(body: Any, opts: dict[str, Any] | None = None) -> str:
    with pytest.raises(PayloadError) as caught:
        parse(body, opts)
    return str(caught.value)


# --- signatures: published vectors ----------------------------------------------------------


def verify(
    opts: dict[str, Any],
    raw: bytes,
    headers: dict[str, str],
    secret: str,
    now: float,
    tolerance: int | None = None,
) -> None:
    scheme = custom.choose_scheme(opts)
    scheme.verify(SignedRequest.post(raw, headers), (secret,), now, tolerance)


RFC4231_KEY = "Jefe"  # RFC 4231 section 4.3, test case 2
RFC4231_DATA = b"what do ya want for nothing?"
RFC4231 = {
    ("sha256", "hex"): "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ("sha256", "base64"): "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=",
    ("sha512", "hex"): "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
    "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ("sha512", "base64"): "Fkt6e/z4GeLjlfvnO1bgo4e9ZCIugx/WECcM1+olBVSXWL91wFqZSm0DT2X48Ob9"
    "yuqxo01Ka0tjbgcKOLznNw==",
}


@pytest.mark.parametrize(("algorithm", "encoding"), sorted(RFC4231))
@pytest.mark.parametrize("prefix", ["", "sha256="])
def test_body_hmac_reproduces_rfc_4231(algorithm: str, encoding: str, prefix: str) -> None:
    signature = {
        "kind": "hmac",
        "header": "X-Sig",
        "algorithm": algorithm,
        "encoding": encoding,
        "prefix": prefix,
    }
    opts = {"signature": signature}
    expected = prefix + RFC4231[(algorithm, encoding)]
    scheme = custom.choose_scheme(opts)
    assert scheme.sign(RFC4231_DATA, RFC4231_KEY, NOW) == {"X-Sig": expected}
    verify(opts, RFC4231_DATA, {"x-sig": expected}, RFC4231_KEY, NOW)
    for bad in (expected.upper(), expected[:-2], prefix + RFC4231[("sha256", "hex")][::-1]):
        with pytest.raises(SignatureError):
            verify(opts, RFC4231_DATA, {"X-Sig": bad}, RFC4231_KEY, NOW)
    with pytest.raises(SignatureError):
        verify(opts, RFC4231_DATA, {"X-Sig": expected}, "Jeff", NOW)


def test_the_sample_scheme_is_the_known_answer_s() -> None:
    """The contract suite's known answer for `custom` is RFC 4231 case 2 under the sample's
    scheme; pinned here too so the fixture cannot drift from the RFC."""
    assert KNOWN["secret"] == RFC4231_KEY and KNOWN["body"].encode() == RFC4231_DATA
    assert KNOWN["headers"] == {"X-Shop-Signature": "sha256=" + RFC4231[("sha256", "hex")]}


# Slack's SDK test (slackapi/python-slack-sdk tests/slack_sdk/signature/
# test_signature_verifier.py @ 0756c47d234ec540b9106150d51ba3adb2c88b25), from Slack's docs.
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id="
    b"G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-"
    b"collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F3977008"
    b"85554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c4"
    b"47fce8b6703c"
)
SLACK_TIME = 1531420618
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
SLACK_STYLE = {
    "signature": {
        "kind": "hmac",
        "header": "X-Slack-Signature",
        "prefix": "v0=",
        "timestamp_header": "X-Slack-Request-Timestamp",
        "signed": "v0:{timestamp}:{body}",
        "window_seconds": 300,
    }
}
SLACK_HEADERS = {"X-Slack-Signature": SLACK_SIGNATURE, "X-Slack-Request-Timestamp": str(SLACK_TIME)}


def test_timestamp_header_hmac_reproduces_slack_s_vector() -> None:
    verify(SLACK_STYLE, SLACK_BODY, SLACK_HEADERS, SLACK_SECRET, SLACK_TIME)
    assert custom.choose_scheme(SLACK_STYLE).sign(SLACK_BODY, SLACK_SECRET, SLACK_TIME) == (
        SLACK_HEADERS
    )
    with pytest.raises(SignatureError, match="does not match"):
        verify(SLACK_STYLE, SLACK_BODY + b"------", SLACK_HEADERS, SLACK_SECRET, SLACK_TIME)
    changed = {**SLACK_HEADERS, "X-Slack-Request-Timestamp": str(SLACK_TIME + 1)}
    with pytest.raises(SignatureError, match="does not match"):  # the time is signed
        verify(SLACK_STYLE, SLACK_BODY, changed, SLACK_SECRET, SLACK_TIME)


@pytest.mark.parametrize(("offset", "word"), [(301, "old"), (-301, "future")])
def test_timestamp_header_hmac_window_both_ways(offset: int, word: str) -> None:
    with pytest.raises(SignatureError, match=word):
        verify(SLACK_STYLE, SLACK_BODY, SLACK_HEADERS, SLACK_SECRET, SLACK_TIME + offset)
    verify(SLACK_STYLE, SLACK_BODY, SLACK_HEADERS, SLACK_SECRET, SLACK_TIME + offset, 400)


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"X-Slack-Request-Timestamp": ""}, "missing"),
        ({"X-Slack-Request-Timestamp": "\u0661531420618"}, "malformed"),  # Arabic-Indic 1
        ({"X-Slack-Request-Timestamp": "9" * 5000}, "malformed"),
        ({"X-Slack-Request-Timestamp": " 1531420618"}, "malformed"),
        ({"X-Slack-Signature": "v1=" + SLACK_SIGNATURE[3:]}, "malformed"),
        ({"X-Slack-Signature": "v0=" + "a" * 5000}, "too long"),
        ({"X-Slack-Signature": "v0=\udc80"}, "does not match"),
    ],
)
def test_timestamp_header_hmac_refusals(change: dict[str, str], word: str) -> None:
    with pytest.raises(SignatureError, match=word):
        verify(SLACK_STYLE, SLACK_BODY, {**SLACK_HEADERS, **change}, SLACK_SECRET, SLACK_TIME)


def test_standard_webhooks_and_basic_auth_kinds() -> None:
    sw = custom.choose_scheme({"signature": {"kind": "standard_webhooks"}})
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = sw.sign(b"{}", secret, NOW)
    verify({"signature": {"kind": "standard_webhooks"}}, b"{}", headers, secret, NOW)
    basic = {"signature": {"kind": "basic_auth"}}
    verify(
        basic,
        b"{}",
        {"Authorization": "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="},
        "Aladdin:open sesame",
        NOW,
    )  # RFC 7617 section 2
    assert not custom.choose_scheme(basic).signs_body


# --- the mapping, key by key ----------------------------------------------------------------


def test_the_sample_order_maps_to_the_exact_event() -> None:
    result = parse(PAID)
    assert (result.delivery_key, result.topic) == (PAID["event_id"], "order.paid")
    (found,) = result.events
    assert found.kind == EventKind.PURCHASE and found.platform == "custom"
    assert found.order_id == "AL-10482"
    assert found.amounts["total"].amount == Decimal("89.80")
    assert found.amounts["total"].currency == "EUR"
    assert found.item_count == 3  # 1 lamp + 2 bulbs
    assert found.customer_id == "55120"
    assert found.email_digest is not None and len(found.email_digest) == 64
    assert found.test_mode is False
    assert found.occurred_at == 1_795_784_578.0  # 2026-11-27T14:02:58+01:00
    assert found.attributes == {}
    assert found.refund_of is None


def test_a_renewal_is_a_renewal() -> None:
    assert event({**PAID, "event": "subscription.renewed"}).kind == EventKind.SUBSCRIPTION_RENEWAL


def test_the_refund_fixture_is_a_refund_of_the_order() -> None:
    found = event(REFUNDED)
    assert found.kind == EventKind.REFUND
    assert (found.order_id, found.refund_of) == ("RF-2207", "AL-10482")
    assert found.amounts["total"].amount == Decimal("12.50")
    assert found.item_count == 0


def test_a_refund_without_refund_id_uses_the_order_id_path() -> None:
    opts = options(refund_id=None, refund_amount=None)
    found = event(REFUNDED, opts)
    assert (found.order_id, found.refund_of) == ("AL-10482", "AL-10482")
    assert found.amounts["total"].amount == Decimal("89.80")  # amount.path then


@pytest.mark.parametrize("event_type", ["order.created", "ORDER.PAID", "order.paid "])
def test_an_event_type_in_no_list_is_ignored_with_a_reason(event_type: str) -> None:
    body = {**PAID, "event": event_type}
    if event_type.endswith(" "):  # not a key: printable ASCII without spaces
        assert "field 'event'" in refused(body)
        return
    result = parse(body)
    assert result.events == () and result.reason == "this event type is not mapped to a kind"


@pytest.mark.parametrize("value", [None, 7, True, ["order.paid"], {"a": 1}, "", "\x00", "\udc80"])
def test_a_missing_or_odd_event_type_is_refused_naming_the_field(value: Any) -> None:
    body = copy.deepcopy(PAID)
    if value is None:
        del body["event"]
    else:
        body["event"] = value
    assert "field 'event'" in refused(body)


def test_the_paid_rule_ignores_an_unpaid_purchase_and_not_a_refund() -> None:
    body = paid(payment={"status": "authorized"})
    result = parse(body)
    assert result.events == ()
    assert result.reason == (
        "not paid: field 'order.payment.status' is an unexpected value; not counted"
    )
    body["order"]["payment"]["status"] = "captured"
    assert parse(body).events
    refund = copy.deepcopy(REFUNDED)  # "partially_refunded": a refund still counts
    assert event(refund).kind == EventKind.REFUND


def test_without_a_paid_rule_every_listed_type_counts() -> None:
    assert event(paid(payment={"status": "authorized"}), options(paid=None)).order_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [("AL-10482", "AL-10482"), (10482, "10482"), (2**64 - 1, str(2**64 - 1)), ("ü-1", "ü-1")],
)
def test_order_ids(value: Any, expected: str) -> None:
    assert event(paid(id=value)).order_id == expected


@pytest.mark.parametrize(
    "json_value",
    [
        "null",
        '""',
        '" "',
        "true",
        "0",
        "-1",
        str(2**64),
        "1.5",
        "1e3",
        '["A"]',
        '{"id": "A"}',
        '"A\\u0000"',
        '"A\\udc80"',
        '"A\\u202e"',
        '"' + "A" * 256 + '"',
    ],
)
def test_bad_order_ids_are_refused_naming_the_field(json_value: str) -> None:
    raw = json.dumps(PAID).replace('"id": "AL-10482"', f'"id": {json_value}')
    assert "field 'order.id'" in refused(raw.encode())


@pytest.mark.parametrize(
    ("raw_value", "expected"),
    [
        ('"89.80"', "89.80"),
        ("89.80", "89.80"),  # a JSON number: read as the exact Decimal, never a float
        ("0.1", "0.1"),
        ("90", "90"),
        ("4.99e1", "49.9"),  # a JSON number in exponent form is still exact
        ('"0"', "0"),
        ("1.500000000", "1.500000"),
    ],
)
def test_decimal_amounts_are_exact(raw_value: str, expected: str) -> None:
    raw = json.dumps(PAID).replace('"grand_total": "89.80"', f'"grand_total": {raw_value}')
    assert event(raw.encode()).amounts["total"].amount == Decimal(expected)


@pytest.mark.parametrize(
    "raw_value",
    [
        '"1e5"',
        '"NaN"',
        '"Infinity"',
        '"\\u0663"',
        '"\\u00b2"',
        "true",
        "false",
        "null",
        '"1_000"',
        '" 1"',
        '"-1"',
        "-1",
        "1" + "0" * 100,
        "1e400",
        "1e-400",
        '"1,50"',
        "[1]",
        '{"v": 1}',
        '"89.80\\u0000"',
        "1.0000001",
        '"' + "9" * 65 + '"',
    ],
)
def test_bad_decimal_amounts_are_refused_naming_the_field(raw_value: str) -> None:
    raw = json.dumps(PAID).replace('"grand_total": "89.80"', f'"grand_total": {raw_value}')
    assert "order.totals.grand_total" in refused(raw.encode())


MINOR = {"path": "order.total_minor", "unit": "minor"}


@pytest.mark.parametrize(
    ("currency", "value", "expected"),
    [
        ("EUR", 8980, "89.80"),
        ("EUR", "8980", "89.80"),
        ("JPY", 8980, "8980"),
        ("KWD", 8980, "8.980"),
        ("ISK", 8980, "8980"),  # ISO 4217 says 0 (Stripe says 2: its own table)
        ("CLF", 89801, "8.9801"),
        ("EUR", 0, "0"),
    ],
)
def test_minor_units_use_the_iso_exponent(currency: str, value: Any, expected: str) -> None:
    body = paid(currency=currency, total_minor=value)
    found = event(body, options(amount=MINOR))
    assert found.amounts["total"].amount == Decimal(expected)
    assert found.amounts["total"].currency == currency


@pytest.mark.parametrize(
    ("currency", "value", "word"),
    [
        ("EUR", True, "integer"),
        ("EUR", "89.80", "integer"),
        ("EUR", "\u0668\u0669\u0668\u0660", "integer"),
        ("EUR", 10**100, "out of range"),
        ("EUR", -1, "out of range"),
        ("XAU", 100, "no minor unit"),
        ("EUR", None, "missing"),
    ],
)
def test_bad_minor_amounts_are_refused(currency: str, value: Any, word: str) -> None:
    body = paid(currency=currency, total_minor=value)
    message = refused(body, options(amount=MINOR))
    assert "order.total_minor" in message and word in message


def test_a_json_fraction_for_minor_units_is_refused() -> None:
    raw = json.dumps(paid(total_minor=1)).replace('"total_minor": 1', '"total_minor": 89.8')
    assert "integer" in refused(raw.encode(), options(amount=MINOR))


def test_iso_exponents() -> None:
    assert [iso_exponent(c) for c in ("EUR", "USD", "JPY", "BHD", "UYW", "XXX")] == [
        2,
        2,
        0,
        3,
        4,
        None,
    ]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("eur", "EUR"),
        ("Eur", "EUR"),
        ("EURO", None),
        ("€", None),
        ("ıEU", None),
        (978, None),
        (None, None),
        ("E\x00R", None),
    ],
)
def test_currency_from_the_body(value: Any, ok: str | None) -> None:
    body = paid(currency=value)
    if ok is None:
        assert "field 'order.currency'" in refused(body)
    else:
        assert event(body).amounts["total"].currency == ok


def test_a_fixed_currency() -> None:
    body = paid()
    del body["order"]["currency"]
    assert event(body, options(currency={"fixed": "CHF"})).amounts["total"].currency == "CHF"


@pytest.mark.parametrize(
    ("items", "order_changes", "expected"),
    [
        ({"list": "order.lines", "quantity": "qty"}, {}, 3),
        ({"list": "order.lines"}, {}, 2),  # lines counted
        ({"path": "order.item_count"}, {"item_count": 5}, 5),
        ({"path": "order.item_count"}, {"item_count": "5"}, 5),
        ({"list": "order.lines", "quantity": "qty"}, {"lines": []}, 0),
        ({"list": "order.lines", "quantity": "qty"}, {"lines": [{"qty": 2}, {"note": "gift"}]}, 2),
        ({"list": "order.lines", "quantity": "unit.qty"}, {"lines": [{"unit": {"qty": 4}}]}, 4),
        (None, {}, 1),  # no items mapping: one
    ],
)
def test_item_counts(items: Any, order_changes: dict[str, Any], expected: int) -> None:
    assert event(paid(**order_changes), options(items=items)).item_count == expected


@pytest.mark.parametrize(
    ("items", "order_changes", "field"),
    [
        ({"list": "order.lines", "quantity": "qty"}, {"lines": {"qty": 1}}, "order.lines"),
        ({"list": "order.lines", "quantity": "qty"}, {"lines": None}, "order.lines"),
        (
            {"list": "order.lines", "quantity": "qty"},
            {"lines": [{"qty": True}]},
            "order.lines[].qty",
        ),
        ({"list": "order.lines", "quantity": "qty"}, {"lines": [{"qty": -1}]}, "order.lines[].qty"),
        (
            {"list": "order.lines", "quantity": "qty"},
            {"lines": [{"qty": 10**6 + 1}]},
            "order.lines[].qty",
        ),
        (
            {"list": "order.lines", "quantity": "qty"},
            {"lines": [{"qty": "\u0663"}]},
            "order.lines[].qty",
        ),
        ({"path": "order.item_count"}, {"item_count": 2**31}, "order.item_count"),
        ({"path": "order.item_count"}, {"item_count": False}, "order.item_count"),
        ({"list": "order.lines"}, {"lines": [0] * (MAX_LINES + 1)}, "order.lines"),
    ],
)
def test_bad_item_counts_are_refused(items: Any, order_changes: dict[str, Any], field: str) -> None:
    assert f"field '{field}'" in refused(paid(**order_changes), options(items=items))


def test_a_sum_past_a_32_bit_column_is_refused() -> None:
    lines = [{"qty": 10**6}] * 2200
    assert "adds up to more than" in refused(paid(lines=lines))


@pytest.mark.parametrize(
    ("value", "expected"), [(55120, "55120"), ("cus_9", "cus_9"), (None, None), ("", None)]
)
def test_customer_ids(value: Any, expected: str | None) -> None:
    assert event(paid(customer={"id": value})).customer_id == expected


@pytest.mark.parametrize("value", [True, 1.5, -3, "c\x00", ["c"]])
def test_bad_customer_ids_are_refused(value: Any) -> None:
    raw = json.dumps(paid(customer={"id": "PLACEHOLDER"})).replace(
        '"PLACEHOLDER"', json.dumps(value)
    )
    assert "field 'order.customer.id'" in refused(raw.encode())


def test_email_is_kept_only_as_a_digest() -> None:
    upper = event(paid(customer={"email": " Jana.Novak@Example.com "})).email_digest
    assert upper == event(PAID).email_digest
    for odd in ("not an email", 12, "x@" + "y" * 400, "a@b\udc80"):
        assert event(paid(customer={"email": odd})).email_digest is None


def test_experiments_from_a_string_an_object_or_nothing() -> None:
    body = paid(tracking={"convert_experiments": "100-200"})
    assert event(body).attributes == {"convert_experiments": "100-200"}
    named = options(experiments={"path": "order.tracking.ab", "attribute": "ab_pairs"})
    assert event(paid(tracking={"ab": "1-2"}), named).attributes == {"ab_pairs": "1-2"}
    whole = options(experiments={"path": "order.tracking"})
    found = event(paid(tracking={"convert_experiments": "1-2", "n": 3, "x": "\x00"}), whole)
    assert found.attributes == {"convert_experiments": "1-2"}  # strings only, storable only
    for odd in ([1, 2], 7, True, None):
        assert event(paid(tracking={"convert_experiments": odd})).attributes == {}


def test_a_megabyte_of_experiment_data_is_cut_to_the_attribute_bound() -> None:
    found = event(paid(tracking={"convert_experiments": "1-2," * 300_000}))
    assert len(found.attributes["convert_experiments"]) == 65_536


@pytest.mark.parametrize(
    ("test", "body_changes", "expected"),
    [
        ({"path": "test"}, {"test": True}, True),
        ({"path": "test"}, {"test": "true"}, False),  # a string is not the boolean
        ({"path": "test"}, {}, False),
        ({"path": "mode", "values": ["sandbox", "test"]}, {"mode": "sandbox"}, True),
        ({"path": "mode", "values": ["sandbox", "test"]}, {"mode": "live"}, False),
        ({"path": "livemode", "values": [False]}, {"livemode": False}, True),
        ({"path": "livemode", "values": [False]}, {"livemode": 0}, False),
        ({"fixed": True}, {}, True),
        (None, {"test": True}, False),
    ],
)
def test_the_test_flag(test: Any, body_changes: dict[str, Any], expected: bool) -> None:
    body = {**copy.deepcopy(PAID), **body_changes}
    if "test" not in body_changes:
        body.pop("test")
    assert event(body, options(test=test)).test_mode is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-27T14:02:58+01:00", 1_795_784_578.0),
        ("2026-11-27T13:02:58Z", 1_795_784_578.0),
        ("2026-11-27T13:02:58", 1_795_784_578.0),  # no offset: UTC
        (1_795_784_578, 1_795_784_578.0),
        ("1795784578", 1_795_784_578.0),
        (None, 0.0),
    ],
)
def test_occurred_at(value: Any, expected: float) -> None:
    assert event(paid(placed_at=value)).occurred_at == expected


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-01", True, -5, 10**13, "9" * 100, "\udc80", ["2026"]]
)
def test_bad_times_are_refused_naming_the_field(value: Any) -> None:
    assert "field 'order.placed_at'" in refused(paid(placed_at=value))


# --- delivery keys --------------------------------------------------------------------------


def keyed(rule: dict[str, Any] | None) -> dict[str, Any]:
    opts = options()
    if rule is None:
        opts.pop("delivery_key")
    else:
        opts["delivery_key"] = rule
    return opts


def test_delivery_key_from_a_body_path() -> None:
    assert parse(PAID).delivery_key == PAID["event_id"]
    assert parse({**PAID, "event_id": 981}).delivery_key == "981"
    for bad in (None, "has space", "x" * 256, True, "\udc80"):
        body = {**PAID, "event_id": bad}
        assert "field 'event_id'" in refused(body)


def test_delivery_key_from_a_header() -> None:
    opts = keyed({"header": "X-Delivery-Id"})
    assert parse(PAID, opts, **{"X-Delivery-Id": "d-1"}).delivery_key == "d-1"
    with pytest.raises(PayloadError, match="missing X-Delivery-Id header"):
        parse(PAID, opts)
    with pytest.raises(PayloadError, match="header X-Delivery-Id"):
        parse(PAID, opts, **{"X-Delivery-Id": "d 1\x1b"})


def test_without_a_delivery_key_the_body_digest_is_the_key() -> None:
    """A retry with the same bytes is the same delivery; a byte more is another one (the
    business key then still counts the order once)."""
    opts = keyed(None)
    raw = json.dumps(PAID).encode()
    first = parse(raw, opts).delivery_key
    assert first.startswith("sha256:") and first == parse(raw, opts).delivery_key
    assert parse(raw + b"\n", opts).delivery_key != first


def test_the_standard_webhooks_kind_keys_by_webhook_id() -> None:
    opts = keyed(None)
    opts["signature"] = {"kind": "standard_webhooks"}
    assert parse(PAID, opts, **{"webhook-id": "msg_1"}).delivery_key == "msg_1"


# --- hostile bodies -------------------------------------------------------------------------


def test_paths_into_huge_lists_and_deep_bodies_are_bounded() -> None:
    huge = {"a": list(range(1_000_000))}
    assert FieldPath.of("a[999999]").find(huge) == 999_999
    assert FieldPath.of("a[999999].b").find(huge) is None
    deep: Any = "x"
    for _ in range(100_000):
        deep = {"d": deep}
    assert FieldPath.of("d.d.d").find(deep) is deep["d"]["d"]["d"]
    assert FieldPath.of("d.d.d[0]").find(deep) is None  # an object is not a list
    assert "nests too deeply" in refused(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"null",
        b"\xff\xfe",
        b'{"event": NaN}',
        b'{"a": 1e99999}',
        b'{"a": ' + b"9" * 5000 + b"}",
        b"{" * 10,
    ],
)
def test_bodies_that_are_not_json_objects_are_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        parse(raw)


_PYTHON_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=20)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | _PYTHON_TEXT
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_PYTHON_TEXT, inner, max_size=3),
    max_leaves=6,
)
MAPPED = [
    "event",
    "event_id",
    "test",
    "order.id",
    "order.currency",
    "order.placed_at",
    "order.totals.grand_total",
    "order.lines",
    "order.customer",
    "order.customer.id",
    "order.customer.email",
    "order.payment.status",
    "order.tracking",
    "refund.id",
    "refund.amount",
    "order",
]


def _dumps(value: Any) -> str:
    """JSON text with Decimals as JSON numbers (what a sender's 1.5 is to load_json_object)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_dumps, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _set(body: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        if not isinstance(body.get(key), dict):
            body[key] = {}
        body = body[key]
    body[last] = value


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    changes=st.dictionaries(st.sampled_from(MAPPED), JSON_VALUES, max_size=4), refund=st.booleans()
)
def test_any_value_at_any_mapped_field_is_an_event_a_reason_or_a_payload_error(
    changes: dict[str, Any], refund: bool
) -> None:
    body = copy.deepcopy(REFUNDED if refund else PAID)
    for dotted, value in changes.items():
        _set(body, dotted, value)
    try:
        result = parse(_dumps(body).encode())
    except PayloadError as exc:
        assert str(exc).isprintable()  # our words and the path, never a sent value
        return
    assert isinstance(result, ParseResult)


# --- the options: check-config names each bad key -------------------------------------------


def source(**changes: Any) -> dict[str, Any]:
    """A custom source as written in the config file (the sample's options)."""
    doc = {"platform": "custom", "secrets": [SECRET], **copy.deepcopy(dict(custom.SAMPLE_OPTIONS))}
    doc.update(changes)
    return doc


def problems_of(src: dict[str, Any]) -> dict[str, str]:
    doc = config_document("sqlite:///unused.db", "http://127.0.0.1:9", sources={"shop": src})
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(doc, {})
    return caught.value.problems


def mapping_with(**changes: Any) -> dict[str, Any]:
    mapping = copy.deepcopy(dict(custom.SAMPLE_OPTIONS["mapping"]))
    for key, value in changes.items():
        if value is None:
            mapping.pop(key)
        else:
            mapping[key] = value
    return mapping


def signature_with(**changes: Any) -> dict[str, Any]:
    signature = {"kind": "hmac", "header": "X-Shop-Signature"}
    signature.update(changes)
    return {k: v for k, v in signature.items() if v is not None}


def test_the_sample_options_load_as_written() -> None:
    doc = config_document("sqlite:///unused.db", "http://127.0.0.1:9", sources={"shop": source()})
    loaded = settings_from_mapping(doc, {}).sources["shop"]
    assert dict(loaded.options) == dict(custom.SAMPLE_OPTIONS)
    assert loaded.tolerance_seconds == 300  # no window of its own: the default, unused


M = "sources.shop.mapping"
S = "sources.shop.signature"
BAD_MAPPINGS = [
    (mapping_with(amount={"unit": "decimal"}), f"{M}.amount.path", "Missing"),
    (mapping_with(amount={"path": "a", "unit": "cents"}), f"{M}.amount.unit", "minor"),
    (
        mapping_with(amount={"path": "a", "unit": "minor"}, currency={"fixed": "XAU"}),
        f"{M}.currency.fixed",
        "no minor unit",
    ),
    (mapping_with(amount=None), f"{M}.amount", "Missing"),
    (mapping_with(order_id=None), f"{M}.order_id", "Missing"),
    (mapping_with(event_type=None), f"{M}.event_type", "Missing"),
    (mapping_with(purchase_types=[]), f"{M}.purchase_types", "nothing would count"),
    (mapping_with(purchase_types=None), f"{M}.purchase_types", "Missing"),
    (mapping_with(purchase_types="order.paid"), f"{M}.purchase_types", "list"),
    (mapping_with(purchase_types=["order paid"]), f"{M}.purchase_types[0]", "printable"),
    (mapping_with(purchase_types=[f"t{i}" for i in range(101)]), f"{M}.purchase_types", "100"),
    (mapping_with(renewal_types=["order.paid"]), f"{M}.renewal_types", "already in purchase"),
    (mapping_with(refund_of=None), f"{M}.refund_of", "required with refund_types"),
    (mapping_with(refund_types=None), f"{M}.refund_of", "only read with refund_types"),
    (mapping_with(order_id="order..id"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id=".order"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="order[0"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="order[-1]"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="order[1234567]"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="order id"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="order.\u0069d\u0307"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="o\x00"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="o\udc80"), f"{M}.order_id", "not a path"),
    (mapping_with(order_id="a." * 200 + "b"), f"{M}.order_id", "longer than 256"),
    (mapping_with(order_id=".".join("a" * 17)), f"{M}.order_id", "more than 16"),
    (mapping_with(order_id="a" + "[0]" * 16), f"{M}.order_id", "more than 16"),
    (mapping_with(order_id=7), f"{M}.order_id", "Not a valid string"),
    (mapping_with(order_id={"path": "x"}), f"{M}.order_id", "Not a valid string"),
    (mapping_with(currency={}), f"{M}.currency.path", "exactly one"),
    (mapping_with(currency={"path": "a", "fixed": "EUR"}), f"{M}.currency.fixed", "exactly one"),
    (mapping_with(currency={"fixed": "eur"}), f"{M}.currency.fixed", "upper-case"),
    (mapping_with(items={"quantity": "q"}), f"{M}.items.path", "exactly one"),
    (mapping_with(items={"path": "n", "quantity": "q"}), f"{M}.items.quantity", "only read"),
    (mapping_with(test={"path": "t", "fixed": True}), f"{M}.test.fixed", "exactly one"),
    (mapping_with(test={"path": "t", "values": []}), f"{M}.test.values", "1-20"),
    (mapping_with(test={"path": "t", "values": [1.5]}), f"{M}.test.values[0]", "integer"),
    (mapping_with(test={"path": "t", "values": ["\x00"]}), f"{M}.test.values[0]", "string"),
    (mapping_with(paid={"path": "s"}), f"{M}.paid.values", "Missing"),
    (
        mapping_with(experiments={"path": "e", "attribute": ""}),
        f"{M}.experiments.attribute",
        "printable",
    ),
    (mapping_with(colour="blue"), f"{M}.colour", "Unknown field"),
]


@pytest.mark.parametrize(("mapping", "key", "word"), BAD_MAPPINGS, ids=range(len(BAD_MAPPINGS)))
def test_check_config_refuses_a_mapping_that_cannot_work_naming_the_key(
    mapping: dict[str, Any], key: str, word: str
) -> None:
    problems = problems_of(source(mapping=mapping))
    assert key in problems, problems
    assert word in problems[key]


BAD_SIGNATURES = [
    (signature_with(timestamp_header="X-Shop-Time"), f"{S}.window_seconds", "required"),
    (signature_with(window_seconds=300), f"{S}.window_seconds", "only read with timestamp"),
    (signature_with(signed="{timestamp}.{body}"), f"{S}.signed", "only read with timestamp"),
    (
        signature_with(timestamp_header="X-T", window_seconds=300, signed="{body}{timestamp}"),
        f"{S}.signed",
        "{timestamp}",
    ),
    (
        signature_with(timestamp_header="X-T", window_seconds=0),
        f"{S}.window_seconds",
        "greater than or equal",
    ),
    (
        signature_with(timestamp_header="X-Shop-Signature", window_seconds=60),
        f"{S}.timestamp_header",
        "differ",
    ),
    (signature_with(algorithm="sha1"), f"{S}.algorithm", "sha1 is not offered"),
    (signature_with(algorithm="md5"), f"{S}.algorithm", "sha256"),
    (signature_with(encoding="base32"), f"{S}.encoding", "hex"),
    (signature_with(prefix="sha 256="), f"{S}.prefix", "printable"),
    (signature_with(header=None), f"{S}.header", "required"),
    (signature_with(header="X Shop"), f"{S}.header", "header name"),
    (signature_with(header="X-Shop\r\nInjected: 1"), f"{S}.header", "header name"),
    (signature_with(kind="rsa"), f"{S}.kind", "one of"),
    (signature_with(kind="basic_auth"), f"{S}.header", "only read with kind"),
    (
        signature_with(window_seconds="300", timestamp_header="X-T"),
        f"{S}.window_seconds",
        "integer",
    ),
]


@pytest.mark.parametrize(
    ("signature", "key", "word"), BAD_SIGNATURES, ids=range(len(BAD_SIGNATURES))
)
def test_check_config_refuses_a_signature_that_cannot_work_naming_the_key(
    signature: dict[str, Any], key: str, word: str
) -> None:
    problems = problems_of(source(signature=signature))
    assert key in problems, problems
    assert word in problems[key]


def test_check_config_names_missing_sections_and_bad_delivery_keys() -> None:
    bare = {"platform": "custom", "secrets": [SECRET]}
    assert set(problems_of(bare)) == {"sources.shop.signature", "sources.shop.mapping"}
    both = source(delivery_key={"header": "X-D", "path": "event_id"})
    assert "exactly one" in problems_of(both)["sources.shop.delivery_key.header"]
    sw = source(signature={"kind": "standard_webhooks"}, secrets=["not base64 !!!!!!!!"])
    assert "Standard Webhooks" in problems_of(sw)["sources.shop.secrets[0]"]
    basic = source(signature={"kind": "basic_auth"}, secrets=["no-colon-in-this-secret"])
    assert "user:password" in problems_of(basic)["sources.shop.secrets[0]"]


def test_a_timestamped_source_gets_its_window_as_tolerance() -> None:
    signature = signature_with(timestamp_header="X-Shop-Time", window_seconds=120)
    doc = config_document(
        "sqlite:///u.db", "http://127.0.0.1:9", sources={"shop": source(signature=signature)}
    )
    assert settings_from_mapping(doc, {}).sources["shop"].tolerance_seconds == 120


def test_path_problems_never_quote_the_path() -> None:
    for text in ("\x1b[2J", "a b", "x" * 300, "é"):
        problem = path_problem(text)
        assert problem is not None and text not in problem
    with pytest.raises(ValueError):
        load_mapping({"event_type": "e"})


# --- through the app and to Convert ---------------------------------------------------------


def shop_service(make_service: Any, db: str, **changes: Any) -> Service:
    svc: Service = make_service(db, sources={"shop": source(**changes)})
    return svc


def post(service: Service, body: Any, secret: str = SECRET, **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signed = custom.choose_scheme(custom.SAMPLE_OPTIONS).sign(raw, secret, service.clock.now())
    return service.client.post("/webhooks/shop", data=raw, headers={**signed, **headers})


def live(pairs: str = "100-200") -> dict[str, Any]:
    return paid(tracking={"convert_experiments": pairs})


def test_a_signed_order_becomes_the_convert_request(
    make_service: Any, db_url: str, recorder: ConvertRecorder
) -> None:
    service = shop_service(make_service, db_url)
    response = post(service, live())
    assert response.status_code == 200 and response.json["status"] == "accepted"
    service.drain()
    # goals: conversion 100,101 and transaction 100 (tests/config_file.py); 3 items
    assert recorder.paths == [
        "/track/?c=1111&p=2222&e=100-200&g=100%2C101&ga=2&t=100%7CAL-10482%7C89.80%7C3"
    ]


def test_a_retry_and_a_second_event_of_the_order_count_once(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = shop_service(make_service, sqlite_url)
    assert post(service, live()).json["status"] == "accepted"
    service.clock.advance(30)
    assert post(service, live()).json["status"] == "duplicate"  # same event_id
    other = {**live(), "event_id": "evt_second_notice"}
    assert post(service, other).json["status"] == "duplicate"  # same order: business key
    service.drain()
    assert len(recorder.paths) == 1


def test_unsigned_wrongly_signed_and_unmapped_posts(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = shop_service(make_service, sqlite_url)
    raw = json.dumps(live()).encode()
    assert service.client.post("/webhooks/shop", data=raw).status_code == 401
    assert post(service, live(), secret="another_secret_000001").status_code == 401
    ignored = post(service, {**live(), "event": "order.created"})
    assert (ignored.status_code, ignored.json["status"]) == (200, "ignored")
    bad = post(service, {**live(), "event_id": "evt_bad", "order": {**live()["order"], "id": True}})
    assert bad.status_code == 400 and "order.id" in bad.json["error"]
    assert "True" not in json.dumps(bad.json)
    service.drain()
    assert recorder.paths == []


def test_a_test_order_is_stored_not_sent(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = shop_service(make_service, sqlite_url)
    response = post(service, {**live(), "test": True})
    assert response.json["status"] == "accepted"
    service.drain()
    assert recorder.paths == []


def test_a_timestamped_hmac_source_end_to_end(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    signature = signature_with(
        timestamp_header="X-Shop-Time", window_seconds=60, algorithm="sha512", encoding="base64"
    )
    service = shop_service(make_service, sqlite_url, signature=signature)
    scheme = custom.choose_scheme({"signature": signature})
    raw = json.dumps(live()).encode()
    late = scheme.sign(raw, SECRET, service.clock.now() - 61)
    assert service.client.post("/webhooks/shop", data=raw, headers=late).status_code == 401
    fresh = scheme.sign(raw, SECRET, service.clock.now())
    response = service.client.post("/webhooks/shop", data=raw, headers=fresh)
    assert response.status_code == 200, response.json
    service.drain()
    assert len(recorder.paths) == 1


# --- check-config --sample ------------------------------------------------------------------


def cli_config(tmp_path: Path, **sources: dict[str, Any]) -> str:
    doc = config_document(
        f"sqlite:///{tmp_path / 'cli.db'}",
        "http://127.0.0.1:9",
        sources=sources or {"shop": source()},
    )
    return str(write_config(tmp_path / "c.toml", doc))


def sample_file(tmp_path: Path, body: Any) -> str:
    path = tmp_path / "sample.json"
    path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    return str(path)


def run_sample(capsys: Any, config: str, sample: str, *extra: str) -> tuple[int, str, str]:
    code = main(["--config", config, "check-config", "--sample", sample, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def sample_json(out: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(out[out.index("{") :])
    return found


def test_sample_shows_the_event_and_stores_nothing(tmp_path: Path, capsys: Any) -> None:
    config = cli_config(tmp_path)
    code, out, _ = run_sample(capsys, config, sample_file(tmp_path, live()))
    assert code == 0
    shown = sample_json(out)
    assert shown["outcome"] == "accepted" and shown["source"] == "shop"
    (found,) = shown["events"]
    assert found["kind"] == "purchase" and found["order_id"] == "AL-10482"
    assert found["revenue"] == "89.80 EUR" and found["item_count"] == 3
    assert found["attributes"] == {"convert_experiments": "100-200"}
    assert found["occurred_at"] == "2026-11-27T13:02:58Z"
    assert "jana" not in out  # the email only as its digest
    assert not (tmp_path / "cli.db").exists()


def test_sample_ignored_and_refused(tmp_path: Path, capsys: Any) -> None:
    config = cli_config(tmp_path)
    code, out, _ = run_sample(capsys, config, sample_file(tmp_path, {**PAID, "event": "x.y"}))
    assert code == 0 and sample_json(out)["outcome"] == "ignored"
    assert sample_json(out)["reason"] == "this event type is not mapped to a kind"
    code, out, _ = run_sample(capsys, config, sample_file(tmp_path, paid(currency="\x1b[2J")))
    assert code == 1
    assert "refused (400)" in out and "field 'order.currency'" in out and "\x1b" not in out
    code, out, _ = run_sample(capsys, config, sample_file(tmp_path, b"not json"))
    assert code == 1 and "not JSON" in out


def test_sample_needs_the_source_named_when_there_are_several(tmp_path: Path, capsys: Any) -> None:
    config = cli_config(tmp_path, shop=source(), outlet=source())
    code, _, err = run_sample(capsys, config, sample_file(tmp_path, live()))
    assert code == 2 and "--source" in err and "outlet" in err
    code, out, _ = run_sample(capsys, config, sample_file(tmp_path, live()), "--source", "outlet")
    assert code == 0 and sample_json(out)["source"] == "outlet"
    code, _, err = run_sample(capsys, config, sample_file(tmp_path, live()), "--source", "nope")
    assert code == 2 and "no source nope" in err


def test_sample_takes_the_delivery_key_header(tmp_path: Path, capsys: Any) -> None:
    config = cli_config(tmp_path, shop=source(delivery_key={"header": "X-Delivery"}))
    code, out, _ = run_sample(capsys, config, sample_file(tmp_path, live()))
    assert code == 1 and "missing X-Delivery header" in out
    code, out, _ = run_sample(
        capsys, config, sample_file(tmp_path, live()), "--header", "X-Delivery: d-77"
    )
    assert code == 0 and sample_json(out)["delivery_key"] == "d-77"
    code, _, err = run_sample(capsys, config, sample_file(tmp_path, live()), "--header", "nocolon")
    assert code == 2 and "NAME: VALUE" in err


def test_sample_too_large_or_missing_file(tmp_path: Path, capsys: Any) -> None:
    config = cli_config(tmp_path)
    big = sample_file(tmp_path, b" " * 1_048_577)
    code, _, err = run_sample(capsys, config, big)
    assert code == 2 and "413" in err
    code, _, err = run_sample(capsys, config, str(tmp_path / "absent.json"))
    assert code == 2 and "cannot read" in err


def test_sample_with_a_broken_mapping_names_the_key_first(tmp_path: Path, capsys: Any) -> None:
    config = cli_config(
        tmp_path, shop=source(mapping=mapping_with(amount={"path": "a b", "unit": "decimal"}))
    )
    code, _, err = run_sample(capsys, config, sample_file(tmp_path, live()))
    assert code == 2 and "sources.shop.mapping.amount.path" in err


def test_settings_for_a_custom_source_verify_per_source() -> None:
    """Two custom sources, two schemes: each verifies with its own."""
    hex_source = SourceSettings(
        "a", "custom", (SECRET,), 300, False, "k", "total", options=custom.SAMPLE_OPTIONS
    )
    b64 = copy.deepcopy(dict(custom.SAMPLE_OPTIONS))
    b64["signature"] = {"kind": "hmac", "header": "X-B64", "encoding": "base64"}
    b64_source = SourceSettings("b", "custom", (SECRET,), 300, False, "k", "total", options=b64)
    raw = b"{}"
    headers = custom.choose_scheme(b64).sign(raw, SECRET, NOW)
    custom.SPEC.verify(SignedRequest.post(raw, headers), b64_source, NOW)
    with pytest.raises(SignatureError, match="missing"):
        custom.SPEC.verify(SignedRequest.post(raw, headers), hex_source, NOW)
