"""Signature schemes: reusable objects that verify a request and sign a body the same way.

A platform spec names its scheme; the routes verify with it, and the tests and
`scripts/send_sample.py` sign with it. Each platform's known-answer test pins the scheme to the
platform's own SDK or documentation, so signing cannot merely agree with itself.

Every scheme reads unauthenticated input: each malformed header is a SignatureError (401),
never another exception; headers are bounded before they are parsed; digests are compared in
constant time, every candidate against every secret, with no early exit.

- BodyHmac: an HMAC of the raw body in one header, hex or base64 (Shopify, WooCommerce, ...),
  SHA-256 or SHA-512.
- TimestampHeaderHmac: an HMAC of `{timestamp}.{body}` in one header and the timestamp in
  another (Slack style; the custom source's timestamped choice), with a time window.
- TimestampedHmac: `t=<unix>,v1=<hex>` over `"{t}.{body}"` (Stripe) or `ts=<unix>;h1=<hex>` over
  `"{ts}:{body}"` (Paddle), with a time window and several signatures (secret rotation).
- StandardWebhooks: standardwebhooks.com v1 (`webhook-id`, `webhook-timestamp`,
  `webhook-signature: v1,<base64> ...`, `whsec_` base64 secrets).
- BasicAuth: `Authorization: Basic` with `user:password` secrets (the body is not signed).
- UrlSignedScheme: the base for schemes that sign the configured URL; UrlBodyHmac: an HMAC of
  the URL and the body (Square).
- FetchVerification: the protocol for schemes that ask the platform; no platform needs it yet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from adapters.request import SignedRequest
from webhooks.core.errors import SignatureError

# A real signature header is a timestamp plus one signature per active secret: well under
# 1 KB. Anything past 4 KB is refused before it is split.
MAX_HEADER_CHARS = 4096
# Unix seconds as ASCII digits, at most 12 (int() would take "²" or "٣", and a 5,000-digit
# value raises past Python's digit limit).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_BASE64_SHA256 = re.compile(r"[A-Za-z0-9+/]{43}=")
# HMAC digests the schemes offer (hashlib names). No SHA-1: see TimestampHeaderHmac.
Algorithm = Literal["sha256", "sha512"]
# Standard Webhooks message ids: printable ASCII without "." (the field separator of the signed
# content: an id holding one could shift bytes between the id, the timestamp and the body).
_MESSAGE_ID = re.compile(r"[\x21-\x2d\x2f-\x7e]{1,256}")


class SignatureScheme(Protocol):
    """What every scheme offers.

    `verify` raises SignatureError unless the request carries a valid signature made with one
    of `secrets`; `tolerance` (seconds) overrides the scheme's own window where it has one.
    `sign` returns the headers the platform would send with `body` (what tests and the sample
    sender post). `secret_problem` says why a configured secret cannot work with this scheme
    (checked by `check-config`), or None."""

    @property
    def window_seconds(self) -> int | None:
        """How far a signed timestamp may be from now, either way; None: not timestamped."""

    @property
    def signs_body(self) -> bool:
        """False when a changed body still verifies (basic auth)."""

    @property
    def needs_url(self) -> bool:
        """True when the URL is signed: the source must configure `url`."""

    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None: ...

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]: ...

    def secret_problem(self, secret: str) -> str | None: ...


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def hmac_digest(algorithm: Algorithm, key: bytes, message: bytes, encoding: str) -> bytes:
    """HMAC of `message` as ASCII bytes: lower-case hex or standard base64."""
    digest = hmac.new(key, message, algorithm).digest()
    return digest.hex().encode() if encoding == "hex" else base64.b64encode(digest)


def any_matches(expected: Iterable[bytes], given: Sequence[bytes]) -> bool:
    """Constant-time: every expected digest is compared with every given one, no early exit,
    so timing says nothing about which secret or which signature matched."""
    found = False
    for digest in expected:
        for candidate in given:
            found |= hmac.compare_digest(digest, candidate)
    return found


def _raw(text: str) -> bytes:
    # Any str encodes (a lone surrogate too), so a hostile header cannot raise here.
    return text.encode("utf-8", "surrogatepass")


def _header(request: SignedRequest, name: str) -> str:
    value = request.headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header")
    return value


def _timestamp(text: str, what: str) -> int:
    if not _TIMESTAMP.fullmatch(text):
        raise SignatureError(f"malformed {what}")
    return int(text)


def _check_window(what: str, timestamp: int, now: float, window: int) -> None:
    age = now - timestamp
    if age > window:
        raise SignatureError(f"{what} is {int(age)} s old")
    if -age > window:
        raise SignatureError(f"{what} is {int(-age)} s in the future")


@dataclass(frozen=True)
class BodyHmac:
    """HMAC-SHA256 (or `algorithm`) of the raw body keyed with the secret (UTF-8), in
    `header`, hex or base64, after an optional `prefix` (e.g. "sha256="). Nothing else is
    signed: no time window."""

    header: str
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    max_chars: int = 128  # a base64 SHA-256 is 44 characters, hex 64 (SHA-512: 88 and 128)
    algorithm: Algorithm = "sha256"

    window_seconds: ClassVar[int | None] = None
    signs_body: ClassVar[bool] = True
    needs_url: ClassVar[bool] = False

    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None:
        given = _header(request, self.header)
        if len(given) > self.max_chars:
            raise SignatureError(f"{self.header} is too long to be a signature")
        given = given.strip()
        if self.prefix:
            if not given.startswith(self.prefix):
                raise SignatureError(f"malformed {self.header} header")
            given = given[len(self.prefix) :]
        expected = [self._digest(secret, request.body) for secret in secrets]
        if not any_matches(expected, [_raw(given)]):
            raise SignatureError(f"{self.header} does not match a configured secret")

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]:
        return {self.header: self.prefix + self._digest(secret, body).decode()}

    def secret_problem(self, secret: str) -> str | None:
        return None

    def _digest(self, secret: str, body: bytes) -> bytes:
        return hmac_digest(self.algorithm, secret.encode(), body, self.encoding)


@dataclass(frozen=True)
class TimestampHeaderHmac:
    """An HMAC (SHA-256 or SHA-512) of `"{signed_prefix}{timestamp}{joiner}{body}"` keyed with
    the secret (UTF-8), in `header` (hex or base64, after an optional `prefix`), with the Unix
    timestamp in a header of its own, checked against a window either way.

    Slack signs this way (api.slack.com/authentication/verifying-requests-from-slack:
    `X-Slack-Signature: v0=<hex>` over `v0:{X-Slack-Request-Timestamp}:{body}`); its SDK's
    test vector pins this class. The custom source offers it to home-grown senders.

    The timestamp is signed as sent (1-12 ASCII digits): a sender's leading zero stays in the
    signed text. SHA-1 is not offered: HMAC-SHA1 is not broken, but every sender that uses
    this scheme is the shop's own code, which can as easily use SHA-256."""

    header: str
    timestamp_header: str
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    algorithm: Algorithm = "sha256"
    signed_prefix: str = ""
    joiner: str = "."
    window_seconds: int | None = 300
    max_chars: int = 256

    signs_body: ClassVar[bool] = True
    needs_url: ClassVar[bool] = False

    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None:
        given = _header(request, self.header)
        stamp = _header(request, self.timestamp_header)
        if len(given) > self.max_chars:
            raise SignatureError(f"{self.header} is too long to be a signature")
        timestamp = _timestamp(stamp, f"{self.timestamp_header} header")
        given = given.strip()
        if self.prefix:
            if not given.startswith(self.prefix):
                raise SignatureError(f"malformed {self.header} header")
            given = given[len(self.prefix) :]
        signed = self._signed(stamp, request.body)
        expected = [self._digest(secret, signed) for secret in secrets]
        if not any_matches(expected, [_raw(given)]):
            raise SignatureError(f"{self.header} does not match a configured secret")
        window = self.window_seconds if tolerance is None else tolerance
        if window is not None:
            _check_window(f"{self.timestamp_header} timestamp", timestamp, now, window)

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]:
        stamp = str(int(now))
        digest = self._digest(secret, self._signed(stamp, body)).decode()
        return {self.header: self.prefix + digest, self.timestamp_header: stamp}

    def secret_problem(self, secret: str) -> str | None:
        return None

    def _signed(self, stamp: str, body: bytes) -> bytes:
        return _raw(f"{self.signed_prefix}{stamp}{self.joiner}") + body

    def _digest(self, secret: str, signed: bytes) -> bytes:
        return hmac_digest(self.algorithm, secret.encode(), signed, self.encoding)


