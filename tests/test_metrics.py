"""GET /metrics: the counters the observer keeps and the database's gauges, exact after a
mixed run of the real app; the token, the switch, a database that is down; and under real
gunicorn with several workers, one scrape sums every worker's counts, the multiprocess
directory is emptied at start and a dead worker's live gauge leaves the scrape."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService, service_config
from tests.payloads import body, experiments, shopify_order, stripe_event
from tests.signing import shopify_hmac
from webhooks.attribution.exposures import PLACE_BY_CUSTOMER, PLACE_BY_EMAIL
from webhooks.core.errors import ConfigError
from webhooks.core.observe import FinishSeen
from webhooks.core.places import place_class
from webhooks.wiring.metrics import (
    MULTIPROCESS_ENV,
    attribution_class,
    prepare_directory,
    signature_class,
    status_class,
)
from webhooks.wiring.observers import ServiceObserver

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
METRICS_TOKEN = "metrics-token-0123456789abcdef"
GUNICORN_SECRET = "shpss_gunicorn_metrics_test"


def scrape(svc: Service, headers: dict[str, str] | None = None) -> Samples:
    response = svc.client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return parse(response.get_data(as_text=True))


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"{key} exported twice"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def labelled(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def order(svc: Service, order_id: int, event_id: str, pairs: str | None, test: bool = False) -> Any:
    attributes = experiments(pairs) if pairs else []
    payload = shopify_order(id=order_id, test=test, note_attributes=attributes)
    return svc.post_shopify("orders/paid", payload, event_id=event_id)


# --- the real app, one process ---------------------------------------------------------------


def test_a_mixed_run_is_counted_exactly(
    service: Service, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    recorder.answer_next(400)
    assert order(service, 1, "a", "1-2").json["status"] == "accepted"
    assert service.drain() == 1  # 400: dead, convert_rejected
    assert order(service, 2, "b", "3-4,5-6").status_code == 200
    assert service.drain() == 1  # two hits sent
    assert order(service, 2, "b", "3-4,5-6").json["status"] == "duplicate"  # the same delivery
    assert order(service, 2, "b2", "3-4,5-6").json["status"] == "duplicate"  # same purchase
    assert order(service, 3, "c", None).status_code == 200  # no experiment data: skipped
    assert order(service, 4, "d", "7-8", test=True).status_code == 200  # test mode: skipped
    assert service.drain() == 1  # the test-mode one was skipped when stored
    recorder.answer_next(503)
    assert order(service, 5, "e", "9-10").status_code == 200
    assert service.drain() == 1  # 503: pending, retrying
    stored_at = clock.now()
    refusals = [
        service.post_shopify("orders/paid", shopify_order(), secret="x" * 32),  # mismatch
        service.client.post("/webhooks/shop", data=b"{}"),  # missing header
        service.post_stripe(
            stripe_event("payment_intent_succeeded"), timestamp=int(stored_at) - 1000
        ),  # timestamp
        service.client.post("/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=x"}),
    ]
    assert [r.status_code for r in refusals] == [401, 401, 401, 401]
    rejected = service.post_stripe({}, raw=b'{"id": "evt_1", "type": "payment_intent.succeeded"}')
    assert rejected.status_code == 400
    clock.advance(42)

    samples = scrape(service)

    assert named(samples, "convert_webhooks_deliveries_total") == {
        labelled(source="shop", outcome="accepted"): 5,
        labelled(source="shop", outcome="duplicate"): 2,
        labelled(source="shop", outcome="refused"): 2,
        labelled(source="stripe", outcome="refused"): 2,
        labelled(source="stripe", outcome="rejected"): 1,
    }
    assert named(samples, "convert_webhooks_signature_failures_total") == {
        labelled(source="shop", reason="mismatch"): 1,
        labelled(source="shop", reason="missing"): 1,
        labelled(source="stripe", reason="timestamp"): 1,
        labelled(source="stripe", reason="malformed"): 1,
    }
    assert named(samples, "convert_webhooks_duplicates_total") == {
        labelled(source="shop", level="delivery"): 1,
        labelled(source="shop", level="purchase"): 1,
    }
    assert named(samples, "convert_webhooks_events_processed_total") == {
        labelled(source="shop", state="pending", reason="queued"): 4,  # stored, to be sent
        labelled(source="shop", state="dead", reason="convert_rejected"): 1,
        labelled(source="shop", state="sent", reason=""): 1,
        labelled(source="shop", state="skipped", reason="no_experiment_data"): 1,
        labelled(source="shop", state="skipped", reason="test_mode"): 1,
        labelled(source="shop", state="pending", reason="retrying"): 1,
    }
    # Settled purchases only: the pending one is counted when it settles, test mode never.
    assert named(samples, "convert_webhooks_attribution_total") == {
        labelled(source="shop", place="order"): 2,
        labelled(source="shop", place="none"): 1,
    }
    assert named(samples, "convert_webhooks_convert_requests_total") == {
        labelled(format="legacy_get", outcome="permanent", status="4xx"): 1,
        labelled(format="legacy_get", outcome="sent", status="2xx"): 2,
        labelled(format="legacy_get", outcome="retry", status="5xx"): 1,
    }
    assert (
        value(samples, "convert_webhooks_convert_request_seconds_count", format="legacy_get") == 4
    )
    assert value(samples, "convert_webhooks_ingest_seconds_count", source="shop") == 9
    assert value(samples, "convert_webhooks_ingest_seconds_count", source="stripe") == 3
    # The database's gauges, read at the scrape.
    assert value(samples, "convert_webhooks_database_up") == 1
    assert named(samples, "convert_webhooks_events") == {
        labelled(source="shop", state="dead", reason="convert_rejected"): 1,
        labelled(source="shop", state="pending", reason="retrying"): 1,
    }
    assert value(samples, "convert_webhooks_pending_events") == 1
    assert value(samples, "convert_webhooks_dead_events") == 1
    assert value(samples, "convert_webhooks_oldest_pending_age_seconds") == 42
    # No dispatcher thread was started here (drain runs rounds on the test's thread).
    assert named(samples, "convert_webhooks_dispatcher_up") == {}


def test_dispatcher_up_follows_the_dispatcher_loop(service: Service) -> None:
    dispatcher = service.runtime.dispatcher
    dispatcher.start()
    deadline = time.monotonic() + 10
    while value(scrape(service), "convert_webhooks_dispatcher_up") != 1:
        assert time.monotonic() < deadline, "dispatcher_up never became 1"
        time.sleep(0.02)
    dispatcher.stop(timeout=5)
    assert value(scrape(service), "convert_webhooks_dispatcher_up") == 0


def test_database_gauges_on_each_backend_reused_for_five_seconds(
    any_db_service: Service, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    service = any_db_service
    before = scrape(service)
    assert (
        value(before, "convert_webhooks_dead_events"),
        value(before, "convert_webhooks_database_up"),
    ) == (0, 1)
    recorder.answer_next(400, 503)
    order(service, 1, "a", "1-2")
    order(service, 2, "b", "3-4")
    assert service.drain() == 2
    clock.advance(4)
    assert value(scrape(service), "convert_webhooks_dead_events") == 0  # the same reading
    clock.advance(1)
    samples = scrape(service)
    assert named(samples, "convert_webhooks_events") == {
        labelled(source="shop", state="dead", reason="convert_rejected"): 1,
        labelled(source="shop", state="pending", reason="retrying"): 1,
    }
    assert value(samples, "convert_webhooks_dead_events") == 1
    assert value(samples, "convert_webhooks_pending_events") == 1
    assert value(samples, "convert_webhooks_oldest_pending_age_seconds") == 5


def test_no_label_value_comes_from_what_a_sender_wrote(service: Service) -> None:
    """A hostile topic, delivery id and source name in the URL add no label value."""
    data = body(shopify_order(id=77, test=False, note_attributes=experiments("1-2")))
    hostile = 'orders/paid"}1,convert_webhooks_dead_events{x="y'
    headers = {
        "X-Shopify-Topic": hostile,
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, "shpss_test_client_secret"),
        "X-Shopify-Event-Id": hostile,
    }
    answer = service.client.post("/webhooks/shop", data=data, headers=headers)
    assert (answer.status_code, answer.json["status"]) == (200, "ignored")
    assert service.client.post("/webhooks/no-such", data=b"{}").status_code == 404
    samples = scrape(service)
    label_values = {v for (_name, labels) in samples for k, v in labels if k != "le"}
    assert label_values == {"shop", "ignored"}
    assert value(samples, "convert_webhooks_dead_events") == 0


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        (f"Bearer {METRICS_TOKEN}x", 401),
        (f"Basic {METRICS_TOKEN}", 401),
        (f"{METRICS_TOKEN}", 401),
        (f"Bearer {METRICS_TOKEN[:-1]}", 401),
        ("Bearer t\u00f6k\u00e9n\u00ff", 401),  # latin-1 as a header can carry it
        ("Bearer " + "A" * 5000, 401),
        (f"Bearer {METRICS_TOKEN}", 200),
        (f"bearer {METRICS_TOKEN}", 200),
        (f"  Bearer   {METRICS_TOKEN}  ", 200),
    ],
)
def test_a_configured_token_is_required(
    make_service: Any, sqlite_url: str, header: str | None, status: int
) -> None:
    svc: Service = make_service(sqlite_url, metrics={"token": METRICS_TOKEN})
    headers = {} if header is None else {"Authorization": header}
    response = svc.client.get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert response.json == {"error": "a bearer token is required"}
        assert METRICS_TOKEN not in response.get_data(as_text=True)
    else:
        assert "convert_webhooks_database_up 1.0" in response.get_data(as_text=True)


def test_metrics_switched_off_answer_404_and_count_nothing(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    svc: Service = make_service(sqlite_url, metrics={"enabled": False})
    assert isinstance(svc.runtime.observer, ServiceObserver)
    assert svc.runtime.observer.metrics is None
    assert order(svc, 1, "a", "1-2").status_code == 200
    assert svc.drain() == 1 and len(recorder.requests) == 1  # the service works as before
    response = svc.client.get("/metrics")
    assert response.status_code == 404
    assert response.json == svc.client.get("/no-such-page").json  # like an unknown URL


def test_a_database_that_is_down_leaves_its_gauges_out(make_service: Any) -> None:
    svc: Service = make_service("postgresql://nobody@127.0.0.1:1/none")
    answer = order(svc, 1, "a", "1-2")
    assert answer.status_code == 503
    samples = scrape(svc)
    assert value(samples, "convert_webhooks_database_up") == 0
    assert named(samples, "convert_webhooks_pending_events") == {}
    assert named(samples, "convert_webhooks_dead_events") == {}
    assert (
        value(samples, "convert_webhooks_deliveries_total", source="shop", outcome="unavailable")
        == 1
    )


def test_a_broken_multiprocess_directory_still_serves_the_database_gauges(
    service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path / "gone"))
    samples = scrape(service)
    assert value(samples, "convert_webhooks_database_up") == 1
    assert value(samples, "convert_webhooks_pending_events") == 0
    assert named(samples, "convert_webhooks_deliveries_total") == {}


# --- label classes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("missing Stripe-Signature header", "missing"),
        ("webhook-signature has no v1 signature", "missing"),
        ("Stripe-Signature has no timestamp", "missing"),
        ("Authorization does not hold Basic credentials", "missing"),
        ("Stripe-Signature timestamp is 1000 s old", "timestamp"),
        ("webhook-timestamp is 30 s in the future", "timestamp"),
        ("X-Shopify-Hmac-Sha256 does not match a configured secret", "mismatch"),
        ("no Stripe-Signature v1 signature matches a configured secret", "mismatch"),
        ("Authorization does not match a configured user and password", "mismatch"),
        ("malformed Stripe-Signature header", "malformed"),
        ("X-Signature is too long to be a signature", "malformed"),
        ("the source has no url configured, and this platform signs it", "not_configured"),
        ("signature header could not be read", "error"),
        ("request is neither a ping nor signed", "error"),
        ("something new", "other"),
        (None, "other"),
    ],
)
def test_signature_refusals_map_to_a_few_classes(message: str | None, expected: str) -> None:
    assert signature_class(message) == expected


@pytest.mark.parametrize(
    ("place", "expected"),
    [
        ("order attribute 'convert_experiments'", "order"),
        ("order attribute '_conv_exp'", "order"),
        ("Stripe customer metadata 'convert_experiments'", "customer"),
        ("Shopify customer metafield 'convert.experiments'", "customer"),
        (PLACE_BY_CUSTOMER, "exposures"),
        (PLACE_BY_EMAIL, "exposures"),
        ("a place added later", "other"),
    ],
)
def test_places_map_to_a_few_classes(place: str, expected: str) -> None:
    assert place_class(place) == expected


@pytest.mark.parametrize(
    ("state", "reason", "place", "expected"),
    [
        ("sent", None, "order attribute 'x'", "order"),
        ("dead", "convert_rejected", "exposure store (email)", "exposures"),
        ("skipped", "no_experiment_data", None, "none"),
        ("skipped", "malformed_experiment_data", None, "none"),
        ("skipped", "test_mode", None, None),
        ("skipped", "not_a_purchase", None, None),
        ("pending", "lookup_later", None, None),
        ("pending", "retrying", "order attribute 'x'", None),
        ("dead", "internal_error", None, None),
    ],
)
def test_attribution_counts_settled_purchases_only(
    state: str, reason: str | None, place: str | None, expected: str | None
) -> None:
    assert attribution_class(FinishSeen("shop", state, reason, place)) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, "none"),
        (200, "2xx"),
        (302, "3xx"),
        (404, "4xx"),
        (429, "429"),
        (503, "5xx"),
        (999, "other"),
    ],
)
def test_status_classes(code: int | None, expected: str) -> None:
    assert status_class(code) == expected


# --- the multiprocess directory ---------------------------------------------------------------


def stale_counter_file(directory: Path, count: int) -> Path:
    """A real prometheus-client file, as an earlier run of the service would have left."""
    code = (
        "from prometheus_client import Counter\n"
        "c = Counter('convert_webhooks_deliveries', 'x', ['source', 'outcome'])\n"
        f"c.labels('shop', 'accepted').inc({count})\n"
    )
    env = {**os.environ, MULTIPROCESS_ENV: str(directory)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (made,) = directory.glob("counter_*.db")
    return made


def test_preparing_the_directory_removes_only_prometheus_files(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = stale_counter_file(directory, 5)
    kept = [directory / "notes.txt", directory / "webhooks.db", directory / "counter_x.db"]
    for path in kept:
        path.write_text("keep")
    (directory / "gauge_liveall_123.db").write_bytes(b"")
    assert prepare_directory(str(directory)) == 2
    assert not stale.exists()
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in kept)


def test_preparing_makes_a_private_directory(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    assert prepare_directory(str(directory)) == 0
    assert directory.stat().st_mode & 0o777 == 0o700


def test_a_symlink_or_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "counter_1.db").write_bytes(b"")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="not a directory owned by this user"):
        prepare_directory(str(link))
    assert (target / "counter_1.db").exists()
    if os.getuid() == 0:  # only root can give a directory away
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ConfigError, match="not a directory owned by this user"):
            prepare_directory(str(theirs))


# --- under gunicorn, several workers ----------------------------------------------------------


def signed_order(order_id: int) -> tuple[bytes, dict[str, str]]:
    data = body(shopify_order(id=order_id, test=False, note_attributes=experiments("10-20")))
    headers = {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Event-Id": f"ev-{order_id}",
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, GUNICORN_SECRET),
        "Content-Type": "application/json",
    }
    return data, headers


def http_scrape(service: GunicornService) -> Samples:
    with urllib.request.urlopen(f"{service.url}/metrics", timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def log_lines(service: GunicornService) -> list[dict[str, Any]]:
    """Every line gunicorn and the workers wrote: each one must be a JSON object."""
    lines = service.log.read_text().splitlines()
    return [json.loads(line) for line in lines]


def sends(samples: Samples) -> float | None:
    return value(
        samples,
        "convert_webhooks_convert_requests_total",
        format="legacy_get",
        outcome="sent",
        status="2xx",
    )


def worker_pids(samples: Samples) -> set[str]:
    return {dict(labels)["pid"] for labels in named(samples, "convert_webhooks_dispatcher_up")}


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prom"
    directory.mkdir()
    return directory


@pytest.fixture
def three_workers(
    tmp_path: Path, recorder: ConvertRecorder, metrics_dir: Path
) -> Iterator[GunicornService]:
    stale_counter_file(metrics_dir, 1000)  # an earlier run's count: must not be summed in
    (metrics_dir / "keep.txt").write_text("not ours")
    config = service_config(
        tmp_path / "config.toml", f"sqlite:///{tmp_path / 'g.db'}", recorder.base_url
    )
    env = {"SHOP_SECRET": GUNICORN_SECRET, MULTIPROCESS_ENV: str(metrics_dir)}
    service = GunicornService(config, workers=3, env=env).start()
    yield service
    service.stop()


def test_one_scrape_sums_every_worker(
    three_workers: GunicornService, recorder: ConvertRecorder, metrics_dir: Path
) -> None:
    service = three_workers
    assert (metrics_dir / "keep.txt").read_text() == "not ours"
    posted = 0
    pool = ThreadPoolExecutor(6)
    for _batch in range(5):  # until at least two workers have taken webhooks
        answers = list(
            pool.map(
                lambda i: service.post("/webhooks/shop", *signed_order(1000 + i)),
                range(posted, posted + 12),
            )
        )
        assert [status for status, _ in answers] == [200] * 12
        posted += 12
        handled_by = {line["pid"] for line in log_lines(service) if line["message"] == "webhook"}
        if len(handled_by) >= 2:
            break
    pool.shutdown()
    assert len(handled_by) >= 2, "every webhook went to one worker"
    recorder.wait_for(posted)

    samples = http_scrape(service)
    assert (
        value(samples, "convert_webhooks_deliveries_total", source="shop", outcome="accepted")
        == posted
    )  # not posted + 1000: the stale file was removed
    deadline = time.monotonic() + 15  # the database's gauges are reused for 5 s per worker
    while not (sends(samples) == posted and value(samples, "convert_webhooks_pending_events") == 0):
        assert time.monotonic() < deadline, "sends were not all counted, or events stay pending"
        time.sleep(0.2)
        samples = http_scrape(service)
    assert len(recorder.requests) == posted
    pids = worker_pids(samples)
    assert len(pids) == 3
    assert set(named(samples, "convert_webhooks_dispatcher_up").values()) == {1}

    # A worker killed outright: the master forgets its live gauge, keeps its counts.
    victim = int(sorted(pids)[0])
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        samples = http_scrape(service)
        now_pids = worker_pids(samples)
        if str(victim) not in now_pids and len(now_pids) == 3:
            break
        assert time.monotonic() < deadline, f"worker {victim} still scraped: {now_pids}"
        time.sleep(0.1)
    assert not list(metrics_dir.glob(f"gauge_liveall_{victim}.db"))
    assert (
        value(samples, "convert_webhooks_deliveries_total", source="shop", outcome="accepted")
        == posted
    )
    service.stop()
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["keep.txt"]  # cleaned at exit


def test_the_default_directory_is_per_bind_address_and_removed_at_exit(
    tmp_path: Path, recorder: ConvertRecorder
) -> None:
    config = service_config(
        tmp_path / "config.toml", f"sqlite:///{tmp_path / 'g.db'}", recorder.base_url
    )
    env = {"SHOP_SECRET": GUNICORN_SECRET, MULTIPROCESS_ENV: ""}
    service = GunicornService(config, workers=2, env=env)
    expected = (
        Path(tempfile.gettempdir())
        / f"convert-webhooks-metrics-{os.getuid()}-127.0.0.1_{service.port}"
    )
    service.start()
    try:
        assert service.post("/webhooks/shop", *signed_order(1))[0] == 200
        assert expected.is_dir() and list(expected.glob("counter_*.db"))
        samples = http_scrape(service)
        assert (
            value(samples, "convert_webhooks_deliveries_total", source="shop", outcome="accepted")
            == 1
        )
    finally:
        service.stop()
    assert not expected.exists()
