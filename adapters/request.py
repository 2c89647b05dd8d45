"""The request a signature scheme verifies: everything a platform may sign, nothing more.

Built by the web layer from the HTTP request, so schemes never import a web framework. The URL
is the one configured for the source (`sources.<name>.url`), never one rebuilt from the Host
header or the proxy's X-Forwarded-* headers: a sender controls those.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass


class Headers(Mapping[str, str]):
    """Request headers looked up without regard to case ("Stripe-Signature" is
    "stripe-signature"). A name sent twice keeps its last value, as the routes always did."""

    __slots__ = ("_values",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._values = {name.lower(): value for name, value in pairs}

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:  # names only: values can be signatures or credentials
        return f"Headers({sorted(self._values)})"


@dataclass(frozen=True)
class SignedRequest:
    """method: upper case ("POST"); url: as configured for the source, or None when the
    source names none; headers: case-insensitive; body: the raw bytes, exactly as received."""

    method: str
    url: str | None
    headers: Headers
    body: bytes

    @classmethod
    def post(
        cls,
        body: bytes,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        url: str | None = None,
    ) -> SignedRequest:
        return cls("POST", url, Headers(headers), body)