@dataclass(frozen=True)
class TimestampedHmac:
    """`<t>=<unix><sep><sig>=<hex>[<sep><sig>=<hex>...]`: hex HMAC-SHA256 of
    `"{unix}{joiner}{body}"`, keyed with the secret as UTF-8. Any signature may match (the
    platform sends one per active secret while a secret is rolled); other keys are ignored.

    Stripe style (docs.stripe.com/webhooks/signatures, stripe-python `_webhook.py`): t, v1, ","
    and "." (a `v0` entry is ignored). Paddle style (developer.paddle.com/webhooks/
    signature-verification, paddle-php-sdk `Verifier`): ts, h1, ";" and ":"; Paddle's SDK
    test sends a non-hex `h1=dummy` next to the real one, so Paddle style skips malformed
    signatures where Stripe style refuses them. Either way a signature that is not 64 lower
    case hex digits cannot match, and the timestamp must be 1-12 ASCII digits."""

    header: str
    separator: str = ","
    timestamp_key: str = "t"
    signature_key: str = "v1"
    joiner: str = "."
    window_seconds: int | None = 300
    skip_malformed: bool = False

    signs_body: ClassVar[bool] = True
    needs_url: ClassVar[bool] = False

    @classmethod
    def stripe_style(cls, header: str = "Stripe-Signature", window: int = 300) -> TimestampedHmac:
        return cls(header, ",", "t", "v1", ".", window)

    @classmethod
    def paddle_style(cls, header: str = "Paddle-Signature", window: int = 5) -> TimestampedHmac:
        # Paddle's SDKs allow 5 s; a source's `tolerance_seconds` overrides it.
        return cls(header, ";", "ts", "h1", ":", window, skip_malformed=True)

    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None:
        timestamp, signatures = self._parse(_header(request, self.header))
        name, key = self.header, self.signature_key
        if not signatures:
            raise SignatureError(f"{name} has no {key} signature")
        signed = f"{timestamp}{self.joiner}".encode() + request.body
        expected = [hmac_sha256(s.encode(), signed).hex().encode() for s in secrets]
        if not any_matches(expected, [s.encode() for s in signatures]):
            raise SignatureError(f"no {name} {key} signature matches a configured secret")
        window = self.window_seconds if tolerance is None else tolerance
        if window is not None:
            _check_window(f"{name} timestamp", timestamp, now, window)

    def _parse(self, header: str) -> tuple[int, list[str]]:
        name = self.header
        if len(header) > MAX_HEADER_CHARS:
            raise SignatureError(f"{name} header is too long")
        timestamp: int | None = None
        signatures: list[str] = []
        for item in header.split(self.separator):
            key, sep, value = item.strip().partition("=")
            if not sep or not key:
                raise SignatureError(f"malformed {name} header")
            if key == self.timestamp_key:
                if timestamp is not None:
                    raise SignatureError(f"malformed {name} timestamp")
                timestamp = _timestamp(value, f"{name} timestamp")
            elif key == self.signature_key:
                if _HEX_SHA256.fullmatch(value):
                    signatures.append(value)
                elif not self.skip_malformed:
                    raise SignatureError(f"malformed {name} {key} signature")
        if timestamp is None:
            raise SignatureError(f"{name} has no timestamp")
        return timestamp, signatures

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]:
        t = int(now)
        digest = hmac_sha256(secret.encode(), f"{t}{self.joiner}".encode() + body).hex()
        value = f"{self.timestamp_key}={t}{self.separator}{self.signature_key}={digest}"
        return {self.header: value}

    def secret_problem(self, secret: str) -> str | None:
        return None


