"""Logging: one line per event to stderr, as JSON lines (when stderr is not a terminal, or
`logging.format = "json"`) or as readable `key=value` lines. Never secrets or personal data:
bodies, emails and signatures are not logged; order ids and Convert URLs (ids and amounts) are.

Structured lines pass their values as fields (`log.info("webhook", extra=fields(source=...))`);
the text format appends them as `key=value`, the JSON format as keys. A value a sender wrote
(a topic, a delivery id) goes through `shown_id` first: logged only when it looks like an id.

Every handler the service writes through (ours, the host's, gunicorn's error and access logs)
formats through `EscapingFormatter` (or `JsonFormatter`, one of them): a control character a
sender put in a value (a newline in an event type, an ANSI escape in a User-Agent) is escaped,
so it can neither forge a log line nor drive the terminal that shows the log. A traceback
becomes one line the same way. In a JSON line every string is escaped before it is encoded,
so the decoded values are as safe to print as the text format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

from webhooks.core.settings import LogFormat, LoggingSettings

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

FIELDS = "convert_webhooks_fields"  # the LogRecord attribute a line's fields ride in
# An id as platforms and proxies write them. No '@' or spaces: an email address or a sentence
# a sender put where an id belongs is never logged.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=#-]*")
NOT_SHOWN = "(not shown)"
_PLAIN = re.compile(r'[^\s"=\\]+')  # a text-format value that needs no quotes
# The JSON keys every line has; a field of the same name does not replace them.
_BASE_KEYS = ("time", "level", "logger", "pid", "message")
_OWN = "convert_webhooks_own"  # marks the root handler configure_logging made

_chosen: dict[str, LoggingSettings] = {}  # the settings configure_logging last had
_request_id: ContextVar[str | None] = ContextVar("convert_webhooks_request_id", default=None)


def escape(text: str) -> str:
    """`text` with every control character written as a visible escape (\\n, \\x1b, \\u2028)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def fields(**values: object) -> dict[str, Any]:
    """`extra=` for a structured line: `log.info("webhook", extra=fields(source="shop"))`."""
    return {FIELDS: values}


def shown_id(value: str | None, limit: int = 128) -> str | None:
    """A sender's id or topic as it may be logged: itself when it looks like one (letters,
    digits and `._:/+=#-`, at most `limit` characters), else NOT_SHOWN; None stays None."""
    if value is None:
        return None
    return value if len(value) <= limit and _ID.fullmatch(value) else NOT_SHOWN


def bind_request_id(request_id: str) -> Token[str | None]:
    """Every line logged until `unbind_request_id` carries this request id."""
    return _request_id.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured values of a line, with the request id it was logged under."""
    given: Mapping[str, Any] = getattr(record, FIELDS, None) or {}
    request_id = _request_id.get()
    if request_id is None or "request_id" in given:
        return dict(given)
    return {"request_id": request_id, **given}


class EscapingFormatter(logging.Formatter):
    """Formats with the handler's own formatter, adds the line's fields as `key=value`, then
    escapes the whole line."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return escape(self.inner.format(record) + text_fields(record_fields(record)))


class JsonFormatter(EscapingFormatter):
    """One JSON object per line: time (UTC), level, logger, pid, message, then the fields.
    `inner` is the formatter the handler had, put back if the text format is chosen again."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": escape(record.getMessage()),
        }
        for key, value in record_fields(record).items():
            if key not in _BASE_KEYS and value is not None:  # as in text: no value, no key
                line[escape(str(key))] = _json_value(value)
        if record.exc_info:
            line["exception"] = escape(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = escape(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def _utc(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_json_value(each) for each in value]
    return escape(str(value))


def text_fields(values: Mapping[str, Any]) -> str:
    """` key=value` for each field that has a value; values with spaces, quotes or `=` quoted."""
    return "".join(
        f" {key}={_text_value(value)}" for key, value in values.items() if value is not None
    )


def _text_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        value = ",".join(str(each) for each in value)
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def configure_logging(settings: LoggingSettings | None = None) -> None:
    """Set the level, and the format of every handler writing to the console (ours and
    gunicorn's): JSON or text as `settings.format` says (auto: JSON unless stderr is a
    terminal). Other handlers (a host's file, a test's capture) keep their own format; all
    are made safe. Called again with the settings once they are loaded; a later call without
    settings keeps what they chose."""
    if settings is None:
        settings = _chosen.get("settings", LoggingSettings())
    else:
        _chosen["settings"] = settings
    level = _level(settings)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
        setattr(root.handlers[0], _OWN, True)
    if any(getattr(handler, _OWN, False) for handler in root.handlers):
        root.setLevel(level)
    elif root.level == logging.WARNING:  # gunicorn, pytest or the host set it up
        logging.getLogger("webhooks").setLevel(level)
    as_json = _json_wanted(settings.format)
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if _is_console(handler):
                use_format(handler, as_json)
            else:
                make_safe(handler)


def make_safe(handler: logging.Handler) -> None:
    if not isinstance(handler.formatter, EscapingFormatter):
        handler.setFormatter(EscapingFormatter(handler.formatter))


def use_format(handler: logging.Handler, as_json: bool) -> None:
    """JSON lines or the handler's own (escaped) text format."""
    current = handler.formatter
    own = current.inner if isinstance(current, EscapingFormatter) else current
    if as_json and not isinstance(current, JsonFormatter):
        handler.setFormatter(JsonFormatter(own))
    elif not as_json and (current is None or type(current) is not EscapingFormatter):
        handler.setFormatter(EscapingFormatter(own))


def _json_wanted(chosen: LogFormat) -> bool:
    if chosen is not LogFormat.AUTO:
        return chosen is LogFormat.JSON
    try:
        return not (sys.stderr is not None and sys.stderr.isatty())
    except (OSError, ValueError):  # closed or detached: nobody is reading it on a terminal
        return True


def _is_console(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    console = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return any(handler.stream is stream for stream in console if stream is not None)


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


def _level(settings: LoggingSettings) -> str:
    """CONVERT_WEBHOOKS_LOG_LEVEL, else `logging.level`."""
    return (os.environ.get("CONVERT_WEBHOOKS_LOG_LEVEL") or settings.level).upper()
