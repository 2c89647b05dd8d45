"""The one place that talks HTTP outward: a pooled session, explicit timeouts, and a
`ConvertAgent/` User-Agent (Convert's bot filter answers 200 to, and silently drops, requests
with library default agents)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter

from webhooks import __version__
from webhooks.core.hits import HitResult
from webhooks.core.states import Outcome

USER_AGENT = f"ConvertAgent/{__version__} (convert-webhooks)"
MAX_RETRY_AFTER = 3600.0  # a longer wait from Convert is honoured for an hour, then we try
MAX_BODY_BYTES = 64 * 1024  # Convert answers a few bytes; more is read no further
ANSWER_EXCERPT_BYTES = 2048  # of an answer, kept for the reason a hit failed
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\u024f]")
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_DELTA_SECONDS = re.compile(r"\A[0-9]+\Z")  # ASCII digits only: int() also reads "٣"
_DELTA_DIGITS = 12  # more significant digits than this is far beyond the cap anyway
# Redirects are followed (Convert may move its endpoint), a few at most: a loop is a broken
# endpoint, answered as permanent rather than retried (each try would cost a chain of requests).
MAX_REDIRECTS = 5


class Sender:
    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 8,
    ) -> None:
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # Proxy settings are read from the environment once, here: with trust_env on, requests
        # looks for proxies and ~/.netrc on every request (a third of a send's CPU time).
        self.session.proxies = dict(urllib.request.getproxies())
        self.session.trust_env = False
        self.session.max_redirects = MAX_REDIRECTS
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def get(self, url: str) -> HitResult:
        began = time.monotonic()
        result = self._get(url)
        return replace(result, seconds=time.monotonic() - began)

    def _get(self, url: str) -> HitResult:
        try:
            # Streamed, so the body is read only up to a cap (a huge or endless answer must
            # neither fill memory nor hold the round).
            response = self.session.get(url, timeout=self.timeout, stream=True)
        except requests.TooManyRedirects:
            return HitResult(Outcome.PERMANENT, None, f"more than {MAX_REDIRECTS} redirects")
        except requests.RequestException as exc:
            return HitResult(Outcome.RETRY, None, f"{type(exc).__name__}: network error")
        try:
            status = response.status_code
            retry_after = None
            if status in _RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            _discard_body(response)
        finally:
            response.close()
        return HitResult(classify(status), status, f"HTTP {status}", retry_after)

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST a JSON body. Only 307 and 308 redirects are followed (with the same body):
        requests would turn a POST into a GET on a 301/302/303 and take the GET's 200 for a
        success."""
        began = time.monotonic()
        try:
            for _ in range(MAX_REDIRECTS + 1):
                response = self.session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    stream=True,
                    allow_redirects=False,
                )
                location = response.headers.get("Location")
                if response.status_code in (307, 308) and location:
                    response.close()
                    url = urljoin(url, location)
                    continue
                return self._answer(response, began)
        except requests.RequestException as exc:
            return Answer(None, f"{type(exc).__name__}: network error", None, _since(began))
        return Answer(None, f"more than {MAX_REDIRECTS} redirects", None, _since(began), True)

    def _answer(self, response: requests.Response, began: float) -> Answer:
        try:
            status = response.status_code
            retry_after = None
            if status in _RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            said = excerpt(_read_body(response))
        finally:
            response.close()
        detail = f"HTTP {status}: {said}" if said else f"HTTP {status}"
        return Answer(status, detail, retry_after, _since(began))

    def close(self) -> None:
        self.session.close()


@dataclass(frozen=True)
class Answer:
    """What a POST came to: the status (None: no answer — a network error or a redirect
    loop), a one-line detail with the start of Convert's answer, Retry-After, duration."""

    status: int | None
    detail: str
    retry_after: float | None
    seconds: float
    broken: bool = False  # no answer because the endpoint is broken (a redirect loop)


def _since(began: float) -> float:
    return time.monotonic() - began


def _read_body(response: requests.Response) -> bytes:
    """The answer's first bytes (Convert's error message), the rest discarded up to the cap."""
    kept = bytearray()
    seen = 0
    try:
        for chunk in response.iter_content(8192):
            if len(kept) < ANSWER_EXCERPT_BYTES:
                kept += chunk[: ANSWER_EXCERPT_BYTES - len(kept)]
            seen += len(chunk)
            if seen > MAX_BODY_BYTES:
                break
    except requests.RequestException:
        pass  # the status decided; a broken body changes nothing
    return bytes(kept)


def excerpt(raw: bytes, limit: int = 200) -> str:
    """Printable, one line, bounded: Convert's words go into a stored reason and a log."""
    text = raw.decode("utf-8", "replace")
    text = _NOT_PRINTABLE.sub(" ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _discard_body(response: requests.Response) -> None:
    """Read the (small) body so the connection goes back to the pool; past the cap, stop:
    closing the response then drops the connection instead."""
    seen = 0
    try:
        for chunk in response.iter_content(8192):
            seen += len(chunk)
            if seen > MAX_BODY_BYTES:
                return
    except requests.RequestException:
        return  # the status line decided the outcome; a broken body changes nothing


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SENT
    if status == 429 or status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), at most
    MAX_RETRY_AFTER; None when absent or unreadable (the header is a hint: garbage is ignored)."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.match(value):
        # Any length is a valid (if absurd) wait: capped, not ignored. The digits are counted,
        # not converted: int() refuses more than 4300 of them.
        digits = value.lstrip("0") or "0"
        if len(digits) > _DELTA_DIGITS:
            return MAX_RETRY_AFTER
        return min(float(int(digits)), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    try:
        delay = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)