@dataclass(frozen=True)
class StandardWebhooks:
    """Standard Webhooks v1, symmetric (github.com/standard-webhooks/standard-webhooks,
    spec/standard-webhooks.md): base64 HMAC-SHA256 of `"{webhook-id}.{webhook-timestamp}.{body}"`
    keyed with the secret's bytes (`whsec_` + base64; the prefix is optional, as in the
    reference libraries). `webhook-signature` is a space-separated list of `v1,<base64>`;
    other versions (`v1a`: asymmetric) are ignored. The window is 5 minutes either way."""

    window_seconds: int | None = 300
    id_header: str = "webhook-id"
    timestamp_header: str = "webhook-timestamp"
    signature_header: str = "webhook-signature"

    signs_body: ClassVar[bool] = True
    needs_url: ClassVar[bool] = False
    secret_prefix: ClassVar[str] = "whsec_"

    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None:
        message_id = _header(request, self.id_header)
        timestamp_text = _header(request, self.timestamp_header)
        signature_text = _header(request, self.signature_header)
        if not _MESSAGE_ID.fullmatch(message_id):
            raise SignatureError(f"malformed {self.id_header} header")
        timestamp = _timestamp(timestamp_text, f"{self.timestamp_header} header")
        given = self._signatures(signature_text)
        signed = f"{message_id}.{timestamp}.".encode() + request.body
        keys = [key for key in map(self.key, secrets) if key is not None]
        expected = [base64.b64encode(hmac_sha256(key, signed)) for key in keys]
        if not any_matches(expected, given):
            name = self.signature_header
            raise SignatureError(f"no {name} v1 signature matches a configured secret")
        window = self.window_seconds if tolerance is None else tolerance
        if window is not None:
            _check_window(f"{self.timestamp_header}", timestamp, now, window)

    def _signatures(self, header: str) -> list[bytes]:
        name = self.signature_header
        if len(header) > MAX_HEADER_CHARS:
            raise SignatureError(f"{name} header is too long")
        found: list[bytes] = []
        for entry in header.split():
            version, sep, value = entry.partition(",")
            if not sep or not version:
                raise SignatureError(f"malformed {name} header")
            if version != "v1":
                continue
            if not _BASE64_SHA256.fullmatch(value):
                raise SignatureError(f"malformed {name} v1 signature")
            found.append(value.encode())
        if not found:
            raise SignatureError(f"{name} has no v1 signature")
        return found

    @classmethod
    def key(cls, secret: str) -> bytes | None:
        """The secret's key bytes, or None when it is not base64 (with or without `whsec_`)."""
        text = secret.removeprefix(cls.secret_prefix)
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
        return key or None

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]:
        key = self.key(secret)
        if key is None:
            raise ValueError("not a Standard Webhooks secret (whsec_ followed by base64)")
        # One id per message, the same on every retry: derived from the body unless given.
        message_id = delivery_id or f"msg_{hashlib.sha256(body).hexdigest()[:27]}"
        timestamp = int(now)
        signed = f"{message_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac_sha256(key, signed)).decode()
        return {
            self.id_header: message_id,
            self.timestamp_header: str(timestamp),
            self.signature_header: f"v1,{signature}",
        }

    def secret_problem(self, secret: str) -> str | None:
        if self.key(secret) is None:
            return "is not a Standard Webhooks secret (whsec_ followed by base64)"
        return None


