"""What a sender writes never reaches the log as written, nor a 4xx body or a stored reason:
control characters are escaped in every log line (ours, Flask's, gunicorn's, JSON or text),
a request logs one `webhook` line (a fault adds one line with the type and place: no
traceback, no value), and answers and reasons name the field, never its value. A full run
over every kind of source, good and bad deliveries, sends, the exposure API and a scrape logs
no secret, token, signature, email address or other personal value it was given."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters import REGISTRY, stripe
from tests.config_file import (
    SHOPIFY_SECRET,
    STRIPE_OLD_SECRET,
    STRIPE_SECRET,
    config_document,
    write_config,
)
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService
from tests.payloads import fixture, stripe_event
from webhooks.core.events import ParseResult
from webhooks.core.logs import FORMAT, EscapingFormatter, JsonFormatter, describe, escape
from webhooks.storage.schema import deliveries, events

MARKER = "leak-marker@example.com"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
    summaries = [line for line in lines if "webhooks.web.routes webhook " in line]
    assert len(summaries) == 4  # one per request
    assert [line.split(" status=")[1].split()[0] for line in summaries] == [
        "rejected",
        "refused",
        "refused",
        "refused",
    ]
    (fault,) = [line for line in lines if line not in summaries]  # the bug's own line
    assert fault.startswith("WARNING ")
    assert "signature check failed: ValueError at adapters/base.py" in fault
    assert request_id(fault) == request_id(summaries[-1])


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
    summary, error = text.splitlines()  # the request's line, and the app's for the bug
    assert summary.startswith("WARNING webhooks.web.routes webhook ")
    assert 'status=error http_status=500 reason="RuntimeError at ' in summary
    assert error.startswith("ERROR webhooks.web.app unexpected error: RuntimeError at ")
    assert request_id(summary) == request_id(error)


def request_id(line: str) -> str:
    return line.split(" request_id=")[1].split()[0]


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


@pytest.fixture(params=["auto", "text"])
def logged_gunicorn(
    tmp_path: Path, recorder: ConvertRecorder, request: pytest.FixtureRequest
) -> Iterator[GunicornService]:
    doc = config_document(
        f"sqlite:///{tmp_path / 'g.db'}",
        recorder.base_url,
        dispatcher={"enabled": False},
        logging={"format": request.param},
    )
    config = write_config(tmp_path / "service.toml", doc)
    env = {"CONVERT_WEBHOOKS_ACCESS_LOG": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "p")}
    service = GunicornService(config, workers=1, env=env)
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
    through the escaping formatter in the worker: as text, or as JSON lines (the log is not a
    terminal) whose decoded values are escaped too."""
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
    assert b"\x1b" not in log and b"\xc2\x9b" not in log
    if b'"logger":"gunicorn.access"' not in log:  # the text format
        assert b"evil\\x1b[2J\\x9b31m" in log
        return
    (access,) = [json.loads(line) for line in log.splitlines() if b"evil" in line]
    assert access["logger"] == "gunicorn.access"
    assert access["message"].endswith('"evil\\x1b[2J\\x9b31m"')


# --- a full run: nothing secret or personal in the log -------------------------------------------

RUN_PLATFORMS = (
    "stripe",
    "shopify",
    "woocommerce",
    "lemonsqueezy",
    "paddle",
    "square",
    "standard_webhooks",
    "custom",
)
RUN_URL = "https://hooks.example.com/webhooks/contract"
EXPOSURE_TOKEN = "expo-token-leakcheck-0123456789"
METRICS_TOKEN = "metrics-token-leakcheck-0123456789"
EMAIL_KEY = "email-key-leakcheck-0123456789abcdef"
ADMIN_PASSWORD = "admin-password-leakcheck-0123456789"
EXPOSURE_EMAIL = "exposed.buyer@leakcheck.example"
WRONG_SECRETS = (
    "wrong-secret-leakcheck-0123456789",
    "whsec_" + base64.b64encode(b"wrong-secret-leakcheck-0123456789").decode(),
    "user:wrong-secret-leakcheck-0123456789",
)
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PERSONAL_KEYS = ("email", "phone", "first_name", "last_name", "address", "given_name", "family")


@pytest.fixture
def full_log() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """The root logger's every line at DEBUG, through the JSON and the text formatter."""
    json_stream, text_stream = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(json_stream), logging.StreamHandler(text_stream)]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(EscapingFormatter(logging.Formatter(FORMAT)))
    root, ours = logging.getLogger(), logging.getLogger("webhooks")
    levels = (root.level, ours.level)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)
    yield json_stream, text_stream
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def run_source(name: str) -> dict[str, Any]:
    spec = REGISTRY[name]
    return {
        "platform": name,
        "secrets": list(spec.sample.secrets),
        **spec.sample.options,
        "url": RUN_URL,
        "allow_test_events": True,  # the samples' test orders are sent too
    }


def wrong_secret_for(name: str) -> str:
    scheme = REGISTRY[name].scheme_of(REGISTRY[name].sample.options)
    return next(s for s in WRONG_SECRETS if scheme.secret_problem(s) is None)


