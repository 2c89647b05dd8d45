"""What the service says when it starts: where to point the platforms, and whether it sends."""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from webhooks.convert.legacy import endpoint_for
from webhooks.convert.v1 import track_url
from webhooks.core.errors import StorageError
from webhooks.core.logs import configure_logging
from webhooks.core.settings import ConvertFormat, ConvertSettings
from webhooks.storage.database import make_engine
from webhooks.storage.migrations import migrate
from webhooks.storage.queue import pending_by_format
from webhooks.wiring.config import load_settings

log = logging.getLogger("webhooks.wiring.startup")


def announce(bind: str) -> None:
    """Validate the config, migrate the database once, and list the webhook URLs.

    A database that is down does not stop the start: refusing to start would give the
    platforms "connection refused"; running, the service answers 503 (the platform retries)
    and /readyz says why, and the first request after the database is back migrates it.
    """
    configure_logging()
    settings = load_settings()
    configure_logging(settings.logging)
    engine = make_engine(settings.database_url, settings.busy_timeout_ms)
    try:
        if _migrate_or_warn(engine):
            _announce_format(settings.convert, engine)
    finally:
        engine.dispose()
    host = bind if "://" in bind else f"http://{bind}"
    log.info("database: %s", _safe_url(settings.database_url))
    for name, source in settings.sources.items():
        log.info(
            "webhook URL for source '%s' (%s): %s/webhooks/%s", name, source.platform, host, name
        )
    where = _where_to(settings.convert)
    if settings.convert.dry_run:
        log.info("DRY RUN: Convert requests are logged ('dry run: would ...'), not sent")
    else:
        log.info("sending new purchases to %s", where)


def _where_to(convert: ConvertSettings) -> str:
    if convert.format is ConvertFormat.V1:
        return f"Convert's JSON tracking API (v1 format): POST {track_url(convert)}"
    return f"Convert's legacy GET push: {endpoint_for(convert)}"


def _announce_format(convert: ConvertSettings, engine: Engine) -> None:
    """A change of format applies to events stored from now on; say what is still queued in
    the other one (it goes out as it was stored, never in both)."""
    try:
        with engine.connect() as conn:
            pending = pending_by_format(conn)
    except SQLAlchemyError:
        return
    for fmt, count in sorted(pending.items()):
        if fmt != convert.format.value and count:
            log.info(
                "convert.format is %s: it applies to purchases stored from now on; %d pending "
                "event(s) stored under %s still go out in %s (no purchase is sent in both)",
                convert.format.value,
                count,
                fmt,
                fmt,
            )


def _migrate_or_warn(engine: Engine) -> bool:
    try:
        migrate(engine)
    except (SQLAlchemyError, StorageError) as exc:
        log.warning(
            "database unavailable at start-up (%s): starting anyway; webhooks get 503 and "
            "/readyz says why until it is back, then the schema is created or upgraded",
            type(exc).__name__,
        )
        return False
    return True


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
