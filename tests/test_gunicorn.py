"""The real service under gunicorn: several workers never double-send, and a delivery
acknowledged before a kill -9 is sent after restart."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService, service_config
from tests.payloads import body, experiments, shopify_order
from tests.signing import shopify_hmac

SECRET = "shpss_gunicorn_test"


def signed_order(order_id: int) -> tuple[bytes, dict[str, str]]:
    data = body(shopify_order(id=order_id, test=False, note_attributes=experiments("10-20")))
    headers = {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Event-Id": f"ev-{order_id}",
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, SECRET),
        "Content-Type": "application/json",
    }
    return data, headers


def order_ids(recorder: ConvertRecorder) -> Counter[str]:
    return Counter(path.split("t=100%7C")[1].split("%7C")[0] for path in recorder.paths)


@pytest.fixture
def services() -> Iterator[list[GunicornService]]:
    started: list[GunicornService] = []
    yield started
    for service in started:
        service.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_two_workers_never_double_send(
    database: str,
    tmp_path: Path,
    recorder: ConvertRecorder,
    services: list[GunicornService],
    request: pytest.FixtureRequest,
) -> None:
    db_url = (
        f"sqlite:///{tmp_path / 'gunicorn.db'}"
        if database == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    config = service_config(tmp_path / "config.toml", db_url, recorder.base_url)
    service = GunicornService(config, workers=2, env={"SHOP_SECRET": SECRET}).start()
    services.append(service)
    total = 120
    for order_id in range(1, total + 1):
        status, _ = service.post("/webhooks/shop", *signed_order(order_id))
        assert status == 200
    recorder.wait_for(total, timeout=30)
    time.sleep(1.0)  # give a double send the chance to show up
    counts = order_ids(recorder)
    assert len(counts) == total
    assert max(counts.values()) == 1


def test_acknowledged_delivery_survives_kill_and_is_sent_after_restart(
    tmp_path: Path, recorder: ConvertRecorder, services: list[GunicornService]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'crash.db'}"
    env = {"SHOP_SECRET": SECRET}
    # First life: the dispatcher is off, so the process dies after storing, before sending.
    config = service_config(
        tmp_path / "store-only.toml", db_url, recorder.base_url, dispatcher=False
    )
    first = GunicornService(config, env=env).start()
    services.append(first)
    status, answer = first.post("/webhooks/shop", *signed_order(77))
    assert (status, json.loads(answer)["status"]) == (200, "accepted")
    first.kill()
    assert recorder.paths == []
    # Second life: same database, dispatcher on.
    config = service_config(tmp_path / "normal.toml", db_url, recorder.base_url)
    second = GunicornService(config, env=env).start()
    services.append(second)
    recorder.wait_for(1, timeout=15)
    time.sleep(0.5)
    assert order_ids(recorder) == Counter({"77": 1})


def test_startup_output_lists_webhook_urls_and_dry_run(
    tmp_path: Path, services: list[GunicornService]
) -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "example.toml"
    text = example.read_text().replace(
        "sqlite:///var/convert-webhooks.db", f"sqlite:///{tmp_path / 'example.db'}"
    )
    config = tmp_path / "example.toml"
    config.write_text(text)
    service = GunicornService(config).start()
    services.append(service)
    data: Any = body(shopify_order(note_attributes=experiments("1-2")))
    from tests.signing import shopify_hmac as sign

    status, _ = service.post(
        "/webhooks/shopify",
        data,
        {
            "X-Shopify-Topic": "orders/paid",
            "X-Shopify-Event-Id": "x",
            "X-Shopify-Hmac-Sha256": sign(data, "shpss_example_secret"),
        },
    )
    assert status == 200
    time.sleep(1.0)
    log = service.log.read_text()
    assert f"{service.url}/webhooks/stripe" in log
    assert f"{service.url}/webhooks/shopify" in log
    assert "DRY RUN" in log
    assert (
        "dry run: would GET https://2222.track.convertexperiments.com/track/?c=1111&p=2222"
        "&e=1-2&g=100&ga=1&t=100%7C820982911946154508%7C404.95%7C"
    ) in log


def test_a_bad_config_stops_gunicorn_with_the_bad_keys_not_a_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "config" / "example.toml"
    config = tmp_path / "bad.toml"
    config.write_text(example.read_text().replace('account_id = "1111"', 'account_id = "11a"'))
    gunicorn = Path(sys.executable).parent / "gunicorn"
    done = subprocess.run(
        [str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "CONVERT_WEBHOOKS_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "convert.account_id: must be ASCII digits only" in done.stderr
    assert "Traceback" not in done.stderr
