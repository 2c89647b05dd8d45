"""Post a signed sample webhook to a running convert-webhooks, the way the platform would.

    python3 scripts/send_sample.py stripe   # checkout.session.completed (Stripe's own sample)
    python3 scripts/send_sample.py shopify  # orders/paid (Shopify's own sample order)

The payloads are the platforms' documented samples in tests/fixtures (sources noted there),
with the experiment pairs "100-200" added where a shop would put them. They are signed with
the example config's secrets, or with STRIPE_WEBHOOK_SECRET / SHOPIFY_WEBHOOK_SECRET if set.
Only the Python standard library is used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
PAIRS = "100-200"


def stripe_request() -> tuple[bytes, dict[str, str]]:
    event = json.loads((FIXTURES / "stripe" / "checkout_session_completed.json").read_text())
    event["id"] = f"evt_sample_{uuid.uuid4().hex[:12]}"
    event["data"]["object"]["metadata"] = {"convert_experiments": PAIRS}
    body = json.dumps(event).encode()
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_example_secret")
    t = int(time.time())
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={t},v1={v1}"}


def shopify_request() -> tuple[bytes, dict[str, str]]:
    order = json.loads((FIXTURES / "shopify" / "orders_paid.json").read_text())
    order["note_attributes"] = [{"name": "convert_experiments", "value": PAIRS}]
    order["financial_status"] = "paid"  # the published sample says "voided" (SOURCES.md)
    body = json.dumps(order).encode()
    secret = os.environ.get("SHOPIFY_WEBHOOK_SECRET", "shpss_example_secret")
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return body, {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-Shop-Domain": "example.myshopify.com",
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("stripe", "shopify"):
        print(__doc__)
        return 2
    platform = argv[1]
    base = argv[2] if len(argv) > 2 else "http://127.0.0.1:8000"
    body, headers = stripe_request() if platform == "stripe" else shopify_request()
    headers["Content-Type"] = "application/json"
    request = urllib.request.Request(f"{base}/webhooks/{platform}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.status, response.read().decode())
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
