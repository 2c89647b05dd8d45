"""HTTP routes: receive (verify, parse, store, answer) and the health probes.

The request path does no network calls and nothing the dispatcher can do later.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from typing import NoReturn

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from adapters import REGISTRY
from webhooks.config import SourceSettings
from webhooks.errors import PayloadError
from webhooks.runtime import Runtime
from webhooks.store import Delivery, ingest, store_rejected

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

# What a buggy or hostile payload can make a mapping function raise. Such a body is stored
# as rejected (replayable after a fix) and answered 400, never 500.
_PARSE_FAILURES = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["convert_webhooks"]
    return rt


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        runtime().check_database()
    except SQLAlchemyError as exc:
        log.warning("readiness: database unreachable (%s)", type(exc).__name__)
        return jsonify(status="unavailable", error="database unreachable"), 503
    return jsonify(status="ready"), 200


@bp.post("/webhooks/<source_name>")
def receive(source_name: str) -> tuple[Response, int]:
    rt = runtime()
    source = rt.settings.sources.get(source_name)
    if source is None:
        return jsonify(error=f"unknown source '{source_name}'"), 404
    raw = request.get_data(cache=False)
    headers = {name.lower(): value for name, value in request.headers.items()}
    adapter = REGISTRY[source.platform]
    now = rt.clock.now()
    adapter.verify(headers, raw, source, now)
    try:
        result = adapter.parse(headers, raw)
    except (PayloadError, *_PARSE_FAILURES) as exc:
        _keep_rejected(rt, source, headers, raw, exc, now)
    rt.ensure_schema()
    delivery = Delivery(
        source, rt.settings.convert.project_id, rt.settings.goals, headers, raw, result
    )
    outcome = ingest(rt.engine, delivery, now)
    if outcome.has_pending:
        rt.dispatcher.wake()
    log.info(
        "webhook source=%s topic=%s status=%s delivery=%s events=%d",
        source_name,
        result.topic,
        outcome.status,
        outcome.delivery_id,
        len(outcome.events),
    )
    return jsonify(outcome.as_json()), 200


def _keep_rejected(
    rt: Runtime,
    source: SourceSettings,
    headers: dict[str, str],
    raw: bytes,
    exc: Exception,
    now: float,
) -> NoReturn:
    """Store a signed body we cannot read (nothing is lost; `replay` can run it after a fix),
    then answer 400."""
    if isinstance(exc, PayloadError):
        reason = str(exc)
    else:
        # Type and place only: the message could quote the payload (personal data).
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        log.error(
            "source=%s: payload mapping failed: %s at %s:%s",
            source.name,
            type(exc).__name__,
            frame.filename,
            frame.lineno,
        )
        reason = f"unreadable payload ({type(exc).__name__})"
    key = f"rejected:sha256:{hashlib.sha256(raw).hexdigest()}"
    rt.ensure_schema()
    store_rejected(rt.engine, source, headers, raw, key, "(unreadable)", reason, now)
    raise PayloadError(reason) from exc