def signed_delivery(
    name: str, secret: str, now: float
) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """The sample with pairs as a new delivery: body, every header, the signature headers."""
    spec = REGISTRY[name]
    payload = json.loads((FIXTURES / name / spec.sample.fixture).read_bytes())
    headers = dict(spec.sample.headers)
    assert spec.sample.add_pairs is not None
    spec.sample.add_pairs(payload, headers, "100-200")
    raw = json.dumps(payload).encode()
    signature = spec.scheme_of(spec.sample.options).sign(raw, secret, now, url=RUN_URL)
    return raw, {**headers, **signature}, signature


def personal_values(value: Any, key: str = "") -> Iterator[str]:
    """Strings held under personal keys (emails, phones, names, addresses) of a payload."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from personal_values(v, str(k).lower())
    elif isinstance(value, list):
        for v in value:
            yield from personal_values(v, key)
    elif isinstance(value, str) and len(value) >= 6 and any(p in key for p in PERSONAL_KEYS):
        yield value


def signature_parts(headers: dict[str, str]) -> Iterator[str]:
    """The digests in signature headers (`t=..,v1=<hex>`, `v1,<base64>`, base64 alone)."""
    for name, value in headers.items():
        if not any(word in name.lower() for word in ("sig", "hmac", "authorization")):
            continue  # a delivery id or a timestamp, which may be logged
        for part in re.split(r"[,;= ]", value):
            if len(part) >= 16:
                yield part


def test_a_full_run_logs_no_secret_token_signature_or_personal_value(
    make_service: Any,
    sqlite_url: str,
    recorder: ConvertRecorder,
    full_log: tuple[io.StringIO, io.StringIO],
) -> None:
    sources = {f"run-{name}": run_source(name) for name in RUN_PLATFORMS}
    svc: Service = make_service(
        sqlite_url,
        sources=sources,
        exposures={"tokens": [EXPOSURE_TOKEN]},
        privacy={"email_key": EMAIL_KEY},
        metrics={"token": METRICS_TOKEN},
        admin={"password": ADMIN_PASSWORD},
    )
    now = svc.clock.now()
    needles: set[str] = {
        EXPOSURE_TOKEN,
        METRICS_TOKEN,
        EMAIL_KEY,
        ADMIN_PASSWORD,
        EXPOSURE_EMAIL,
        MARKER,
        STRIPE_SECRET,
        STRIPE_OLD_SECRET,
        SHOPIFY_SECRET,
        *WRONG_SECRETS,
    }
    answers: list[int] = []

    exposure = {
        "source": "run-shopify",
        "email": EXPOSURE_EMAIL,
        "pairs": ["100-1"],
        "exposed_at": "2027-01-15T07:00:00Z",
    }
    for token in (EXPOSURE_TOKEN, "not-the-token-0123456789"):
        answers.append(
            svc.client.post(
                "/api/exposures", json=exposure, headers={"Authorization": f"Bearer {token}"}
            ).status_code
        )
    for name in RUN_PLATFORMS:
        spec = REGISTRY[name]
        needles.update(spec.sample.secrets)
        needles.update(s.removeprefix("whsec_") for s in spec.sample.secrets)
        raw, headers, signature = signed_delivery(name, spec.sample.secrets[0], now)
        bad_raw, bad_headers, bad_signature = signed_delivery(name, wrong_secret_for(name), now)
        tampered = raw.replace(b"100-200", b"100-201")
        payload = json.loads(raw)
        needles.update(personal_values(payload))
        needles.update(m.decode() for m in EMAIL.findall(raw))
        needles.update(signature_parts(signature))
        needles.update(signature_parts(bad_signature))
        url = f"/webhooks/run-{name}"
        good = svc.client.post(url, data=raw, headers=headers)
        assert good.status_code == 200, (name, good.get_data(as_text=True))
        again = svc.client.post(url, data=raw, headers=headers)  # the platform's retry
        answers += [good.status_code, again.status_code]
        for body_sent, sent in ((bad_raw, bad_headers), (tampered, headers), (raw, {})):
            answers.append(svc.client.post(url, data=body_sent, headers=sent).status_code)
    recorder.answer_next(503, 400)  # a retry and a refusal among the sends
    while svc.drain():
        svc.clock.advance(3600)
    for token in (METRICS_TOKEN, "wrong-metrics-token-0123456789"):
        scrape = svc.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        answers.append(scrape.status_code)
        assert not [n for n in needles if n in scrape.get_data(as_text=True)]
    svc.client.get("/metrics")

    assert 200 in answers and 401 in answers and len(recorder.requests) >= len(RUN_PLATFORMS)
    emails = [n for n in needles if "@" in n]
    assert len(emails) >= 5, emails  # the check below has real personal data to look for
    json_text, text_text = (stream.getvalue() for stream in full_log)
    webhook_lines = [json.loads(line) for line in json_text.splitlines()]
    assert sum(1 for line in webhook_lines if line["message"] == "webhook") == 5 * len(
        RUN_PLATFORMS
    )
    assert sum(1 for line in webhook_lines if line["message"] == "convert attempt") >= len(
        RUN_PLATFORMS
    )
    leaked = sorted(n for n in needles if n in json_text or n in text_text)
    assert leaked == []
