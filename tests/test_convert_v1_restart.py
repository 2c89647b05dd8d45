"""Restart in the middle of a batch, JSON tracking API: real gunicorn workers with their
dispatchers POST batches to a slow v1 stand-in and are SIGKILLed while requests are in flight.
After a restart nothing is lost, and what was sent twice is at most the requests in flight at
the kill (each carrying up to batch_size purchases): the crash edge the README states."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text

from tests.config_file import config_document, write_config
from tests.convert_recorder import ConvertRecorder
from tests.convert_v1_standin import ConvertV1StandIn
from tests.gunicorn_process import GunicornService
from tests.payloads import body, experiments, shopify_order
from tests.signing import shopify_hmac
from webhooks.delivery.worker import MAX_UNRECORDED
from webhooks.storage.schema import events

SECRET = "shpss_v1_restart_test"
WORKERS = 2
BATCH = 5


@pytest.fixture
def standin() -> Iterator[ConvertV1StandIn]:
    server = ConvertV1StandIn().start()
    yield server
    server.stop()


@pytest.fixture
def services() -> Iterator[list[GunicornService]]:
    started: list[GunicornService] = []
    yield started
    for service in started:
        service.stop()


def start(
    tmp_path: Path,
    db_url: str,
    recorder: ConvertRecorder,
    standin: ConvertV1StandIn,
    services: list[GunicornService],
) -> GunicornService:
    doc = config_document(
        db_url,
        recorder.base_url,
        convert={"format": "v1", "v1": {"base_url": standin.base_url, "batch_size": BATCH}},
        sources={"shop": {"platform": "shopify", "secrets": ["${SHOP_SECRET}"]}},
        dispatcher={"poll_seconds": 0.2, "batch_size": 20},
        privacy={"email_key": "${EMAIL_KEY}"},
    )
    config = write_config(tmp_path / f"config-{len(services)}.toml", doc)
    env = {"SHOP_SECRET": SECRET, "EMAIL_KEY": "e" * 40}
    service = GunicornService(config, workers=WORKERS, env=env).start()
    services.append(service)
    return service


def post_orders(service: GunicornService, count: int) -> None:
    for order_id in range(1, count + 1):
        order = shopify_order(id=order_id, test=False, note_attributes=experiments("10-20"))
        data = body(order)
        headers = {
            "X-Shopify-Topic": "orders/paid",
            "X-Shopify-Event-Id": f"ev-{order_id}",
            "X-Shopify-Hmac-Sha256": shopify_hmac(data, SECRET),
            "Content-Type": "application/json",
        }
        assert service.post("/webhooks/shop", data, headers)[0] == 200


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(events)).all())


def test_sigkill_mid_batch_loses_nothing_and_repeats_at_most_the_batches_in_flight(
    tmp_path: Path,
    recorder: ConvertRecorder,
    standin: ConvertV1StandIn,
    services: list[GunicornService],
) -> None:
    db_url = f"sqlite:///{tmp_path / 'v1-restart.db'}"
    engine = create_engine(db_url)
    total = 80
    standin.delay = 0.6
    first = start(tmp_path, db_url, recorder, standin, services)
    post_orders(first, total)
    deadline = time.monotonic() + 15
    while standin.arrivals < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert standin.arrivals >= 4
    in_flight = standin.arrivals - len(standin.received)
    first.kill()
    # Instead of waiting out the 300 s leases: age them as time would (storage-level).
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE events SET lease_until = lease_until - 301 WHERE lease_owner IS NOT NULL")
        )
    standin.delay = 0
    start(tmp_path, db_url, recorder, standin, services)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = stored(engine)
        if len(rows) == total and all(row.state == "sent" for row in rows):
            break
        time.sleep(0.1)
    rows = stored(engine)
    assert sorted(r.state for r in rows) == ["sent"] * total  # nothing lost
    counts = standin.transaction_counts()
    assert set(counts) == {str(n) for n in range(1, total + 1)}
    repeated = sum(counts.values()) - total
    print(f"requests in flight at the kill: {in_flight}; purchases sent twice: {repeated}")
    assert repeated <= WORKERS * MAX_UNRECORDED * BATCH
    assert recorder.requests == []  # and never in the legacy format
    engine.dispose()
