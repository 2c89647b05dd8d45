"""What a sender writes never reaches the log as written, nor a 4xx body or a stored reason:
control characters are escaped in every log line (ours, Flask's, gunicorn's), client errors
log one line with the type and place (no traceback, no value), and answers and reasons name
the field, never its value."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters import REGISTRY, stripe
from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService
from tests.payloads import fixture, stripe_event
from webhooks.core.events import ParseResult
from webhooks.core.logs import EscapingFormatter, describe, escape
from webhooks.storage.schema import deliveries, events

MARKER = "leak-marker@example.com"


@pytest.fixture
def log_output(make_service: Any) -> Iterator[io.StringIO]:
    """Everything written to the root logger, through a handler that exists before the app
    is made (as gunicorn's and the host's do)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def svc(make_service: Any, sqlite_url: str, log_output: io.StringIO) -> Service:
    made: Service = make_service(sqlite_url)
    return made


def test_escape_makes_every_control_character_visible() -> None:
    raw = "a\nb\rc\td\x1b[31me\x00f\x85g\u2028h\u202ei\udc80j\\k"
    assert escape(raw) == "a\\nb\\rc\\td\\x1b[31me\\x00f\\x85g\\u2028h\\u202ei\\udc80j\\k"
    assert escape("plain ünïcode") == "plain ünïcode"


def test_every_log_line_is_escaped_whatever_module_logs_it(
    svc: Service, log_output: io.StringIO
) -> None:
    forged = "checkout.session.completed\n2027-01-15 INFO webhooks forged line \x1b[2J"
    logging.getLogger("some.library").warning("event type %s", forged)
    try:
        raise ValueError(forged)
    except ValueError:
        logging.getLogger("webhooks").exception("with a traceback")
    lines = log_output.getvalue().splitlines()
    assert len(lines) == 2  # one line per record, the traceback included
    assert "\x1b" not in log_output.getvalue()
    assert lines[0].endswith(
        "event type checkout.session.completed\\n2027-01-15 INFO webhooks forged line \\x1b[2J"
    )
    assert "Traceback" in lines[1]


def test_configuring_twice_does_not_escape_twice(svc: Service, log_output: io.StringIO) -> None:
    from webhooks.core.logs import configure_logging

    configure_logging()
    logging.getLogger("x").warning("a\nb")
    assert log_output.getvalue().rstrip().endswith("a\\nb")
    handler = next(
        h for h in logging.getLogger().handlers if getattr(h, "stream", None) is log_output
    )
    assert isinstance(handler.formatter, EscapingFormatter)
    assert not isinstance(handler.formatter.inner, EscapingFormatter)


def test_client_errors_log_one_line_without_traceback(
    svc: Service, log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc.post_stripe({}, raw=b'{"id": "evt", "type": "payment_intent.succeeded"}')  # 400
    svc.client.post("/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=\u00b2"})
    svc.client.post("/webhooks/stripe", data=b"{}")  # 401

    class CrashingScheme:
        """Stripe's scheme with a bug in its header parser."""

        window_seconds, signs_body, needs_url = 300, True, False
        sign = stripe.SCHEME.sign
        secret_problem = stripe.SCHEME.secret_problem

        def verify(self, *_args: Any) -> None:
            int("\u00b2")  # what a header parser with a bug raises

    broken = replace(stripe.SPEC, scheme=CrashingScheme())
    monkeypatch.setitem(REGISTRY, "stripe", broken)  # type: ignore[arg-type]
    response = svc.post_stripe(stripe_event("payment_intent_succeeded"))
    assert response.status_code == 401  # never verified, so never anything else
    text = log_output.getvalue()
    assert "Traceback" not in text and "invalid literal" not in text
    lines = [line for line in text.splitlines() if "webhooks.web.routes" in line]
    assert len(lines) == 4  # one per request
    assert "signature check failed: ValueError at adapters/base.py" in lines[-1]


