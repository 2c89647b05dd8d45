"""The first place to look: the order's own attributes (Stripe metadata, Shopify note
attributes).

Read, in order, the first with valid pairs winning:
1. the source's configured key (default `convert_experiments`), in whichever format its value
   has (formats.parse_any: plain, JSON, visitor data, base64 app data, `_conv_v` cookie);
2. Convert's own attribute names, each in its own format: `__data` (the Convert Shopify
   App), `_conv_attrs` (older Shopify snippets), `_conv_v` (the cookie, copied by a script);
3. Stripe Checkout's `client_reference_id`, when the session has one.
Shopify line-item properties are among the attributes (after the cart's own).

With nothing found: malformed data anywhere is reported (each place with the format tried),
else every place looked at.
"""

from __future__ import annotations

from collections.abc import Callable

from webhooks.attribution.chain import Absent, Answer, Found, Subject
from webhooks.attribution.formats import (
    CONVERT_ATTRIBUTES,
    Parser,
    Project,
    Refused,
    parse_any,
)
from webhooks.attribution.pairs import check_max_pairs
from webhooks.core.states import Reason

DEFAULT_EXPERIMENTS_KEY = "convert_experiments"
# Read when present, in any format, but not named among the places when absent: Stripe
# Checkout's `client_reference_id` (many shops keep their own reference there).
OPTIONAL_PLACES = ("client_reference_id",)


class OrderAttributes:
    def __init__(
        self,
        key_of: Callable[[str], str],
        max_pairs: int,
        *,
        account_id: str | None = None,
        project_id: str | None = None,
    ) -> None:
        check_max_pairs(max_pairs)
        self.key_of = key_of  # source name -> the attribute holding the pairs
        self.max_pairs = max_pairs
        # Convert data naming another account or project is refused (None: not checked).
        self.project = Project(account_id, project_id)

    def places(self, source: str) -> list[tuple[str, Parser]]:
        key = self.key_of(source)
        convert = [(name, parse) for name, parse in CONVERT_ATTRIBUTES.items() if name != key]
        extra = [(name, parse_any) for name in OPTIONAL_PLACES if name != key]
        return [(key, parse_any), *convert, *extra]

    def find(self, subject: Subject) -> Answer:
        missing: list[str] = []  # places without a value
        empty: list[str] = []  # well-formed values naming no experiment
        refused: list[str] = []  # malformed values: the place and the format tried
        for name, parse in self.places(subject.source):
            value = subject.attributes.get(name)
            if not isinstance(value, str) or not value.strip():
                if name not in OPTIONAL_PLACES:
                    missing.append(name)
                continue
            result = parse(value, self.max_pairs, self.project)
            if isinstance(result, Refused):
                refused.append(f"'{name}' {result.reason}")
            elif not result.pairs:
                empty.append(f"'{name}' names no experiment ({result.format})")
            else:
                # Malformed data in an earlier place is not said here: a note on a sent event
                # means "pairs left out by the cap" (delivery/decide.with_note).
                return Found(
                    result.pairs,
                    f"order attribute '{name}'",
                    result.format,
                    visitor_id=result.visitor_id,
                    note=result.note,
                )
        if refused:
            return Absent(Reason.MALFORMED_EXPERIMENT_DATA, "; ".join(refused))
        said = [f"no {_listed(missing)} attribute on the order"] if missing else []
        return Absent(Reason.NO_EXPERIMENT_DATA, "; ".join(said + empty))


def _listed(names: list[str]) -> str:
    """'a'; 'a' or 'b'; 'a', 'b' or 'c'."""
    quoted = [f"'{name}'" for name in names]
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"
