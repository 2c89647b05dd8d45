"""The next-state decision as a table: what is known of an event's hits and what this round
saw, and the state it leaves the round in. `decide` is pure, so every row is one call."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from webhooks.core.hits import HitResult
from webhooks.core.states import EventState, Outcome, Reason, SendState
from webhooks.delivery.decide import decide, internal_error, with_note
from webhooks.storage.queue import Finish, KnownSend

NOW = 1_800_000_000.0
RETRY_AT = NOW + 60.0


def retry_at(tries: int, not_before: float) -> float | None:
    """A deterministic policy: one minute later, or Retry-After if later; gives up at 5."""
    return None if tries >= 5 else max(RETRY_AT, not_before)


def known(*states: tuple[str, SendState, str | None]) -> dict[str, KnownSend]:
    return {pair: KnownSend(pair, state, None, error) for pair, state, error in states}


def result(outcome: Outcome, detail: str = "", retry_after: float | None = None) -> HitResult:
    return HitResult(outcome, None, detail, retry_after)


SENT = result(Outcome.SENT, "HTTP 200")
RETRY = result(Outcome.RETRY, "HTTP 503")
PERMANENT = result(Outcome.PERMANENT, "HTTP 404")

# (case, pairs, known after the round, this round's results, unstarted, attempts before,
#  expected state, reason code, next attempt, attempted)
TABLE: list[tuple[str, list[str], dict[str, KnownSend], list[HitResult], bool, int,
                  EventState, Reason | None, float | None, bool]] = [
    ("every hit sent now", ["1-2", "3-4"],
     known(("1-2", SendState.SENT, None), ("3-4", SendState.SENT, None)),
     [SENT, SENT], False, 0, EventState.SENT, None, None, True),
    ("sent by an earlier round, nothing to do", ["1-2"], known(("1-2", SendState.SENT, None)),
     [], False, 1, EventState.SENT, None, None, False),
    ("dry run", ["1-2"], known(("1-2", SendState.DRY_RUN, None)),
     [result(Outcome.DRY_RUN)], False, 0, EventState.DRY_RUN, Reason.DRY_RUN, None, True),
    ("sent and dry run mixed counts as sent", ["1-2", "3-4"],
     known(("1-2", SendState.SENT, None), ("3-4", SendState.DRY_RUN, None)),
     [SENT], False, 0, EventState.SENT, None, None, True),
    ("one retryable failure: retry later", ["1-2", "3-4"],
     known(("1-2", SendState.SENT, None), ("3-4", SendState.PENDING, "HTTP 503")),
     [SENT, RETRY], False, 0, EventState.PENDING, Reason.RETRYING, RETRY_AT, True),
    ("Retry-After later than the policy wins", ["1-2"],
     known(("1-2", SendState.PENDING, "HTTP 429")),
     [result(Outcome.RETRY, "HTTP 429", 600.0)], False, 0,
     EventState.PENDING, Reason.RETRYING, NOW + 600.0, True),
    ("retries exhausted", ["1-2"], known(("1-2", SendState.PENDING, "HTTP 503")),
     [RETRY], False, 4, EventState.DEAD, Reason.RETRIES_EXHAUSTED, None, True),
    ("Convert rejected a hit", ["1-2", "3-4"],
     known(("1-2", SendState.SENT, None), ("3-4", SendState.DEAD, "HTTP 404")),
     [SENT, PERMANENT], False, 0, EventState.DEAD, Reason.CONVERT_REJECTED, None, True),
    ("retryable outranks rejected: the retry may still send the rest", ["1-2", "3-4"],
     known(("1-2", SendState.PENDING, "HTTP 503"), ("3-4", SendState.DEAD, "HTTP 404")),
     [RETRY, PERMANENT], False, 0, EventState.PENDING, Reason.RETRYING, RETRY_AT, True),
    ("our own error while sending: dead", ["1-2"], known(("1-2", SendState.DEAD, "boom")),
     [result(Outcome.ERROR, "internal error while sending: X")], False, 0,
     EventState.DEAD, Reason.INTERNAL_ERROR, None, True),
    ("a hit did not start in time: queued again, due now, not an attempt", ["1-2", "3-4"],
     known(("1-2", SendState.SENT, None)), [SENT], True, 0,
     EventState.PENDING, Reason.QUEUED, NOW, False),
    ("did not start and another failed: the failure decides", ["1-2", "3-4"],
     known(("1-2", SendState.PENDING, "HTTP 503")), [RETRY], True, 0,
     EventState.PENDING, Reason.RETRYING, RETRY_AT, True),
    ("nothing known and nothing sent (an unstarted lone hit)", ["1-2"], {}, [], True, 0,
     EventState.PENDING, Reason.QUEUED, NOW, False),
]


@pytest.mark.parametrize(
    ("pairs", "known_sends", "results", "unstarted", "attempts", "state", "code", "at",
     "attempted"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decision_table(
    pairs: list[str],
    known_sends: dict[str, KnownSend],
    results: Sequence[HitResult],
    unstarted: bool,
    attempts: int,
    state: EventState,
    code: Reason | None,
    at: float | None,
    attempted: bool,
) -> None:
    finish = decide(pairs, known_sends, results, unstarted, attempts, NOW, retry_at)
    assert (finish.state, finish.reason_code, finish.next_attempt_at) == (state, code, at)
    assert finish.attempted is attempted
    assert finish.only_if_revision is None


def test_reasons_say_what_happened() -> None:
    dead = decide(
        ["1-2"], known(("1-2", SendState.DEAD, "HTTP 404")), [PERMANENT], False, 0, NOW, retry_at
    )
    assert dead.reason == "Convert answered HTTP 404 for pair 1-2"
    pending = decide(
        ["1-2"], known(("1-2", SendState.PENDING, "HTTP 503")), [RETRY], False, 0, NOW, retry_at
    )
    assert pending.reason == "will retry; last error: HTTP 503"
    gave_up = decide(
        ["1-2"], known(("1-2", SendState.PENDING, "HTTP 503")), [RETRY], False, 4, NOW, retry_at
    )
    assert gave_up.reason == "gave up after 5 attempts; last error: HTTP 503"
    # The error of the hit that will be retried, not of one Convert already rejected.
    mixed = decide(
        ["1-2", "3-4"],
        known(("1-2", SendState.DEAD, "HTTP 404"), ("3-4", SendState.PENDING, "HTTP 503")),
        [PERMANENT, RETRY], False, 0, NOW, retry_at,
    )
    assert mixed.reason == "will retry; last error: HTTP 503"
    queued = decide(["1-2"], {}, [], True, 0, NOW, retry_at)
    assert queued.reason == "queued: the round ended before this event was sent"
    dry = decide(
        ["1-2"], known(("1-2", SendState.DRY_RUN, None)), [result(Outcome.DRY_RUN)], False, 0,
        NOW, retry_at,
    )
    assert dry.reason == "dry run: Convert URLs logged, not sent"
    error = decide(
        ["1-2"], known(("1-2", SendState.DEAD, "boom")),
        [SENT, result(Outcome.ERROR, "internal error while sending: KeyError at x.py:1")],
        False, 0, NOW, retry_at,
    )
    assert error.reason == "internal error while sending: KeyError at x.py:1"


def test_a_pair_never_tried_is_retried_even_without_a_last_error() -> None:
    """A takeover that finds one hit recorded and the other never sent: nothing failed yet."""
    finish = decide(
        ["1-2", "3-4"], known(("1-2", SendState.SENT, None)), [], False, 1, NOW, retry_at
    )
    assert (finish.state, finish.reason_code, finish.next_attempt_at) == (
        EventState.PENDING,
        Reason.RETRYING,
        RETRY_AT,
    )
    assert finish.reason is not None and finish.reason.startswith("will retry")


def test_attempts_count_this_round_only_when_it_made_requests() -> None:
    seen: list[tuple[int, float]] = []

    def policy(tries: int, not_before: float) -> float | None:
        seen.append((tries, not_before))
        return RETRY_AT

    pending = known(("1-2", SendState.PENDING, "HTTP 503"))
    decide(["1-2"], pending, [RETRY], False, 2, NOW, policy)  # this round tried: 3
    decide(["1-2"], pending, [], False, 2, NOW, policy)  # a takeover that sent nothing: 2
    decide(["1-2"], pending, [], False, 0, NOW, policy)  # never below 1
    # Not before Convert's longest Retry-After of this round; without one, no constraint.
    waits = [result(Outcome.RETRY, "HTTP 429", 30.0), result(Outcome.RETRY, "HTTP 429", 90.0)]
    decide(["1-2", "3-4"], known(("1-2", SendState.PENDING, "HTTP 429")), waits, False, 0, NOW,
           policy)
    assert seen == [(3, NOW), (2, NOW), (1, NOW), (1, NOW + 90.0)]


def test_a_note_rides_with_the_final_state() -> None:
    sent = Finish(EventState.SENT, None, None, attempted=True)
    assert with_note(sent, None) == sent
    capped = with_note(sent, "kept the first 20 of 25 experiment pairs")
    assert (capped.reason_code, capped.reason) == (
        Reason.PAIRS_CAPPED,
        "kept the first 20 of 25 experiment pairs",
    )
    retrying = Finish(EventState.PENDING, Reason.RETRYING, "will retry", next_attempt_at=RETRY_AT)
    noted = with_note(retrying, "kept the first 20 of 25 experiment pairs")
    assert noted.reason_code is Reason.RETRYING
    assert noted.reason == "will retry; kept the first 20 of 25 experiment pairs"
    assert with_note(Finish(EventState.DEAD, None, None), "n").reason == "n"


def test_internal_error_names_the_stage_and_place() -> None:
    finish = internal_error("planning", "KeyError at webhooks/delivery/planner.py:70")
    assert (finish.state, finish.reason_code) == (EventState.DEAD, Reason.INTERNAL_ERROR)
    assert finish.reason == (
        "internal error while planning: KeyError at webhooks/delivery/planner.py:70"
    )