def test_a_bug_is_a_json_500_with_one_log_line(
    svc: Service, log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def parse(_headers: Any, _raw: bytes) -> ParseResult:
        raise RuntimeError(MARKER)

    monkeypatch.setitem(REGISTRY, "stripe", replace(stripe.SPEC, parse=parse))  # type: ignore[arg-type]
    response = svc.post_stripe(stripe_event("payment_intent_succeeded"))
    assert (response.status_code, response.json) == (500, {"error": "internal error"})
    text = log_output.getvalue()
    assert "Traceback" not in text and MARKER not in text
    (line,) = text.splitlines()
    assert "RuntimeError" in line


def test_describe_names_type_chain_and_our_place() -> None:
    try:
        try:
            {}["k"]
        except KeyError as exc:
            raise ValueError(MARKER) from exc
    except ValueError as exc:
        described = describe(exc)
    assert described.startswith("ValueError from KeyError at ")
    assert MARKER not in described


def marked_stripe_events() -> Iterator[dict[str, Any]]:
    base = stripe_event("payment_intent_succeeded", receipt_email=MARKER)
    for key in base:
        event = json.loads(json.dumps(base))
        event[key] = MARKER
        event["id"] = f"evt_{key}" if key != "id" else MARKER
        yield event
    for key in base["data"]["object"]:
        event = json.loads(json.dumps(base))
        event["id"] = f"evt_obj_{key}"
        event["data"]["object"][key] = MARKER
        yield event


def marked_shopify_orders() -> Iterator[dict[str, Any]]:
    base = fixture("shopify", "orders_paid")
    base["financial_status"] = "paid"
    for key in base:
        order = json.loads(json.dumps(base))
        order[key] = MARKER
        yield order


def post_marked_requests(svc: Service) -> list[Any]:
    """The marker in every field of real payloads, in the topic, the URL and the signatures."""
    answers = [svc.post_stripe(event) for event in marked_stripe_events()]
    for i, order in enumerate(marked_shopify_orders()):
        answers.append(svc.post_shopify("orders/paid", order, event_id=f"ev-{i}"))
    answers.append(svc.post_shopify(MARKER, fixture("shopify", "orders_paid")))  # topic
    answers.append(svc.post_stripe(stripe_event("payment_intent_succeeded"), source=MARKER))
    answers.append(
        svc.client.post("/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": MARKER})
    )
    answers.append(
        svc.client.post("/webhooks/shop", data=b"{}", headers={"X-Shopify-Hmac-Sha256": MARKER})
    )
    return answers


def stored_reasons(svc: Service, status: str | None = None) -> list[str]:
    query = select(deliveries.c.reason)
    if status:
        query = query.where(deliveries.c.status == status)
    with svc.runtime.engine.connect() as conn:
        found = [r.reason for r in conn.execute(query)]
        if status is None:
            found += [r.reason for r in conn.execute(select(events.c.reason))]
    return [reason for reason in found if reason]


def test_no_4xx_answer_rejected_reason_or_log_line_quotes_a_payload_value(
    svc: Service, log_output: io.StringIO
) -> None:
    answers = post_marked_requests(svc)
    assert {a.status_code for a in answers} == {200, 400, 401, 404}
    for answer in answers:
        if answer.status_code >= 400:
            assert MARKER not in answer.get_data(as_text=True)
    rejected = stored_reasons(svc, "rejected")
    assert rejected and [reason for reason in rejected if MARKER in reason] == []
    assert MARKER not in log_output.getvalue()


def test_no_stored_reason_quotes_a_payload_value(svc: Service) -> None:
    post_marked_requests(svc)
    assert [reason for reason in stored_reasons(svc) if MARKER in reason] == []


@pytest.fixture
def logged_gunicorn(tmp_path: Path, recorder: ConvertRecorder) -> Iterator[GunicornService]:
    doc = config_document(
        f"sqlite:///{tmp_path / 'g.db'}", recorder.base_url, dispatcher={"enabled": False}
    )
    config = write_config(tmp_path / "service.toml", doc)
    service = GunicornService(config, workers=1, env={"CONVERT_WEBHOOKS_ACCESS_LOG": "1"})
    service.start()
    yield service
    service.stop()


def raw_request(url_port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", url_port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_gunicorn_logs_are_escaped_too(logged_gunicorn: GunicornService) -> None:
    """gunicorn's own handlers (here its access log, which quotes the User-Agent) format
    through the escaping formatter in the worker."""
    agent = b"evil\x1b[2J\x9b31m"
    answer = raw_request(
        logged_gunicorn.port,
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nUser-Agent: "
        + agent
        + b"\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert answer.startswith(b"HTTP/1.1 401")
    deadline = time.monotonic() + 5
    while b"evil" not in logged_gunicorn.log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = logged_gunicorn.log.read_bytes()
    assert b"evil\\x1b[2J\\x9b31m" in log
    assert b"\x1b" not in log and b"\xc2\x9b" not in log
