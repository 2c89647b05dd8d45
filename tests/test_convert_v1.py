"""The JSON tracking API (`convert.format = "v1"`): real signed Shopify webhooks through the
service and its dispatcher to a local stand-in that validates every request against a JSON
Schema written from Convert's reference (tests/convert_v1_standin.py), and records it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from tests.config_file import config_document, write_config
from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder
from tests.convert_v1_standin import ConvertV1StandIn, transactions
from tests.payloads import experiments, shopify_order
from webhooks.convert.v1 import DEFAULT_SOURCE
from webhooks.convert.visitor import pseudonymous_visitor_id
from webhooks.core.hits import WHOLE_PURCHASE
from webhooks.delivery.round import claim_size
from webhooks.storage.schema import events, sends
from webhooks.web.app import create_app
from webhooks.wiring.config import settings_from_mapping
from webhooks.wiring.startup import announce

EMAIL_KEY = "k" * 40
SHOPIFY_CUSTOMER = "115310627314723954"  # the fixture order's customer.id
VISITOR_DATA = {  # Convert's getAllVisitorData() as a theme script saves it on the cart
    "visitorId": "1004-0.5",
    "bucketing": [
        {"experienceId": "100341351", "variationId": "1003177123"},
        {"experienceId": "100341352", "variationId": "1003177130"},
    ],
}


@pytest.fixture
def standin() -> Iterator[ConvertV1StandIn]:
    server = ConvertV1StandIn().start()
    yield server
    server.stop()


@pytest.fixture
def make_v1(
    sqlite_url: str, clock: FakeClock, recorder: ConvertRecorder, standin: ConvertV1StandIn
) -> Iterator[Any]:
    made: list[Service] = []

    def make(v1: dict[str, Any] | None = None, **sections: Any) -> Service:
        convert = {
            "account_id": "1111",
            "project_id": "2222",
            "endpoint": recorder.base_url,
            "format": "v1",
            "v1": {"base_url": standin.base_url, **(v1 or {})},
            **sections.pop("convert", {}),
        }
        privacy = sections.pop("privacy", {"email_key": EMAIL_KEY})
        doc = config_document(sqlite_url, recorder.base_url, convert=convert, **sections)
        doc["privacy"] = privacy
        app = create_app(settings_from_mapping(doc, {}), clock=clock)
        made.append(Service(app, clock))
        return made[-1]

    yield make
    for service in made:
        service.runtime.close()


def paid(order_id: int, pairs: str = "10-20,30-40", **changes: Any) -> dict[str, Any]:
    return shopify_order(id=order_id, test=False, note_attributes=experiments(pairs), **changes)


def rows(service: Service) -> dict[str, Any]:
    with service.runtime.engine.connect() as conn:
        return {r.order_id: r for r in conn.execute(select(events).order_by(events.c.id))}


def send_rows(service: Service) -> list[Any]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(sends).order_by(sends.c.event_id)))


def expected_visitor(order_id: str, visitor_id: str, amount: Any, count: int) -> dict[str, Any]:
    bucketing = {"10": "20", "30": "40"}
    goal_data = [
        {"key": "amount", "value": amount},
        {"key": "productsCount", "value": count},
        {"key": "transactionId", "value": order_id},
    ]
    return {
        "visitorId": visitor_id,
        "events": [  # the test config: conversion goals 100 and 101, revenue goal 100
            {"eventType": "conversion", "data": {"goalId": "100", "bucketingData": bucketing}},
            {"eventType": "conversion", "data": {"goalId": "101", "bucketingData": bucketing}},
            {
                "eventType": "conversion",
                "data": {"goalId": "100", "bucketingData": bucketing, "goalData": goal_data},
            },
        ],
    }


def test_one_purchase_is_one_visitor_with_every_pair_in_one_post(
    make_v1: Any, standin: ConvertV1StandIn, recorder: ConvertRecorder
) -> None:
    service = make_v1()
    assert service.post_shopify("orders/paid", paid(7001)).status_code == 200
    assert service.drain() == 1
    [request] = standin.received
    assert (request.status, request.problems, request.discarded) == (200, (), False)
    assert request.path == "/v1/track/1111/2222"
    assert request.headers["User-Agent"].startswith("ConvertAgent/")
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    pseudonym = pseudonymous_visitor_id(EMAIL_KEY.encode(), "shop", SHOPIFY_CUSTOMER, None, "7001")
    assert request.body == {
        "accountId": "1111",
        "projectId": "2222",
        "enrichData": False,
        "source": DEFAULT_SOURCE,
        "visitors": [expected_visitor("7001", pseudonym, 404.95, 5)],
    }
    assert b'"value":404.95}' in request.raw  # a number, two decimals, not a string
    assert recorder.requests == []  # nothing went out in the legacy format
    event = rows(service)["7001"]
    assert (event.state, event.convert_format) == ("sent", "v1")
    [sent] = send_rows(service)
    assert (sent.pair, sent.format, sent.state, sent.attempts) == (
        WHOLE_PURCHASE,
        "v1_json",
        "sent",
        1,
    )
    assert json.loads(sent.payload) == request.body  # alone in its request: the very body


def test_amounts_keep_two_decimals_and_zero_decimal_currencies_too(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    service = make_v1()
    order = paid(7002, total_price="10.10", currency="JPY")
    order["current_total_price"] = "10.10"
    assert service.post_shopify("orders/paid", order).status_code == 200
    service.drain()
    [request] = standin.accepted()
    assert b'{"key":"amount","value":10.10}' in request.raw


def test_an_sdk_key_goes_in_the_path_and_its_secret_as_a_bearer(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    standin.bearer = "sdk-secret-value-1"
    service = make_v1({"sdk_key": "abc123/xyz", "sdk_secret": "sdk-secret-value-1"})
    assert service.post_shopify("orders/paid", paid(7003)).status_code == 200
    service.drain()
    [request] = standin.received
    assert (request.path, request.status) == ("/v1/track/abc123/xyz", 200)
    assert request.headers["Authorization"] == "Bearer sdk-secret-value-1"
    assert rows(service)["7003"].state == "sent"


def test_a_wrong_sdk_secret_is_refused_and_the_event_is_dead_with_convert_s_answer(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    standin.bearer = "the-right-secret"
    service = make_v1({"sdk_key": "abc123", "sdk_secret": "the-wrong-secret"})
    assert service.post_shopify("orders/paid", paid(7004)).status_code == 200
    service.drain()
    event = rows(service)["7004"]
    assert (event.state, event.reason_code) == ("dead", "convert_rejected")
    assert "HTTP 401" in event.reason and "secret is missing or wrong" in event.reason
    assert "the-wrong-secret" not in event.reason


def test_the_visitor_id_attribution_found_is_the_visitor_id_sent(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    service = make_v1()
    order = shopify_order(
        id=7005, test=False, note_attributes=experiments(json.dumps(VISITOR_DATA))
    )
    assert service.post_shopify("orders/paid", order).status_code == 200
    service.drain()
    [visitor] = standin.visitors()
    assert visitor["visitorId"] == "1004-0.5"
    assert visitor["events"][0]["data"]["bucketingData"] == {
        "100341351": "1003177123",
        "100341352": "1003177130",
    }


def test_without_one_the_pseudonym_is_the_customer_s_across_orders_and_retries(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    service = make_v1()
    guest = paid(7008)
    del guest["customer"]
    guest["email"] = guest["contact_email"] = "guest@example.com"
    standin.answer_next(500)  # the first request fails: the retry must be the same visitor
    for order in (paid(7006), paid(7007), guest):
        assert service.post_shopify("orders/paid", order).status_code == 200
    service.drain()
    service.clock.advance(3600)
    service.drain()
    ids = {t: v["visitorId"] for v in standin.visitors() for t in transactions({"visitors": [v]})}
    assert set(ids) == {"7006", "7007", "7008"}
    assert ids["7006"] == ids["7007"]  # one customer, one visitor
    assert ids["7008"] != ids["7006"]
    assert all(i.startswith("cw-") and len(i) == 35 for i in ids.values())
    every = [v["visitorId"] for r in standin.received for v in r.body["visitors"]]
    assert set(every) == set(ids.values())  # the failed attempt used the same ids
    text_sent = b"".join(r.raw for r in standin.received)
    assert b"guest@example.com" not in text_sent and SHOPIFY_CUSTOMER.encode() not in text_sent


def test_hits_are_batched_and_each_event_keeps_its_own_state(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    service = make_v1({"batch_size": 3})
    for n in range(7):
        assert service.post_shopify("orders/paid", paid(7100 + n)).status_code == 200
    assert service.drain() == 7
    assert sorted(len(r.body["visitors"]) for r in standin.received) == [1, 3, 3]
    assert standin.transaction_counts() == {str(7100 + n): 1 for n in range(7)}
    assert {(r.state, r.attempts) for r in rows(service).values()} == {("sent", 1)}
    assert {(s.state, s.attempts) for s in send_rows(service)} == {("sent", 1)}


def test_a_4xx_is_split_until_the_refused_hit_is_alone(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    service = make_v1({"batch_size": 8})
    standin.refused_transactions = {"7203"}
    for n in range(8):
        assert service.post_shopify("orders/paid", paid(7200 + n)).status_code == 200
    service.drain()
    found = rows(service)
    assert found["7203"].state == "dead"
    assert found["7203"].reason_code == "convert_rejected"
    assert "HTTP 400" in found["7203"].reason and "transactionId refused" in found["7203"].reason
    assert {o for o, r in found.items() if r.state == "sent"} == {
        str(7200 + n) for n in range(8) if n != 3
    }
    assert standin.transaction_counts() == {str(7200 + n): 1 for n in range(8) if n != 3}
    # 8 refused -> its first 4 refused -> 2 fine, 2 refused -> 1 fine, 1 refused; then the
    # other 4 fine: 7 requests for 8 hits, the refused one alone at last.
    assert [len(r.body["visitors"]) for r in standin.received] == [8, 4, 2, 2, 1, 1, 4]


def test_a_5xx_retries_every_hit_of_the_batch_with_backoff(
    make_v1: Any, standin: ConvertV1StandIn
) -> None:
    service = make_v1()
    standin.answer_next(503)
    for n in range(3):
        assert service.post_shopify("orders/paid", paid(7300 + n)).status_code == 200
    service.drain()
    waiting = rows(service)
    assert {(r.state, r.attempts) for r in waiting.values()} == {("pending", 1)}
    assert all(r.next_attempt_at > service.clock.now() for r in waiting.values())
    assert all("HTTP 503" in r.reason and "batch of 3" in r.reason for r in waiting.values())
    service.clock.advance(3600)
    service.drain()
    assert {r.state for r in rows(service).values()} == {"sent"}
    assert standin.transaction_counts() == {"7300": 1, "7301": 1, "7302": 1}


def test_a_429_is_honoured_for_its_retry_after(make_v1: Any, standin: ConvertV1StandIn) -> None:
    service = make_v1()
    standin.answer_next(429, retry_after="600")
    assert service.post_shopify("orders/paid", paid(7400)).status_code == 200
    service.drain()
    event = rows(service)["7400"]
    assert (event.state, event.attempts) == ("pending", 1)
    assert event.next_attempt_at >= service.clock.now() + 600
    service.clock.advance(300)
    assert service.drain() == 0  # not before Convert said
    service.clock.advance(301)
    service.drain()
    assert rows(service)["7400"].state == "sent"


def test_other_2xx_answers_are_not_success(make_v1: Any, standin: ConvertV1StandIn) -> None:
    """Convert's SDKs count only 200 as delivered and resend otherwise."""
    service = make_v1()
    standin.answer_next(202)
    assert service.post_shopify("orders/paid", paid(7401)).status_code == 200
    service.drain()
    assert rows(service)["7401"].state == "pending"


