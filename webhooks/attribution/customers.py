"""The second place to look: the platform's customer record, read through the platform's API
in the dispatcher (never inside the webhook request).

- Stripe: the Customer's metadata under the source's experiments key,
  `GET {api_base}/v1/customers/{id}` with `Authorization: Bearer <api_key>` (a restricted key
  with read access to Customers is enough). docs.stripe.com/api/customers/retrieve
- Shopify: a customer metafield (namespace and key configurable), Admin GraphQL
  `customer(id: "gid://shopify/Customer/<id>") { metafield(namespace:, key:) { value } }`,
  `POST {api_base}/admin/api/{version}/graphql.json` with `X-Shopify-Access-Token`
  (scope read_customers). shopify.dev/docs/api/admin-graphql (customer query, Metafield).

The value may be in any format the chain reads (formats.parse_any: plain `EXP-VAR,...`, JSON,
Convert's visitor data, `__data`, `_conv_attrs`, a `_conv_v` cookie), told by its shape.

Failures never make an event unattributed: no answer, a timeout, any status but 200, GraphQL
errors or an answer not in the documented shape give NotYet(now + backoff), and the chain
asks again then. Backoff is per source and doubles with each failure in a row; while it runs,
lookups for that source answer NotYet at once without a request (a down API is not hammered
once per queued event). Answers (found or absent) are kept in a small per-process cache for a
while, so the several events of one purchase (session, payment intent, invoice) cost one call.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter

from adapters import shopify as shopify_spec
from adapters import stripe as stripe_spec
from webhooks import __version__
from webhooks.attribution.chain import Absent, Answer, Found, Lookup, NotYet, Subject
from webhooks.attribution.formats import ANY_PROJECT, Project, Refused, parse_any
from webhooks.attribution.pairs import DEFAULT_MAX_PAIRS
from webhooks.core.clock import Clock
from webhooks.core.settings import Settings, SourceSettings
from webhooks.core.states import Reason

USER_AGENT = f"convert-webhooks/{__version__}"
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
# The whole request, body included: a server that trickles bytes resets the read timeout on
# each one, so the body is read against this deadline too.
TOTAL_SECONDS = 10.0
MAX_ANSWER_BYTES = 1024 * 1024  # a customer or a page of line items is a few KB
CACHE_SECONDS = 60.0  # short: a late exposure written on the customer is seen within a minute
CACHE_ENTRIES = 2048
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 900.0
MAX_RETRY_AFTER = 3600.0

STRIPE_ID = re.compile(r"\A[A-Za-z0-9_]{1,255}\Z", re.ASCII)
_SHOPIFY_ID = re.compile(r"\A[1-9][0-9]{0,19}\Z", re.ASCII)
_ERROR_CODE = re.compile(r"\A[A-Za-z_]{1,40}\Z", re.ASCII)
_DIGITS = re.compile(r"\A[0-9]{1,12}\Z", re.ASCII)

SHOPIFY_QUERY = (
    "query CustomerExperiments($id: ID!, $namespace: String!, $key: String!) "
    "{ customer(id: $id) { metafield(namespace: $namespace, key: $key) { value } } }"
)


# --- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    data: dict[str, Any]  # the answer's JSON object


@dataclass(frozen=True)
class Failed:
    reason: str  # for people: never the answer's text (it could be anything)
    retry_after: float | None = None


Fetch = Fetched | Failed


class PlatformApi:
    """HTTP to the platforms' APIs: one pooled session, explicit timeouts, bounded answers."""

    def __init__(
        self,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        total_seconds: float = TOTAL_SECONDS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.timeout = (connect_timeout, read_timeout)
        self.total_seconds = total_seconds
        self.max_answer_bytes = max_answer_bytes
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # Read once (see convert/http.py): trust_env makes requests look on every call.
        self.session.proxies = dict(urllib.request.getproxies())
        self.session.trust_env = False
        self.session.max_redirects = 3
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def get(self, url: str, headers: Mapping[str, str]) -> Fetch:
        return self._call("GET", url, headers, None)

    def post_json(self, url: str, headers: Mapping[str, str], payload: object) -> Fetch:
        return self._call("POST", url, headers, payload)

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, url: str, headers: Mapping[str, str], payload: object) -> Fetch:
        started = time.monotonic()
        try:
            response = self.session.request(
                method, url, headers=dict(headers), json=payload, timeout=self.timeout, stream=True
            )
        except requests.Timeout:
            return Failed("timed out")
        except requests.RequestException as exc:
            return Failed(f"network error ({type(exc).__name__})")
        try:
            status = response.status_code
            if status != 200:
                retry_after = None
                if status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return Failed(f"HTTP {status}", retry_after)
            body = self.read_body(response, started)
        finally:
            response.close()
        if isinstance(body, Failed):
            return body
        try:
            data = json.loads(body)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
            return Failed("the answer is not JSON")
        if not isinstance(data, dict):
            return Failed("the answer is not a JSON object")
        return Fetched(data)

    def read_body(self, response: requests.Response, started: float) -> bytes | Failed:
        """The body, against the size cap and the total deadline. read1 returns what has
        arrived (at most one socket read), so the deadline is checked however slowly bytes
        come; iter_content would wait for a full chunk, each byte resetting the timeout."""
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := response.raw.read1(16384, decode_content=True):
                size += len(chunk)
                if size > self.max_answer_bytes:
                    return Failed(f"the answer is larger than {self.max_answer_bytes} bytes")
                if time.monotonic() - started > self.total_seconds:
                    return Failed("timed out")
                chunks.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # A read timeout or a dropped connection mid-body.
            return Failed(f"network error while reading the answer ({type(exc).__name__})")
        return b"".join(chunks)


