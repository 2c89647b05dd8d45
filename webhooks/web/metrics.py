"""GET /metrics (Prometheus text format): the observer's counters (summed over every gunicorn
worker) and the database's gauges read now (webhooks/wiring/metrics.py).

`metrics.enabled = false`: 404, like an unknown URL. With `metrics.token` set, a scrape must
send `Authorization: Bearer <token>` (compared in constant time), else 401. A scrape never
answers 500: a database that cannot be read leaves its gauges out (database_up 0).
"""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, abort, current_app, jsonify, request
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from webhooks.web.routes import runtime
from webhooks.wiring.metrics import DatabaseGauges, exposition
from webhooks.wiring.observers import ServiceObserver

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

_GAUGES = "convert_webhooks.database_gauges"  # app.extensions key: one collector per app
MAX_AUTHORIZATION_CHARS = 1024  # longer is not a token of ours; not even compared


@bp.get("/metrics")
def metrics() -> Response | tuple[Response, int]:
    rt = runtime()
    configured = rt.settings.metrics
    if not configured.enabled:
        abort(404)
    if configured.token is not None and not _authorized(
        request.headers.get("Authorization"), configured.token
    ):
        response = jsonify(error="a bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response, 401
    gauges = current_app.extensions.get(_GAUGES)
    if gauges is None:
        gauges = current_app.extensions.setdefault(_GAUGES, DatabaseGauges(rt.engine, rt.clock))
    counters = rt.observer.metrics if isinstance(rt.observer, ServiceObserver) else None
    body = exposition(counters, gauges)
    response = Response(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response.headers["Cache-Control"] = "no-store"
    return response


def _authorized(header: str | None, token: str) -> bool:
    if header is None or len(header) > MAX_AUTHORIZATION_CHARS:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes: compare_digest takes str only when ASCII, and a header may hold anything.
    return hmac.compare_digest(given.strip().encode("utf-8", "backslashreplace"), token.encode())
