"""A local stand-in for Square's Orders API: `GET /v2/orders/{order_id}`.

The answer is the RetrieveOrder example of the Square SDK's documentation
(tests/fixtures/square/api/retrieve_order.json, SOURCES.md) with the id, line-item quantities,
metadata and customer a test asks for. It checks `Authorization: Bearer <token>` and that a
`Square-Version` is sent (401 otherwise, in Square's error shape), and answers 404
`NOT_FOUND` for an unknown order.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.platform_api_standin import ApiStandin, Reply, Seen

ACCESS_TOKEN = "EAAAEsquareStandinAccessToken0001"
FIXTURE = Path(__file__).parent / "fixtures" / "square" / "api" / "retrieve_order.json"


def error(status: int, category: str, code: str, detail: str) -> Reply:
    return Reply(status, {"errors": [{"category": category, "code": code, "detail": detail}]})


def order(
    order_id: str,
    quantities: list[str],
    metadata: dict[str, str] | None = None,
    customer_id: str | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(FIXTURE.read_text())
    found = answer["order"]
    template = found["line_items"][0]
    found["id"] = order_id
    found["line_items"] = [
        {**template, "uid": f"line{n}", "quantity": quantity}
        for n, quantity in enumerate(quantities)
    ]
    if metadata is not None:
        found["metadata"] = metadata
    if customer_id is None:
        found.pop("customer_id", None)
    else:
        found["customer_id"] = customer_id
    return answer


class SquareApiStandin(ApiStandin):
    def __init__(self, access_token: str = ACCESS_TOKEN) -> None:
        super().__init__()
        self.access_token = access_token
        self.orders: dict[str, dict[str, Any]] = {}

    def add_order(
        self,
        order_id: str,
        quantities: list[str],
        metadata: dict[str, str] | None = None,
        customer_id: str | None = None,
    ) -> None:
        self.orders[order_id] = order(order_id, quantities, metadata, customer_id)

    def route(self, seen: Seen) -> Reply:
        if seen.headers.get("authorization") != f"Bearer {self.access_token}":
            detail = "This request could not be authorized."
            return error(401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", detail)
        if not seen.headers.get("square-version"):
            return error(400, "INVALID_REQUEST_ERROR", "BAD_REQUEST", "Square-Version is missing.")
        parts = [unquote(p) for p in urlsplit(seen.path).path.split("/") if p]
        if seen.method == "GET" and parts[:2] == ["v2", "orders"] and len(parts) == 3:
            found = self.orders.get(parts[2])
            if found is not None:
                return Reply(200, copy.deepcopy(found))
            detail = "Could not find an order with that id."
            return error(404, "INVALID_REQUEST_ERROR", "NOT_FOUND", detail)
        return error(404, "INVALID_REQUEST_ERROR", "NOT_FOUND", "Unknown path.")
