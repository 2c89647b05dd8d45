"""The one place that talks HTTP outward: a pooled session, explicit timeouts, and a
`ConvertAgent/` User-Agent (Convert's bot filter answers 200 to, and silently drops, requests
with library default agents)."""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass
from enum import StrEnum

import requests
from requests.adapters import HTTPAdapter

from webhooks import __version__

log = logging.getLogger(__name__)
USER_AGENT = f"ConvertAgent/{__version__} (convert-webhooks)"


class Outcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"  # network error, 5xx, 429: try again later
    PERMANENT = "permanent"  # any other 4xx (or 3xx after redirects): retrying cannot help
    DRY_RUN = "dry_run"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    status_code: int | None
    detail: str


class Sender:
    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        dry_run: bool = False,
        pool_size: int = 8,
    ) -> None:
        self.timeout = (connect_timeout, read_timeout)
        self.dry_run = dry_run
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # Proxy settings are read from the environment once, here: with trust_env on, requests
        # looks for proxies and ~/.netrc on every request (a third of a send's CPU time).
        self.session.proxies = dict(urllib.request.getproxies())
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def get(self, url: str) -> SendResult:
        if self.dry_run:
            log.info("dry run: would GET %s", url)
            return SendResult(Outcome.DRY_RUN, None, "dry run: logged, not sent")
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            return SendResult(Outcome.RETRY, None, f"{type(exc).__name__}: network error")
        status = response.status_code
        response.close()
        return SendResult(classify(status), status, f"HTTP {status}")

    def close(self) -> None:
        self.session.close()


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SENT
    if status == 429 or status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT
