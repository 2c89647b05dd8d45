"""Money conversions: never through float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from webhooks.errors import PayloadError

# Stripe's currency exponents (docs.stripe.com/currencies). ISK and UGX are whole-unit
# currencies that Stripe represents with two decimals, so they stay in the default case.
STRIPE_ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
STRIPE_THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])


def stripe_exponent(currency: str) -> int:
    code = currency.upper()
    if code in STRIPE_ZERO_DECIMAL:
        return 0
    if code in STRIPE_THREE_DECIMAL:
        return 3
    return 2


def from_minor_units(amount: object, currency: str) -> Decimal:
    """Stripe integer minor units to a Decimal in major units."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PayloadError(f"amount must be an integer number of minor units, got {amount!r}")
    return Decimal(amount).scaleb(-stripe_exponent(currency))


def from_decimal_string(value: object, what: str) -> Decimal:
    """A decimal amount as platforms like Shopify send it ("49.00")."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise PayloadError(f"{what} must be a decimal string, got {value!r}")
    try:
        result = Decimal(value)
    except InvalidOperation as exc:
        raise PayloadError(f"{what} is not a decimal number: {value!r}") from exc
    if not result.is_finite():
        raise PayloadError(f"{what} is not a finite number: {value!r}")
    return result