@dataclass(frozen=True)
class BasicAuth:
    """HTTP Basic authentication (RFC 7617): each secret is `user:password`. It proves who
    sent the request, not what it says: `signs_body` is False (platforms that offer only this
    rely on HTTPS for the body)."""

    header: str = "Authorization"
    max_chars: int = 1024

    window_seconds: ClassVar[int | None] = None
    signs_body: ClassVar[bool] = False
    needs_url: ClassVar[bool] = False

    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None:
        value = _header(request, self.header)
        if len(value) > self.max_chars:
            raise SignatureError(f"{self.header} header is too long")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic" or not token.strip():
            raise SignatureError(f"{self.header} does not hold Basic credentials")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII text
            raise SignatureError(f"malformed {self.header} Basic credentials") from exc
        # Digests of equal length: the comparison says nothing about the password's length.
        expected = [hashlib.sha256(s.encode()).digest() for s in secrets]
        if not any_matches(expected, [hashlib.sha256(given).digest()]):
            raise SignatureError(f"{self.header} does not match a configured user and password")

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]:
        return {self.header: "Basic " + base64.b64encode(secret.encode()).decode()}

    def secret_problem(self, secret: str) -> str | None:
        user, sep, _ = secret.partition(":")
        return None if sep and user else "must be user:password for Basic authentication"


