"""Reading exposure reports (the JSON of POST /api/exposures, the rows of the CSV import)
into records for the exposure store, with a message per bad field.

Shared by the web route and the CLI (which may not import each other), so it sits here, below
both. Messages name the field, never its value (it may be an address or a customer id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from adapters.payload import MAX_EMAIL_CHARS, email_digest
from webhooks.core.errors import PayloadError
from webhooks.core.events import MAX_ID_CHARS, check_id, check_key
from webhooks.core.settings import Settings
from webhooks.storage.digests import keyed_digest
from webhooks.storage.exposures import Exposure

MAX_PAIRS_PER_REPORT = 100
MAX_TIME_CHARS = 64
# A back end's clock may run a little ahead of ours; more than this is not a past exposure.
FUTURE_SKEW_SECONDS = 300.0
_PAIR = re.compile(r"\A([0-9]{1,20})-([0-9]{1,20})\Z", re.ASCII)
_FIELD_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
TIME_FORMAT_HELP = "an ISO 8601 time with a time zone, e.g. 2027-01-15T08:00:00Z"


class _CustomerId(fields.Field):
    """The platform's customer id: a string (Stripe's cus_...) or a positive integer
    (Shopify's), kept as text."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 < value < 2**64:
                raise ValidationError("must be a positive 64-bit integer or a string")
            return str(value)
        try:
            return check_id(value, "the id", MAX_ID_CHARS).strip()
        except PayloadError as exc:
            raise ValidationError(str(exc)) from exc


def _pair(value: str) -> None:
    if not _PAIR.fullmatch(value):
        raise ValidationError("must be EXPERIMENT-VARIATION, both ids ASCII digits")


def _visitor(value: str) -> None:
    try:
        check_key(value, "visitor_id", MAX_ID_CHARS)
    except PayloadError as exc:
        raise ValidationError("must be 1 to 255 printable ASCII characters, no spaces") from exc


def _email(value: str) -> None:
    if len(value) > MAX_EMAIL_CHARS or email_digest(value) is None:
        raise ValidationError("must be an email address")


def parse_time(value: str, now: float) -> float:
    """Unix seconds of an ISO 8601 time with a time zone, not in the future."""
    if len(value) > MAX_TIME_CHARS:
        raise ValidationError(f"must be {TIME_FORMAT_HELP}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValidationError(f"must be {TIME_FORMAT_HELP}") from exc
    if moment.tzinfo is None:
        raise ValidationError(f"has no time zone: must be {TIME_FORMAT_HELP}")
    try:
        seconds = moment.astimezone(UTC).timestamp()
    except (OverflowError, ValueError) as exc:  # year 1 with an offset east of UTC, ...
        raise ValidationError(f"must be {TIME_FORMAT_HELP}") from exc
    if seconds < 0:
        raise ValidationError("is before 1970")
    if seconds > now + FUTURE_SKEW_SECONDS:
        raise ValidationError("is in the future")
    return seconds


class ExposureSchema(Schema):
    """One report. The names are the public contract: keep them."""

    class Meta:
        unknown = RAISE  # a misspelt "exposed_at" must not silently become "now"

    source = fields.String(load_default=None, allow_none=True)
    customer_id = _CustomerId(load_default=None, allow_none=True)
    email = fields.String(load_default=None, allow_none=True, validate=_email)
    visitor_id = fields.String(load_default=None, allow_none=True, validate=_visitor)
    pairs = fields.List(
        fields.String(validate=_pair),
        required=True,
        validate=validate.Length(
            min=1,
            max=MAX_PAIRS_PER_REPORT,
            error=f"must list 1 to {MAX_PAIRS_PER_REPORT} pairs",
        ),
    )
    exposed_at = fields.String(load_default=None, allow_none=True)

    def __init__(self, settings: Settings, now: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.now = now

    @validates_schema
    def _customer_key(self, data: Mapping[str, Any], **_: Any) -> None:
        problems: dict[str, list[str]] = {}
        source, customer, email = data.get("source"), data.get("customer_id"), data.get("email")
        if source is not None and source not in self.settings.sources:
            known = ", ".join(sorted(self.settings.sources))
            problems["source"] = [f"is not a configured source (configured: {known})"]
        if customer is not None and source is None:
            problems["source"] = ["is required with customer_id (ids are per platform)"]
        if customer is None and email is None and not problems:
            problems["customer_id"] = ["give source and customer_id, or email (or both)"]
        if email is not None and self.settings.privacy.email_key is None:
            problems["email"] = ["cannot be stored: privacy.email_key is not configured"]
        if data.get("exposed_at") is not None:
            try:
                parse_time(data["exposed_at"], self.now)
            except ValidationError as exc:
                problems["exposed_at"] = [str(m) for m in exc.messages]
        if problems:
            raise ValidationError(problems)

    @post_load
    def _record(self, data: dict[str, Any], **_: Any) -> Exposure:
        key = self.settings.privacy.email_key
        email = data["email"]
        digest = None
        if email is not None and key is not None:
            plain = email_digest(email)
            digest = keyed_digest(key, plain) if plain else None
        pairs: dict[tuple[str, str], None] = {}
        for pair in data["pairs"]:
            experiment, variation = pair.split("-")
            pairs.setdefault((str(int(experiment)), str(int(variation))))
        exposed = data["exposed_at"]
        return Exposure(
            source=data["source"],
            customer_id=data["customer_id"],
            email_digest=digest,
            pairs=tuple(pairs),
            exposed_at=self.now if exposed is None else parse_time(exposed, self.now),
            visitor_id=data["visitor_id"],
        )


def _bulk_schema(settings: Settings, now: float) -> Schema:
    limit = settings.exposures.max_records
    records = fields.List(
        fields.Nested(ExposureSchema(settings, now)),
        required=True,
        validate=validate.Length(min=1, max=limit, error=f"must hold 1 to {limit} records"),
    )
    return Schema.from_dict({"exposures": records})(unknown=RAISE)


def read_reports(body: object, settings: Settings, now: float) -> list[Exposure]:
    """The records of a request body (one report, or {"exposures": [...]}); ValidationError
    with messages keyed by field path ("exposures.3.pairs.0") when anything is wrong."""
    if not isinstance(body, dict):
        raise ValidationError({"(body)": ["must be a JSON object"]})
    if "exposures" in body:
        loaded = _bulk_schema(settings, now).load(body)
        return list(loaded["exposures"])
    return [ExposureSchema(settings, now).load(body)]


def read_row(row: Mapping[str, str], settings: Settings, now: float) -> Exposure:
    """A CSV row: the JSON names as columns, empty cells absent, pairs separated by commas
    or spaces."""
    data: dict[str, Any] = {k: v for k, v in row.items() if k is not None and v not in ("", None)}
    if "pairs" in data:
        data["pairs"] = [p for p in re.split(r"[,\s]+", data["pairs"]) if p]
    return ExposureSchema(settings, now).load(data)  # type: ignore[no-any-return]


def field_messages(messages: Any, prefix: str = "") -> dict[str, str]:
    """Marshmallow's nested messages as {"exposures.3.pairs.0": "message"}."""
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "(body)": " ".join(messages)}
    if isinstance(messages, dict):
        out: dict[str, str] = {}
        for key, value in messages.items():
            name = str(key)
            if name == "_schema":
                name = ""
            elif not _FIELD_NAME.fullmatch(name):  # an unknown key the client chose: not echoed
                name = "(unknown field)"
            path = f"{prefix}.{name}" if prefix and name else prefix or name
            out.update(field_messages(value, path))
        return out
    return {prefix or "(body)": str(messages)}
