"""More places on the order itself: Stripe Checkout's `client_reference_id` and Shopify
line-item properties, end to end to the Convert stand-in."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import experiments, shopify_order, stripe_event
from webhooks.storage.schema import events


def event_row(service: Service) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events)).one()


def session(**changes: Any) -> dict[str, Any]:
    event = stripe_event("checkout_session_completed", **changes)
    event["livemode"] = True
    return event


def test_client_reference_id_carries_the_pairs(
    service: Service, recorder: ConvertRecorder
) -> None:
    service.post_stripe(session(client_reference_id="100-200,101-201"))
    assert service.drain() == 1
    assert sorted(p.split("e=")[1].split("&")[0] for p in recorder.paths) == ["100-200", "101-201"]
    row = event_row(service)
    assert (row.state, row.attributed_from, row.attribution_format) == (
        "sent",
        "order attribute 'client_reference_id'",
        "plain",
    )


def test_metadata_wins_over_client_reference_id(
    service: Service, recorder: ConvertRecorder
) -> None:
    event = session(client_reference_id="7-8", metadata={"convert_experiments": "100-200"})
    service.post_stripe(event)
    service.drain()
    assert [p.split("e=")[1].split("&")[0] for p in recorder.paths] == ["100-200"]


def test_a_shop_reference_that_is_not_pairs_is_not_a_guess(
    service: Service, recorder: ConvertRecorder
) -> None:
    service.post_stripe(session(client_reference_id="order-4711"))
    service.drain()
    assert recorder.paths == []
    row = event_row(service)
    assert (row.state, row.reason_code) == ("skipped", "malformed_experiment_data")
    assert "'client_reference_id'" in row.reason


def test_a_line_item_property_carries_the_pairs(
    service: Service, recorder: ConvertRecorder
) -> None:
    order = shopify_order(test=False)
    order["line_items"][1]["properties"] = [{"name": "convert_experiments", "value": "5-6"}]
    service.post_shopify("orders/paid", order)
    assert service.drain() == 1
    assert [p.split("e=")[1].split("&")[0] for p in recorder.paths] == ["5-6"]


def test_the_cart_attribute_wins_over_a_line_property(
    service: Service, recorder: ConvertRecorder
) -> None:
    order = shopify_order(note_attributes=experiments("1-2"), test=False)
    order["line_items"][0]["properties"] = [{"name": "convert_experiments", "value": "5-6"}]
    service.post_shopify("orders/paid", order)
    service.drain()
    assert [p.split("e=")[1].split("&")[0] for p in recorder.paths] == ["1-2"]
