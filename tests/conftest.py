"""Shared fixtures: real SQLite files, a real PostgreSQL schema per test, a real local HTTP
server standing in for Convert, and a clock tests can move."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.config_file import SHOPIFY_SECRET, STRIPE_SECRET, config_document
from tests.convert_recorder import ConvertRecorder
from tests.payloads import body
from tests.signing import shopify_hmac, stripe_signature_header
from webhooks.core.settings import Settings
from webhooks.web.app import create_app, runtime_of
from webhooks.wiring.config import settings_from_mapping
from webhooks.wiring.runtime import Runtime

START = 1_800_000_000.0  # 2027-01-15: a fixed "now" for the fake clock

PG_URL = os.environ.get("CONVERT_WEBHOOKS_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.current = now

    def now(self) -> float:
        return self.current

    def monotonic(self) -> float:
        # The same fake time: a test that moves the clock moves budgets and pauses too.
        return self.current

    def lease_now(self, conn: Any) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


def _pg_available() -> str | None:
    try:
        engine = create_engine(make_url(PG_URL).set(drivername="postgresql+psycopg"))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except OperationalError as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_available()
    if problem:
        if os.environ.get("CONVERT_WEBHOOKS_REQUIRE_PG"):
            pytest.fail(problem)
        pytest.skip(problem)
    return PG_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards."""
    schema = f"cw_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(pg_server).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(pg_server).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'webhooks.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def recorder() -> Iterator[ConvertRecorder]:
    server = ConvertRecorder().start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Service:
    """The app under test with helpers to post signed deliveries and run the dispatcher."""

    def __init__(self, app: Flask, clock: FakeClock) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.clock = clock

    @property
    def runtime(self) -> Runtime:
        return runtime_of(self.app)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def post_stripe(
        self,
        event: dict[str, Any],
        source: str = "stripe",
        secret: str = STRIPE_SECRET,
        timestamp: int | None = None,
        raw: bytes | None = None,
    ) -> Any:
        data = raw if raw is not None else body(event)
        t = int(self.clock.now()) if timestamp is None else timestamp
        header = stripe_signature_header(data, secret, t)
        return self.client.post(
            f"/webhooks/{source}",
            data=data,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )

    def post_shopify(
        self,
        topic: str,
        payload: dict[str, Any],
        event_id: str | None = None,
        source: str = "shop",
        secret: str = SHOPIFY_SECRET,
    ) -> Any:
        data = body(payload)
        headers = {
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": shopify_hmac(data, secret),
            "X-Shopify-Shop-Domain": "example.myshopify.com",
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "Content-Type": "application/json",
        }
        if event_id:
            headers["X-Shopify-Event-Id"] = event_id
        return self.client.post(f"/webhooks/{source}", data=data, headers=headers)

    def drain(self) -> int:
        return self.runtime.dispatcher.drain()


@pytest.fixture
def make_service(clock: FakeClock, recorder: ConvertRecorder) -> Iterator[Any]:
    made: list[Service] = []

    def make(db: str, **sections: Any) -> Service:
        doc = config_document(db, recorder.base_url, **sections)
        app = create_app(settings_from_mapping(doc, {}), clock=clock)
        made.append(Service(app, clock))
        return made[-1]

    yield make
    for service in made:
        service.runtime.close()


@pytest.fixture
def service(make_service: Any, sqlite_url: str) -> Service:
    svc: Service = make_service(sqlite_url)
    return svc


@pytest.fixture
def any_db_service(make_service: Any, db_url: str) -> Service:
    svc: Service = make_service(db_url)
    return svc
