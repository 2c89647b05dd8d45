"""The one error hierarchy of the service.

Each error that can reach a client carries the HTTP status it maps to, so the routes never
guess: a signature problem is 401, a body the platform would not send is 400, storage that
cannot be written is 503 (the platform retries), never a 500.
"""

from __future__ import annotations

# What a buggy or hostile payload can make a mapping function raise besides PayloadError. A
# signed body that does so is kept as rejected (replayable after a fix) and answered 400.
PARSE_FAILURES = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


class ConvertWebhooksError(Exception):
    """Root of every error this service raises on purpose."""

    http_status = 500


class ConfigError(ConvertWebhooksError):
    """The configuration is missing, unreadable or invalid; `problems` names each bad key."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        lines = [f"{key}: {message}" for key, message in sorted(problems.items())]
        super().__init__("invalid configuration:\n  " + "\n  ".join(lines))


class SignatureError(ConvertWebhooksError):
    """The request is not signed by the platform with a secret we hold."""

    http_status = 401


class PayloadError(ConvertWebhooksError):
    """The (correctly signed) body is not something the platform sends."""

    http_status = 400


class StorageError(ConvertWebhooksError):
    """The database could not be read or written; the caller should retry later."""

    http_status = 503
    retry_after = "30"  # seconds, the Retry-After of every 503


class UnstorableError(PayloadError):
    """A verified delivery holds a value the database refuses (too long for a column, NUL in
    PostgreSQL text, an integer out of range, ...). Retrying cannot help: a 400, and the body
    is kept as rejected."""


class RequestBodyError(ConvertWebhooksError):
    """The request body could not be read (the client broke off, a malformed chunk)."""

    http_status = 400


class BodyTooLargeError(RequestBodyError):
    """The request body is larger than `server.max_body_bytes`."""

    http_status = 413


class FetchFailed(ConvertWebhooksError):  # noqa: N818 (a condition, like StopIteration)
    """A platform API call lent to an adapter's details step had no answer to give: a
    network error, a timeout, an answer past the size cap, 429 or a 5xx. Never reaches a
    client: the dispatcher waits (at least `retry_after` seconds when the platform said so)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
