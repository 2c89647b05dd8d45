"""Sign test payloads with the platforms' own schemes (adapters/schemes.py): the code that
verifies is the code that signs, and each platform's known-answer test
(tests/test_platform_contract.py) pins that code to the platform's SDK or documentation."""

from __future__ import annotations

from adapters import shopify, stripe


def stripe_signature_header(body: bytes, secret: str, timestamp: int, *extra: str) -> str:
    """`t=<timestamp>,v1=<hex>`, then any `extra` items (another v1, a v0) as given."""
    header = stripe.SCHEME.sign(body, secret, timestamp)[stripe.SCHEME.header]
    return ",".join([header, *extra])


def shopify_hmac(body: bytes, secret: str) -> str:
    return shopify.SCHEME.sign(body, secret, 0)[shopify.SCHEME.header]
