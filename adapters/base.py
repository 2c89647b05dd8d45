"""What every platform adapter offers. Adapters are pure: no Flask, no HTTP, no database."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from webhooks.core.events import ParseResult


class VerifySettings(Protocol):
    """The part of a source's configuration that verification reads."""

    @property
    def secrets(self) -> Sequence[str]: ...

    @property
    def tolerance_seconds(self) -> int: ...


Verify = Callable[[Mapping[str, str], bytes, VerifySettings, float], None]
Parse = Callable[[Mapping[str, str], bytes], ParseResult]


@dataclass(frozen=True)
class PlatformAdapter:
    """`verify(headers, raw, settings, now)` raises SignatureError unless the raw body is
    signed with one of the settings' secrets; `parse(headers, raw)` maps a verified delivery
    to its events or raises PayloadError. Header names are lower case."""

    platform: str
    verify: Verify
    parse: Parse