def test_a_timeout_is_retried(make_v1: Any, standin: ConvertV1StandIn) -> None:
    service = make_v1(convert={"read_timeout_seconds": 0.3})
    standin.delay = 1.0
    assert service.post_shopify("orders/paid", paid(7402)).status_code == 200
    service.drain()
    event = rows(service)["7402"]
    assert (event.state, event.attempts) == ("pending", 1)
    assert "ReadTimeout" in event.reason
    standin.delay = 0
    service.clock.advance(3600)
    service.drain()
    assert rows(service)["7402"].state == "sent"


def test_a_switch_of_format_applies_to_new_events_only(
    make_v1: Any,
    make_service: Any,
    sqlite_url: str,
    standin: ConvertV1StandIn,
    recorder: ConvertRecorder,
) -> None:
    legacy = make_service(sqlite_url, dispatcher={"enabled": False})
    assert legacy.post_shopify("orders/paid", paid(7500)).status_code == 200
    legacy.runtime.close()
    v1 = make_v1()  # the same database, now configured for v1
    assert v1.post_shopify("orders/paid", paid(7501)).status_code == 200
    v1.drain()
    found = rows(v1)
    assert (found["7500"].convert_format, found["7500"].state) == ("legacy", "sent")
    assert (found["7501"].convert_format, found["7501"].state) == ("v1", "sent")
    assert len(recorder.requests) == 2  # 7500: one GET per pair, as stored
    assert all("t=100%7C7500%7C" in path for path in recorder.paths)
    assert standin.transaction_counts() == {"7501": 1}  # and 7500 never by POST


