"""The observer a service runs with. Being built (issue 10): nothing observes yet."""

from __future__ import annotations

from webhooks.core.observe import NullObserver, Observer
from webhooks.core.settings import Settings


def default_observer(settings: Settings) -> Observer:
    return NullObserver()
