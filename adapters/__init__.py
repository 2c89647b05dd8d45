"""Platform adapters and their registry: one module per platform, each exporting ADAPTER."""

from __future__ import annotations

from collections.abc import Mapping

from adapters import shopify, stripe
from adapters.base import PlatformAdapter

REGISTRY: Mapping[str, PlatformAdapter] = {
    adapter.platform: adapter for adapter in (stripe.ADAPTER, shopify.ADAPTER)
}

PLATFORMS = tuple(sorted(REGISTRY))
