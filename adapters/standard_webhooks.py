"""Standard Webhooks: any sender that follows standardwebhooks.com v1 (Svix-based senders and
others), with the body read by a per-source field mapping.

Signature (spec/standard-webhooks.md in standard-webhooks/standard-webhooks, schemes.
StandardWebhooks): `webhook-signature: v1,<base64>` (space-separated, several while a secret
is rolled), base64 HMAC-SHA256 of `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the
base64-decoded `whsec_` secret; the timestamp within 5 minutes either way (the source's
`tolerance_seconds` overrides it).

Delivery key: the `webhook-id` header, "the same no matter how many times a webhook that has
failed is retried" (the spec). The spec leaves the body to the sender (it recommends
`{type, timestamp, data}`), so each source maps it: `sources.<name>.mapping`, the same keys
as the custom source (adapters/mapping.py, README "Custom source").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields

from adapters.base import Parse, PlatformSpec, Sample
from adapters.mapping import MappingOptions, compile_mapping
from adapters.payload import load_json_object
from adapters.schemes import StandardWebhooks
from webhooks.core.errors import PayloadError
from webhooks.core.events import MAX_ID_CHARS, ParseResult, check_key

platform = "standard_webhooks"

SCHEME = StandardWebhooks()


class Options(Schema):
    """`sources.<name>` keys of a Standard Webhooks source: the field mapping."""

    class Meta:
        unknown = RAISE

    mapping = fields.Nested(MappingOptions, required=True)


def configure(options: Mapping[str, Any]) -> Parse:
    """The parse function of one source: its mapping compiled once."""
    try:
        loaded = Options().load(dict(options))
    except ValidationError as exc:
        raise ValueError(f"standard_webhooks options do not load: {exc.messages}") from exc
    mapping = compile_mapping(loaded["mapping"])

    def parse(headers: Mapping[str, str], raw: bytes) -> ParseResult:
        body = load_json_object(raw)
        return mapping.read(delivery_key(headers), body, platform)

    return parse


def delivery_key(headers: Mapping[str, str]) -> str:
    """The `webhook-id` header (already checked by the scheme: printable ASCII, no ".")."""
    value = headers.get(SCHEME.id_header)
    if not value:
        raise PayloadError(f"missing {SCHEME.id_header} header")
    return check_key(value, f"header {SCHEME.id_header}", MAX_ID_CHARS)


# --- the sample: the specification's own example payload ------------------------------------
# The spec's example is no order (`example.event`, data {"foo": "bar", "fizzbuzz": 2}); the
# sample mapping reads it as one so the contract suite and send_sample.py can post it end to
# end. A real sender's mapping names its own fields (README, "Standard Webhooks").

SAMPLE_OPTIONS: Mapping[str, Any] = {
    "mapping": {
        "event_type": "type",
        "purchase_types": ["example.event"],
        "order_id": "data.foo",
        "amount": {"path": "data.fizzbuzz", "unit": "decimal"},
        "currency": {"fixed": "USD"},
        "experiments": {"path": "data.convert_experiments"},
        "occurred_at": "timestamp",
    }
}


def _add_pairs(body: dict[str, Any], headers: dict[str, str], pairs: str) -> None:
    body["data"]["convert_experiments"] = pairs
    # The signer derives webhook-id from the body: a new event time makes a new delivery.
    body["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")


SAMPLE = Sample(
    "example_event.json",
    # The library test's secret, and a second whsec_ secret for the rotation test.
    secrets=(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_cHJldmlvdXMtY29udHJhY3Qtc2VjcmV0LTI=",
    ),
    options=SAMPLE_OPTIONS,
    add_pairs=_add_pairs,
)
SPEC = PlatformSpec(
    platform,
    SCHEME,
    configure(SAMPLE_OPTIONS),  # the sample's; each source's comes from configure
    SAMPLE,
    options=Options,
    configure=configure,
)
