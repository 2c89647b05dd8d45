"""Money conversions and bounds: never through float.

An amount is valid when it is finite, not negative, below MAX_AMOUNT (10**12 major units: more
than any single order, and 18 digits with the places below, so it fits the 40-character
`amount` column and Decimal's 28-digit default precision) and has at most MAX_PLACES decimal
places (no currency has more than 3; 6 keeps `str()` free of exponent notation). Amounts are
returned in canonical form: "1E+2" becomes 100, "-0" becomes 0, and trailing zeros beyond 6
places are dropped ("1.50000000" -> 1.500000). Refunds use the same rule: a refund amount
is positive, like the platforms send it. Errors name the field, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from webhooks.core.errors import PayloadError

MAX_AMOUNT = Decimal(10) ** 12  # exclusive, major units
MAX_PLACES = 6
_ONE = Decimal(1)
# A plain decimal string as platforms send it ("49.00"): ASCII digits only ("٣" and "²" are
# digits to Python, and Decimal also takes "1_000", " 1 ", "1e30", "NaN" and "Infinity").
_DECIMAL_STRING = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,30})?", re.ASCII)
_CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)


def is_currency_code(value: object) -> bool:
    """Exactly three upper-case ASCII letters ("ÅÄÖ".isalpha() is true: not a code)."""
    return isinstance(value, str) and _CURRENCY.fullmatch(value) is not None


def as_currency_code(value: object) -> str | None:
    """A currency code as platforms send it (any case), upper-cased; None if it is not one.
    ASCII first: "ı".upper() is "I" and "ſ".upper() is "S"."""
    if not isinstance(value, str) or not value.isascii():
        return None
    code = value.upper()
    return code if is_currency_code(code) else None


def currency_code(value: object, what: str) -> str:
    """As `as_currency_code`, but a PayloadError naming the field when it is not a code."""
    code = as_currency_code(value)
    if code is None:
        raise PayloadError(f"field '{what}' must be a three-letter currency code")
    return code


def is_canonical_amount(value: Decimal) -> bool:
    """What `checked_amount` returns: in range, exponent in [-MAX_PLACES, 0], no sign."""
    if not value.is_finite() or value.is_signed() or value >= MAX_AMOUNT:
        return False
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and -MAX_PLACES <= exponent <= 0


def checked_amount(value: Decimal, what: str) -> Decimal:
    """The canonical form of a valid amount, or PayloadError naming the field."""
    if not value.is_finite():
        raise PayloadError(f"field '{what}' is not a finite number")
    if value < 0:  # Decimal("-0") == 0: negative zero passes and loses its sign below
        raise PayloadError(f"field '{what}' must not be negative")
    if value >= MAX_AMOUNT:
        raise PayloadError(f"field '{what}' is not below {MAX_AMOUNT:f}")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    if exponent > 0:
        return value.quantize(_ONE).copy_abs()  # "1E+2" -> 100; exact: below 10**12
    if exponent < -MAX_PLACES:
        value = _drop_trailing_zeros(digits, exponent, what)
    return value.copy_abs()


def _drop_trailing_zeros(digits: tuple[int, ...], exponent: int, what: str) -> Decimal:
    """Drop zeros past MAX_PLACES: "1.50000000" -> 1.500000; "1e-999999" is refused.

    Built from the digits, so no Decimal context (precision, Emin) is involved."""
    excess = -MAX_PLACES - exponent
    if any(digits[-excess:]):  # the whole coefficient when excess >= len(digits)
        raise PayloadError(f"field '{what}' has more than {MAX_PLACES} decimal places")
    return Decimal((0, digits[:-excess] or (0,), -MAX_PLACES))


def from_minor_units(amount: object, exponent: int, what: str = "amount") -> Decimal:
    """An integer amount in minor units (10**-exponent of the major unit) to a Decimal in
    major units. The exponent is the platform's for the currency (Stripe's tables live with
    Stripe: platforms disagree, e.g. on ISK); it must be 0..MAX_PLACES."""
    if not 0 <= exponent <= MAX_PLACES:
        raise ValueError(f"currency exponent {exponent} is outside 0..{MAX_PLACES}")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PayloadError(f"field '{what}' must be an integer number of minor units")
    if not 0 <= amount < MAX_AMOUNT * 10**exponent:  # before Decimal: no huge ints past here
        raise PayloadError(f"field '{what}' is out of range")
    return checked_amount(Decimal(amount).scaleb(-exponent), what)


# ISO 4217 minor units that are not 2 (the list's "minor unit" column), for platforms that send
# minor units by ISO's table (Stripe has its own: adapters/stripe.py). Codes without a minor
# unit (gold, SDRs, the test and "no currency" codes) cannot be read as minor units at all.
ISO_ZERO_DECIMAL = frozenset(
    ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG")
    + ("RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF")
)
ISO_EXPONENTS: Mapping[str, int] = {
    **dict.fromkeys(ISO_ZERO_DECIMAL, 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
NO_MINOR_UNIT = frozenset(
    ("XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX")
)


def iso_exponent(currency: str) -> int | None:
    """The currency's ISO 4217 minor unit: 2 unless listed above; None when it has none."""
    if currency in NO_MINOR_UNIT:
        return None
    return ISO_EXPONENTS.get(currency, 2)


def from_iso_minor_units(amount: object, currency: str, what: str = "amount") -> Decimal:
    """An integer amount in the currency's ISO 4217 minor units, in major units."""
    exponent = iso_exponent(currency)
    if exponent is None:
        raise PayloadError(f"field '{what}' is in a currency without minor units")
    return from_minor_units(amount, exponent, what)


def from_decimal_string(value: object, what: str) -> Decimal:
    """A decimal amount as platforms like Shopify send it ("49.00"), or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise PayloadError(f"field '{what}' must be a decimal string")
    if isinstance(value, str):
        if len(value) > 64 or not _DECIMAL_STRING.fullmatch(value):
            raise PayloadError(f"field '{what}' is not a decimal number")
        value = Decimal(value)
    elif isinstance(value, int):
        if not 0 <= value < MAX_AMOUNT:  # before Decimal: no huge ints past here
            raise PayloadError(f"field '{what}' is out of range")
        value = Decimal(value)
    try:
        return checked_amount(value, what)
    except InvalidOperation as exc:  # defensive: no Decimal arithmetic should signal here
        raise PayloadError(f"field '{what}' is not a decimal number") from exc
