"""What a platform is: a declarative spec. Adapters are pure: no Flask, no HTTP, no database.

A platform is one module in adapters/ exporting `SPEC = PlatformSpec(...)`, plus one line in
the registry (adapters/__init__.py), its fixtures folder (tests/fixtures/<name>/ with a
SOURCES.md and a known_signature.json) and one README row. The shared contract suite
(tests/test_platform_contract.py) then runs over it without being edited.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from adapters.request import SignedRequest
from adapters.schemes import Fetch, SignatureScheme
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    PROVISIONAL_CURRENCY,
    EventKind,
    Money,
    ParseResult,
    check_attributes,
    check_count,
    check_id,
    check_reason,
)

if TYPE_CHECKING:  # marshmallow is needed only by platforms that declare options
    from marshmallow import Schema


class VerifySettings(Protocol):
    """The part of a source's configuration that verification reads."""

    @property
    def secrets(self) -> Sequence[str]: ...

    @property
    def tolerance_seconds(self) -> int: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


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

# configure(options): the parse function of one source, from its loaded options (a platform
# whose mapping or test mode is set per source: the custom source, Paddle's sandbox). Called
# once per source when the app starts, not per request.
Configure = Callable[[Mapping[str, Any]], Parse]

# ping(headers, raw): a platform's unsigned hello (WooCommerce posts `webhook_id=N` when a
# webhook is created), as an ignored delivery to store and answer 200, or None for anything
# else (which is then verified as usual). It must hold no events: nothing unsigned can cause
# a Convert request.
Ping = Callable[[Mapping[str, str], bytes], ParseResult | None]

# choose_scheme(options): the signature scheme of one source (the custom source lets each
# source name its header, encoding and timestamp). None: `scheme` serves every source.
ChooseScheme = Callable[[Mapping[str, Any]], SignatureScheme]


# --- details: what a thin webhook leaves to the platform's API -------------------------------
#
# Some platforms send only an id (BigCommerce) or leave the line items and the order's metadata
# to their API (Square). Their adapter stays pure: `parse` stores the event with a
# `details_ref` (what its details step needs to find the order) and, where the amount is not
# in the webhook, the provisional amount below; the spec's `details` function is called by the
# dispatcher, before the attribution chain, with the stored facts, the source's options and a
# Fetch lent by the dispatcher (timeouts, bounded answers, a per-source backoff). An event
# that awaits its details is never sent: it waits while the answer is "later", and is recorded,
# not sent, when the answer is "not a purchase".


def provisional_amount() -> Money:
    """The amount of an event whose amount only the platform's API knows: 0 in
    PROVISIONAL_CURRENCY, ISO 4217's code for "no currency". Never sent: the event awaits its
    details (NormalizedEvent refuses that code without a details_ref), and the dispatcher
    replaces it before any hit."""
    return Money(Decimal(0), PROVISIONAL_CURRENCY)


@dataclass(frozen=True)
class StoredEvent:
    """The stored facts a details function reads (parse wrote them; nothing else)."""

    platform: str
    kind: EventKind
    order_id: str
    reference: str  # the event's details_ref, as parse wrote it
    customer_id: str | None
    attributes: Mapping[str, str]
    test_mode: bool


_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Details:
    """What the platform's API says the event lacked. `amounts` (each revenue basis, "total"
    always) and `item_count` replace the stored ones (None: keep them: the webhook had
    them); `attributes` are added to the event's (its own keys win: they were signed);
    `customer_id` and `email_digest` fill what the webhook left empty. Checked like a
    NormalizedEvent: a hostile API answer cannot hand storage a value it cannot hold."""

    amounts: Mapping[str, Money] | None = None
    item_count: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    customer_id: str | None = None
    email_digest: str | None = None

    def __post_init__(self) -> None:
        if self.amounts is not None:
            if "total" not in self.amounts:
                raise PayloadError("the details have no total amount")
            for money in self.amounts.values():
                if not isinstance(money, Money) or money.currency == PROVISIONAL_CURRENCY:
                    raise PayloadError("a details amount is not a real amount")
        if self.item_count is not None:
            check_count(self.item_count, "item count")
        check_attributes(self.attributes)
        if self.customer_id is not None:
            check_id(self.customer_id, "customer id")
        if self.email_digest is not None and not (
            isinstance(self.email_digest, str) and _DIGEST.fullmatch(self.email_digest)
        ):
            raise PayloadError("email digest must be 64 lower-case hex digits")


