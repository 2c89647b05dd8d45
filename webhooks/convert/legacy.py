"""Convert request building: the legacy GET push the product was specified from.

    https://{project_id}.track.convertexperiments.com/track/?c={account}&p={project}
        &e={experiment}-{variation}&g={goal[,goal]}&ga={number of goals}
        &t={goal[.goal]}|{transaction id}|{value, two decimals}|{products count}

One request per experiment pair (a hit); conversion and transaction ride in the same request.
The hit's payload is the URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import quote

from webhooks.core.hits import Hit, HitFormat, Purchase
from webhooks.core.settings import ConvertSettings, GoalSet

# A transaction id keeps letters, digits and `_ - . :`; every other character (the format's
# separators `|` and `,`, `&`, `=`, spaces, `~` itself) becomes `~XX` per UTF-8 byte. The mapping
# is stable and reversible, and Stripe and Shopify ids pass through unchanged.
_TXN_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


def safe_transaction_id(value: str) -> str:
    out = []
    for char in value:
        if char in _TXN_SAFE:
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode())
    return "".join(out)


def format_value(amount: Decimal) -> str:
    """Exactly two decimals, rounding half up (three-decimal currencies lose their last digit).
    A value that is not a finite number, or too large for two decimals, raises."""
    if not amount.is_finite():
        raise ValueError("the amount is not a finite number")
    return str(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def endpoint_for(settings: ConvertSettings) -> str:
    return settings.endpoint.replace("{project_id}", settings.project_id)


def build_hits(
    settings: ConvertSettings, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]
) -> list[Hit]:
    base = endpoint_for(settings)
    shared: list[tuple[str, str]] = []
    if goals.conversion:
        shared += [("g", ",".join(goals.conversion)), ("ga", str(len(goals.conversion)))]
    if goals.transaction:
        txn = "|".join(
            (
                ".".join(goals.transaction),
                safe_transaction_id(purchase.order_id),
                format_value(purchase.amount),
                str(max(purchase.item_count, 0)),
            )
        )
        shared.append(("t", txn))
    hits = []
    for pair in pairs:
        params = [("c", settings.account_id), ("p", settings.project_id), ("e", pair), *shared]
        query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params)
        separator = "&" if "?" in base else "?"
        url = f"{base}{separator}{query}"
        hits.append(Hit(purchase.event_id, pair, HitFormat.LEGACY_GET, url))
    return hits
