"""A local stand-in for Shopify's Admin GraphQL API: `POST /admin/api/{version}/graphql.json`
answering `customer(id:) { metafield(namespace:, key:) { value } }` from the variables sent.

Shapes: GraphQL answers `{data: {customer: {metafield: {value}}}, extensions: {cost: ...}}`,
`customer: null` for an unknown id and `metafield: null` for a missing metafield
(shopify.dev/docs/api/admin-graphql: QueryRoot.customer, HasMetafields.metafield); a wrong or
missing `X-Shopify-Access-Token` is a 401 `{"errors": "[API] Invalid API key or access token
(unrecognized login or wrong password)"}` (shopify.dev/docs/api/usage/response-codes); rate
limiting is a 200 with `errors: [{message: "Throttled", extensions: {code: "THROTTLED"}}]`
(community.shopify.com/t/throttled/254776, Shopify's own example).
"""

from __future__ import annotations

import json
from typing import Any

from tests.platform_api_standin import ApiStandin, Reply, Seen

ADMIN_TOKEN = "shpat_0123456789abcdef0123456789abcdef"
API_VERSION = "2025-10"
GID = "gid://shopify/Customer/"

THROTTLED = Reply(
    200,
    {
        "errors": [
            {
                "message": "Throttled",
                "extensions": {
                    "code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits",
                },
            }
        ],
        "extensions": {
            "cost": {
                "requestedQueryCost": 752,
                "actualQueryCost": None,
                "throttleStatus": {
                    "maximumAvailable": 1000.0,
                    "currentlyAvailable": 666,
                    "restoreRate": 50.0,
                },
            }
        },
    },
)


class ShopifyApiStandin(ApiStandin):
    def __init__(self, token: str = ADMIN_TOKEN, version: str = API_VERSION) -> None:
        super().__init__()
        self.token = token
        self.version = version
        # customer id (digits) -> {(namespace, key): value}
        self.customers: dict[str, dict[tuple[str, str], str]] = {}

    def add_customer(self, customer_id: str, metafields: dict[tuple[str, str], str]) -> None:
        self.customers[customer_id] = dict(metafields)

    def variables(self, index: int = -1) -> dict[str, Any]:
        return dict(json.loads(self.requests[index].body)["variables"])

    def route(self, seen: Seen) -> Reply:
        if seen.headers.get("x-shopify-access-token") != self.token:
            message = "[API] Invalid API key or access token (unrecognized login or wrong password)"
            return Reply(401, {"errors": message})
        if seen.method != "POST" or seen.path != f"/admin/api/{self.version}/graphql.json":
            return Reply(404, {"errors": "Not Found"})
        request = json.loads(seen.body)
        variables = request.get("variables") or {}
        if "customer(id: $id)" not in request.get("query", ""):
            return Reply(200, {"errors": [{"message": "unexpected query"}]})
        gid = str(variables.get("id", ""))
        found = self.customers.get(gid.removeprefix(GID)) if gid.startswith(GID) else None
        if found is None:
            return Reply(200, {"data": {"customer": None}, "extensions": _cost()})
        value = found.get((variables.get("namespace"), variables.get("key")))
        metafield = None if value is None else {"value": value}
        return Reply(200, {"data": {"customer": {"metafield": metafield}}, "extensions": _cost()})


def _cost() -> dict[str, Any]:
    return {
        "cost": {
            "requestedQueryCost": 2,
            "actualQueryCost": 2,
            "throttleStatus": {
                "maximumAvailable": 2000.0,
                "currentlyAvailable": 1998,
                "restoreRate": 100.0,
            },
        }
    }
