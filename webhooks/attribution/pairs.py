"""Experiment pairs: what every format (formats.py) reduces experiment data to, and the plain
format itself.

A pair is "EXP-VAR": an experience (experiment) id and a variation id, each 1..20 ASCII
digits, written without leading zeros. The plain format is a configurable attribute (default
`convert_experiments`) holding pairs separated by commas, e.g. "100-200,101-201".

Experiment data is buyer-controlled (a Shopify cart attribute), so reading it is bounded: at
most MAX_VALUE_CHARS characters are read, in one linear pass, and at most `max_pairs`
distinct pairs are kept (the first ones, in order); the rest are counted in `dropped` and
said in the note.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from webhooks.core.events import MAX_ATTRIBUTE_VALUE_CHARS
from webhooks.core.states import Reason

DEFAULT_MAX_PAIRS = 20
MAX_VALUE_CHARS = MAX_ATTRIBUTE_VALUE_CHARS  # 64 K characters, as adapters keep at most
# Ids are 1..20 ASCII digits: `\d` would also match "٣" or "²" (and int() reads "٣"); no sign.
ID = re.compile(r"[0-9]{1,20}", re.ASCII)
_PAIR = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
PLAIN_NO_PAIR = "holds no valid EXP-VAR pair (ids must be digits)"


@dataclass(frozen=True)
class Attribution:
    pairs: tuple[str, ...]  # "experiment-variation", digits only, in order, no repeats
    reason_code: Reason | None = None
    reason: str | None = None
    dropped: int = 0  # distinct valid pairs beyond max_pairs, not used
    note: str | None = None  # for people, e.g. "kept the first 20 of 10000 experiment pairs"


@dataclass(frozen=True)
class Capped:
    """Distinct pairs in order, at most `max_pairs` of them, and what was left out."""

    pairs: tuple[str, ...]
    found: int  # distinct valid pairs seen
    dropped: int  # of those, beyond max_pairs
    note: str | None


def check_max_pairs(max_pairs: int) -> None:
    if max_pairs < 1:
        raise ValueError("max_pairs must be at least 1")


def canonical_id(text: str) -> str | None:
    """`text` as an id without leading zeros, or None unless it is 1..20 ASCII digits."""
    return str(int(text)) if ID.fullmatch(text) else None


def capped(pairs: Iterable[str], max_pairs: int, cut: bool = False) -> Capped:
    """The first `max_pairs` distinct pairs; a dict keeps both order and O(1) lookups.
    `cut`: the value was read only in part (said in the note)."""
    seen: dict[str, None] = {}
    for pair in pairs:
        seen.setdefault(pair)
    found = list(seen)
    kept = tuple(found[:max_pairs])
    return Capped(kept, len(found), len(found) - len(kept), _note(len(kept), len(found), cut))


def plain_pairs(value: str, max_pairs: int = DEFAULT_MAX_PAIRS) -> Attribution:
    """The pairs of a plain `EXP-VAR[,EXP-VAR...]` value. No pair at all in a non-blank value
    is malformed (reason without the attribute name: it completes "'<name>' ...")."""
    check_max_pairs(max_pairs)
    if not value.strip():
        return Attribution((), Reason.NO_EXPERIMENT_DATA, "is empty")
    cut = len(value) >= MAX_VALUE_CHARS
    pieces = value[:MAX_VALUE_CHARS].split(",")
    if cut:
        pieces.pop()  # the last piece may have been cut short ("100-2" of "100-200"): skip it
    result = capped(_valid_pairs(pieces), max_pairs, cut)
    if not result.found:
        return Attribution((), Reason.MALFORMED_EXPERIMENT_DATA, PLAIN_NO_PAIR)
    return Attribution(result.pairs, dropped=result.dropped, note=result.note)


def from_attributes(
    attributes: Mapping[str, str], key: str, max_pairs: int = DEFAULT_MAX_PAIRS
) -> Attribution:
    """The plain pairs in `attributes[key]`, at most `max_pairs` of them (>= 1)."""
    check_max_pairs(max_pairs)
    value = attributes.get(key)
    if not isinstance(value, str) or not value.strip():
        return Attribution((), Reason.NO_EXPERIMENT_DATA, f"no '{key}' attribute on the order")
    found = plain_pairs(value, max_pairs)
    if found.reason:
        return Attribution((), found.reason_code, f"'{key}' {found.reason}")
    return found


def _valid_pairs(pieces: list[str]) -> Iterable[str]:
    for piece in pieces:
        match = _PAIR.fullmatch(piece.strip())
        if match:
            yield f"{int(match.group(1))}-{int(match.group(2))}"


def _note(kept: int, found: int, cut: bool) -> str | None:
    if kept == found and not cut:
        return None
    note = f"kept the first {kept} of {found} experiment pairs"
    if cut:
        note += f" (read the first {MAX_VALUE_CHARS} characters of the attribute)"
    return note
