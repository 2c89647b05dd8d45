"""While the Stripe API is being called anyway: the real item count of a Checkout purchase.

A `checkout.session.completed` event carries no line items, so the adapter says 1. The
session's line items are `GET /v1/checkout/sessions/{id}/line_items` (paginated: `limit` up to
100, `starting_after`, `has_more`; docs.stripe.com/api/checkout/sessions/line_items), and the
count is the sum of their `quantity`. Events are keyed by the payment intent (payment mode) or
the subscription (subscription mode), not by the session, so the session is found with
`GET /v1/checkout/sessions?payment_intent=pi_...` or `?subscription=sub_...` (both documented
filters of the list call); an order id that is the session itself (`cs_...`) is used as is.
A payment intent or subscription made without Checkout has no session: the count stays.

Anything short of a clear answer (no api_key, an API failure, a list too long to read) is
None: the planner keeps the count the webhook gave and the conversion is not held back for
it. Failures feed the same per-source backoff as the customer lookup, and counts are cached.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from adapters import stripe as stripe_spec
from webhooks.attribution.chain import Subject
from webhooks.attribution.customers import (
    STRIPE_ID,
    Backoff,
    Failed,
    PlatformApi,
    TtlCache,
    stripe_access,
)
from webhooks.core.clock import Clock
from webhooks.core.events import MAX_ITEM_COUNT, MAX_LINE_QUANTITY
from webhooks.core.settings import SourceSettings

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # Stripe's largest page
MAX_PAGES = 10  # 1,000 line items; a longer list keeps the webhook's count
# Order id prefix -> the list filter that finds its session (None: it is the session).
_FILTERS: Mapping[str, str | None] = {"cs_": None, "pi_": "payment_intent", "sub_": "subscription"}


class CheckoutItemCounts:
    def __init__(
        self,
        sources: Mapping[str, SourceSettings],
        api: PlatformApi,
        clock: Clock,
        cache: TtlCache[tuple[str, str], int | None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.sources = sources
        self.api = api
        self.cache: TtlCache[tuple[str, str], int | None] = cache or TtlCache(clock)
        # Share the customer lookup's Backoff to treat the source's API as one.
        self.backoff = backoff or Backoff(clock)

    def item_count(self, subject: Subject) -> int | None:
        """The sum of the Checkout Session's line-item quantities, or None (keep the count)."""
        source = self.sources.get(subject.source)
        if source is None or source.platform != stripe_spec.platform:
            return None
        access = stripe_access(source)
        order = subject.order_id
        prefix = next((p for p in _FILTERS if order.startswith(p)), None)
        if access is None or prefix is None or not STRIPE_ID.match(order):
            return None
        key = (source.name, order)
        cached = self.cache.get(key)
        if cached is not None:
            return cached[0]
        if self.backoff.blocked_until(source.name) is not None:
            return None
        base, headers = access
        counted = self._count(base, headers, order, _FILTERS[prefix])
        if isinstance(counted, Failed):
            # Our own sentence (never the answer's text): why the webhook's count is kept.
            log.info("source=%s: item count not read: %s", source.name, counted.reason)
            self.backoff.failed(source.name, counted.retry_after)
            return None
        self.backoff.succeeded(source.name)
        self.cache.put(key, counted)
        return counted

    def _count(
        self, base: str, headers: Mapping[str, str], order: str, filter_name: str | None
    ) -> int | None | Failed:
        session = order
        if filter_name is not None:
            query = urlencode({filter_name: order, "limit": 1})
            listed = self.api.get(f"{base}/v1/checkout/sessions?{query}", headers)
            if isinstance(listed, Failed):
                return listed
            found = listed.data.get("data")
            if not isinstance(found, list):
                return Failed("the answer is not a list")
            first = found[0] if found else None
            if first is None:
                return None  # not a Checkout purchase
            session_id = first.get("id") if isinstance(first, dict) else None
            if not isinstance(session_id, str) or not STRIPE_ID.match(session_id):
                return Failed("the listed session has no id")
            session = session_id
        return self._quantities(base, headers, session)

    def _quantities(
        self, base: str, headers: Mapping[str, str], session: str
    ) -> int | None | Failed:
        total = 0
        counted = False  # a quantity was read: 0 lines (or only null quantities) keeps the count
        after: str | None = None
        path = f"{base}/v1/checkout/sessions/{quote(session, safe='')}/line_items"
        for _ in range(MAX_PAGES):
            params: dict[str, str | int] = {"limit": PAGE_SIZE}
            if after is not None:
                params["starting_after"] = after
            page = self.api.get(f"{path}?{urlencode(params)}", headers)
            if isinstance(page, Failed):
                return page
            items = page.data.get("data")
            if not isinstance(items, list):
                return Failed("the answer is not a list")
            for item in items:
                quantity = item.get("quantity") if isinstance(item, dict) else None
                # quantity is nullable; an out-of-range one means the answer is not trusted.
                if type(quantity) is not int:
                    continue
                if not 0 <= quantity <= MAX_LINE_QUANTITY:
                    return None
                total += quantity
                counted = True
            if total > MAX_ITEM_COUNT:
                return None
            last = items[-1] if items else None
            after = last.get("id") if isinstance(last, dict) else None
            if page.data.get("has_more") is not True:
                return total if counted else None
            if not isinstance(after, str) or not STRIPE_ID.match(after):
                return Failed("a page of line items has no last id")
        return None  # longer than MAX_PAGES pages: keep the webhook's count
