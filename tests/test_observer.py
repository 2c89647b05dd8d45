"""The observer hook: one object passed to the app factory sees every ingest, round and group
of send results; a failing observer never changes what the service does."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.config_file import config_document
from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import experiments, shopify_order
from webhooks.core.hits import SendOutcome
from webhooks.core.observe import DispatcherSeen, IngestSeen, RoundSeen
from webhooks.core.states import Outcome
from webhooks.web.app import create_app
from webhooks.wiring.config import settings_from_mapping


class Recording:
    def __init__(self) -> None:
        self.ingests: list[IngestSeen] = []
        self.rounds: list[RoundSeen] = []
        self.outcomes: list[SendOutcome] = []
        self.dispatchers: list[DispatcherSeen] = []

    def ingest(self, seen: IngestSeen) -> None:
        self.ingests.append(seen)

    def round(self, seen: RoundSeen) -> None:
        self.rounds.append(seen)

    def sends(self, outcomes: Sequence[SendOutcome]) -> None:
        self.outcomes.extend(outcomes)

    def dispatcher(self, seen: DispatcherSeen) -> None:
        self.dispatchers.append(seen)


class Failing:
    def ingest(self, seen: IngestSeen) -> None:
        raise RuntimeError("observer down")

    def round(self, seen: RoundSeen) -> None:
        raise RuntimeError("observer down")

    def sends(self, outcomes: Sequence[SendOutcome]) -> None:
        raise RuntimeError("observer down")

    def dispatcher(self, seen: DispatcherSeen) -> None:
        raise RuntimeError("observer down")


@pytest.fixture
def observed(
    tmp_path: Path, clock: FakeClock, recorder: ConvertRecorder
) -> Iterator[tuple[Service, Recording]]:
    seen = Recording()
    doc = config_document(f"sqlite:///{tmp_path / 'o.db'}", recorder.base_url)
    app = create_app(settings_from_mapping(doc, {}), clock=clock, observer=seen)
    service = Service(app, clock)
    yield service, seen
    service.runtime.close()


def make(tmp_path: Path, clock: FakeClock, recorder: ConvertRecorder, observer: object) -> Service:
    doc = config_document(f"sqlite:///{tmp_path / 'o.db'}", recorder.base_url)
    app = create_app(settings_from_mapping(doc, {}), clock=clock, observer=observer)  # type: ignore[arg-type]
    return Service(app, clock)


def test_the_observer_sees_ingests_rounds_and_sends(
    observed: tuple[Service, Recording], recorder: ConvertRecorder
) -> None:
    service, seen = observed
    order = shopify_order(note_attributes=experiments("1-2,3-4"), test=False)
    assert service.post_shopify("orders/paid", order).status_code == 200
    assert service.post_shopify("orders/paid", order).status_code == 200  # a new webhook id
    assert service.drain() == 1
    assert [(s.source, s.status, s.kinds) for s in seen.ingests] == [
        ("shop", "accepted", ("purchase",)),
        ("shop", "duplicate", ("purchase",)),
    ]
    assert all(s.seconds >= 0 for s in seen.ingests)
    assert [(r.claimed, r.sent, r.unknown) for r in seen.rounds] == [(1, 2, 0)]
    [finished] = seen.rounds[0].finished
    assert (finished.source, finished.state, finished.reason_code) == ("shop", "sent", None)
    assert finished.place == "order attribute 'convert_experiments'"
    assert all(o.result.seconds is not None and o.result.seconds >= 0 for o in seen.outcomes)
    assert sorted(o.hit.pair for o in seen.outcomes) == ["1-2", "3-4"]
    assert {o.result.outcome for o in seen.outcomes} == {Outcome.SENT}
    assert len(recorder.requests) == 2


def test_refused_and_rejected_requests_are_observed_too(
    observed: tuple[Service, Recording],
) -> None:
    service, seen = observed
    order = shopify_order()
    bad_secret = service.post_shopify("orders/paid", order, secret="x" * 32)
    assert bad_secret.status_code == 401
    assert [(s.source, s.status) for s in seen.ingests] == [("shop", "refused")]


def test_a_failing_observer_changes_nothing(
    tmp_path: Path, clock: FakeClock, recorder: ConvertRecorder
) -> None:
    service = make(tmp_path, clock, recorder, Failing())
    try:
        order = shopify_order(note_attributes=experiments("1-2"), test=False)
        response = service.post_shopify("orders/paid", order)
        assert (response.status_code, response.json["status"]) == (200, "accepted")
        assert service.drain() == 1
        assert len(recorder.requests) == 1
        assert service.runtime.dispatcher.drain() == 0
    finally:
        service.runtime.close()


def test_the_observer_hears_a_dispatcher_start_and_stop(
    observed: tuple[Service, Recording],
) -> None:
    service, seen = observed
    dispatcher = service.runtime.dispatcher
    dispatcher.start()
    deadline = time.monotonic() + 10
    while not seen.dispatchers and time.monotonic() < deadline:
        time.sleep(0.01)
    dispatcher.stop(timeout=5)
    assert seen.dispatchers == [
        DispatcherSeen(dispatcher.owner, True),
        DispatcherSeen(dispatcher.owner, False),
    ]