def test_events_stored_before_the_format_column_go_out_as_legacy(
    make_v1: Any, standin: ConvertV1StandIn, recorder: ConvertRecorder
) -> None:
    service = make_v1(dispatcher={"enabled": False})
    assert service.post_shopify("orders/paid", paid(7502)).status_code == 200
    with service.runtime.engine.begin() as conn:
        conn.execute(text("UPDATE events SET convert_format = NULL"))
    service.drain()
    assert rows(service)["7502"].state == "sent"
    assert (len(recorder.requests), standin.received) == (2, [])


def test_every_outgoing_request_get_or_post_carries_a_convert_agent(
    make_v1: Any,
    make_service: Any,
    sqlite_url: str,
    standin: ConvertV1StandIn,
    recorder: ConvertRecorder,
) -> None:
    legacy = make_service(sqlite_url, dispatcher={"enabled": False})
    for n in range(3):
        assert legacy.post_shopify("orders/paid", paid(7600 + n)).status_code == 200
    legacy.runtime.close()
    service = make_v1()
    for n in range(3):
        assert service.post_shopify("orders/paid", paid(7610 + n)).status_code == 200
    service.drain()
    assert len(recorder.requests) == 6 and len(standin.received) == 1
    agents = [r.headers.get("User-Agent", "") for r in recorder.requests] + [
        r.headers.get("User-Agent", "") for r in standin.received
    ]
    assert all(agent.startswith("ConvertAgent/") for agent in agents), agents
    assert not any(r.discarded for r in standin.received)


