"""Attribution: which experiment and variation the buyer was in.

Today the pairs come from the order itself: a configurable attribute (default
`convert_experiments`) holding `EXP-VAR` pairs separated by commas, e.g. "100-200,101-201".
Later sources (Convert's cookie formats, the platform customer record, an exposure store) slot
in here as further lookups returning the same `Attribution`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from webhooks.reasons import MALFORMED_EXPERIMENT_DATA, NO_EXPERIMENT_DATA

_PAIR = re.compile(r"^(\d{1,20})-(\d{1,20})$")


@dataclass(frozen=True)
class Attribution:
    pairs: tuple[str, ...]  # "experiment-variation", digits only, in order, no repeats
    reason_code: str | None = None
    reason: str | None = None


def from_attributes(attributes: Mapping[str, str], key: str) -> Attribution:
    value = attributes.get(key)
    if value is None or not value.strip():
        return Attribution((), NO_EXPERIMENT_DATA, f"no '{key}' attribute on the order")
    pairs: list[str] = []
    for piece in value.split(","):
        match = _PAIR.match(piece.strip())
        if match:
            pair = f"{int(match.group(1))}-{int(match.group(2))}"
            if pair not in pairs:
                pairs.append(pair)
    if not pairs:
        reason = f"'{key}' holds no valid EXP-VAR pair (ids must be digits)"
        return Attribution((), MALFORMED_EXPERIMENT_DATA, reason)
    return Attribution(tuple(pairs))
