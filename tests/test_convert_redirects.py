"""Convert answering 3xx. The sender follows a redirect that names a Location (requests does
for GET, keeping the method and the User-Agent), and a 3xx it cannot follow (no Location) is
"any other answer": permanent, so the event is dead with the status in its reason at once,
never retried (webhooks/convert/http.py, Outcome.PERMANENT: "any other 4xx (or 3xx after
redirects)"; README "Retries"). Observed from what Convert (the recorder) received."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import stripe_event
from webhooks.convert.http import MAX_REDIRECTS
from webhooks.storage.schema import events

PATH = "/track/?c=1111&p=2222&e=100-200&g=100%2C101&ga=2&t=100%7C{pi}%7C10.99%7C1"


def purchase(service: Service) -> str:
    event = stripe_event("payment_intent_succeeded", metadata={"convert_experiments": "100-200"})
    event["livemode"] = True
    assert service.post_stripe(event).json["status"] == "accepted"
    return str(event["data"]["object"]["id"])


def event_row(service: Service, order_id: str) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.order_id == order_id)).one()


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_a_redirect_without_location_is_permanent_the_event_dead_at_once(
    any_db_service: Service, recorder: ConvertRecorder, status: int
) -> None:
    svc = any_db_service
    pi = purchase(svc)
    recorder.answer_next(status)
    assert svc.drain() == 1
    dead = event_row(svc, pi)
    assert (dead.state, dead.reason_code, dead.reason, dead.attempts) == (
        "dead",
        "convert_rejected",
        f"Convert answered HTTP {status} for pair 100-200",
        1,
    )
    svc.clock.advance(86400)  # past any backoff: a permanent answer is not retried
    assert svc.drain() == 0
    assert recorder.arrived_paths() == [PATH.format(pi=pi)]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_with_location_is_followed_and_the_event_sent(
    service: Service, recorder: ConvertRecorder, status: int
) -> None:
    pi = purchase(service)
    recorder.answer_next(status, headers={"Location": "/moved/?hit=1"})
    assert service.drain() == 1
    assert [(r.path, r.status) for r in recorder.requests] == [
        (PATH.format(pi=pi), status),
        ("/moved/?hit=1", 200),
    ]
    followed = recorder.requests[1].headers
    assert followed["User-Agent"].startswith("ConvertAgent/")
    row = event_row(service, pi)
    assert (row.state, row.reason_code, row.attempts) == ("sent", None, 1)


def test_a_redirect_to_an_answer_that_refuses_ends_as_that_answer(
    service: Service, recorder: ConvertRecorder
) -> None:
    """The outcome is the final answer's: a redirect to a 404 is a dead event with 404."""
    pi = purchase(service)
    recorder.answer_next(302, headers={"Location": "/gone/"})
    recorder.answer_next(404)
    service.drain()
    row = event_row(service, pi)
    assert (row.state, row.reason) == ("dead", "Convert answered HTTP 404 for pair 100-200")
    assert recorder.arrived_paths() == [PATH.format(pi=pi), "/gone/"]


def test_a_redirect_loop_is_cut_short_and_permanent(
    service: Service, recorder: ConvertRecorder
) -> None:
    """A loop is not followed 30 times on every try, nor retried as a network error (which
    would also pause all sending as an outage): a few redirects, then dead with the reason."""
    pi = purchase(service)
    for _ in range(MAX_REDIRECTS + 3):
        recorder.answer_next(302, headers={"Location": "/loop/"})
    assert service.drain() == 1
    row = event_row(service, pi)
    assert (row.state, row.reason_code, row.reason) == (
        "dead",
        "convert_rejected",
        f"Convert answered more than {MAX_REDIRECTS} redirects for pair 100-200",
    )
    assert len(recorder.requests) == MAX_REDIRECTS + 1
    assert service.runtime.dispatcher.outage_rounds == 0
