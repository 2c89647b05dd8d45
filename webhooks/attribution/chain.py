"""Attribution as a chain of lookups: where the experiment pairs of a purchase are found.

Each lookup answers one of three things:
- `Found`: the pairs, the place and format they were read from, the Convert visitor id if the
  place gives one;
- `Absent`: nothing usable here (with the reason code and a sentence: where it looked);
- `NotYet`: ask again at a time (an API that timed out, data that may still arrive).

The chain asks each lookup in order; the first `Found` wins. With none found, the earliest
`NotYet` decides (the event waits and is looked up again), else the event is unattributed with
every place that was tried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from webhooks.core.states import Reason


@dataclass(frozen=True)
class Subject:
    """What a lookup may read of a claimed event."""

    event_id: int
    source: str
    platform: str
    order_id: str
    customer_id: str | None
    email_digest: str | None
    attributes: Mapping[str, str]


@dataclass(frozen=True)
class Found:
    pairs: tuple[str, ...]  # "experiment-variation", digits only, in order, no repeats
    place: str  # e.g. "order attribute 'convert_experiments'"
    format: str  # e.g. "plain"
    visitor_id: str | None = None
    note: str | None = None  # for people: e.g. some pairs were left out


@dataclass(frozen=True)
class Absent:
    reason_code: Reason
    reason: str


@dataclass(frozen=True)
class NotYet:
    at: float  # Unix seconds: look again then
    reason: str


Answer = Found | Absent | NotYet


class Lookup(Protocol):
    def find(self, subject: Subject) -> Answer: ...


class Chain:
    def __init__(self, lookups: Sequence[Lookup]) -> None:
        if not lookups:
            raise ValueError("a chain needs at least one lookup")
        self.lookups = tuple(lookups)

    def find(self, subject: Subject) -> Answer:
        absent: list[Absent] = []
        later: list[NotYet] = []
        for lookup in self.lookups:
            answer = lookup.find(subject)
            if isinstance(answer, Found):
                return answer
            if isinstance(answer, NotYet):
                later.append(answer)
            else:
                absent.append(answer)
        if later:
            soonest = min(later, key=lambda answer: answer.at)
            return NotYet(soonest.at, "; ".join(answer.reason for answer in later))
        return _combined(absent)


def _combined(absent: Sequence[Absent]) -> Absent:
    """One answer naming every place tried; malformed data anywhere outranks "none found"
    (the shop tried to send pairs, and someone should look at them)."""
    if len(absent) == 1:
        return absent[0]
    codes = {answer.reason_code for answer in absent}
    code = (
        Reason.MALFORMED_EXPERIMENT_DATA
        if Reason.MALFORMED_EXPERIMENT_DATA in codes
        else Reason.NO_EXPERIMENT_DATA
    )
    return Absent(code, "; ".join(answer.reason for answer in absent))
