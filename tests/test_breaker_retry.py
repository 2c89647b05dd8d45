"""The circuit breaker and the retry schedule on their own: both are plain objects fed with
results and times, so each rule is one small check (the dispatcher tests cover them in rounds).
The breaker's pause doubles from 1 s up to MAX_PAUSE, Convert's Retry-After can make it longer,
and the round that ends an outage says when the outage began."""

from __future__ import annotations

import logging
import random

import pytest

from webhooks.core.hits import HitResult
from webhooks.core.settings import DispatcherSettings
from webhooks.core.states import Outcome
from webhooks.delivery.breaker import MAX_PAUSE, Breaker
from webhooks.delivery.retry import RetryPolicy

NOW = 1_800_000_000.0  # wall clock
MONO = 5_000.0  # monotonic clock: another origin, so a mix-up of the two shows


def retry(detail: str = "HTTP 503", retry_after: float | None = None) -> HitResult:
    return HitResult(Outcome.RETRY, 503, detail, retry_after)


SENT = HitResult(Outcome.SENT, 200, "HTTP 200")
REJECTED = HitResult(Outcome.PERMANENT, 404, "HTTP 404")


def test_a_closed_breaker_does_not_pause_or_probe() -> None:
    breaker = Breaker()
    assert (breaker.open, breaker.pause(), breaker.probe_due(MONO)) == (False, 0.0, False)
    assert breaker.observe([], NOW, MONO) is None  # a round without requests says nothing
    assert breaker.observe([SENT, REJECTED], NOW, MONO) is None
    assert (breaker.open, breaker.pause()) == (False, 0.0)


def test_the_pause_doubles_from_one_second_up_to_the_cap() -> None:
    breaker = Breaker()
    pauses = []
    for n in range(7):
        assert breaker.observe([retry()], NOW + n, MONO + n) is None
        pauses.append(breaker.pause())
    assert pauses == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert MAX_PAUSE == 8.0
    assert (breaker.open, breaker.failed_rounds) == (True, 7)


def test_only_a_round_where_every_request_failed_retryably_opens_it() -> None:
    breaker = Breaker()
    breaker.observe([retry(), SENT], NOW, MONO)  # Convert answered one: it is up
    breaker.observe([retry(), REJECTED], NOW, MONO)  # a 404 is an answer too
    assert not breaker.open
    breaker.observe([retry(), retry("ConnectionError: network error")], NOW, MONO)
    assert breaker.open


def test_retry_after_longer_than_the_doubling_wins_and_is_the_longest_of_the_round() -> None:
    breaker = Breaker()
    breaker.observe([retry(), retry(retry_after=30.0), retry(retry_after=12.0)], NOW, MONO)
    assert breaker.pause() == 30.0
    breaker.observe([retry(retry_after=0.5)], NOW + 30, MONO + 30)  # the last round counts
    assert breaker.pause() == 2.0


def test_the_probe_is_due_exactly_when_the_pause_after_the_last_failure_is_over() -> None:
    breaker = Breaker()
    breaker.observe([retry()], NOW, MONO)
    breaker.observe([retry()], NOW + 1, MONO + 1)  # pause 2 s from here
    assert not breaker.probe_due(MONO + 1)
    assert not breaker.probe_due(MONO + 2.999)
    assert breaker.probe_due(MONO + 3)
    assert breaker.probe_due(MONO + 60)


def test_the_round_that_ends_an_outage_says_when_it_began_and_closes_the_breaker() -> None:
    breaker = Breaker()
    breaker.observe([retry()], NOW, MONO)
    breaker.observe([retry()], NOW + 10, MONO + 10)
    assert breaker.observe([SENT], NOW + 20, MONO + 20) == NOW  # the first failed round
    assert (breaker.open, breaker.failed_rounds, breaker.pause()) == (False, 0, 0.0)
    assert not breaker.probe_due(MONO + 1_000)
    assert breaker.observe([SENT], NOW + 30, MONO + 30) is None  # no outage to end
    # A later outage is timed and paused from its own start.
    breaker.observe([retry()], NOW + 40, MONO + 40)
    assert breaker.pause() == 1.0
    assert breaker.observe([SENT], NOW + 50, MONO + 50) == NOW + 40


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = Breaker()
    with caplog.at_level(logging.INFO, logger="webhooks.delivery.breaker"):
        breaker.observe([retry("HTTP 503")], NOW, MONO)
        breaker.observe([retry("HTTP 502")], NOW + 1, MONO + 1)
        breaker.observe([SENT], NOW + 2, MONO + 2)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Convert unreachable (HTTP 503); pausing, then probing with one event"),
        ("INFO", "Convert reachable again after 2 failed rounds"),
    ]


def test_the_policy_takes_its_three_numbers_from_the_dispatcher_settings() -> None:
    settings = DispatcherSettings(
        enabled=True,
        batch_size=50,
        lease_seconds=60,
        poll_seconds=1.0,
        linger_seconds=0.0,
        retry_base_seconds=5.0,
        retry_max_delay_seconds=300.0,
        retry_horizon_seconds=86_400.0,
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(5.0, 300.0, 86_400.0)


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (6, 300.0), (7, 300.0), (5_000, 300.0)],
)
def test_the_delay_is_half_the_ceiling_plus_the_given_generators_jitter(
    attempts: int, ceiling: float
) -> None:
    policy = RetryPolicy(base_seconds=10, max_delay_seconds=300, horizon_seconds=3600)
    expected = ceiling / 2 + random.Random(attempts).uniform(0, ceiling / 2)
    assert policy.delay(attempts, random.Random(attempts)) == expected


def test_a_try_due_exactly_at_the_horizon_still_happens() -> None:
    # No backoff (base 0): the next try is due `now`, so the horizon's edge is exact.
    policy = RetryPolicy(base_seconds=0, max_delay_seconds=0, horizon_seconds=3600)
    assert policy.next_attempt(now=NOW + 3600, attempts=3, horizon_start=NOW) == NOW + 3600
    assert policy.next_attempt(now=NOW + 3600.5, attempts=3, horizon_start=NOW) is None


def test_retry_after_may_move_the_last_try_past_the_horizon_but_never_kills_sooner() -> None:
    policy = RetryPolicy(base_seconds=0, max_delay_seconds=0, horizon_seconds=3600)
    assert policy.next_attempt(NOW + 10, 1, NOW, not_before=NOW + 600) == NOW + 600
    assert policy.next_attempt(NOW + 3500, 1, NOW, not_before=NOW + 4000) == NOW + 4000
    assert policy.next_attempt(NOW + 10, 1, NOW, not_before=NOW) == NOW + 10
