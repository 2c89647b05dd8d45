"""The application factory: configuration is read here, never at import."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from webhooks.core.clock import Clock
from webhooks.core.errors import ConvertWebhooksError, StorageError
from webhooks.core.logs import configure_logging, describe
from webhooks.core.observe import Observer
from webhooks.core.settings import Settings
from webhooks.storage.clock import SystemClock
from webhooks.wiring.config import load_settings
from webhooks.wiring.observers import default_observer
from webhooks.wiring.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    config_path: str | None = None,
    clock: Clock | None = None,
    observer: Observer | None = None,
) -> Flask:
    configure_logging()
    settings = settings or load_settings(config_path)
    configure_logging(settings.logging)
    app = Flask("webhooks")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    observer = observer or default_observer(settings)
    runtime = build_runtime(settings, clock or SystemClock(), observer)
    app.extensions["convert_webhooks"] = runtime
    try:
        runtime.ensure_schema()
    except StorageError:
        # Start anyway: /readyz says 503 and requests answer 503 until the database is back.
        log.warning("database unavailable at start-up; will retry on first use")

    from webhooks.web.admin import bp as admin_bp
    from webhooks.web.exposures import bp as exposures_bp
    from webhooks.web.metrics import bp as metrics_bp
    from webhooks.web.routes import bp

    app.register_blueprint(bp)
    app.register_blueprint(exposures_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(admin_bp)
    app.register_error_handler(ConvertWebhooksError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def runtime_of(app: Flask) -> Runtime:
    runtime: Runtime = app.extensions["convert_webhooks"]
    return runtime


def _service_error(exc: ConvertWebhooksError) -> tuple[Response, int]:
    response = jsonify(error=str(exc))
    if isinstance(exc, StorageError):
        log.error("storage unavailable: %s (%s)", exc, describe(exc))
        response.headers["Retry-After"] = exc.retry_after
    return response, exc.http_status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    response = jsonify(error=exc.description or exc.name)
    for name, value in exc.get_headers():  # e.g. Allow on a 405
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, exc.code or 500


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    """A bug, not a client's doing: JSON like every other answer, and one log line with the
    type and place (Flask's default would log the traceback, messages quoting values)."""
    log.error("unexpected error: %s", describe(exc))
    return jsonify(error="internal error"), 500
