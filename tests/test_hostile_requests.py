"""Whatever reaches the service before (or instead of) a valid signature gets a 4xx, never a
500: odd source names in the URL, any method, odd or missing lengths, odd signature headers,
bodies that break off. A body over `server.max_body_bytes` is a 413 whatever its framing
(Content-Length or chunked), in-process and under real gunicorn, and a body is never cut
short before it is verified."""

from __future__ import annotations

import io
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.config_file import STRIPE_SECRET, config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService
from tests.payloads import body, shopify_order, stripe_event
from tests.signing import shopify_hmac, stripe_signature_header
from webhooks.storage.schema import deliveries

MAX = 2048


def stored(service: Service) -> list[Any]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.id)))


def padded(size: int, event_id: str = "evt_pad") -> bytes:
    """A real Stripe event, as JSON of exactly `size` bytes (spaces before the last brace)."""
    raw = body(stripe_event("payment_intent_succeeded", event_id))
    assert len(raw) < size
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


@pytest.mark.parametrize(
    "name",
    ["x" * 10_000, "%00stripe", "stripe%0aforged", "%1b%5b2J", "%e2%80%ae", "%ff%fe", "a b"],
)
def test_odd_source_names_are_404_and_not_echoed(service: Service, name: str) -> None:
    response = service.client.post(f"/webhooks/{name}", data=b"{}")
    assert response.status_code == 404
    assert response.json == {"error": "unknown source"}


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/webhooks/stripe", "/webhooks/nope", "/webhooks/", "/"])
def test_any_method_on_any_path_is_a_clear_answer(service: Service, method: str, path: str) -> None:
    """A webhook URL (a configured source or not: the rule matches before the source is
    looked up) takes POST only: 405 with Allow, OPTIONS answers 200 with Allow; any other
    path is 404. Errors are JSON; HEAD has no body. Nothing is stored."""
    response = service.client.open(path, method=method)
    if path.startswith("/webhooks/") and path != "/webhooks/":
        expected = 200 if method == "OPTIONS" else 405
        # Werkzeug lists the methods from a set: their order follows the string hash seed.
        allowed = {method.strip() for method in response.headers["Allow"].split(",")}
        assert (response.status_code, allowed) == (expected, {"POST", "OPTIONS"})
    else:
        assert response.status_code == 404
        assert "Allow" not in response.headers
    if method == "HEAD" or response.status_code == 200:
        assert response.data == b""
    else:
        assert response.is_json and list(response.json or {}) == ["error"]
    assert stored(service) == []


@pytest.mark.parametrize(
    "length", ["abc", "-1", "1e3", " 2", "+2", "0x10", "", "\u0663", "99999999999999999999999999"]
)
def test_odd_content_length_is_never_a_500(service: Service, length: str) -> None:
    """A Content-Length that is not plain ASCII digits is an unknown length: the body is not
    read at all (never a part of it guessed from a lenient parse), so the signed bytes did
    not arrive: 401, nothing stored. A plain but huge length is past the cap: 413."""
    raw = body(stripe_event("payment_intent_succeeded"))
    header = stripe_signature_header(raw, STRIPE_SECRET, int(service.clock.now()))

    def post(content_length: str) -> Any:
        return service.client.post(
            "/webhooks/stripe",
            input_stream=io.BytesIO(raw),
            environ_overrides={"CONTENT_LENGTH": content_length},
            headers={"Stripe-Signature": header},
        )

    response = post(length)
    if length.isascii() and length.isdigit():
        limit = service.settings.max_body_bytes
        expected = (413, {"error": f"body is larger than {limit} bytes"})
    else:
        expected = (401, {"error": "no Stripe-Signature v1 signature matches a configured secret"})
    assert (response.status_code, response.json) == expected
    assert stored(service) == []
    # The same request with its true length is accepted: the refusal was the length's.
    assert post(str(len(raw))).json["status"] == "accepted"
    assert [(d.status, d.body) for d in stored(service)] == [("accepted", raw)]


def test_content_length_past_the_cap_is_413_before_reading(service: Service) -> None:
    limit = service.settings.max_body_bytes
    response = service.client.post(
        "/webhooks/stripe",
        input_stream=io.BytesIO(b"{}"),
        environ_overrides={"CONTENT_LENGTH": str(limit + 1)},
    )
    assert response.status_code == 413


