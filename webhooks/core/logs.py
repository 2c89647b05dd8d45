"""Logging: one line per event, key=value, to stderr. Never secrets or personal data: bodies,
emails and signatures are not logged; order ids and Convert URLs (ids and amounts) are.

Every handler the service writes through (ours, the host's, gunicorn's error and access logs)
formats through `EscapingFormatter`: a control character a sender put in a value (a newline in
an event type, an ANSI escape in a User-Agent) is escaped, so it can neither forge a log line
nor drive the terminal that shows the log. A traceback becomes one line the same way.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from pathlib import Path

from webhooks.core.settings import LoggingSettings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers whose handlers we make safe: the root (ours, Flask's, the host's) and gunicorn's,
# which do not propagate to the root.
_LOGGERS = ("", "gunicorn.error", "gunicorn.access")
# C0 and C1 controls, DEL, line/paragraph separators, bidi controls, BOM, unpaired surrogates.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ROOT = Path(__file__).resolve().parents[2]  # the checkout: webhooks/core/logs.py
_OURS = (_ROOT / "webhooks", _ROOT / "adapters")


def escape(text: str) -> str:
    """`text` with every control character written as a visible escape (\\n, \\x1b, \\u2028)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class EscapingFormatter(logging.Formatter):
    """Formats with the handler's own formatter, then escapes the whole line."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return escape(self.inner.format(record))


def configure_logging(settings: LoggingSettings | None = None) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=_level(), format=FORMAT)
    elif root.level == logging.WARNING:  # gunicorn, pytest or the host set it up
        logging.getLogger("webhooks").setLevel(_level())
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            make_safe(handler)


def make_safe(handler: logging.Handler) -> None:
    if not isinstance(handler.formatter, EscapingFormatter):
        handler.setFormatter(EscapingFormatter(handler.formatter))


def describe(exc: BaseException) -> str:
    """The type and place of an error, without its message (which may quote a value), e.g.
    `UnstorableError from sqlalchemy.DataError from psycopg.DataError at webhooks/store.py:84`:
    each cause's type, and the innermost line of our code the error passed through."""
    chain = [exc]
    while (cause := chain[-1].__cause__) is not None and len(chain) < 8:
        chain.append(cause)
    names = " from ".join(_type_name(e) for e in chain)
    for each in reversed(chain):
        ours = [f for f in traceback.extract_tb(each.__traceback__) if _is_ours(f.filename)]
        if ours:
            return f"{names} at {_short(ours[-1].filename)}:{ours[-1].lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{names} at {_short(frames[-1].filename)}:{frames[-1].lineno}" if frames else names


def _type_name(exc: BaseException) -> str:
    package = type(exc).__module__.partition(".")[0]
    if package in ("builtins", "webhooks", "adapters", "__main__"):
        return type(exc).__name__
    return f"{package}.{type(exc).__name__}"


def _is_ours(filename: str) -> bool:
    return any(Path(filename).is_relative_to(package) for package in _OURS)


def _short(filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(_ROOT)) if path.is_relative_to(_ROOT) else path.name


def _level() -> str:
    return os.environ.get("CONVERT_WEBHOOKS_LOG_LEVEL", "INFO").upper()
