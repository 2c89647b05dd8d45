"""Custom: a configurable source for a shop's own software (a home-grown shop, an internal
order service). There is no platform to copy: each source says how its deliveries are signed
(`signature`), which value identifies a delivery across retries (`delivery_key`) and where the
order's values are in the JSON body (`mapping`, adapters/mapping.py). Set-up and every key:
README, "Custom source".

Signatures (`sources.<name>.signature`, kind):
- "hmac": an HMAC-SHA256 or -SHA512 of the raw body, hex or base64, in a header, after an
  optional prefix such as "sha256=" (schemes.BodyHmac); with `timestamp_header`, of
  `"{timestamp}.{body}"` (or the `signed` template) with a window (schemes.TimestampHeaderHmac).
- "standard_webhooks": standardwebhooks.com v1 (schemes.StandardWebhooks).
- "basic_auth": `Authorization: Basic` with `user:password` secrets (the body is not signed).
SHA-1 is refused: HMAC-SHA1 is not broken, but the sender is the shop's own code, which can
use SHA-256 as easily, and a new set-up should not start on a hash being retired.

Delivery key (the same on every retry of one delivery, so a retry is stored once): a header
(`delivery_key.header`), a body value (`delivery_key.path`), the Standard Webhooks
`webhook-id` with that kind, else the SHA-256 of the raw body: a retry is then a duplicate only
when its body is byte for byte the same (a sender that writes the attempt time or number into
the body makes each retry a new delivery; the order id still counts the purchase once).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from adapters.base import Parse, PlatformSpec, Sample
from adapters.mapping import MappingOptions, Path, compile_mapping, path_field
from adapters.payload import load_json_object
from adapters.schemes import (
    BasicAuth,
    BodyHmac,
    SignatureScheme,
    StandardWebhooks,
    TimestampHeaderHmac,
)
from webhooks.core.errors import PayloadError
from webhooks.core.events import MAX_ID_CHARS, ParseResult, check_key

platform = "custom"

KINDS = ("hmac", "standard_webhooks", "basic_auth")
ALGORITHMS = ("sha256", "sha512")
ENCODINGS = ("hex", "base64")
DEFAULT_SIGNED = "{timestamp}.{body}"
MAX_WINDOW_SECONDS = 86_400
# Header names: an RFC 9110 token, at most 64 characters.
_HEADER_NAME = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z", re.ASCII)
# What a sender may put before a signature ("sha256=", "v1="): printable ASCII, no spaces.
_PREFIX = re.compile(r"\A[\x21-\x7e]{0,32}\Z", re.ASCII)
# `signed`: "<text>{timestamp}<text>{body}", the texts printable ASCII without braces.
_SIGNED = re.compile(r"\A([\x20-\x7a|~]{0,16})\{timestamp\}([\x20-\x7a|~]{0,8})\{body\}\Z")
# A delivery's key from its headers, body and raw bytes.
KeyRule = Callable[[Mapping[str, str], Mapping[str, Any], bytes], str]
_HMAC_ONLY = ("header", "algorithm", "encoding", "prefix", "timestamp_header", "signed")


def _header_name(value: str) -> None:
    if not _HEADER_NAME.fullmatch(value):
        raise ValidationError("must be a header name (letters, digits and -, at most 64)")


def _algorithm(value: str) -> None:
    if value == "sha1":
        raise ValidationError(
            'sha1 is not offered: your sender is your own code, sign with "sha256" (or "sha512")'
        )
    if value not in ALGORITHMS:
        raise ValidationError('must be "sha256" or "sha512"')


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class SignatureOptions(_Strict):
    """`sources.<name>.signature`."""

    kind = fields.String(
        required=True, validate=validate.OneOf(KINDS, error=f"must be one of: {', '.join(KINDS)}")
    )
    header = fields.String(validate=_header_name)
    algorithm = fields.String(validate=_algorithm)
    encoding = fields.String(validate=validate.OneOf(ENCODINGS, error='must be "hex" or "base64"'))
    prefix = fields.String(
        validate=validate.Regexp(_PREFIX, error="must be at most 32 printable ASCII characters")
    )
    timestamp_header = fields.String(validate=_header_name)
    window_seconds = fields.Integer(
        strict=True, validate=validate.Range(min=1, max=MAX_WINDOW_SECONDS)
    )
    signed = fields.String(
        validate=validate.Regexp(
            _SIGNED,
            error="must be text, {{timestamp}}, text, {{body}} (e.g. {{timestamp}}.{{body}})",
        )
    )

    @validates_schema
    def _consistent(self, data: Mapping[str, Any], **_: Any) -> None:
        problems: dict[str, list[str]] = {}
        if data["kind"] != "hmac":
            for key in (*_HMAC_ONLY, "window_seconds"):
                if key in data:
                    problems[key] = ['is only read with kind = "hmac"']
        elif "header" not in data:
            problems["header"] = ['is required with kind = "hmac"']
        timed = "timestamp_header" in data
        if timed and "window_seconds" not in data:
            problems["window_seconds"] = ["is required with timestamp_header (e.g. 300)"]
        if not timed:
            for key in ("window_seconds", "signed"):
                if key in data and data["kind"] == "hmac":
                    problems[key] = ["is only read with timestamp_header"]
        hmac_timed = timed and data["kind"] == "hmac"
        if hmac_timed and data["timestamp_header"].lower() == data.get("header", "").lower():
            problems["timestamp_header"] = ["must differ from header"]
        if problems:
            raise ValidationError(problems)


class DeliveryKeyOptions(_Strict):
    """`sources.<name>.delivery_key`: a header or a body path (not both)."""

    header = fields.String(validate=_header_name)
    path = path_field()

    @validates_schema
    def _one(self, data: Mapping[str, Any], **_: Any) -> None:
        if len(data) != 1:
            raise ValidationError("set exactly one of header or path", "header")


class Options(_Strict):
    """`sources.<name>` keys of a custom source. No defaults are filled in: the loaded options
    are what the file says (choose_scheme and configure apply the defaults)."""

    signature = fields.Nested(SignatureOptions, required=True)
    mapping = fields.Nested(MappingOptions, required=True)
    delivery_key = fields.Nested(DeliveryKeyOptions)


def choose_scheme(options: Mapping[str, Any]) -> SignatureScheme:
    """The source's scheme, from its (validated) `signature` options. Called per request:
    it only reads a few keys and builds a small frozen object."""
    signature: Mapping[str, Any] = options.get("signature") or {}
    kind = signature.get("kind")
    if kind == "standard_webhooks":
        return StandardWebhooks()
    if kind == "basic_auth":
        return BasicAuth()
    if kind != "hmac" or not isinstance(signature.get("header"), str):
        raise ValueError("custom source: signature options did not load")  # config refuses
    header: str = signature["header"]
    encoding: Literal["hex", "base64"] = (
        "base64" if signature.get("encoding") == "base64" else "hex"
    )
    algorithm: Literal["sha256", "sha512"] = (
        "sha512" if signature.get("algorithm") == "sha512" else "sha256"
    )
    prefix: str = signature.get("prefix", "")
    # A hex SHA-512 is 128 characters; room for the prefix and surrounding spaces.
    max_chars = len(prefix) + 160
    stamp = signature.get("timestamp_header")
    if stamp is None:
        return BodyHmac(header, encoding, prefix, max_chars=max_chars, algorithm=algorithm)
    match = _SIGNED.fullmatch(signature.get("signed", DEFAULT_SIGNED))
    assert match is not None  # validated by SignatureOptions
    return TimestampHeaderHmac(
        header,
        stamp,
        encoding,
        prefix,
        algorithm,
        signed_prefix=match.group(1),
        joiner=match.group(2),
        window_seconds=signature.get("window_seconds"),
        max_chars=max_chars,
    )


def configure(options: Mapping[str, Any]) -> Parse:
    """The parse function of one custom source: its mapping compiled once."""
    try:
        loaded = Options().load(dict(options))
    except ValidationError as exc:
        raise ValueError(f"custom source options do not load: {exc.messages}") from exc
    mapping = compile_mapping(loaded["mapping"])
    delivery_key = _delivery_key_rule(loaded)

    def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
        body = load_json_object(raw)
        return mapping.read(delivery_key(headers, body, raw), body, platform)

    return parse


def _delivery_key_rule(loaded: Mapping[str, Any]) -> KeyRule:
    rule = loaded.get("delivery_key") or {}
    if "header" in rule:
        return _from_header(rule["header"])
    if "path" in rule:
        return _from_path(Path.of(rule["path"]))
    if loaded["signature"]["kind"] == "standard_webhooks":
        return _from_header(StandardWebhooks().id_header)
    return _body_digest


def _from_header(name: str) -> KeyRule:
    lower = name.lower()

    def key(headers: Mapping[str, str], body: Mapping[str, Any], raw: bytes) -> str:
        value = headers.get(lower)
        if not value:
            raise PayloadError(f"missing {name} header")
        return check_key(value, f"header {name}", MAX_ID_CHARS)

    return key


def _from_path(path: Path) -> KeyRule:
    def key(headers: Mapping[str, str], body: Mapping[str, Any], raw: bytes) -> str:
        value = path.required(body)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**20:
            value = str(value)
        return check_key(value, path.field, MAX_ID_CHARS)

    return key


def _body_digest(headers: Mapping[str, str], body: Mapping[str, Any], raw: bytes) -> str:
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


# --- the sample: a home-grown shop's order (tests/fixtures/custom/SOURCES.md) ---------------

SAMPLE_OPTIONS: Mapping[str, Any] = {
    "signature": {
        "kind": "hmac",
        "header": "X-Shop-Signature",
        "algorithm": "sha256",
        "encoding": "hex",
        "prefix": "sha256=",
    },
    "delivery_key": {"path": "event_id"},
    "mapping": {
        "event_type": "event",
        "purchase_types": ["order.paid"],
        "renewal_types": ["subscription.renewed"],
        "refund_types": ["order.refunded"],
        "order_id": "order.id",
        "amount": {"path": "order.totals.grand_total", "unit": "decimal"},
        "currency": {"path": "order.currency"},
        "items": {"list": "order.lines", "quantity": "qty"},
        "customer_id": "order.customer.id",
        "email": "order.customer.email",
        "experiments": {"path": "order.tracking.convert_experiments"},
        "test": {"path": "test"},
        "paid": {"path": "order.payment.status", "values": ["captured"]},
        "occurred_at": "order.placed_at",
        "refund_of": "order.id",
        "refund_id": "refund.id",
        "refund_amount": "refund.amount",
    },
}


def _add_pairs(body: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    body["event_id"] = f"evt_sample_{uuid.uuid4().hex[:12]}"  # a new delivery, not a retry
    body["order"].setdefault("tracking", {})["convert_experiments"] = pairs


SAMPLE = Sample(
    "order_paid.json",
    {"User-Agent": "atelier-lumen-shop/4.2 (order-webhooks)"},
    options=SAMPLE_OPTIONS,
    add_pairs=_add_pairs,
)
SPEC = PlatformSpec(
    platform,
    choose_scheme(SAMPLE_OPTIONS),  # the sample's; each source's comes from choose_scheme
    configure(SAMPLE_OPTIONS),
    SAMPLE,
    options=Options,
    configure=configure,
    choose_scheme=choose_scheme,
)
