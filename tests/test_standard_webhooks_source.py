"""Standard Webhooks sources: the library's published vector through the platform spec, the
spec's own example payloads (tests/fixtures/standard_webhooks), the webhook-id as delivery
key across retries, the per-source mapping in check-config, and an order posted through the
app to Convert. The mapping itself is tested key by key in tests/test_custom_source.py."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters import standard_webhooks
from adapters.request import SignedRequest
from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from webhooks.cli import main
from webhooks.core.errors import ConfigError, PayloadError, SignatureError
from webhooks.core.events import EventKind
from webhooks.core.settings import SourceSettings
from webhooks.wiring.config import settings_from_mapping

FIXTURES = Path(__file__).parent / "fixtures"
SPEC = standard_webhooks.SPEC
SCHEME = standard_webhooks.SCHEME
KNOWN = json.loads(
    (FIXTURES / "standard_webhooks" / "signatures" / "known_answer.json").read_text()
)
SECRET, OLD_SECRET = SPEC.sample.secrets
ORDER = json.loads((FIXTURES / "custom" / "order_paid.json").read_text())["order"]

# A Standard Webhooks sender's order in the spec's recommended envelope ({type, timestamp,
# data}); the order is the custom fixture's home-grown one (tests/fixtures/custom/SOURCES.md).
ORDER_MAPPING: dict[str, Any] = {
    "event_type": "type",
    "purchase_types": ["order.paid"],
    "refund_types": ["order.refunded"],
    "order_id": "data.id",
    "amount": {"path": "data.totals.grand_total", "unit": "decimal"},
    "currency": {"path": "data.currency"},
    "items": {"list": "data.lines", "quantity": "qty"},
    "customer_id": "data.customer.id",
    "email": "data.customer.email",
    "experiments": {"path": "data.tracking.convert_experiments"},
    "occurred_at": "timestamp",
    "refund_of": "data.refund_of",
}


def envelope(event_type: str = "order.paid", **order_changes: Any) -> dict[str, Any]:
    data = {**copy.deepcopy(ORDER), **order_changes}
    return {"type": event_type, "timestamp": "2026-11-27T13:03:11.204718Z", "data": data}


def settings_for(mapping: dict[str, Any] | None = None, *secrets: str) -> SourceSettings:
    options = {"mapping": mapping or standard_webhooks.SAMPLE_OPTIONS["mapping"]}
    return SourceSettings(
        "sw", "standard_webhooks", secrets or (SECRET,), 300, False, "k", "total", options=options
    )


def verify(raw: bytes, headers: dict[str, str], now: float, *secrets: str) -> None:
    SPEC.verify(SignedRequest.post(raw, headers), settings_for(None, *secrets), now)


# --- the signature: the reference library's vector ------------------------------------------


def test_the_library_vector_verifies_through_the_platform() -> None:
    raw = KNOWN["body"].encode()
    verify(raw, KNOWN["headers"], KNOWN["now"], KNOWN["secret"])
    verify(raw, KNOWN["headers"], KNOWN["now"], KNOWN["secret"].removeprefix("whsec_"))
    signed = SCHEME.sign(
        raw, KNOWN["secret"], KNOWN["now"], delivery_id=KNOWN["headers"]["webhook-id"]
    )
    assert signed == KNOWN["headers"]  # test_sign_function's exact signature
    with pytest.raises(SignatureError, match="matches"):
        verify(raw, KNOWN["headers"], KNOWN["now"], SECRET.replace("M", "N", 1))


def test_rotation_several_signatures_and_other_versions() -> None:
    raw = json.dumps(envelope()).encode()
    new = SCHEME.sign(raw, SECRET, 1_800_000_000, delivery_id="msg_1")
    old = SCHEME.sign(raw, OLD_SECRET, 1_800_000_000, delivery_id="msg_1")
    both = f"v1a,{'A' * 86}== {old['webhook-signature']} {new['webhook-signature']}"
    verify(raw, {**new, "webhook-signature": both}, 1_800_000_000, SECRET)
    verify(raw, {**new, "webhook-signature": both}, 1_800_000_000, OLD_SECRET)
    with pytest.raises(SignatureError, match="has no v1 signature"):
        verify(raw, {**new, "webhook-signature": f"v1a,{'A' * 86}=="}, 1_800_000_000, SECRET)


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"webhook-id": "msg.1"}, "malformed"),  # a "." could shift bytes between fields
        ({"webhook-id": "msg 1"}, "malformed"),
        ({"webhook-timestamp": "1800000000.5"}, "malformed"),
        ({"webhook-timestamp": "\u0661800000000"}, "malformed"),
        ({"webhook-id": "msg_2"}, "matches"),  # the id is signed
        ({"webhook-timestamp": "1800000001"}, "matches"),  # and so is the time
    ],
)
def test_signed_metadata_cannot_be_changed(change: dict[str, str], word: str) -> None:
    raw = json.dumps(envelope()).encode()
    headers = {**SCHEME.sign(raw, SECRET, 1_800_000_000, delivery_id="msg_1"), **change}
    with pytest.raises(SignatureError, match=word):
        verify(raw, headers, 1_800_000_000)


# --- the spec's example payloads ------------------------------------------------------------


def parse(raw: bytes, mapping: dict[str, Any] | None = None, key: str = "msg_1") -> Any:
    options = {"mapping": mapping or dict(standard_webhooks.SAMPLE_OPTIONS["mapping"])}
    return standard_webhooks.configure(options)({"webhook-id": key}, raw)


def test_the_spec_example_maps_under_the_sample_mapping() -> None:
    raw = (FIXTURES / "standard_webhooks" / "example_event.json").read_bytes()
    result = parse(raw)
    assert (result.delivery_key, result.topic) == ("msg_1", "example.event")
    (found,) = result.events
    assert found.platform == "standard_webhooks" and found.kind == EventKind.PURCHASE
    assert found.order_id == "bar"
    assert found.amounts["total"].amount == Decimal(2)
    assert found.amounts["total"].currency == "USD"
    assert found.occurred_at == 1_667_507_170.344522  # 2022-11-03T20:26:10.344522Z


@pytest.mark.parametrize(
    "name", ["contact_created_full.json", "contact_created_thin_minified.json"]
)
def test_the_spec_s_contact_events_are_ignored_with_a_reason(name: str) -> None:
    result = parse((FIXTURES / "standard_webhooks" / name).read_bytes())
    assert result.topic == "contact.created" and result.events == ()
    assert result.reason == "this event type is not mapped to a kind"


def test_the_delivery_key_is_the_webhook_id() -> None:
    raw = json.dumps(envelope()).encode()
    assert parse(raw, ORDER_MAPPING, key="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W").delivery_key == (
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
    )
    options = {"mapping": ORDER_MAPPING}
    with pytest.raises(PayloadError, match="missing webhook-id header"):
        standard_webhooks.configure(options)({}, raw)
    with pytest.raises(PayloadError, match="header webhook-id"):
        standard_webhooks.configure(options)({"webhook-id": "m" * 256}, raw)


def test_an_order_in_the_recommended_envelope() -> None:
    (found,) = parse(json.dumps(envelope()).encode(), ORDER_MAPPING).events
    assert (found.order_id, found.item_count, found.customer_id) == ("AL-10482", 3, "55120")
    assert found.amounts["total"].amount == Decimal("89.80")
    (refund,) = parse(
        json.dumps(envelope("order.refunded", refund_of="AL-10482")).encode(), ORDER_MAPPING
    ).events
    assert refund.kind == EventKind.REFUND and refund.refund_of == "AL-10482"


# --- config ---------------------------------------------------------------------------------


def sw_source(**changes: Any) -> dict[str, Any]:
    source = {"platform": "standard_webhooks", "secrets": [SECRET], "mapping": ORDER_MAPPING}
    source.update(changes)
    return {k: v for k, v in source.items() if v is not None}


def problems_of(source: dict[str, Any]) -> dict[str, str]:
    doc = config_document("sqlite:///u.db", "http://127.0.0.1:9", sources={"sw": source})
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(doc, {})
    return caught.value.problems


def test_check_config_for_a_standard_webhooks_source() -> None:
    doc = config_document("sqlite:///u.db", "http://127.0.0.1:9", sources={"sw": sw_source()})
    loaded = settings_from_mapping(doc, {}).sources["sw"]
    assert loaded.tolerance_seconds == 300 and dict(loaded.options) == {"mapping": ORDER_MAPPING}
    assert problems_of(sw_source(mapping=None)) == {
        "sources.sw.mapping": "Missing data for required field."
    }
    bad_secret = problems_of(sw_source(secrets=["shpss_not_a_whsec_secret!"]))
    assert "Standard Webhooks" in bad_secret["sources.sw.secrets[0]"]
    no_amount = {k: v for k, v in ORDER_MAPPING.items() if k != "amount"}
    assert "sources.sw.mapping.amount" in problems_of(sw_source(mapping=no_amount))
    # the header names are the spec's: no signature or delivery_key keys here
    extra = problems_of(sw_source(delivery_key={"header": "X-Id"}, signature={"kind": "hmac"}))
    assert extra == {
        "sources.sw.delivery_key": "Unknown field.",
        "sources.sw.signature": "Unknown field.",
    }


# --- through the app ------------------------------------------------------------------------


def sw_service(make_service: Any, db: str) -> Service:
    svc: Service = make_service(db, sources={"sw": sw_source(secrets=[SECRET, OLD_SECRET])})
    return svc


def post(service: Service, body: dict[str, Any], message_id: str, secret: str = SECRET) -> Any:
    raw = json.dumps(body).encode()
    headers = SCHEME.sign(raw, secret, service.clock.now(), delivery_id=message_id)
    return service.client.post("/webhooks/sw", data=raw, headers=headers)


def test_an_order_becomes_the_convert_request_and_a_retry_is_stored_once(
    make_service: Any, db_url: str, recorder: ConvertRecorder
) -> None:
    service = sw_service(make_service, db_url)
    body = envelope(tracking={"convert_experiments": "100-200"})
    first = post(service, body, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
    assert first.status_code == 200 and first.json["status"] == "accepted"
    service.clock.advance(300)  # the sender's retry: same id, a new timestamp and signature
    retry = post(service, body, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", OLD_SECRET)
    assert retry.json["status"] == "duplicate"
    service.drain()
    assert recorder.paths == [
        "/track/?c=1111&p=2222&e=100-200&g=100%2C101&ga=2&t=100%7CAL-10482%7C89.80%7C3"
    ]


def test_a_stale_or_unsigned_delivery_is_refused(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = sw_service(make_service, sqlite_url)
    raw = json.dumps(envelope()).encode()
    stale = SCHEME.sign(raw, SECRET, service.clock.now() - 301, delivery_id="msg_1")
    assert service.client.post("/webhooks/sw", data=raw, headers=stale).status_code == 401
    assert service.client.post("/webhooks/sw", data=raw).status_code == 401
    ignored = post(service, envelope("contact.created"), "msg_2")
    assert ignored.json["status"] == "ignored"
    service.drain()
    assert recorder.paths == []


def test_check_config_sample_signs_the_body_for_its_webhook_id(tmp_path: Path, capsys: Any) -> None:
    doc = config_document(
        f"sqlite:///{tmp_path / 'x.db'}", "http://127.0.0.1:9", sources={"sw": sw_source()}
    )
    config = write_config(tmp_path / "c.toml", doc)
    sample = tmp_path / "order.json"
    sample.write_text(json.dumps(envelope()))
    assert main(["--config", str(config), "check-config", "--sample", str(sample)]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out[out.index("{") :])
    assert shown["outcome"] == "accepted" and shown["delivery_key"].startswith("msg_")
    assert shown["events"][0]["revenue"] == "89.80 EUR"
    given = ["--header", "webhook-id: msg_from_the_sender"]
    assert main(["--config", str(config), "check-config", "--sample", str(sample), *given]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["delivery_key"] == "msg_from_the_sender"