@dataclass(frozen=True)
class Later:
    """Ask again later: the API failed or gave an answer that cannot be read. `reason` is
    ours (never the answer's text); `retry_after` seconds when the platform asked for them."""

    reason: str
    retry_after: float | None = None

    def __post_init__(self) -> None:
        check_reason(self.reason)


@dataclass(frozen=True)
class NotAPurchase:
    """The API says the event is not a purchase to count (the order is not paid, was not
    found in the store, ...): recorded with `reason`, not sent. A later delivery naming the
    same order asks again."""

    reason: str

    def __post_init__(self) -> None:
        check_reason(self.reason)


DetailsOutcome = Details | Later | NotAPurchase
# details(event, options, fetch): see above. Pure apart from `fetch`; may raise FetchFailed
# (the dispatcher waits) or PayloadError (an answer not in the documented shape: it waits too).
FetchDetails = Callable[[StoredEvent, Mapping[str, Any], Fetch], DetailsOutcome]


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
    # add_pairs(payload, headers, pairs): put the experiment pairs where a shop would (the
    # sample sender's "100-200") and make the delivery a new one (a fresh event id), in place.
    add_pairs: Callable[[dict[str, Any], dict[str, str], str], None] | None = None


@dataclass(frozen=True)
class PlatformSpec:
    """name: the `platform` value in the config; scheme: how deliveries are signed; parse:
    see Parse; sample: see Sample; options: a marshmallow Schema for the platform's own keys
    under `sources.<name>` (validated by `check-config`, loaded into SourceSettings.options),
    None when it has none; answer: how a stored delivery is answered; configure: see
    Configure (None: `parse` serves every source); ping: see Ping; choose_scheme: see
    ChooseScheme (None: `scheme` serves every source); details: see FetchDetails (None: the
    platform's webhooks carry everything)."""

    name: str
    scheme: SignatureScheme
    parse: Parse
    sample: Sample
    options: type[Schema] | None = None
    answer: Answer = json_reply
    configure: Configure | None = None
    ping: Ping | None = None
    choose_scheme: ChooseScheme | None = None
    details: FetchDetails | None = None

    @property
    def platform(self) -> str:
        return self.name

    def parser(self, options: Mapping[str, Any]) -> Parse:
        """The parse function for a source with these options."""
        return self.parse if self.configure is None else self.configure(options)

    def scheme_of(self, options: Mapping[str, Any]) -> SignatureScheme:
        """The signature scheme for a source with these options."""
        return self.scheme if self.choose_scheme is None else self.choose_scheme(options)

    def unsigned_ping(self, headers: Mapping[str, str], raw: bytes) -> ParseResult | None:
        """The ignored delivery for a platform's unsigned ping, or None. A ping result that
        names events is a bug in the platform's module: refused here, never stored."""
        if self.ping is None:
            return None
        result = self.ping(headers, raw)
        if result is not None and (result.events or result.redaction):
            raise ValueError(f"{self.name}: a ping may not carry events")
        return result

    def verify(self, request: SignedRequest, settings: VerifySettings, now: float) -> None:
        """SignatureError unless `request` is signed with one of the source's secrets; the
        source's `tolerance_seconds` is the window of a timestamped scheme."""
        scheme = self.scheme_of(settings.options)
        scheme.verify(request, settings.secrets, now, settings.tolerance_seconds)
