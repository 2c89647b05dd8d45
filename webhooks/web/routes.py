"""HTTP routes: receive (verify, parse, store, answer) and the health probes.

The request path does no network calls and nothing the dispatcher can do later. Whatever a
client sends gets a 4xx with a message naming the field, never its value, and never a
traceback in the log.

Each webhook request logs one line, `webhook`, with its request id (the caller's
`X-Request-Id` when it looks like one, else a new one; echoed in the answer), source, topic,
delivery id, status and latency, and tells the observer the same (metrics). A fault that
needs a developer (a crash in a signature parser, a value the database refused) adds its own
warning line, carrying the same request id.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from typing import NoReturn

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.wsgi import get_input_stream

from adapters import REGISTRY
from adapters.base import PlatformSpec
from adapters.request import Headers, SignedRequest
from webhooks.core.errors import (
    PARSE_FAILURES,
    BodyTooLargeError,
    ConvertWebhooksError,
    PayloadError,
    RequestBodyError,
    SignatureError,
    StorageError,
    UnstorableError,
)
from webhooks.core.events import ParseResult
from webhooks.core.logs import (
    NOT_SHOWN,
    bind_request_id,
    describe,
    fields,
    shown_id,
    unbind_request_id,
)
from webhooks.core.observe import IngestSeen
from webhooks.core.settings import SourceSettings
from webhooks.core.states import DeliveryStatus
from webhooks.storage.ingest import (
    UNREADABLE_TOPIC,
    Delivery,
    IngestOutcome,
    store_rejected,
)
from webhooks.wiring.runtime import Runtime

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

# Source names as the config allows them; anything else is not echoed back.
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_READ_SIZE = 65_536
# An X-Request-Id taken as it is (nginx's $request_id, a UUID, a tracing id); anything else
# (too long, spaces, an email address) is replaced by a new one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
REASON_CHARS = 300  # of a refusal's or failure's reason, in the log line


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["convert_webhooks"]
    return rt


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    problems = runtime().readiness()
    if problems:
        log.warning("readiness: %s", "; ".join(problems))
        response = jsonify(status="unavailable", error=problems[0], problems=problems)
        response.headers["Retry-After"] = StorageError.retry_after
        return response, 503
    return jsonify(status="ready"), 200


@bp.before_app_request
def _bind_request_id() -> None:
    given = request.headers.get("X-Request-Id", "")
    chosen = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.request_id = chosen
    g.request_id_token = bind_request_id(chosen)  # every line of this request carries it


@bp.after_app_request
def _echo_request_id(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
    return response


@bp.teardown_app_request
def _unbind_request_id(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        unbind_request_id(token)


@dataclass
class _Trace:
    """What one webhook request came to, for its log line and the observer."""

    status: str = "error"
    http_status: int = 500
    topic: str | None = None
    delivery_key: str | None = None
    outcome: IngestOutcome | None = None
    reason: str | None = None
    stored: tuple[tuple[str, str], ...] = ()  # (state, reason code) of each new event

    def parsed(self, result: ParseResult) -> None:
        self.topic, self.delivery_key = result.topic, result.delivery_key

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, ConvertWebhooksError):
            self.status = _OBSERVED_AS.get(type(exc), "error")
            self.http_status = exc.http_status
            self.reason = str(exc)[:REASON_CHARS]  # our words: they name fields, not values
        else:
            self.reason = describe(exc)


@bp.post("/webhooks/<source_name>")
def receive(source_name: str) -> tuple[Response, int]:
    rt = runtime()
    source = rt.settings.sources.get(source_name)
    if source is None:
        shown = source_name if _SOURCE_NAME.fullmatch(source_name) else NOT_SHOWN
        log.info("webhook", extra=fields(source=shown, status="unknown_source", http_status=404))
        return jsonify(error=_unknown_source(source_name)), 404
    began = rt.clock.monotonic()
    trace = _Trace()
    try:
        trace.outcome = _receive(rt, source, trace)
        reply = REGISTRY[source.platform].answer(trace.outcome.as_json())
        trace.status, trace.http_status = trace.outcome.status, reply.status
    except Exception as exc:
        trace.failed(exc)
        raise
    finally:
        _report(rt, source, trace, rt.clock.monotonic() - began)
    if isinstance(reply.body, bytes):
        return Response(reply.body, content_type=reply.content_type), reply.status
    return jsonify(reply.body), reply.status


def _report(rt: Runtime, source: SourceSettings, trace: _Trace, seconds: float) -> None:
    """Tell the observer, then write the request's one `webhook` line."""
    outcome = trace.outcome
    stored = outcome.events if outcome is not None else []
    seen = IngestSeen(
        source.name,
        trace.status,
        tuple(str(e["kind"]) for e in stored),
        seconds,
        topic=trace.topic,
        delivery_key=trace.delivery_key,
        delivery_id=outcome.delivery_id if outcome is not None else None,
        request_id=g.get("request_id"),
        reason=trace.reason,
        http_status=trace.http_status,
        replay=trace.status == DeliveryStatus.DUPLICATE and not stored,
        duplicates=sum(1 for e in stored if e.get("duplicate")),
        stored=trace.stored,
    )
    try:
        rt.observer.ingest(seen)
    except Exception as exc:  # an observer never changes the answer
        log.warning("observer failed: %s", describe(exc))
    level = logging.WARNING if seen.status in ("unavailable", "error") else logging.INFO
    log.log(level, "webhook", extra=_line(seen, source.platform))


