"""A local stand-in for the BigCommerce API: `GET /stores/{store_hash}/v2/orders/{id}` and
`GET /stores/{store_hash}/v3/orders/{id}/metafields`.

Shapes are BigCommerce's documented examples (tests/fixtures/bigcommerce/api/, SOURCES.md):
the order is the "Multiple Items" example of reference/orders.v2.oas2.yml with the id,
status, totals, items and customer a test asks for; metafields follow the Metafield schema of
reference/orders.v3.yml. It checks `X-Auth-Token` (401 otherwise, as BigCommerce answers) and
the store hash (404 for another store), and answers 404 for an unknown order.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.platform_api_standin import ApiStandin, Reply, Seen

API_TOKEN = "bc_api_token_standin_0001"
STORE_HASH = "abcde"
FIXTURES = Path(__file__).parent / "fixtures" / "bigcommerce" / "api"
NOT_FOUND = Reply(404, [{"status": 404, "message": "The requested resource was not found."}])


def order(order_id: int, **changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((FIXTURES / "order_247.json").read_text())
    found["id"] = order_id
    found.update(changes)
    return found


def metafields(order_id: int, values: dict[str, str]) -> dict[str, Any]:
    template = json.loads((FIXTURES / "order_metafields.json").read_text())
    entry = template["data"][0]
    data = [
        {**entry, "id": n + 1, "key": key, "value": value, "resource_id": order_id}
        for n, (key, value) in enumerate(values.items())
    ]
    pagination = {**template["meta"]["pagination"], "total": len(data), "count": len(data)}
    return {"data": data, "meta": {"pagination": pagination}}


class BigCommerceApiStandin(ApiStandin):
    def __init__(self, api_token: str = API_TOKEN, store_hash: str = STORE_HASH) -> None:
        super().__init__()
        self.api_token = api_token
        self.store_hash = store_hash
        self.orders: dict[int, dict[str, Any]] = {}
        self.fields: dict[int, dict[str, Any]] = {}

    def add_order(
        self, order_id: int, values: dict[str, str] | None = None, **changes: Any
    ) -> None:
        """An order (the documented example, changed as asked) and its metafields."""
        self.orders[order_id] = order(order_id, **changes)
        self.fields[order_id] = metafields(order_id, values or {})

    def route(self, seen: Seen) -> Reply:
        if seen.headers.get("x-auth-token") != self.api_token:
            return Reply(401, {"status": 401, "title": "Unauthorized", "type": "about:blank"})
        parts = [unquote(p) for p in urlsplit(seen.path).path.split("/") if p]
        if seen.method != "GET" or parts[:1] != ["stores"] or len(parts) < 5:
            return NOT_FOUND
        if parts[1] != self.store_hash or not parts[4].isdigit():
            return NOT_FOUND
        order_id = int(parts[4])
        if order_id not in self.orders:
            return NOT_FOUND
        if parts[2:4] == ["v2", "orders"] and len(parts) == 5:
            return Reply(200, copy.deepcopy(self.orders[order_id]))
        if parts[2:4] == ["v3", "orders"] and parts[5:] == ["metafields"]:
            return Reply(200, copy.deepcopy(self.fields[order_id]))
        return NOT_FOUND
