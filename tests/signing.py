"""Sign test payloads exactly the way the platforms do (see adapters/ for the sources)."""

from __future__ import annotations

import base64
import hashlib
import hmac


def stripe_signature_header(body: bytes, secret: str, timestamp: int, *extra: str) -> str:
    signed = f"{timestamp}.".encode() + body
    v1 = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return ",".join([f"t={timestamp}", f"v1={v1}", *extra])


def shopify_hmac(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
