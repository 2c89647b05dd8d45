"""A local stand-in for the Stripe API: `GET /v1/customers/{id}`, `GET /v1/checkout/sessions`
(filtered by `payment_intent` or `subscription`) and `GET /v1/checkout/sessions/{id}/line_items`
(paginated with `limit`, `starting_after`, `has_more`).

Shapes are Stripe's documented examples: the Customer of docs.stripe.com/api/customers/retrieve
(cus_NffrFeUfNV2Hib), the line item of docs.stripe.com/api/checkout/sessions/line_items
(li_1N4BEoLkdIwHu7ixWtXug1yk), list objects `{object: "list", data, has_more, url}`, errors
`{error: {type, code, message, param}}` (docs.stripe.com/api/errors): 401 without a valid
`Authorization: Bearer <key>`, 404 `resource_missing` for an unknown id.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.platform_api_standin import ApiStandin, Reply, Seen

API_KEY = "rk_test_51StandinRestrictedKey0001"


def customer(customer_id: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": customer_id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": 1680893993,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "email": "jennyrosen@example.com",
        "invoice_prefix": "0759376C",
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": dict(metadata),
        "name": "Jenny Rosen",
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def line_item(item_id: str, quantity: int | None) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "item",
        "amount_discount": 0,
        "amount_subtotal": 2198,
        "amount_tax": 0,
        "amount_total": 2198,
        "currency": "usd",
        "description": "T-shirt",
        "price": {
            "id": "price_1N4AEsLkdIwHu7ix7Ssho8Cl",
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "currency": "usd",
            "product": "prod_NppuJWzzNnD5Ut",
            "type": "one_time",
            "unit_amount": 1099,
        },
        "quantity": quantity,
    }


def error(status: int, message: str, code: str | None = None, param: str | None = None) -> Reply:
    body: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if code:
        body |= {"code": code, "doc_url": f"https://stripe.com/docs/error-codes/{code}"}
    if param:
        body["param"] = param
    return Reply(status, {"error": body})


class StripeApiStandin(ApiStandin):
    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}
        # session id -> (payment intent, subscription, line item quantities)
        self.sessions: dict[str, tuple[str | None, str | None, list[int | None]]] = {}

    def add_customer(self, customer_id: str, metadata: dict[str, str]) -> None:
        self.customers[customer_id] = customer(customer_id, metadata)

    def add_session(
        self,
        session_id: str,
        quantities: list[int | None],
        payment_intent: str | None = None,
        subscription: str | None = None,
    ) -> None:
        self.sessions[session_id] = (payment_intent, subscription, quantities)

    def route(self, seen: Seen) -> Reply:
        if seen.headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "Invalid API Key provided: rk_test_****0001")
        url = urlsplit(seen.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.split("/") if p]
        if seen.method == "GET" and parts[:2] == ["v1", "customers"] and len(parts) == 3:
            found = self.customers.get(parts[2])
            if found is None:
                return error(404, f"No such customer: '{parts[2]}'", "resource_missing", "id")
            return Reply(200, copy.deepcopy(found))
        if seen.method == "GET" and parts == ["v1", "checkout", "sessions"]:
            return Reply(200, self._sessions(query))
        if (
            seen.method == "GET"
            and parts[:3] == ["v1", "checkout", "sessions"]
            and parts[4:] == ["line_items"]
        ):
            return self._line_items(parts[3], query)
        return error(404, f"Unrecognized request URL (GET: {url.path}).")

    def _sessions(self, query: dict[str, str]) -> dict[str, Any]:
        data = [
            {"id": sid, "object": "checkout.session", "payment_intent": pi, "subscription": sub}
            for sid, (pi, sub, _) in self.sessions.items()
            if ("payment_intent" in query and query["payment_intent"] == pi)
            or ("subscription" in query and query["subscription"] == sub)
        ]
        limit = int(query.get("limit", "10"))
        return {
            "object": "list",
            "data": data[:limit],
            "has_more": len(data) > limit,
            "url": "/v1/checkout/sessions",
        }

    def _line_items(self, session_id: str, query: dict[str, str]) -> Reply:
        if session_id not in self.sessions:
            return error(404, f"No such checkout.session: '{session_id}'", "resource_missing")
        items = [
            line_item(f"li_{session_id}_{n}", quantity)
            for n, quantity in enumerate(self.sessions[session_id][2])
        ]
        start = 0
        if "starting_after" in query:
            start = next(n for n, item in enumerate(items) if item["id"] == query["starting_after"])
            start += 1
        limit = int(query.get("limit", "10"))
        page = items[start : start + limit]
        return Reply(
            200,
            {
                "object": "list",
                "data": page,
                "has_more": start + limit < len(items),
                "url": f"/v1/checkout/sessions/{session_id}/line_items",
            },
        )
