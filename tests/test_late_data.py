"""Late data: an event without experiment pairs is looked up again for the grace period
(default 15 minutes) before it settles as unattributed; data that arrives within it attributes
the event, data after it does not. Driven through the service with the fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.config_file import config_document
from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import experiments, shopify_order, stripe_event
from webhooks.storage.schema import events
from webhooks.web.app import create_app
from webhooks.wiring.config import settings_from_mapping

GRACE = 900.0  # the default
# Every place the chain looked, as the reason says it (the payment names no customer).
LOOKED = (
    "no 'convert_experiments', '__data', '_conv_attrs' or '_conv_v' attribute on the order; "
    "Stripe customer record not read: no api_key configured for the source; "
    "exposure store: the order names no customer id or email to look up"
)
RECHECK = 60.0


@pytest.fixture
def late(sqlite_url: str, clock: FakeClock, recorder: ConvertRecorder) -> Iterator[Service]:
    """The test config settles at once (grace 0); these tests use the defaults."""
    doc = config_document(sqlite_url, recorder.base_url)
    del doc["attribution"]
    svc = Service(create_app(settings_from_mapping(doc, {}), clock=clock), clock)
    assert svc.settings.attribution.grace_seconds == GRACE
    assert svc.settings.attribution.recheck_seconds == RECHECK
    yield svc
    svc.runtime.close()


def row(service: Service) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events)).one()


def bare_intent() -> dict[str, Any]:
    event = stripe_event("payment_intent_succeeded")
    event["livemode"] = True
    return event


def test_without_pairs_the_event_waits_and_is_looked_up_again(
    late: Service, recorder: ConvertRecorder
) -> None:
    stored_at = late.clock.now()
    late.post_stripe(bare_intent())
    assert late.drain() == 1
    waiting = row(late)
    assert (waiting.state, waiting.reason_code) == ("pending", "lookup_later")
    assert waiting.next_attempt_at == stored_at + RECHECK
    assert waiting.reason == f"{LOOKED}; looking again until 2027-01-15T08:15:00Z"
    assert waiting.attempts == 0
    assert late.drain() == 0  # not due before the recheck
    late.clock.advance(RECHECK)
    assert late.drain() == 1  # looked again
    assert row(late).next_attempt_at == stored_at + 2 * RECHECK
    assert recorder.requests == []


def test_after_the_grace_period_it_settles_as_unattributed(late: Service) -> None:
    stored_at = late.clock.now()
    late.post_stripe(bare_intent())
    rounds = 0
    while late.drain():
        rounds += 1
        late.clock.advance(RECHECK)
        assert rounds < 100
    settled = row(late)
    assert (settled.state, settled.reason_code) == ("skipped", "no_experiment_data")
    assert settled.reason == LOOKED
    assert settled.updated_at >= stored_at + GRACE
    assert rounds == GRACE / RECHECK + 1  # stored, then every minute up to the end


def test_the_last_recheck_falls_on_the_end_of_the_grace_period(
    make_service: Any, sqlite_url: str
) -> None:
    svc: Service = make_service(sqlite_url, attribution={"grace_seconds": 90})
    stored_at = svc.clock.now()
    svc.post_stripe(bare_intent())
    svc.drain()
    assert row(svc).next_attempt_at == stored_at + 60
    svc.clock.advance(60)
    svc.drain()
    assert row(svc).next_attempt_at == stored_at + 90  # not 120: the period ends at 90
    svc.clock.advance(30)
    svc.drain()
    assert row(svc).state == "skipped"


def test_data_arriving_within_the_grace_period_attributes_the_event_at_once(
    late: Service, recorder: ConvertRecorder
) -> None:
    order = shopify_order(test=False)
    late.post_shopify("orders/paid", order)
    late.drain()
    assert row(late).reason_code == "lookup_later"
    late.clock.advance(GRACE - 1)
    order["note_attributes"] = experiments("1-2")
    assert late.post_shopify("orders/paid", order).json["status"] == "duplicate"
    assert row(late).next_attempt_at == late.clock.now()  # due now, not at the next recheck
    assert late.drain() == 1
    sent = row(late)
    assert (sent.state, sent.attribution_format) == ("sent", "plain")
    assert len(recorder.requests) == 1 and "e=1-2" in recorder.requests[0].path


def test_data_arriving_after_the_grace_period_does_not_revive_the_order_settled_without(
    late: Service, recorder: ConvertRecorder
) -> None:
    """Settled means settled for lookups: only a later delivery of the same purchase that
    brings the pairs itself (as before the grace period existed) wakes the event."""
    late.post_stripe(bare_intent())
    while late.drain():
        late.clock.advance(RECHECK)
    assert row(late).state == "skipped"
    late.clock.advance(3600)
    assert late.drain() == 0
    assert recorder.requests == []
