"""Claims are atomic and leased: dispatchers racing on one database never send twice, and a
lease left by a dead dispatcher expires."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import experiments, shopify_order
from webhooks.delivery.worker import Dispatcher
from webhooks.storage.queue import claim_due


def store_orders(service: Service, count: int) -> None:
    for order_id in range(1, count + 1):
        order = shopify_order(id=order_id, test=False, note_attributes=experiments("1-2"))
        assert service.post_shopify("orders/paid", order, f"e{order_id}").status_code == 200


def test_racing_dispatchers_send_each_event_once(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    store_orders(any_db_service, 150)
    rt = any_db_service.runtime
    dispatchers = [Dispatcher(rt.engine, rt.settings, rt.client, rt.clock) for _ in range(4)]
    threads = [threading.Thread(target=d.drain) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(path.split("t=100%7C")[1].split("%7C")[0] for path in recorder.paths)
    assert len(counts) == 150 and set(counts.values()) == {1}


def test_a_held_lease_blocks_others_until_it_expires(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    store_orders(any_db_service, 1)
    rt = any_db_service.runtime
    now = rt.clock.now()
    lease = rt.settings.dispatcher.lease_seconds
    with rt.engine.begin() as conn:
        assert len(claim_due(conn, "crashed-worker", now, 10, lease)) == 1
    assert any_db_service.drain() == 0  # leased by someone else
    any_db_service.clock.advance(lease + 1)
    assert any_db_service.drain() == 1
    assert len(recorder.paths) == 1


def test_dispatcher_thread_is_woken_by_ingest(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    # A poll far longer than the wait below: only the request's wake-up can send in time.
    service: Service = make_service(sqlite_url, dispatcher={"poll_seconds": 120})
    dispatcher: Any = service.runtime.dispatcher
    dispatcher.start()
    time.sleep(0.5)  # its first round found nothing; it now waits on its poll
    order = shopify_order(id=9, test=False, note_attributes=experiments("1-2"))
    service.post_shopify("orders/paid", order, "e9")
    assert len(recorder.wait_for(1, timeout=5)) == 1
