"""The exposure API: the shop's back end reports which experiment pairs a customer was shown
(step 1 of Convert's back-end process), reads them back, and forgets them.

    POST   /api/exposures      one report, or {"exposures": [...]} (all or nothing)
    GET    /api/exposures?source=S&customer=C   or   ?email=E
    DELETE /api/exposures?source=S&customer=C   or   ?email=E

Every request needs `Authorization: Bearer <token>` with a token of `exposures.tokens`
(several during a rotation), compared in constant time. The order of refusals: 404 while no
token is configured, 401, 413 over `exposures.max_body_bytes`, 400 naming each bad field.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import ValidationError
from sqlalchemy.sql.elements import ColumnElement

from adapters.payload import MAX_EMAIL_CHARS, email_digest
from webhooks.core.settings import Settings
from webhooks.storage.digests import keyed_digest
from webhooks.storage.exposures import (
    customer_filter,
    forget_exposures,
    read_exposures,
    store_exposures,
)
from webhooks.web.routes import read_body, runtime
from webhooks.wiring.exposures import field_messages, read_reports

log = logging.getLogger(__name__)
bp = Blueprint("exposures", __name__)

MAX_QUERY_CHARS = 255


class _Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


@bp.errorhandler(_Refused)
def _refused(exc: _Refused) -> tuple[Response, int]:
    response = jsonify(exc.body)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="exposures"'
    return response, exc.status


@bp.post("/api/exposures")
def post_exposures() -> tuple[Response, int]:
    rt = runtime()
    _authorize(rt.settings)
    raw = read_body(rt.settings.exposures.max_body_bytes)
    now = rt.clock.now()
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # also not UTF-8, NaN, too many digits
        raise _Refused(400, {"error": "body is not a JSON object"}) from exc
    try:
        reports = read_reports(body, rt.settings, now)
    except ValidationError as exc:
        raise _Refused(
            400, {"error": "invalid exposure", "fields": field_messages(exc.messages)}
        ) from exc
    rt.ensure_schema()
    stored = store_exposures(rt.engine, reports, now)
    log.info("exposures: %d record(s), %d new pair(s)", len(reports), stored.stored)
    status = "stored" if stored.stored else "known"
    answer = {"status": status, "records": len(reports), "stored": stored.stored}
    return jsonify(answer | {"known": stored.known}), 201 if stored.stored else 200


@bp.get("/api/exposures")
def get_exposures() -> tuple[Response, int]:
    rt = runtime()
    _authorize(rt.settings)
    where = _customer(rt.settings)
    rt.ensure_schema()
    rows = read_exposures(rt.engine, where)
    return jsonify(exposures=[_shown(row) for row in rows]), 200


@bp.delete("/api/exposures")
def delete_exposures() -> tuple[Response, int]:
    rt = runtime()
    _authorize(rt.settings)
    where = _customer(rt.settings)
    rt.ensure_schema()
    forgotten = forget_exposures(rt.engine, where)
    log.info("exposures: forgot %d row(s) on request", forgotten)
    return jsonify(status="forgotten", forgotten=forgotten), 200


def _authorize(settings: Settings) -> None:
    """404 while the API is off, 401 unless the bearer token is one of the configured ones.

    Every token is compared (no early exit) on SHA-256 digests (equal lengths), so the time
    taken says neither which token matched nor how much of one did."""
    tokens = settings.exposures.tokens
    if not tokens:
        raise _Refused(404, {"error": "the exposure API is off (no exposures.tokens configured)"})
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    offered = hashlib.sha256(given.strip().encode("utf-8", "replace")).digest()
    matched = False
    for token in tokens:
        expected = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        matched |= hmac.compare_digest(offered, expected)
    if scheme.lower() != "bearer" or not given.strip() or not matched:
        log.info("exposures: refused a request without a valid bearer token")
        raise _Refused(401, {"error": "a valid bearer token is required"})


def _customer(settings: Settings) -> ColumnElement[bool]:
    """The customer a GET or DELETE names: source + customer, or email."""
    args = request.args
    source, customer, email = args.get("source"), args.get("customer"), args.get("email")
    if any(len(v) > max(MAX_QUERY_CHARS, MAX_EMAIL_CHARS) for v in args.values()):
        raise _Refused(400, {"error": "a query value is too long"})
    if email is not None and source is None and customer is None:
        key = settings.privacy.email_key
        plain = email_digest(email)
        if key is None:
            raise _Refused(400, {"error": "email lookups need privacy.email_key"})
        if plain is None:
            raise _Refused(400, {"error": "invalid query", "fields": {"email": "not an address"}})
        return customer_filter(email_digest=keyed_digest(key, plain))
    if email is None and source and customer:
        if source not in settings.sources:
            raise _Refused(400, {"error": "invalid query", "fields": {"source": "not configured"}})
        return customer_filter(source=source, customer_id=customer.strip())
    raise _Refused(400, {"error": "give ?source=...&customer=... or ?email=..."})


def _shown(row: Any) -> dict[str, Any]:
    return {
        "source": row.source or None,
        "customer_id": row.customer_id or None,
        "by_email": bool(row.email_digest),
        "visitor_id": row.visitor_id,
        "pair": f"{row.experiment_id}-{row.variation_id}",
        "exposed_at": _iso(row.exposed_at),
        "recorded_at": _iso(row.recorded_at),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _no_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")
