"""The next state of an event after a round: a pure function of what is known, with no
database, clock or network (tests/test_decide.py holds its table).

Inputs: the pairs the event's hits are for, what is known of each hit after this round (the
stored sends updated with this round's results), this round's results for the event, whether
one of its hits could not start in time, how many rounds made requests for it before, and
when to try again (the retry policy, bound to the event's horizon by the caller).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from webhooks.core.hits import HitResult
from webhooks.core.states import EventState, Outcome, Reason, SendState
from webhooks.storage.queue import UNSENT, Finish, KnownSend

# (tries so far, not before) -> when to try again, or None once the horizon is passed
NextAttempt = Callable[[int, float], float | None]


def decide(
    pairs: Sequence[str],
    known: Mapping[str, KnownSend],
    results: Sequence[HitResult],
    unstarted: bool,
    attempts: int,
    now: float,
    next_attempt: NextAttempt,
) -> Finish:
    attempted = bool(results)
    error = next((r.detail for r in results if r.outcome is Outcome.ERROR), None)
    if error is not None:
        return Finish(EventState.DEAD, Reason.INTERNAL_ERROR, error, attempted=attempted)
    failed = any(r.outcome in (Outcome.RETRY, Outcome.PERMANENT) for r in results)
    if unstarted and not failed:
        return Finish(
            EventState.PENDING,
            Reason.QUEUED,
            "queued: the round ended before this event was sent",
            next_attempt_at=now,
        )
    sends = [known.get(pair, UNSENT) for pair in pairs]
    states = {send.state for send in sends}
    if states <= {SendState.DRY_RUN}:
        return Finish(
            EventState.DRY_RUN,
            Reason.DRY_RUN,
            "dry run: Convert URLs logged, not sent",
            attempted=True,
        )
    if states <= {SendState.SENT, SendState.DRY_RUN}:
        return Finish(EventState.SENT, None, None, attempted=attempted)
    if SendState.PENDING in states:
        waits = [r.retry_after for r in results if r.retry_after is not None]
        return _retry(
            sends, attempts + int(attempted), now + max(waits, default=0.0), attempted, next_attempt
        )
    dead = next(s for s in sends if s.state == SendState.DEAD)
    return Finish(
        EventState.DEAD,
        Reason.CONVERT_REJECTED,
        f"Convert answered {dead.last_error} for pair {dead.pair}",
        attempted=attempted,
    )


def _retry(
    sends: Sequence[KnownSend],
    tries: int,
    not_before: float,
    attempted: bool,
    next_attempt: NextAttempt,
) -> Finish:
    last = next(
        (s.last_error for s in sends if s.state == SendState.PENDING and s.last_error), None
    )
    at = next_attempt(max(tries, 1), not_before)
    if at is None:
        return Finish(
            EventState.DEAD,
            Reason.RETRIES_EXHAUSTED,
            f"gave up after {tries} attempts; last error: {last}",
            attempted=attempted,
        )
    return Finish(
        EventState.PENDING,
        Reason.RETRYING,
        f"will retry; last error: {last}",
        next_attempt_at=at,
        attempted=attempted,
    )


def with_note(finish: Finish, note: str | None) -> Finish:
    """Say the plan's note (e.g. pairs left out) with the final state."""
    if note is None:
        return finish
    if finish.state == EventState.SENT:
        return replace(finish, reason_code=Reason.PAIRS_CAPPED, reason=note)
    return replace(finish, reason=f"{finish.reason}; {note}" if finish.reason else note)


def internal_error(stage: str, where: str) -> Finish:
    """One event's failure: type and place only (the message could quote stored values)."""
    return Finish(EventState.DEAD, Reason.INTERNAL_ERROR, f"internal error while {stage}: {where}")
