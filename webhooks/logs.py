"""Logging: one line per event, key=value, to stderr. Never secrets or personal data: bodies,
emails and signatures are not logged; order ids and Convert URLs (ids and amounts) are."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging() -> None:
    root = logging.getLogger()
    if root.handlers:  # gunicorn, pytest or the host already set it up
        if root.level == logging.WARNING:
            logging.getLogger("webhooks").setLevel(_level())
        return
    logging.basicConfig(level=_level(), format=FORMAT)


def _level() -> str:
    return os.environ.get("CONVERT_WEBHOOKS_LOG_LEVEL", "INFO").upper()