def parse_retry_after(value: str | None) -> float | None:
    """Delta-seconds only (both platforms send those), capped; anything else is ignored."""
    if value is None or not _DIGITS.match(value.strip()):
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER)


# --- cache and backoff -----------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A small per-process cache: entries live `ttl` seconds on the clock's monotonic time;
    past `max_entries` the oldest go first. Thread-safe (worker threads share it)."""

    def __init__(self, clock: Clock, ttl: float = CACHE_SECONDS, max_entries: int = CACHE_ENTRIES):
        self.clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[V] | None:
        """(value,) when cached and fresh, else None (so a cached None is a hit too)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock.monotonic() >= entry[0]:
                del self._entries[key]
                return None
            return (entry[1],)

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (self.clock.monotonic() + self.ttl, value)


class Backoff:
    """Per API (a source's): failures in a row -> when the next request may go, on the
    clock's wall time (NotYet times are stored)."""

    def __init__(
        self,
        clock: Clock,
        base: float = BACKOFF_BASE_SECONDS,
        cap: float = BACKOFF_MAX_SECONDS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.clock = clock
        self.base = base
        self.cap = cap
        self.jitter = jitter  # 0..1: spreads the retries of many workers by up to 10 %
        self._state: dict[str, tuple[int, float]] = {}  # key -> (failures, next try at)
        self._lock = threading.Lock()

    def blocked_until(self, key: str) -> float | None:
        with self._lock:
            state = self._state.get(key)
        if state is None or self.clock.now() >= state[1]:
            return None
        return state[1]

    def failed(self, key: str, retry_after: float | None = None) -> float:
        with self._lock:
            failures = self._state.get(key, (0, 0.0))[0] + 1
            delay = min(self.cap, self.base * 2.0 ** min(failures - 1, 30))
            delay *= 1 + 0.1 * self.jitter()
            if retry_after is not None:
                delay = max(delay, retry_after)
            at = self.clock.now() + delay
            self._state[key] = (failures, at)
            return at

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._state.pop(key, None)


# --- reading the value -----------------------------------------------------------------------


def pairs_answer(
    value: object, place: str, max_pairs: int, project: Project = ANY_PROJECT
) -> Found | Absent:
    """The pairs in a customer record's value, or why there are none, naming the place and
    the format tried."""
    if not isinstance(value, str) or not value.strip():
        return Absent(Reason.NO_EXPERIMENT_DATA, f"nothing in {place}")
    result = parse_any(value, max_pairs, project)
    if isinstance(result, Refused):
        reason = f"{place} {result.reason} (format tried: {result.format})"
        return Absent(Reason.MALFORMED_EXPERIMENT_DATA, reason)
    if not result.pairs:
        reason = f"{place} names no experiment (format: {result.format})"
        return Absent(Reason.NO_EXPERIMENT_DATA, reason)
    return Found(result.pairs, place, result.format, result.visitor_id, result.note)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _ApiLookup(ABC):
    """What both lookups share: configuration per source, the cache, the backoff."""

    platform = ""
    label = ""  # e.g. "Stripe customer record"

    def __init__(
        self,
        sources: Mapping[str, SourceSettings],
        api: PlatformApi,
        clock: Clock,
        max_pairs: int = DEFAULT_MAX_PAIRS,
        project: Project = ANY_PROJECT,  # data naming another Convert project is refused
        cache: TtlCache[tuple[str, str], Found | Absent] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.sources = sources
        self.api = api
        self.clock = clock
        self.max_pairs = max_pairs
        self.project = project
        self.cache: TtlCache[tuple[str, str], Found | Absent] = cache or TtlCache(clock)
        self.backoff = backoff or Backoff(clock)

    def find(self, subject: Subject) -> Answer:
        source = self.sources.get(subject.source)
        if source is None or source.platform != self.platform:
            return Absent(Reason.NO_EXPERIMENT_DATA, f"{self.label}: not a {self.platform} source")
        missing = self._missing_option(source)
        if missing:
            reason = f"{self.label} not read: no {missing} configured for the source"
            return Absent(Reason.NO_EXPERIMENT_DATA, reason)
        customer = subject.customer_id
        if not customer:
            return Absent(Reason.NO_EXPERIMENT_DATA, f"{self.label}: the order names no customer")
        if not self._valid_id(customer):
            return Absent(Reason.NO_EXPERIMENT_DATA, f"{self.label}: not a customer id")
        key = (source.name, customer)
        cached = self.cache.get(key)
        if cached is not None:
            return cached[0]
        blocked = self.backoff.blocked_until(source.name)
        if blocked is not None:
            reason = f"{self.label}: the API is failing; asking again at {_when(blocked)}"
            return NotYet(blocked, reason)
        outcome = self._read(source, customer)
        if isinstance(outcome, Failed):
            at = self.backoff.failed(source.name, outcome.retry_after)
            return NotYet(at, f"{self.label}: {outcome.reason}; asking again at {_when(at)}")
        self.backoff.succeeded(source.name)
        self.cache.put(key, outcome)
        return outcome

    @abstractmethod
    def _missing_option(self, source: SourceSettings) -> str | None:
        """The option this source lacks for the API, or None."""

    @abstractmethod
    def _valid_id(self, customer: str) -> bool:
        """Whether `customer` can be put in a request (nothing that changes the URL or query)."""

    @abstractmethod
    def _read(self, source: SourceSettings, customer: str) -> Found | Absent | Failed:
        """Ask the platform's API for the customer's experiment data."""


def stripe_access(source: SourceSettings) -> tuple[str, dict[str, str]] | None:
    """The API base and auth headers of a Stripe source, None without an api_key."""
    api_key = source.options.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        return None
    base = str(source.options.get("api_base") or stripe_spec.API_BASE).rstrip("/")
    return base, {"Authorization": f"Bearer {api_key}"}


class StripeCustomerMetadata(_ApiLookup):
    platform = stripe_spec.platform
    label = "Stripe customer record"

    def _missing_option(self, source: SourceSettings) -> str | None:
        return None if stripe_access(source) else "api_key"

    def _valid_id(self, customer: str) -> bool:
        return STRIPE_ID.match(customer) is not None

    def _read(self, source: SourceSettings, customer: str) -> Found | Absent | Failed:
        access = stripe_access(source)
        assert access is not None  # checked by find()
        base, headers = access
        fetched = self.api.get(f"{base}/v1/customers/{quote(customer, safe='')}", headers)
        if isinstance(fetched, Failed):
            return fetched
        data = fetched.data
        if data.get("deleted") is True:
            return Absent(Reason.NO_EXPERIMENT_DATA, f"{self.label}: the customer was deleted")
        metadata = data.get("metadata")
        if data.get("object") != "customer" or not isinstance(metadata, dict):
            return Failed("the answer is not a Customer object")
        key = source.experiments_key
        place = f"Stripe customer metadata '{key}'"
        return pairs_answer(metadata.get(key), place, self.max_pairs, self.project)


class ShopifyCustomerMetafield(_ApiLookup):
    platform = shopify_spec.platform
    label = "Shopify customer metafield"

    def _missing_option(self, source: SourceSettings) -> str | None:
        options = source.options
        if not options.get("admin_token"):
            return "admin_token"
        if not (options.get("api_base") or options.get("shop_domain")):
            return "shop_domain"  # the loader requires one with a token; kept for safety
        return None

    def _valid_id(self, customer: str) -> bool:
        return _SHOPIFY_ID.match(customer) is not None

    def _read(self, source: SourceSettings, customer: str) -> Found | Absent | Failed:
        options = source.options
        base = str(options.get("api_base") or f"https://{options['shop_domain']}").rstrip("/")
        version = options.get("api_version") or shopify_spec.API_VERSION
        namespace = options.get("metafield_namespace") or shopify_spec.METAFIELD_NAMESPACE
        key = options.get("metafield_key") or shopify_spec.METAFIELD_KEY
        variables = {"id": f"gid://shopify/Customer/{customer}", "namespace": namespace, "key": key}
        fetched = self.api.post_json(
            f"{base}/admin/api/{version}/graphql.json",
            {"X-Shopify-Access-Token": str(options["admin_token"])},
            {"query": SHOPIFY_QUERY, "variables": variables},
        )
        if isinstance(fetched, Failed):
            return fetched
        errors = fetched.data.get("errors")
        if errors:  # THROTTLED, ACCESS_DENIED, INTERNAL_SERVER_ERROR ... all on a 200
            return Failed(f"GraphQL error {_error_code(errors)}")
        data = fetched.data.get("data")
        if not isinstance(data, dict) or "customer" not in data:
            return Failed("the answer has no data.customer")
        found = data["customer"]
        if found is None:
            return Absent(Reason.NO_EXPERIMENT_DATA, f"{self.label}: no such customer in the shop")
        if not isinstance(found, dict):
            return Failed("the answer has no data.customer")
        place = f"Shopify customer metafield '{namespace}.{key}'"
        metafield = found.get("metafield")
        if metafield is None:
            return Absent(Reason.NO_EXPERIMENT_DATA, f"nothing in {place}")
        if not isinstance(metafield, dict):
            return Failed("the answer's metafield is not an object")
        return pairs_answer(metafield.get("value"), place, self.max_pairs, self.project)


def _error_code(errors: object) -> str:
    """The first error's extensions.code when it looks like one (it is named in a reason)."""
    first = errors[0] if isinstance(errors, list) and errors else None
    extensions = first.get("extensions") if isinstance(first, dict) else None
    code = extensions.get("code") if isinstance(extensions, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else "(no code)"


class CustomerRecords:
    """The customer record of the event's platform; platforms without one are named."""

    def __init__(self, by_platform: Mapping[str, Lookup]) -> None:
        self.by_platform = dict(by_platform)

    def find(self, subject: Subject) -> Answer:
        lookup = self.by_platform.get(subject.platform)
        if lookup is None:
            reason = f"customer record: not read for {subject.platform} (no lookup)"
            return Absent(Reason.NO_EXPERIMENT_DATA, reason)
        return lookup.find(subject)


def customer_records(
    settings: Settings,
    clock: Clock,
    api: PlatformApi | None = None,
    backoff: Backoff | None = None,
) -> CustomerRecords:
    """The chain's customer record lookup for these settings. Pass the `api` (closed by its
    owner at shutdown) and `backoff` that enrich.CheckoutItemCounts uses too, so one source's
    API is one thing that fails and recovers."""
    api = api or PlatformApi()
    backoff = backoff or Backoff(clock)
    max_pairs = settings.attribution.max_pairs_per_order
    project = Project(settings.convert.account_id, settings.convert.project_id)
    sources = settings.sources
    stripe = StripeCustomerMetadata(sources, api, clock, max_pairs, project, backoff=backoff)
    shopify = ShopifyCustomerMetafield(sources, api, clock, max_pairs, project, backoff=backoff)
    return CustomerRecords({stripe_spec.platform: stripe, shopify_spec.platform: shopify})