class UrlSignedScheme(ABC):
    """Base for schemes that sign the URL the platform called along with the body (Square:
    base64 HMAC-SHA256 of notification URL + body; Twilio: URL + sorted form parameters).

    The URL is `request.url`: the one configured as `sources.<name>.url`, exactly as entered in
    the platform's dashboard. It is never rebuilt from the Host or X-Forwarded-* headers,
    which the sender controls. `check-config` requires `url` for a source whose scheme has
    `needs_url`; `signed_url` refuses a request when it is missing all the same."""

    window_seconds: ClassVar[int | None] = None
    signs_body: ClassVar[bool] = True
    needs_url: ClassVar[bool] = True

    @staticmethod
    def signed_url(request: SignedRequest) -> str:
        if request.url is None:
            raise SignatureError("the source has no url configured, and this platform signs it")
        return request.url

    @abstractmethod
    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None: ...

    @abstractmethod
    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]: ...

    def secret_problem(self, secret: str) -> str | None:
        return None


@dataclass(frozen=True)
class UrlBodyHmac(UrlSignedScheme):
    """HMAC-SHA256 of the configured notification URL followed by the raw body, keyed with the
    secret (UTF-8), in `header` (Square: `x-square-hmacsha256-signature`, base64;
    developer.squareup.com/docs/webhooks/step3validate, square-python-sdk
    `utils/webhooks_helper.py`). No timestamp: no window."""

    header: str
    encoding: Literal["hex", "base64"] = "base64"
    max_chars: int = 128

    def verify(
        self,
        request: SignedRequest,
        secrets: Sequence[str],
        now: float,
        tolerance: int | None = None,
    ) -> None:
        given = _header(request, self.header)
        if len(given) > self.max_chars:
            raise SignatureError(f"{self.header} is too long to be a signature")
        signed = _raw(self.signed_url(request)) + request.body
        expected = [self._digest(secret, signed) for secret in secrets]
        if not any_matches(expected, [_raw(given.strip())]):
            raise SignatureError(f"{self.header} does not match a configured secret")

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        *,
        url: str | None = None,
        delivery_id: str | None = None,
    ) -> dict[str, str]:
        if url is None:
            raise ValueError("this scheme signs the URL: pass the configured url")
        return {self.header: self._digest(secret, _raw(url) + body).decode()}

    def _digest(self, secret: str, signed: bytes) -> bytes:
        digest = hmac_sha256(secret.encode(), signed)
        return digest.hex().encode() if self.encoding == "hex" else base64.b64encode(digest)


class Fetch(Protocol):
    """An HTTP call the dispatcher lends a platform: (status, body). Bounded by the caller's
    timeouts; adapters never import an HTTP client themselves."""

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]: ...


class FetchVerification(Protocol):
    """Room for platforms whose deliveries are confirmed by asking the platform: PayPal's
    verify-webhook-signature API, or fetching the event by its id for platforms that sign
    nothing. The request path makes no network calls, so such a platform's scheme checks what
    it can locally when the request arrives (or nothing, with `signs_body` False), the
    delivery is stored, and the dispatcher calls `confirm` with a Fetch before anything is sent
    to Convert; a delivery the platform does not confirm is kept and marked dead with a reason.

    `confirm` returns True when the platform vouches for the delivery, False when it denies
    it, and raises SignatureError when the answer cannot be read (retried later)."""

    def confirm(self, request: SignedRequest, secrets: Sequence[str], fetch: Fetch) -> bool: ...
