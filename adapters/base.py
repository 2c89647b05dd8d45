"""What a platform is: a declarative spec. Adapters are pure: no Flask, no HTTP, no database.

A platform is one module in adapters/ exporting `SPEC = PlatformSpec(...)`, plus one line in
the registry (adapters/__init__.py), its fixtures folder (tests/fixtures/<name>/ with a
SOURCES.md and a known_signature.json) and one README row. The shared contract suite
(tests/test_platform_contract.py) then runs over it without being edited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from adapters.request import SignedRequest
from adapters.schemes import SignatureScheme
from webhooks.core.events import ParseResult

if TYPE_CHECKING:  # marshmallow is needed only by platforms that declare options
    from marshmallow import Schema


class VerifySettings(Protocol):
    """The part of a source's configuration that verification reads."""

    @property
    def secrets(self) -> Sequence[str]: ...

    @property
    def tolerance_seconds(self) -> int: ...


# parse(headers, raw): a verified delivery to its delivery key and events, or PayloadError.
# Pure: no I/O, no clock. Header names are lower case.
Parse = Callable[[Mapping[str, str], bytes], ParseResult]


@dataclass(frozen=True)
class Reply:
    """The answer to a stored delivery: a JSON object (a mapping) or raw bytes."""

    status: int
    body: Mapping[str, Any] | bytes
    content_type: str = "application/json"


def json_reply(summary: Mapping[str, Any]) -> Reply:
    """The answer every platform gets today: 200 and the outcome as JSON (status, delivery
    id, reason, events). Any 2xx stops a platform's retries."""
    return Reply(200, summary)


Answer = Callable[[Mapping[str, Any]], Reply]


@dataclass(frozen=True)
class Sample:
    """One documented delivery of the platform, for the contract suite and
    `scripts/send_sample.py`: a body file in tests/fixtures/<platform>/, the unsigned headers
    the platform sends with it, two secrets in the scheme's format (current and previous, for
    rotation) and the source options a test config needs."""

    fixture: str
    headers: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, str] = ("contract_secret_current_1", "contract_secret_previous_2")
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlatformSpec:
    """name: the `platform` value in the config; scheme: how deliveries are signed; parse:
    see Parse; sample: see Sample; options: a marshmallow Schema for the platform's own keys
    under `sources.<name>` (validated by `check-config`, loaded into SourceSettings.options),
    None when it has none; answer: how a stored delivery is answered."""

    name: str
    scheme: SignatureScheme
    parse: Parse
    sample: Sample
    options: type[Schema] | None = None
    answer: Answer = json_reply

    @property
    def platform(self) -> str:
        return self.name

    def verify(self, request: SignedRequest, settings: VerifySettings, now: float) -> None:
        """SignatureError unless `request` is signed with one of the source's secrets; the
        source's `tolerance_seconds` is the window of a timestamped scheme."""
        self.scheme.verify(request, settings.secrets, now, settings.tolerance_seconds)
