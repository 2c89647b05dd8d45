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


@dataclass(frozen=True)
class RoundSeen:
    claimed: int
    sent: int  # hits with a result this round
    unknown: int  # events whose outcome the round gave up waiting for
    seconds: float


class Observer(Protocol):
    def ingest(self, seen: IngestSeen) -> None: ...

    def round(self, seen: RoundSeen) -> None: ...

    def sends(self, outcomes: Sequence[SendOutcome]) -> None: ...


class NullObserver:
    def ingest(self, seen: IngestSeen) -> None:
        pass

    def round(self, seen: RoundSeen) -> None:
        pass

    def sends(self, outcomes: Sequence[SendOutcome]) -> None:
        pass
