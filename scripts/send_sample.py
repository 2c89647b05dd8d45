"""Post a signed sample webhook to a running convert-webhooks, the way the platform would.

    python3 scripts/send_sample.py stripe   # checkout.session.completed (Stripe's own sample)
    python3 scripts/send_sample.py shopify  # orders/paid (Shopify's own sample order)
    python3 scripts/send_sample.py paddle   # also woocommerce, lemonsqueezy (in the example config)
    python3 scripts/send_sample.py <platform> [base URL] [source name]

Kept for the commands written with it; `convert-webhooks send-test <source>` does the same
from a config (the source's own secret and URL) and also shows the Convert request that
resulted. Both build, sign and post through webhooks/wiring/send_test.py: each platform's
documented sample (tests/fixtures/<platform>/, sources in SOURCES.md) with the experiment pairs
"100-200" added where a shop would put them, signed by the platform's own signature scheme.
The secret is the example config's, or <PLATFORM>_WEBHOOK_SECRET if set (STRIPE_..., SHOPIFY_...).
Run it with the project's Python (its virtualenv), from anywhere.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's packages, run from anywhere

from adapters import REGISTRY  # noqa: E402
from webhooks.wiring.send_test import (  # noqa: E402
    SampleDelivery,
    SendTestFailed,
    post,
    signed_sample,
)

EXAMPLE_SECRETS = {  # config/example.toml's
    "stripe": "whsec_example_secret",
    "shopify": "shpss_example_secret",
    "woocommerce": "wc_example_secret_0001",
    "paddle": "pdl_ntfset_example_secret",
    "lemonsqueezy": "lemonsqueezy_example_secret",
}


def signed(platform: str, url: str | None = None) -> SampleDelivery:
    """The platform's sample, signed; `url` is the address it is posted to (a scheme that signs
    the URL, Square's, signs that one; else the sample's configured url)."""
    spec = REGISTRY[platform]
    default = EXAMPLE_SECRETS.get(platform, spec.sample.secrets[0])
    secret = os.environ.get(f"{platform.upper()}_WEBHOOK_SECRET", default)
    signed_url = url or spec.sample.options.get("url")
    return signed_sample(spec, secret, time.time(), url=signed_url)


def sample_request(platform: str, url: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The sample's body and headers, signed (see `signed`)."""
    sample = signed(platform, url)
    return sample.body, sample.headers


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in REGISTRY:
        print(__doc__)
        return 2
    platform = argv[1]
    base = argv[2] if len(argv) > 2 else "http://127.0.0.1:8000"
    source = argv[3] if len(argv) > 3 else platform
    url = f"{base}/webhooks/{source}"
    try:
        answer = post(url, signed(platform, url))
    except SendTestFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(answer.status, answer.body.decode("utf-8", "replace"))
    return 0 if 200 <= answer.status < 300 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
