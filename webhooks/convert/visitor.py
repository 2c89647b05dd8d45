"""The visitorId a purchase is sent under in the JSON tracking API when attribution found no
Convert visitor id: a pseudonym of the customer, stable across retries and later orders.

HMAC-SHA256 keyed with privacy.email_key over the source and the first of: the platform's
customer id, the customer's (keyed) email digest, the order id (a guest with neither is a
visitor of one order). Never the email itself, never random: a retry is the same visitor, and
without the key nobody can tell whose pseudonym it is.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "cw-"  # tells a pseudonym from a browser's visitor id in Convert's logs
_DOMAIN = b"convert-webhooks visitor v1\x00"  # this key's digests for other uses never collide


def pseudonymous_visitor_id(
    key: bytes,
    source: str,
    customer_id: str | None,
    email_digest: str | None,
    order_id: str,
) -> str:
    if customer_id:
        who = f"customer\x00{customer_id}"
    elif email_digest:
        who = f"email\x00{email_digest}"
    else:
        who = f"order\x00{order_id}"
    message = _DOMAIN + f"{source}\x00{who}".encode("utf-8", "surrogatepass")
    return PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()[:32]