def test_body_shorter_than_its_content_length_is_400_not_verified(service: Service) -> None:
    raw = body(stripe_event("payment_intent_succeeded"))
    header = stripe_signature_header(raw[:100], STRIPE_SECRET, int(service.clock.now()))
    response = service.client.post(
        "/webhooks/stripe",
        input_stream=io.BytesIO(raw[:100]),  # signed as sent, but 100 of len(raw) bytes came
        environ_overrides={"CONTENT_LENGTH": str(len(raw))},
        headers={"Stripe-Signature": header},
    )
    assert response.status_code == 400
    assert stored(service) == []


@pytest.mark.parametrize(
    "header",
    [
        "t=\u00b2,v1=00",  # "²".isdigit() is True, int("²") raises
        "t=\u0661\u0662,v1=00",  # Arabic-Indic digits
        "t=" + "9" * 5000 + ",v1=00",  # past int()'s digit limit
        "t=1,v1=" + "\x1b" * 10,
        ",,,",
        "=",
        "t=1,t=2,v1=00",
        "v1=zz",
        "t=1,v1=00," * 2000,
        "\x7f\x85\xa0",
    ],
)
def test_odd_stripe_signature_headers_are_401(service: Service, header: str) -> None:
    response = service.client.post(
        "/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": header}
    )
    assert response.status_code == 401
    assert response.is_json


@pytest.mark.parametrize("header", ["", " ", "\x00\xff", "=" * 5000, "\u00e9=="])
def test_odd_shopify_hmac_headers_are_401(service: Service, header: str) -> None:
    response = service.client.post(
        "/webhooks/shop", data=b"{}", headers={"X-Shopify-Hmac-Sha256": header}
    )
    assert response.status_code == 401


def test_signed_empty_body_is_400_and_kept(service: Service) -> None:
    response = service.post_stripe({}, raw=b"")
    assert response.status_code == 400
    assert [(d.status, d.body) for d in stored(service)] == [("rejected", b"")]


TOPIC_NOT_ASCII = "header X-Shopify-Topic must be printable ASCII without spaces"
ID_NOT_ASCII = (
    "header X-Shopify-Event-Id or X-Shopify-Webhook-Id must be printable ASCII without spaces"
)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"X-Shopify-Topic": "orders/paid\x00\x1b[2J"}, TOPIC_NOT_ASCII),
        (
            {"X-Shopify-Topic": "orders/" + "p" * 300},
            "header X-Shopify-Topic is longer than 128 characters",
        ),
        ({"X-Shopify-Topic": "\x85\xa0"}, TOPIC_NOT_ASCII),
        (
            {"X-Shopify-Event-Id": "e" * 300},
            "header X-Shopify-Event-Id or X-Shopify-Webhook-Id is longer than 255 characters",
        ),
        ({"X-Shopify-Event-Id": "e\x00\x1b"}, ID_NOT_ASCII),
        ({"X-Shopify-Webhook-Id": "\x00" * 10}, None),  # the event id is the key: not read
        ({"X-Shopify-Event-Id": None, "X-Shopify-Webhook-Id": "\x00" * 10}, ID_NOT_ASCII),
    ],
)
def test_signed_request_with_odd_headers_is_never_5xx(
    any_db_service: Service, headers: dict[str, str | None], error: str | None
) -> None:
    """An unusable topic or key header is a 400 naming the header (the signed body kept as
    rejected, under a placeholder topic); a header that is not used changes nothing."""
    data = body(shopify_order(financial_status="paid"))
    sent = {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, "shpss_test_client_secret"),
        "X-Shopify-Event-Id": "ev-1",
        **headers,
    }
    given = {name: value for name, value in sent.items() if value is not None}
    response = any_db_service.client.post("/webhooks/shop", data=data, headers=given)
    (kept,) = stored(any_db_service)  # stored either way: accepted or rejected
    assert kept.body == data
    if error is None:
        assert (response.status_code, (response.json or {}).get("status")) == (200, "accepted")
        assert (kept.status, kept.topic, kept.delivery_key) == (
            "accepted",
            "orders/paid",
            "orders/paid:event:ev-1",
        )
    else:
        assert (response.status_code, response.json) == (400, {"error": error})
        assert (kept.status, kept.topic, kept.reason) == ("rejected", "(unreadable)", error)