def test_dry_run_logs_the_json_body_and_sends_nothing(
    make_v1: Any, standin: ConvertV1StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_v1(convert={"dry_run": True})
    assert service.post_shopify("orders/paid", paid(7700)).status_code == 200
    with caplog.at_level(logging.INFO, logger="webhooks"):
        service.drain()
    assert standin.received == []
    [line] = [r.getMessage() for r in caplog.records if "dry run" in r.getMessage()]
    prefix = f"dry run: would POST {standin.base_url}/track/1111/2222 "
    assert line.startswith(prefix)
    body = json.loads(line[len(prefix) :])
    assert transactions(body) == ["7700"] and body["accountId"] == "1111"
    assert rows(service)["7700"].state == "dry_run"


def test_v1_needs_the_key_its_pseudonyms_are_made_with(
    sqlite_url: str, recorder: ConvertRecorder
) -> None:
    doc = config_document(sqlite_url, recorder.base_url, convert={"format": "v1"})
    with pytest.raises(Exception) as refused:
        settings_from_mapping(doc, {})
    assert "privacy.email_key" in str(refused.value)


def test_the_stand_in_refuses_what_the_schema_refuses(standin: ConvertV1StandIn) -> None:
    """The stand-in's checks can fail: a body with an extra top-level key, a numeric id and
    an amount as a string are each answered 400 and named."""
    import requests

    good = {
        "accountId": "1",
        "projectId": "2",
        "enrichData": False,
        "source": "x",
        "visitors": [
            {"visitorId": "v", "events": [{"eventType": "conversion", "data": {"goalId": "5"}}]}
        ],
    }
    bad_bodies = [
        {**good, "currency": "USD"},
        {**good, "accountId": 1},
        {
            **good,
            "visitors": [
                {
                    "visitorId": "v",
                    "events": [
                        {
                            "eventType": "conversion",
                            "data": {
                                "goalId": "5",
                                "goalData": [{"key": "amount", "value": "1.00"}],
                            },
                        }
                    ],
                }
            ],
        },
    ]
    headers = {"User-Agent": "ConvertAgent/test", "Content-Type": "application/json"}
    url = f"{standin.base_url}/track/1/2"
    assert requests.post(url, json=good, headers=headers, timeout=5).status_code == 200
    for bad in bad_bodies:
        assert requests.post(url, json=bad, headers=headers, timeout=5).status_code == 400
    assert all(r.problems for r in standin.received[1:])
    requests.post(url, json=good, headers={"Content-Type": "application/json"}, timeout=5)
    assert standin.received[-1].discarded  # a library's own agent: 200, dropped


def test_the_start_says_a_switch_applies_to_new_events_and_what_waits_in_the_old_format(
    make_service: Any,
    sqlite_url: str,
    standin: ConvertV1StandIn,
    recorder: ConvertRecorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    legacy = make_service(sqlite_url, dispatcher={"enabled": False})
    for n in range(2):
        assert legacy.post_shopify("orders/paid", paid(7800 + n)).status_code == 200
    legacy.runtime.close()
    doc = config_document(
        sqlite_url,
        recorder.base_url,
        convert={"format": "v1", "v1": {"base_url": standin.base_url}},
        privacy={"email_key": EMAIL_KEY},
    )
    monkeypatch.setenv("CONVERT_WEBHOOKS_CONFIG", str(write_config(tmp_path / "c.toml", doc)))
    with caplog.at_level(logging.INFO, logger="webhooks"):
        announce("127.0.0.1:8000")
    assert (
        "convert.format is v1: it applies to purchases stored from now on; 2 pending event(s) "
        "stored under legacy still go out in legacy (no purchase is sent in both)"
    ) in caplog.text
    assert f"POST {standin.base_url}/track/1111/2222" in caplog.text


def test_a_v1_round_claims_enough_for_several_concurrent_posts(
    make_v1: Any, make_service: Any, sqlite_url: str, standin: ConvertV1StandIn
) -> None:
    """With the JSON API a round claims at least 4 batches' worth (they go out at once);
    the legacy format claims dispatcher.batch_size."""
    service = make_v1({"batch_size": 5})
    assert claim_size(service.settings) == 50  # dispatcher.batch_size is larger already
    assert claim_size(make_v1({"batch_size": 100}).settings) == 400
    assert claim_size(make_service(sqlite_url).settings) == 50
    for n in range(23):
        assert service.post_shopify("orders/paid", paid(7900 + n)).status_code == 200
    assert service.runtime.dispatcher.run_once() == 23  # one round, five requests
    assert sorted(len(r.body["visitors"]) for r in standin.received) == [3, 5, 5, 5, 5]


class Mover:
    """An endpoint that moved: every POST answered with `status` and a Location (to the
    stand-in, or to itself for a loop)."""

    def __init__(self, status: int, target: str | None) -> None:
        mover = self
        self.status, self.target, self.hits = status, target, 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                mover.hits += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(mover.status)
                self.send_header("Location", mover.target or self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "sent"),
    [(307, True), (308, True), (301, False), (302, False), (303, False), ("loop", False)],
)
def test_a_moved_endpoint_is_followed_only_where_the_post_stays_a_post(
    make_v1: Any, standin: ConvertV1StandIn, status: int | str, sent: bool
) -> None:
    """requests would follow a 301/302/303 with a GET and take its answer for a success."""
    target = None if status == "loop" else f"{standin.base_url}/track/1111/2222"
    mover = Mover(307 if status == "loop" else int(status), target)
    try:
        service = make_v1({"base_url": mover.base_url})
        assert service.post_shopify("orders/paid", paid(7950)).status_code == 200
        service.drain()
        event = rows(service)["7950"]
        if sent:
            assert event.state == "sent"
            [request] = standin.received
            assert transactions(request.body) == ["7950"]  # the body went along
        else:
            assert (event.state, event.reason_code) == ("dead", "convert_rejected")
            assert standin.received == []
            assert mover.hits == (6 if status == "loop" else 1)
    finally:
        mover.close()


def test_a_woken_dispatcher_gathers_for_the_batch_wait_with_the_json_api(
    make_v1: Any, make_service: Any, sqlite_url: str
) -> None:
    v1 = make_v1({"batch_wait_seconds": 0.5}).runtime.dispatcher
    assert (v1._gather_seconds(0), v1._gather_seconds(30)) == (0.5, 0.5)
    legacy = make_service(sqlite_url).runtime.dispatcher
    linger = legacy.settings.dispatcher.linger_seconds
    assert (legacy._gather_seconds(1), legacy._gather_seconds(2)) == (0.0, linger)
