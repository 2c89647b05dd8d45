"""Structured logs: JSON lines when stderr is not a terminal, readable key=value lines on one
(the format setting overrides); one `webhook` line per request with its request id, source,
topic, delivery id, outcome and latency; one `convert attempt` line per Convert request; every
value escaped, a sender's odd id never shown as written."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters import REGISTRY, stripe
from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService
from tests.payloads import body, experiments, shopify_order, stripe_event
from tests.signing import shopify_hmac
from webhooks.core.logs import (
    NOT_SHOWN,
    EscapingFormatter,
    JsonFormatter,
    fields,
    shown_id,
    text_fields,
)

ROOT = Path(__file__).resolve().parent.parent
HEX_ID = re.compile(r"[0-9a-f]{32}")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger's lines through the JSON formatter, as a log shipper would read them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root, ours = logging.getLogger(), logging.getLogger("webhooks")
    levels = (root.level, ours.level)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    ours.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def lines(stream: io.StringIO, message: str | None = None) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in parsed if message is None or line["message"] == message]


def without_time(line: dict[str, Any]) -> dict[str, Any]:
    assert ISO_UTC.fullmatch(line["time"]) and line["pid"] == os.getpid()
    return {k: v for k, v in line.items() if k not in ("time", "pid")}


def logged(formatter: logging.Formatter, emit: Any) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger("webhooks.test.formats")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        emit(log)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    return stream.getvalue()


# --- the two formats --------------------------------------------------------------------------


def test_a_json_line_escapes_every_value_and_keeps_its_base_keys() -> None:
    values = fields(
        source="shop",
        topic='orders/paid\n{"forged": 1}\x1b[2J',
        count=3,
        share=1.5,
        ok=True,
        absent=None,
        kinds=("purchase", "ref\x00und"),
        odd=float("nan"),
        message="forged message",
        level="forged level",
    )
    text = logged(JsonFormatter(), lambda log: log.info("webhook %s", "a\u2028b", extra=values))
    assert text.count("\n") == 1 and "\x1b" not in text and "\u2028" not in text
    line = json.loads(text)
    assert without_time(line) == {
        "level": "INFO",
        "logger": "webhooks.test.formats",
        "message": "webhook a\\u2028b",
        "source": "shop",
        "topic": 'orders/paid\\n{"forged": 1}\\x1b[2J',
        "count": 3,
        "share": 1.5,
        "ok": True,
        "kinds": ["purchase", "ref\\x00und"],
        "odd": "nan",
    }


def test_a_json_line_holds_a_traceback_as_one_escaped_field() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("failed")

    text = logged(JsonFormatter(), emit)
    assert text.count("\n") == 1
    line = json.loads(text)
    assert line["message"] == "failed"
    assert line["exception"].startswith("Traceback (most recent call last):\\n")
    assert line["exception"].endswith("ValueError: bad\\nvalue")


def test_a_text_line_appends_fields_as_key_value_with_quotes_where_needed() -> None:
    values = fields(
        source="shop",
        reason='X-Sig does not "match"',
        events=("purchase", "refund"),
        dry=False,
        latency_ms=1.25,
        none=None,
        topic="a=b",
        odd="line\nbreak",
    )
    text = logged(
        EscapingFormatter(logging.Formatter("%(levelname)s %(message)s")),
        lambda log: log.info("webhook", extra=values),
    )
    assert text == (
        'INFO webhook source=shop reason="X-Sig does not \\"match\\"" events=purchase,refund '
        'dry=false latency_ms=1.25 topic="a=b" odd="line\\nbreak"\n'
    )


def test_text_fields_of_nothing_is_nothing() -> None:
    assert text_fields({}) == "" and text_fields({"a": None}) == ""


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("orders/paid", "orders/paid"),
        ("checkout.session.completed", "checkout.session.completed"),
        ("evt_1NG8Du2eZvKYlo2CUI79vXWy", "evt_1NG8Du2eZvKYlo2CUI79vXWy"),
        ("order.updated:sha256:0f3a", "order.updated:sha256:0f3a"),
        ("buyer@example.com", NOT_SHOWN),
        ("two words", NOT_SHOWN),
        ("-leading", NOT_SHOWN),
        ("", NOT_SHOWN),
        ("x" * 129, NOT_SHOWN),
        ("a\x1bb", NOT_SHOWN),
        ('{"json": 1}', NOT_SHOWN),
        (None, None),
    ],
)
def test_a_senders_id_is_shown_only_when_it_looks_like_one(
    value: str | None, shown: str | None
) -> None:
    assert shown_id(value) == shown


SCRIPT = """
import logging, sys
from webhooks.core.logs import configure_logging, fields
from webhooks.core.settings import LogFormat, LoggingSettings
configure_logging(LoggingSettings(LogFormat(sys.argv[1]), sys.argv[2]))
logging.getLogger("webhooks.x").debug("debug line")
logging.getLogger("webhooks.x").info("webhook", extra=fields(source="shop", reason="a b"))
"""


def run_logging(chosen: str, terminal: bool, level: str = "INFO", **env: str) -> str:
    """What a fresh process configured with this format writes to its stderr (a pipe, or a
    pseudo-terminal)."""
    command = [sys.executable, "-c", SCRIPT, chosen, level]
    inherited = {k: v for k, v in os.environ.items() if k != "CONVERT_WEBHOOKS_LOG_LEVEL"}
    environment = inherited | env
    if not terminal:
        done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr.decode()
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stderr=follower)
        os.close(follower)
        assert process.wait(60) == 0
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
    return output.decode().replace("\r\n", "\n")


TEXT_LINE = re.compile(
    r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO webhooks\.x webhook source=shop reason="a b"\n'
)


@pytest.mark.parametrize(
    ("chosen", "terminal", "as_json"),
    [
        ("auto", False, True),
        ("auto", True, False),
        ("json", True, True),
        ("text", False, False),
    ],
)
def test_json_unless_stderr_is_a_terminal_and_the_setting_overrides(
    chosen: str, terminal: bool, as_json: bool
) -> None:
    output = run_logging(chosen, terminal)
    if as_json:
        (line,) = [json.loads(each) for each in output.splitlines()]
        assert {k: line[k] for k in ("level", "logger", "message", "source", "reason")} == {
            "level": "INFO",
            "logger": "webhooks.x",
            "message": "webhook",
            "source": "shop",
            "reason": "a b",
        }
    else:
        assert TEXT_LINE.fullmatch(output), output


def test_the_level_comes_from_the_setting_and_the_environment_overrides_it() -> None:
    assert "debug line" in run_logging("text", False, "DEBUG")
    assert run_logging("text", False, "DEBUG", CONVERT_WEBHOOKS_LOG_LEVEL="WARNING") == ""


# --- the webhook line ---------------------------------------------------------------------------


def post_order(service: Service, event_id: str, headers: dict[str, str] | None = None) -> Any:
    data = body(shopify_order(id=11, test=False, note_attributes=experiments("1-2")))
    sent = {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, "shpss_test_client_secret"),
        "X-Shopify-Event-Id": event_id,
        **(headers or {}),
    }
    return service.client.post("/webhooks/shop", data=data, headers=sent)


def test_one_webhook_line_per_request_with_its_request_id(
    service: Service, json_log: io.StringIO
) -> None:
    response = post_order(service, "ev-1", {"X-Request-Id": "req-42.abc"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "req-42.abc"
    (line,) = lines(json_log, "webhook")
    assert without_time(line) == {
        "level": "INFO",
        "logger": "webhooks.web.routes",
        "message": "webhook",
        "request_id": "req-42.abc",
        "source": "shop",
        "platform": "shopify",
        "topic": "orders/paid",
        "delivery_key": "orders/paid:event:ev-1",
        "delivery_id": 1,
        "status": "accepted",
        "http_status": 200,
        "events": "purchase",
        "latency_ms": 0.0,  # the test's clock does not move
    }
    assert lines(json_log) == [line]  # nothing else was logged for it
    again = post_order(service, "ev-1")
    assert again.json["status"] == "duplicate"
    replayed = lines(json_log, "webhook")[1]
    assert (replayed["status"], replayed["delivery_id"]) == ("duplicate", 1)
    assert HEX_ID.fullmatch(replayed["request_id"])


@pytest.mark.parametrize(
    "given",
    ["", "two words", "buyer@example.com", "-x", "x" * 129, "a\u00e9b", "a;b", "a\tb"],
)
def test_an_odd_request_id_is_replaced(service: Service, json_log: io.StringIO, given: str) -> None:
    response = post_order(service, "ev-1", {"X-Request-Id": given})
    (line,) = lines(json_log, "webhook")
    assert HEX_ID.fullmatch(line["request_id"])
    assert response.headers["X-Request-Id"] == line["request_id"]


def test_a_refused_webhook_says_why_without_topic_or_delivery(
    service: Service, json_log: io.StringIO
) -> None:
    response = service.post_shopify("orders/paid", shopify_order(), secret="w" * 32)
    assert response.status_code == 401
    (line,) = lines(json_log)
    assert {k: v for k, v in without_time(line).items() if k != "request_id"} == {
        "level": "INFO",
        "logger": "webhooks.web.routes",
        "message": "webhook",
        "source": "shop",
        "platform": "shopify",
        "status": "refused",
        "http_status": 401,
        "reason": "X-Shopify-Hmac-Sha256 does not match a configured secret",
        "latency_ms": 0.0,
    }


def test_a_hostile_topic_and_delivery_id_are_not_shown(
    service: Service, json_log: io.StringIO
) -> None:
    data = body(shopify_order(id=5, test=False))
    odd = "buyer@example.com"
    headers = {
        "X-Shopify-Topic": odd,
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, "shpss_test_client_secret"),
        "X-Shopify-Event-Id": odd,
    }
    assert service.client.post("/webhooks/shop", data=data, headers=headers).status_code == 200
    (line,) = lines(json_log, "webhook")
    assert (line["topic"], line["delivery_key"], line["status"]) == (
        NOT_SHOWN,
        NOT_SHOWN,
        "ignored",
    )
    assert odd not in json_log.getvalue()


def test_an_unknown_source_is_one_line_naming_it_only_when_it_could_be_a_name(
    service: Service, json_log: io.StringIO
) -> None:
    assert service.client.post("/webhooks/nope", data=b"{}").status_code == 404
    assert service.client.post("/webhooks/a@b.c", data=b"{}").status_code == 404
    assert [(line["source"], line["status"], line["http_status"]) for line in lines(json_log)] == [
        ("nope", "unknown_source", 404),
        (NOT_SHOWN, "unknown_source", 404),
    ]


def test_a_fault_line_carries_the_request_id_of_its_webhook(
    service: Service, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CrashingScheme:
        window_seconds, signs_body, needs_url = 300, True, False
        sign = stripe.SCHEME.sign
        secret_problem = stripe.SCHEME.secret_problem

        def verify(self, *_args: Any) -> None:
            raise ZeroDivisionError

    monkeypatch.setitem(REGISTRY, "stripe", replace(stripe.SPEC, scheme=CrashingScheme()))  # type: ignore[arg-type]
    response = service.post_stripe(stripe_event("payment_intent_succeeded"))
    assert response.status_code == 401
    fault, webhook = lines(json_log)
    assert (
        fault["level"] == "WARNING"
        and "signature check failed: ZeroDivisionError" in fault["message"]
    )
    assert (webhook["message"], webhook["status"]) == ("webhook", "refused")
    assert fault["request_id"] == webhook["request_id"] == response.headers["X-Request-Id"]
    logging.getLogger("webhooks.after").info("after the request")
    assert "request_id" not in lines(json_log)[-1]


# --- the Convert attempt line -------------------------------------------------------------------


def test_one_line_per_convert_attempt(
    service: Service, recorder: ConvertRecorder, json_log: io.StringIO
) -> None:
    recorder.answer_next(503)
    assert post_order(service, "ev-1").status_code == 200
    assert service.drain() == 1
    recorder.answer_next(400)
    service.clock.advance(3600)  # past the retry's backoff
    assert service.drain() == 1
    first, second = lines(json_log, "convert attempt")
    for line in (first, second):
        assert line["latency_ms"] >= 0 and "request_id" not in line
    assert {k: v for k, v in first.items() if k not in ("time", "pid", "latency_ms")} == {
        "level": "INFO",
        "logger": "webhooks.wiring.observers",
        "message": "convert attempt",
        "event_id": 1,
        "pair": "1-2",
        "format": "legacy_get",
        "outcome": "retry",
        "status": 503,
        "detail": "HTTP 503",
    }
    assert {k: second[k] for k in ("level", "outcome", "status", "detail")} == {
        "level": "WARNING",
        "outcome": "permanent",
        "status": 400,
        "detail": "HTTP 400",
    }
    data = body(shopify_order(id=12, test=False, note_attributes=experiments("3-4")))
    service.client.post(
        "/webhooks/shop",
        data=data,
        headers={
            "X-Shopify-Topic": "orders/paid",
            "X-Shopify-Hmac-Sha256": shopify_hmac(data, "shpss_test_client_secret"),
        },
    )
    assert service.drain() == 1
    sent = lines(json_log, "convert attempt")[-1]
    assert (sent["outcome"], sent["status"], sent["pair"]) == ("sent", 200, "3-4")
    assert "detail" not in sent  # only a failed attempt quotes Convert's answer


# --- under gunicorn, the text format ------------------------------------------------------------


@pytest.fixture
def text_gunicorn(tmp_path: Path, recorder: ConvertRecorder) -> Iterator[GunicornService]:
    doc = config_document(
        f"sqlite:///{tmp_path / 'g.db'}",
        recorder.base_url,
        dispatcher={"enabled": False},
        logging={"format": "text"},
    )
    config = write_config(tmp_path / "service.toml", doc)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    service = GunicornService(config, workers=1, env=env).start()
    yield service
    service.stop()


def test_the_text_setting_gives_readable_worker_lines(text_gunicorn: GunicornService) -> None:
    data = body(shopify_order(id=21, test=False, note_attributes=experiments("1-2")))
    headers = {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, "shpss_test_client_secret"),
        "X-Shopify-Event-Id": "ev-21",
        "X-Request-Id": "from-nginx-1",
    }
    assert text_gunicorn.post("/webhooks/shop", data, headers)[0] == 200
    deadline = time.monotonic() + 5
    marker = " webhook request_id="  # not the start-up's "webhook URL for source" lines
    while marker not in text_gunicorn.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = [each for each in text_gunicorn.log.read_text().splitlines() if marker in each]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO webhooks\.web\.routes webhook "
        r"request_id=from-nginx-1 source=shop platform=shopify topic=orders/paid "
        r"delivery_key=orders/paid:event:ev-21 delivery_id=1 status=accepted http_status=200 "
        r"events=purchase latency_ms=\d+\.\d+",
        line,
    ), line