def _line(seen: IngestSeen, platform: str) -> dict[str, object]:
    # The topic and delivery id are whatever the sender wrote: shown only when they look
    # like ids (never an email address or a sentence).
    return fields(
        source=seen.source,
        platform=platform,
        topic=shown_id(seen.topic),
        delivery_key=shown_id(seen.delivery_key, 255),
        delivery_id=seen.delivery_id,
        status=seen.status,
        http_status=seen.http_status,
        events=",".join(seen.kinds) or None,
        duplicates=seen.duplicates or None,
        reason=seen.reason,
        latency_ms=round(seen.seconds * 1000, 2),
    )


# How the observer hears of a request that did not end in a stored delivery.
_OBSERVED_AS: dict[type[ConvertWebhooksError], str] = {
    SignatureError: "refused",
    PayloadError: "rejected",
    UnstorableError: "rejected",
    RequestBodyError: "unreadable",
    BodyTooLargeError: "too_large",
    StorageError: "unavailable",
}


def _receive(rt: Runtime, source: SourceSettings, trace: _Trace) -> IngestOutcome:
    raw = read_body(rt.settings.max_body_bytes)
    headers = {name.lower(): value for name, value in request.headers.items()}
    adapter = REGISTRY[source.platform]
    now = rt.clock.now()
    result = _ping(adapter, source, headers, raw)
    if result is None:
        # The URL as configured for the source, never rebuilt from Host: a sender controls it.
        signed = SignedRequest(request.method, source.url, Headers(headers), raw)
        _verify(adapter, source, signed, now)
        try:
            result = rt.parser(source)(headers, raw)
        except (PayloadError, *PARSE_FAILURES) as exc:
            _keep_rejected(rt, source, headers, raw, exc, now, UNREADABLE_TOPIC)
    trace.parsed(result)
    rt.ensure_schema()
    settings = rt.settings
    delivery = Delivery(
        source,
        settings.convert.project_id,
        settings.goals,
        headers,
        raw,
        result,
        email_key=settings.privacy.email_key,
        convert_format=settings.convert.format,
    )
    try:
        outcome = rt.ingest(delivery, now)  # with the others waiting: one durable commit
    except UnstorableError as exc:
        _keep_rejected(rt, source, headers, raw, exc, now, result.topic)
    if outcome.has_pending:
        rt.dispatcher.wake()
    trace.stored = outcome.new_states
    return outcome


def _unknown_source(name: str) -> str:
    # The name comes from the URL: echoed only when it is one a config could hold.
    return f"unknown source '{name}'" if _SOURCE_NAME.fullmatch(name) else "unknown source"


def read_body(limit: int) -> bytes:
    """The whole raw body, or BodyTooLargeError (413) past `limit` bytes, RequestBodyError
    (400) when it cannot be read whole: a cut body never reaches verification.

    Read here rather than with `request.get_data()`: a chunked body has no Content-Length,
    and werkzeug's MAX_CONTENT_LENGTH cap then silently stops at the limit. Reading one byte
    past the limit tells "exactly the limit" from "more"."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLargeError(f"body is larger than {limit} bytes")
    # With a Content-Length: exactly that many bytes (fewer is an error). Without one: the
    # stream as far as the server ends it (gunicorn de-chunks), or empty if it cannot.
    stream = get_input_stream(request.environ, max_content_length=None)
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = stream.read(min(_READ_SIZE, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception as exc:  # a broken chunk, a client gone: the client's doing, not a 500
        log.info("request body unreadable: %s", describe(exc))
        raise RequestBodyError("request body could not be read whole") from exc
    if size > limit:
        raise BodyTooLargeError(f"body is larger than {limit} bytes")
    return b"".join(chunks)


def _ping(
    adapter: PlatformSpec, source: SourceSettings, headers: dict[str, str], raw: bytes
) -> ParseResult | None:
    """A platform's unsigned ping as an ignored delivery (stored, answered 200), or None.
    Anything that is not exactly a ping goes on to verification."""
    try:
        return adapter.unsigned_ping(headers, raw)
    except Exception as exc:  # a ping reader that trips is a refusal, never a 500
        log.warning("source=%s: ping check failed: %s", source.name, describe(exc))
        raise SignatureError("request is neither a ping nor signed") from exc


def _verify(
    adapter: PlatformSpec, source: SourceSettings, signed: SignedRequest, now: float
) -> None:
    """Raise SignatureError (401) unless the request is signed; nothing unauthenticated can
    make anything else happen (a crash in a header parser is a refusal too)."""
    try:
        adapter.verify(signed, source, now)
    except SignatureError:
        raise  # the request's `webhook` line says why
    except Exception as exc:
        log.warning("source=%s: signature check failed: %s", source.name, describe(exc))
        raise SignatureError("signature header could not be read") from exc


def _keep_rejected(
    rt: Runtime,
    source: SourceSettings,
    headers: dict[str, str],
    raw: bytes,
    exc: Exception,
    now: float,
    topic: str,
) -> NoReturn:
    """Store a signed body we cannot read or store (nothing is lost; `replay` can run it after
    a fix), then answer 400. Logged as one line: type and place, no values."""
    if isinstance(exc, UnstorableError):
        reason = str(exc)
        log.warning("source=%s: database refused a value: %s", source.name, describe(exc))
    elif isinstance(exc, PayloadError):
        reason = str(exc)  # the request's `webhook` line says it
    else:
        # The message could quote the payload (personal data): the type only.
        reason = f"unreadable payload ({type(exc).__name__})"
        log.error("source=%s: payload mapping failed: %s", source.name, describe(exc))
    key = f"rejected:sha256:{hashlib.sha256(raw).hexdigest()}"
    rt.ensure_schema()
    try:
        store_rejected(rt.engine, source, headers, raw, key, topic, reason, now)
    except UnstorableError as refused:  # only values that always fit are written: a bug
        log.error("source=%s: rejected body not kept: %s", source.name, describe(refused))
    raise PayloadError(reason) from exc
