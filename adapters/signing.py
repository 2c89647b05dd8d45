"""HMAC helpers shared by the adapters; every comparison is constant-time."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def any_hex_matches(secrets: Iterable[str], message: bytes, candidates: Iterable[str]) -> bool:
    wanted = [c.encode() for c in candidates]
    for secret in secrets:
        expected = hmac_sha256(secret, message).hex().encode()
        # No early exit: every candidate is compared, so timing says nothing about which.
        if sum(hmac.compare_digest(expected, c) for c in wanted):
            return True
    return False


def any_base64_matches(secrets: Iterable[str], message: bytes, candidate: str) -> bool:
    given = candidate.strip().encode()
    for secret in secrets:
        expected = base64.b64encode(hmac_sha256(secret, message))
        if hmac.compare_digest(expected, given):
            return True
    return False
