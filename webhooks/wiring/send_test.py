"""`convert-webhooks send-test`: a realistic sample delivery for one configured source, signed
with the source's own secret through its platform's signature scheme, posted to a running
instance; then what became of the event(s) the answer names, read from the database.

The sample is the documented payload the platform's spec names (PlatformSpec.sample: a body in
tests/fixtures/<platform>/, the unsigned headers the platform sends) with the experiment pairs
"100-200" put where a shop would put them and a fresh delivery id (`add_pairs`), signed by the
scheme that verifies (adapters/schemes.py). `scripts/send_sample.py` calls the same code.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import Engine

from adapters import REGISTRY
from adapters.base import PlatformSpec
from webhooks.core.errors import ConvertWebhooksError
from webhooks.core.settings import SourceSettings
from webhooks.core.states import EventState
from webhooks.storage.records import event_detail

SAMPLE_PAIRS = "100-200"
# The sample bodies: the checkout's tests/fixtures (webhooks/wiring/send_test.py -> root), or
# where CONVERT_WEBHOOKS_SAMPLES points (an installed package has no checkout: the Docker image
# copies them to /app/tests/fixtures and says so).
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
SAMPLES_ENV = "CONVERT_WEBHOOKS_SAMPLES"
BIND_ENV = "CONVERT_WEBHOOKS_BIND"
DEFAULT_BIND = "127.0.0.1:8000"  # gunicorn.conf.py's
CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10.0
MAX_ANSWER_BYTES = 65_536  # an answer is a short JSON object; more is not read
MAX_URL_CHARS = 2048
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f]")


class SendTestFailed(ConvertWebhooksError):
    """The sample could not be posted, or the service refused it (a 4xx or 5xx)."""


@dataclass(frozen=True)
class SampleDelivery:
    fixture: str  # the body's file in tests/fixtures/<platform>/
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class NamedEvent:
    id: int
    order_id: str | None
    duplicate: bool  # the purchase was counted from an earlier delivery (an earlier sample)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.body)
        except ValueError:  # not JSON, or not UTF-8
            return None
        return value if isinstance(value, dict) else None

    def events(self) -> list[NamedEvent]:
        """The events the answer names (each id once, in order)."""
        listed = (self.json() or {}).get("events")
        named: list[NamedEvent] = []
        for event in listed if isinstance(listed, list) else []:
            if not isinstance(event, dict):
                continue
            event_id, order_id = event.get("id"), event.get("order_id")
            if type(event_id) is int and event_id > 0 and event_id not in [n.id for n in named]:
                order = order_id if isinstance(order_id, str) else None
                named.append(NamedEvent(event_id, order, event.get("duplicate") is True))
        return named

    def error(self) -> str | None:
        message = (self.json() or {}).get("error")
        return message[:300] if isinstance(message, str) else None


# --- the sample ------------------------------------------------------------------------------


def sample_payload(spec: PlatformSpec) -> tuple[dict[str, Any], dict[str, str]]:
    """The sample's JSON body and unsigned headers, with the pairs and a new delivery id."""
    path = Path(os.environ.get(SAMPLES_ENV) or FIXTURES) / spec.name / spec.sample.fixture
    try:
        payload: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConvertWebhooksError(
            f"the {spec.name} sample body is missing ({path}: {exc.strerror}): send-test reads "
            "the samples from a source checkout's tests/fixtures"
        ) from exc
    headers = dict(spec.sample.headers)
    if spec.sample.add_pairs is not None:  # where a shop keeps the pairs: the platform says
        spec.sample.add_pairs(payload, headers, SAMPLE_PAIRS)
    return payload, headers


def signed_sample(
    spec: PlatformSpec,
    secret: str,
    now: float,
    *,
    options: Mapping[str, Any] | None = None,
    url: str | None = None,
) -> SampleDelivery:
    """The sample signed with `secret` by the scheme a source with `options` verifies with
    (the sample's own options by default); `url` is the URL a URL-signing scheme signs."""
    payload, headers = sample_payload(spec)
    body = json.dumps(payload).encode()
    scheme = spec.scheme_of(spec.sample.options if options is None else options)
    try:
        headers.update(scheme.sign(body, secret, now, url=url))
    except ValueError as exc:  # the secret is not in the scheme's format, no URL to sign
        raise ConvertWebhooksError(f"cannot sign the {spec.name} sample: {exc}") from exc
    headers.setdefault("Content-Type", "application/json")
    return SampleDelivery(spec.sample.fixture, body, headers)


