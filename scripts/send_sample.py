"""Post a signed sample webhook to a running convert-webhooks, the way the platform would.

    python3 scripts/send_sample.py stripe   # checkout.session.completed (Stripe's own sample)
    python3 scripts/send_sample.py shopify  # orders/paid (Shopify's own sample order)
    python3 scripts/send_sample.py paddle   # also woocommerce, lemonsqueezy (in the example config)
    python3 scripts/send_sample.py <platform> [base URL] [source name]

Each platform's sample is the documented payload its spec names (tests/fixtures/<platform>/,
sources in SOURCES.md), with the experiment pairs "100-200" added where a shop would put them,
signed by the platform's own signature scheme (adapters/schemes.py: the code that verifies).
The secret is the example config's, or <PLATFORM>_WEBHOOK_SECRET if set (STRIPE_..., SHOPIFY_...).
Needs only the Python standard library and this checkout.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's adapters/, run from anywhere

from adapters import REGISTRY  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
PAIRS = "100-200"
EXAMPLE_SECRETS = {  # config/example.toml's
    "stripe": "whsec_example_secret",
    "shopify": "shpss_example_secret",
    "woocommerce": "wc_example_secret_0001",
    "paddle": "pdl_ntfset_example_secret",
    "lemonsqueezy": "lemonsqueezy_example_secret",
}


def sample_request(platform: str, url: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The sample's body and headers, signed; `url` is the address it is posted to (a scheme
    that signs the URL, Square's, signs that one; else the sample's configured url)."""
    spec = REGISTRY[platform]
    payload = json.loads((FIXTURES / platform / spec.sample.fixture).read_text())
    headers = dict(spec.sample.headers)
    if spec.sample.add_pairs is not None:  # where a shop keeps the pairs: the platform says
        spec.sample.add_pairs(payload, headers, PAIRS)
    body = json.dumps(payload).encode()
    default = EXAMPLE_SECRETS.get(platform, spec.sample.secrets[0])
    secret = os.environ.get(f"{platform.upper()}_WEBHOOK_SECRET", default)
    scheme = spec.scheme_of(spec.sample.options)
    signed_url = url or spec.sample.options.get("url")
    headers.update(scheme.sign(body, secret, time.time(), url=signed_url))
    return body, headers


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in REGISTRY:
        print(__doc__)
        return 2
    platform = argv[1]
    base = argv[2] if len(argv) > 2 else "http://127.0.0.1:8000"
    source = argv[3] if len(argv) > 3 else platform
    url = f"{base}/webhooks/{source}"
    body, headers = sample_request(platform, url)
    headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.status, response.read().decode())
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
