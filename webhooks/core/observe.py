"""The observer hook: what metrics and structured logs attach to, without edits in the hot
path. The service calls one observer (wired in wiring/runtime.py); `NullObserver` does
nothing. Calls are made on the request thread or the dispatcher's thread and must be quick
and must not raise (a failing observer is logged by the caller and ignored)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from webhooks.core.hits import SendOutcome


@dataclass(frozen=True)
class IngestSeen:
    source: str
    status: str  # core.states.DeliveryStatus, or "refused" (401) / "rejected" (400)
    kinds: tuple[str, ...]  # the kinds of the events stored
    seconds: float  # from the first byte read to the answer
    # Optional, filled by the webhook route. Values a sender wrote (topic, delivery key) are
    # as sent: shown only through core.logs.shown_id, never used as metric labels.
    topic: str | None = None
    delivery_key: str | None = None  # the platform's id of the delivery
    delivery_id: int | None = None  # the stored delivery's row id
    request_id: str | None = None
    reason: str | None = None  # why it was refused, rejected or failed: our words, no values
    http_status: int | None = None
    replay: bool = False  # this very delivery was received before (delivery-level duplicate)
    duplicates: int = 0  # events it names that an earlier delivery already counted
    # (state, reason code) of each event it newly stored: pending/queued, or skipped already
    # (test mode, a kind not sent, no goals) without ever reaching the dispatcher.
    stored: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FinishSeen:
    """How one claimed event left a round."""

    source: str
    state: str  # core.states.EventState
    reason_code: str | None  # core.states.Reason
    place: str | None  # where its experiment pairs were found; None when not (yet) attributed


@dataclass(frozen=True)
class RoundSeen:
    claimed: int
    sent: int  # hits with a result this round
    unknown: int  # events whose outcome the round gave up waiting for
    seconds: float
    finished: tuple[FinishSeen, ...] = ()  # the events whose state the round wrote


@dataclass(frozen=True)
class DispatcherSeen:
    owner: str
    alive: bool  # False when its loop has ended (stopped, or died)


class Observer(Protocol):
    def ingest(self, seen: IngestSeen) -> None: ...

    def round(self, seen: RoundSeen) -> None: ...

    def sends(self, outcomes: Sequence[SendOutcome]) -> None: ...

    def dispatcher(self, seen: DispatcherSeen) -> None: ...


class NullObserver:
    def ingest(self, seen: IngestSeen) -> None:
        pass

    def round(self, seen: RoundSeen) -> None:
        pass

    def sends(self, outcomes: Sequence[SendOutcome]) -> None:
        pass

    def dispatcher(self, seen: DispatcherSeen) -> None:
        pass