def source_sample(source: SourceSettings, now: float) -> SampleDelivery:
    """The sample for a configured source: its platform's body, signed with its current (first)
    secret; a URL-signing platform signs the source's configured `url`, as the service checks."""
    return signed_sample(
        REGISTRY[source.platform], source.secrets[0], now, options=source.options, url=source.url
    )


# --- where it goes ---------------------------------------------------------------------------


def default_url(source: str, bind: str | None) -> str:
    """http://<bind>/webhooks/<source>; a wildcard bind (0.0.0.0, [::]) is reached on the
    loopback address."""
    address = (bind or DEFAULT_BIND).strip()
    if address.startswith(("unix:", "fd://")) or "/" in address:
        raise ConvertWebhooksError(
            f"{BIND_ENV} is not a host:port (a socket?): give the webhook URL with --url"
        )
    host, port = address, "8000"  # gunicorn's default port
    if not address.endswith("]") and ":" in address:
        host, _, port = address.rpartition(":")
    if not _PORT.fullmatch(port) or not host or _URL_UNSAFE.search(host):
        raise ConvertWebhooksError(f"{BIND_ENV} is not a host:port: give the URL with --url")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"http://{host}:{port}/webhooks/{source}"


def check_url(url: str) -> str:
    """An http(s) URL with a host, or ConvertWebhooksError (the value is not echoed)."""
    if len(url) > MAX_URL_CHARS or _URL_UNSAFE.search(url):
        raise ConvertWebhooksError("--url is too long or holds spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise ConvertWebhooksError("--url is not a URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConvertWebhooksError("--url must be an http:// or https:// URL with a host")
    return url


# --- posting ---------------------------------------------------------------------------------


def post(url: str, sample: SampleDelivery, read_timeout: float = READ_TIMEOUT) -> Answer:
    """POST the sample; the answer, whatever its status. SendTestFailed when there is none.
    Redirects are not followed (a redirected POST becomes a GET); proxies and .netrc from the
    environment are not used (the instance is the operator's own)."""
    with requests.Session() as session:
        session.trust_env = False
        try:
            response = session.post(
                url,
                data=sample.body,
                headers=sample.headers,
                timeout=(CONNECT_TIMEOUT, read_timeout),
                allow_redirects=False,
                stream=True,
            )
            with response:
                body = response.raw.read(MAX_ANSWER_BYTES, decode_content=True)
                return Answer(response.status_code, body)
        except requests.Timeout as exc:
            raise SendTestFailed(f"no answer from {url} within {read_timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise SendTestFailed(f"cannot connect to {url}: {_why(exc)}") from exc
        except requests.RequestException as exc:
            raise SendTestFailed(f"cannot post to {url}: {type(exc).__name__}") from exc


def _why(exc: requests.ConnectionError) -> str:
    """Connection refused (nothing listens there) said plainly; else the error's type."""
    if "refused" in str(exc).lower():
        return "connection refused (is the service running there?)"
    return f"{type(exc).__name__} (is the service running there?)"


def refusal(source: str, url: str, answer: Answer) -> str | None:
    """What a non-2xx answer means for the operator, in one line; None for a 2xx."""
    if 200 <= answer.status < 300:
        return None
    said = answer.error()
    detail = f": {said}" if said else ""
    if answer.status == 401:
        return (
            f"the service refused the signature (401{detail}): the running instance holds "
            f"another secret for source '{source}' than this config's "
            f"sources.{source}.secrets, or {url} is another source's URL"
        )
    if answer.status == 404:
        return (
            f"the service at {url} answered 404{detail}: it has no source '{source}' (is it "
            "running with this config?)"
        )
    return f"the service answered {answer.status}{detail}"


# --- what became of it -----------------------------------------------------------------------


def wait_for_events(
    engine: Engine,
    event_ids: Sequence[int],
    wait_seconds: float,
    poll_seconds: float = 0.25,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[int, dict[str, Any] | None]:
    """Each event's stored detail (records.event_detail; None when this database does not
    hold it), read again until none is pending or `wait_seconds` have passed."""
    deadline = monotonic() + wait_seconds
    while True:
        details = {event_id: event_detail(engine, event_id) for event_id in event_ids}
        waiting = any(
            d is not None and d["event"]["state"] == EventState.PENDING for d in details.values()
        )
        if not waiting or monotonic() >= deadline:
            return details
        sleep(poll_seconds)
