"""The details step: what a thin webhook left to the platform's API, read by the dispatcher
before the attribution chain (adapters/base.py says what a platform's details function is).

The dispatcher lends the platform a Fetch over the platforms' HTTP client
(attribution/customers.PlatformApi: its pooled session, connect and read timeouts, the total
deadline and the answer size cap). Network errors, timeouts, oversized answers, 429 and 5xx
become FetchFailed, so the details function only judges answers; redirects are not followed
(a credential header must not go to another host). Every "later" (FetchFailed, an answer the
function cannot use, its own Later) feeds the source's Backoff, shared with the customer
lookups: one API that fails and recovers. While the backoff runs, the details of that source
answer "later" at once, without a request (a down API is not asked once per queued event).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from adapters import REGISTRY
from adapters.base import (
    Details,
    Later,
    NotAPurchase,
    PlatformSpec,
    StoredEvent,
)
from webhooks.attribution.customers import Backoff, Failed, PlatformApi, parse_retry_after
from webhooks.core.errors import FetchFailed, PayloadError
from webhooks.core.events import (
    MAX_REASON_CHARS,
    PROVISIONAL_CURRENCY,
    EventKind,
    bounded_attributes,
)
from webhooks.core.settings import SourceSettings
from webhooks.storage.digests import stored_digest
from webhooks.storage.queue import FetchedDetails


@dataclass(frozen=True)
class Wait:
    """Ask again at `at` (Unix seconds); `reason` for people."""

    at: float
    reason: str


class ApiFetch:
    """The Fetch a details function gets: (status, body) of one request, or FetchFailed."""

    def __init__(self, api: PlatformApi) -> None:
        self.api = api

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        api = self.api
        started = time.monotonic()
        try:
            response = api.session.request(
                method,
                url,
                headers=dict(headers),
                data=body,
                timeout=api.timeout,
                stream=True,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise FetchFailed("timed out") from exc
        except requests.RequestException as exc:
            raise FetchFailed(f"network error ({type(exc).__name__})") from exc
        try:
            status = response.status_code
            if status == 429 or status >= 500:
                raise FetchFailed(
                    f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After"))
                )
            return status, self._read(response, started)
        finally:
            response.close()

    def _read(self, response: requests.Response, started: float) -> bytes:
        """The body against PlatformApi's size cap and total deadline (its own reader)."""
        body = self.api.read_body(response, started)
        if isinstance(body, Failed):
            raise FetchFailed(body.reason)
        return body


class DetailsStep:
    def __init__(
        self,
        sources: Mapping[str, SourceSettings],
        api: PlatformApi,
        backoff: Backoff,
        email_key: bytes | None = None,
        registry: Mapping[str, PlatformSpec] = REGISTRY,
    ) -> None:
        self.sources = sources
        self.fetch = ApiFetch(api)
        self.backoff = backoff
        self.email_key = email_key
        self.registry = registry

    def read(self, row: Any) -> FetchedDetails | Wait | NotAPurchase:
        """The stored event's details, when to ask again, or why it is not a purchase."""
        spec = self.registry.get(row.platform)
        if spec is None or spec.details is None:
            # Only a platform with a details step stores an event that awaits details.
            raise LookupError(f"platform {row.platform} has no details step")
        label = f"{spec.name} order details"
        source = self.sources.get(row.source)
        if source is None:
            at = self.backoff.failed(f"details:{row.source}")
            return Wait(at, f"{label}: the source is not configured; asking again at {_when(at)}")
        blocked = self.backoff.blocked_until(source.name)
        if blocked is not None:
            return Wait(blocked, f"{label}: the API is failing; asking again at {_when(blocked)}")
        outcome = self._ask(spec, source, row)
        if isinstance(outcome, Later):
            at = self.backoff.failed(source.name, outcome.retry_after)
            reason = f"{label}: {outcome.reason}"[: MAX_REASON_CHARS - 40]
            return Wait(at, f"{reason}; asking again at {_when(at)}")
        self.backoff.succeeded(source.name)
        if isinstance(outcome, NotAPurchase):
            return outcome
        return self._stored_form(row, source, outcome)

    def _ask(
        self, spec: PlatformSpec, source: SourceSettings, row: Any
    ) -> Details | Later | NotAPurchase:
        assert spec.details is not None  # checked by read()
        stored = StoredEvent(
            platform=row.platform,
            kind=EventKind(row.kind),
            order_id=row.order_id,
            reference=row.details_ref,
            customer_id=row.customer_id,
            attributes=json.loads(row.attributes),
            test_mode=bool(row.test_mode),
        )
        try:
            return spec.details(stored, source.options, self.fetch)
        except FetchFailed as exc:
            return Later(exc.reason, exc.retry_after)
        except PayloadError as exc:
            # An answer not in the documented shape (wrong types, out of range, not JSON):
            # waited on like an outage, never sent with a guessed value.
            return Later(f"the answer cannot be used: {exc}"[:MAX_REASON_CHARS])

    def _stored_form(self, row: Any, source: SourceSettings, details: Details) -> FetchedDetails:
        if details.amounts is None and row.currency == PROVISIONAL_CURRENCY:
            raise ValueError(f"{row.platform} details gave no amount for an event without one")
        amount, currency = row.amount, row.currency
        if details.amounts is not None:
            money = details.amounts.get(source.revenue) or details.amounts["total"]
            amount, currency = str(money.amount), money.currency
        own = json.loads(row.attributes)
        added = {k: v for k, v in details.attributes.items() if k not in own}
        # The event's own (signed) attributes first: the bound drops added ones, never these.
        attributes = bounded_attributes([*own.items(), *added.items()])
        return FetchedDetails(
            amount=amount,
            currency=currency,
            item_count=row.item_count if details.item_count is None else details.item_count,
            attributes=json.dumps(attributes),
            customer_id=row.customer_id or details.customer_id,
            email_digest=row.email_digest or stored_digest(self.email_key, details.email_digest),
        )


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