def chunked_post(service: Service, data: bytes, header_for: bytes | None = None) -> Any:
    """A chunked request as gunicorn hands it over: no Content-Length, a stream the server
    ends (`wsgi.input_terminated`)."""
    signed = data if header_for is None else header_for
    header = stripe_signature_header(signed, STRIPE_SECRET, int(service.clock.now()))
    return service.client.post(
        "/webhooks/stripe",
        input_stream=io.BytesIO(data),
        headers={"Stripe-Signature": header, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.fixture
def small(make_service: Any, sqlite_url: str) -> Service:
    svc: Service = make_service(sqlite_url, server={"max_body_bytes": MAX})
    return svc


def test_chunked_body_over_the_cap_is_413(small: Service) -> None:
    assert chunked_post(small, padded(MAX + 1)).status_code == 413
    assert stored(small) == []


def test_chunked_body_whose_signed_part_fits_is_413_not_cut(small: Service) -> None:
    """The first MAX bytes are a valid signed delivery; the rest was silently dropped."""
    head = padded(MAX)
    response = chunked_post(small, head + b"x" * 500, header_for=head)
    assert response.status_code == 413
    assert stored(small) == []


def test_chunked_body_of_exactly_the_cap_is_accepted(small: Service) -> None:
    response = chunked_post(small, padded(MAX))
    assert response.status_code == 200
    assert [len(d.body) for d in stored(small)] == [MAX]


class BreakingStream(io.BytesIO):
    """A body stream that fails once its bytes run out, as gunicorn's does on a malformed
    chunk or a client that breaks off."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(min(size, 100) if size and size > 0 else 100)
        if not data:
            raise ValueError("Invalid chunk size")
        return data


def test_body_stream_that_breaks_is_400_and_nothing_stored(small: Service) -> None:
    raw = padded(1500)
    header = stripe_signature_header(raw[:700], STRIPE_SECRET, int(small.clock.now()))
    response = small.client.post(
        "/webhooks/stripe",
        input_stream=BreakingStream(raw[:700]),
        headers={"Stripe-Signature": header, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 400
    assert stored(small) == []


# --- under real gunicorn, where the chunked body is de-chunked by the server ---------------


@pytest.fixture
def gunicorn(tmp_path: Path, recorder: ConvertRecorder) -> Iterator[GunicornService]:
    doc = config_document(
        f"sqlite:///{tmp_path / 'g.db'}",
        recorder.base_url,
        server={"max_body_bytes": MAX},
        dispatcher={"enabled": False},
    )
    service = GunicornService(write_config(tmp_path / "service.toml", doc), workers=1)
    service.start()
    yield service
    service.stop()


def send(port: int, head: bytes, payload: bytes) -> bytes:
    """One raw HTTP/1.1 request; the whole answer (gunicorn's sync worker closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def chunked_head(signed: bytes) -> bytes:
    header = stripe_signature_header(signed, STRIPE_SECRET, int(time.time()))
    return (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\nStripe-Signature: " + header.encode() + b"\r\n\r\n"
    )


def chunks(data: bytes, size: int = 700) -> bytes:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_gunicorn_chunked_bodies_are_capped_exactly(gunicorn: GunicornService) -> None:
    port = gunicorn.port
    exact = padded(MAX, "evt_exact")
    over = padded(MAX + 1, "evt_over")
    head = padded(MAX, "evt_head")
    assert status_of(send(port, chunked_head(over), chunks(over))) == 413
    assert status_of(send(port, chunked_head(head), chunks(head + b"x" * 500))) == 413
    assert status_of(send(port, chunked_head(exact), chunks(exact))) == 200
    # A malformed chunk size, and a chunked body that breaks off: 400, not a 500.
    assert status_of(send(port, chunked_head(exact), b"zz\r\n" + exact)) == 400
    cut = b"%x\r\n" % len(exact) + exact[:900]
    assert status_of(send(port, chunked_head(exact[:900]), cut)) == 400
    log = gunicorn.log.read_text(errors="replace")
    assert "Traceback" not in log
    assert gunicorn_deliveries(gunicorn) == [("accepted", MAX)]


def test_gunicorn_content_length_body_over_the_cap_is_413(gunicorn: GunicornService) -> None:
    data = padded(MAX + 1)
    header = stripe_signature_header(data, STRIPE_SECRET, int(time.time()))
    status, _ = gunicorn.post("/webhooks/stripe", data, {"Stripe-Signature": header})
    assert status == 413
    exact = padded(MAX)
    header = stripe_signature_header(exact, STRIPE_SECRET, int(time.time()))
    status, _ = gunicorn.post("/webhooks/stripe", exact, {"Stripe-Signature": header})
    assert status == 200


def gunicorn_deliveries(service: GunicornService) -> list[tuple[str, int]]:
    """(status, body length) of what the gunicorn service stored, read from its SQLite file."""
    with closing(sqlite3.connect(service.config.parent / "g.db")) as conn:
        rows = conn.execute("SELECT status, body FROM deliveries ORDER BY id").fetchall()
    return [(status, len(data)) for status, data in rows]
