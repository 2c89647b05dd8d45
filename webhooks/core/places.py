"""Where an event's experiment pairs were found, as a short class for counting (metrics, the
report, the status page). The attribution lookups name the place in words (`attributed_from`:
"order attribute 'convert_experiments'", "Stripe customer metadata 'x'", "exposure store ...");
this is the one mapping from those words to a bounded set of classes."""

from __future__ import annotations

import re

ORDER = "order"
CUSTOMER = "customer"
EXPOSURES = "exposures"
OTHER = "other"  # a place added later, before this mapping knows it
PLACES = (ORDER, CUSTOMER, EXPOSURES, OTHER)
_PATTERNS = (
    (ORDER, re.compile(r"order attribute ")),  # attribution/order.py
    (CUSTOMER, re.compile(r"\S+ customer (?:metadata|metafield) ")),  # attribution/customers.py
    (EXPOSURES, re.compile(r"exposure store\b")),  # attribution/exposures.py
)


def place_class(attributed_from: str) -> str:
    for name, pattern in _PATTERNS:
        if pattern.match(attributed_from):
            return name
    return OTHER
