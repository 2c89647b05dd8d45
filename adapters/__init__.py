"""Platform specs and their registry: one module per platform, each exporting SPEC, and one
line here per platform (adapters/base.py says what else a new platform brings)."""

from __future__ import annotations

from collections.abc import Mapping

# PLATFORM IMPORTS (one line each)
from adapters import (
    bigcommerce,
    custom,
    lemonsqueezy,
    paddle,
    shopify,
    square,
    standard_webhooks,
    stripe,
    woocommerce,
)
from adapters.base import PlatformSpec

REGISTRY: Mapping[str, PlatformSpec] = {
    spec.name: spec
    for spec in (
        stripe.SPEC,
        shopify.SPEC,
        # PLATFORM SPECS (one line each)
        bigcommerce.SPEC,
        square.SPEC,
        paddle.SPEC,
        lemonsqueezy.SPEC,
        custom.SPEC,
        standard_webhooks.SPEC,
        woocommerce.SPEC,
    )
}

PLATFORMS = tuple(sorted(REGISTRY))
