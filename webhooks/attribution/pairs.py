"""Attribution: which experiment and variation the buyer was in.

The plain format: a configurable attribute (default
`convert_experiments`) holding `EXP-VAR` pairs separated by commas, e.g. "100-200,101-201".
The lookups of the chain (chain.py) read it; other formats (Convert's cookie, its visitor data)
sit beside it as further parsers.

The attribute is buyer-controlled (a Shopify cart attribute), so reading it is bounded: at
most MAX_VALUE_CHARS characters are read, in one linear pass, and at most `max_pairs`
distinct pairs are kept (the first ones, in order); the rest are counted in
`Attribution.dropped` and said in `Attribution.note`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from webhooks.core.events import MAX_ATTRIBUTE_VALUE_CHARS
from webhooks.core.states import Reason

DEFAULT_MAX_PAIRS = 20
MAX_VALUE_CHARS = MAX_ATTRIBUTE_VALUE_CHARS  # 64 K characters, as adapters keep at most
# Ids are 1..20 ASCII digits: `\d` would also match "٣" or "²" (and int() reads "٣"); no sign.
_PAIR = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)


@dataclass(frozen=True)
class Attribution:
    pairs: tuple[str, ...]  # "experiment-variation", digits only, in order, no repeats
    reason_code: Reason | None = None
    reason: str | None = None
    dropped: int = 0  # distinct valid pairs beyond max_pairs, not used
    note: str | None = None  # for people, e.g. "kept the first 20 of 10000 experiment pairs"


def from_attributes(
    attributes: Mapping[str, str], key: str, max_pairs: int = DEFAULT_MAX_PAIRS
) -> Attribution:
    """The pairs in `attributes[key]`, at most `max_pairs` of them (>= 1)."""
    if max_pairs < 1:
        raise ValueError("max_pairs must be at least 1")
    value = attributes.get(key)
    if not isinstance(value, str) or not value.strip():
        return Attribution((), Reason.NO_EXPERIMENT_DATA, f"no '{key}' attribute on the order")
    cut = len(value) >= MAX_VALUE_CHARS
    pieces = value[:MAX_VALUE_CHARS].split(",")
    if cut:
        pieces.pop()  # the last piece may have been cut short ("100-2" of "100-200"): skip it
    found = _distinct_pairs(pieces)
    if not found:
        reason = f"'{key}' holds no valid EXP-VAR pair (ids must be digits)"
        return Attribution((), Reason.MALFORMED_EXPERIMENT_DATA, reason)
    kept = tuple(found[:max_pairs])
    dropped = len(found) - len(kept)
    return Attribution(kept, dropped=dropped, note=_note(len(kept), len(found), cut))


def _distinct_pairs(pieces: list[str]) -> list[str]:
    """Valid pairs in order without repeats; a dict keeps both order and O(1) lookups."""
    seen: dict[str, None] = {}
    for piece in pieces:
        match = _PAIR.fullmatch(piece.strip())
        if match:
            seen.setdefault(f"{int(match.group(1))}-{int(match.group(2))}")
    return list(seen)


def _note(kept: int, found: int, cut: bool) -> str | None:
    if kept == found and not cut:
        return None
    note = f"kept the first {kept} of {found} experiment pairs"
    if cut:
        note += f" (read the first {MAX_VALUE_CHARS} characters of the attribute)"
    return note
