"""Platform specs and their registry: one module per platform, each exporting SPEC, and one
line here per platform (adapters/base.py says what else a new platform brings)."""

from __future__ import annotations

from collections.abc import Mapping

from adapters import shopify, stripe
from adapters.base import PlatformSpec

REGISTRY: Mapping[str, PlatformSpec] = {
    spec.name: spec
    for spec in (
        stripe.SPEC,
        shopify.SPEC,
    )
}

PLATFORMS = tuple(sorted(REGISTRY))
