"""Signed Shopify `orders/paid` webhooks, built from the real fixture, one unique order per id.

The JSON body is dumped once with a sentinel id and then spliced, so building a request costs
one HMAC and a few concatenations (done before timing starts).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adapters.shopify import SCHEME  # signs as Shopify does, with the service's own code

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "shopify" / "orders_paid.json"
SECRET = "shpss_bench_secret_0123"  # check-config wants 16+ characters
SOURCE = "shop"
PAIR = "100-200"
_SENTINEL = 987_654_321_987_654_321
# Convert's legacy URL carries the transaction id as t=<goals>|<order id>|<value>|<count>.
_TXN = re.compile(rb"[?&]t=[^&%]*%7C([^&%]+)%7C")


def order_id_of(convert_path: bytes) -> int | None:
    """The order id in a recorded Convert request path, or None."""
    match = _TXN.search(convert_path)
    if match is None:
        return None
    try:
        return int(match.group(1))
    except ValueError:
        return None


class ShopifyWebhooks:
    """Raw HTTP/1.1 requests for POST /webhooks/shop, ready to write to a socket."""

    def __init__(self, host: str, port: int, path: str = f"/webhooks/{SOURCE}") -> None:
        order = json.loads(FIXTURE.read_text())
        order["id"] = _SENTINEL
        order["test"] = False
        order["financial_status"] = "paid"  # the sample says "voided" (SOURCES.md)
        order["note_attributes"] = [{"name": "convert_experiments", "value": PAIR}]
        text = json.dumps(order).encode()
        self._prefix, self._suffix = text.split(str(_SENTINEL).encode())
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nX-Shopify-Topic: orders/paid\r\n"
            "X-Shopify-Shop-Domain: bench.myshopify.com\r\nConnection: close\r\n"
        ).encode()

    def body(self, order_id: int) -> bytes:
        return self._prefix + str(order_id).encode() + self._suffix

    def headers(self, order_id: int, body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/paid",
            "X-Shopify-Event-Id": f"bench-{order_id}",
            "X-Shopify-Shop-Domain": "bench.myshopify.com",
            **SCHEME.sign(body, SECRET, 0.0),
        }

    def raw(self, order_id: int) -> bytes:
        body = self.body(order_id)
        signature = SCHEME.sign(body, SECRET, 0.0)["X-Shopify-Hmac-Sha256"].encode()
        return b"".join(
            (
                self._head,
                b"X-Shopify-Event-Id: bench-%d\r\n" % order_id,
                b"X-Shopify-Hmac-Sha256: " + signature + b"\r\n",
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
