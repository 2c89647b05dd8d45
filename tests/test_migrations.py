"""Schema migrations: a version-1 database with data becomes version 2 without losing a row
(SQLite and PostgreSQL), a second migration is a no-op, and processes migrating at once are
safe. The version-1 schema is the DDL version 1 created (tests/fixtures/schema_v1/)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from tests.payloads import stripe_event
from webhooks.storage.database import make_engine
from webhooks.storage.migrations import MIGRATIONS, migrate
from webhooks.storage.schema import V2_INDEXES

FIXTURES = Path(__file__).parent / "fixtures" / "schema_v1"
V1_TABLES = ("deliveries", "events", "sends", "attempts")
ROOT = Path(__file__).resolve().parent.parent

V1_ROWS = """
INSERT INTO deliveries (id, source, platform, delivery_key, topic, status, reason,
    received_at, headers, body, redacted)
VALUES (1, 'stripe', 'stripe', 'evt_v1', 'payment_intent.succeeded', 'accepted', NULL,
        1790000000.5, '{}', :body, false),
       (2, 'shop', 'shopify', 'ev-2', 'orders/create', 'ignored', 'not paid',
        1790000001.5, '{"x-shopify-topic": "orders/create"}', :body, false),
       (3, 'shop', 'shopify', 'ev-3', 'customers/redact', 'ignored', 'erased',
        1790000002.5, '{}', :empty, true);
INSERT INTO events (id, delivery_id, source, platform, project_id, kind, order_id, refund_of,
    amount, currency, item_count, customer_id, email_digest, attributes, test_mode,
    occurred_at, state, reason_code, reason, attempts, revision, created_at, horizon_start,
    next_attempt_at, lease_owner, lease_until, updated_at)
VALUES (1, 1, 'stripe', 'stripe', '2222', 'purchase', 'pi_v1', NULL, '10.99', 'USD', 1,
        'cus_1', NULL, '{"convert_experiments": "1-2"}', false, 1789999999.0, 'sent', NULL,
        NULL, 1, 0, 1790000000.5, 1790000000.5, 1790000000.5, NULL, NULL, 1790000003.0),
       (2, 2, 'shop', 'shopify', '2222', 'purchase', '820982911946154508', NULL,
        '404.95', 'EUR', 5, NULL, 'ab12', '{}', false, 1789999999.0, 'dead', 'rejected',
        'Convert answered HTTP 404', 1, 0, 1790000001.5, 1790000001.5, 1790000001.5,
        NULL, NULL, 1790000004.0);
INSERT INTO sends (id, event_id, pair, url, state, attempts, last_status, last_error, sent_at)
VALUES (1, 1, '1-2', 'https://2222.track.convertexperiments.com/track/?e=1-2', 'sent', 1,
        200, NULL, 1790000003.0),
       (2, 2, '3-4', 'https://2222.track.convertexperiments.com/track/?e=3-4', 'dead', 1,
        404, 'HTTP 404', NULL);
INSERT INTO attempts (id, event_id, pair, at, outcome, status_code, detail)
VALUES (1, 1, '1-2', 1790000003.0, 'sent', 200, NULL),
       (2, 2, '3-4', 1790000004.0, 'permanent', 404, 'HTTP 404'),
       (3, 2, '3-4', 1790000005.0, 'permanent', 404, 'HTTP 404 again');
"""


def raw_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed)


def make_v1(url: str, with_rows: bool = True) -> None:
    engine = raw_engine(url)
    ddl = (FIXTURES / f"{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for statement in ddl.split(";\n"):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                conn.exec_driver_sql("\n".join(lines))
        if with_rows:
            for statement in V1_ROWS.strip().split(";\n"):
                params = {"body": b'{"id": "evt_v1"}', "empty": b""}
                conn.execute(text(statement.rstrip(";")), params)
        if engine.dialect.name == "postgresql":  # the rows above chose their ids
            for table in V1_TABLES:
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
    engine.dispose()


# Version-1 columns that a later version renamed (version 3: a send's URL is its payload).
RENAMED = {("sends", "url"): "payload"}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every version-1 column of every row (under its current name), in id order."""
    engine = raw_engine(url)
    current = "payload" in {c["name"] for c in inspect(engine).get_columns("sends")}
    v1_columns = {
        table: [
            RENAMED.get((table, c["name"]), c["name"]) if current else c["name"] for c in columns
        ]
        for table, columns in _v1_columns().items()
    }
    with engine.connect() as conn:
        rows = {
            table: [
                tuple(r)
                for r in conn.execute(text(f"SELECT {', '.join(names)} FROM {table} ORDER BY id"))
            ]
            for table, names in v1_columns.items()
        }
    engine.dispose()
    return rows


def _v1_columns() -> dict[str, list[Any]]:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        for statement in (FIXTURES / "sqlite.sql").read_text().split(";\n"):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                conn.exec_driver_sql("\n".join(lines))
        inspector = inspect(conn)
        columns: dict[str, list[Any]] = {t: inspector.get_columns(t) for t in V1_TABLES}
    engine.dispose()
    return columns


def versions(url: str) -> list[int]:
    engine = raw_engine(url)
    with engine.connect() as conn:
        found = list(conn.execute(text("SELECT version FROM schema_version ORDER BY version")))
    engine.dispose()
    return [row[0] for row in found]


def test_version_1_database_migrates_without_losing_rows(db_url: str) -> None:
    make_v1(db_url)
    before = snapshot(db_url)
    engine = make_engine(db_url)
    assert migrate(engine) == len(MIGRATIONS) == 4
    assert versions(db_url) == [1, 2, 3, 4]
    assert snapshot(db_url) == before
    with engine.connect() as conn:
        inspector = inspect(conn)
        assert {"customer_id", "email_digest"} <= {
            c["name"] for c in inspector.get_columns("deliveries")
        }
        assert inspector.has_table("readiness")
        indexes = {i["name"] for t in V1_TABLES for i in inspector.get_indexes(t)}
        assert set(V2_INDEXES) <= indexes
        added = conn.execute(text("SELECT customer_id, email_digest FROM deliveries")).all()
        assert set(added) == {(None, None)}
        # Version 3: every send so far was a legacy GET, its URL now the payload.
        sends = conn.execute(text("SELECT format, payload FROM sends ORDER BY id")).all()
        assert [tuple(row) for row in sends] == [
            ("legacy_get", "https://2222.track.convertexperiments.com/track/?e=1-2"),
            ("legacy_get", "https://2222.track.convertexperiments.com/track/?e=3-4"),
        ]
    assert migrate(engine) == 4  # a second run is a no-op
    assert versions(db_url) == [1, 2, 3, 4]
    assert snapshot(db_url) == before
    engine.dispose()


def test_migrated_database_keeps_idempotency_and_takes_new_webhooks(
    make_service: Any, db_url: str
) -> None:
    make_v1(db_url)
    service = make_service(db_url)
    redelivered = stripe_event("payment_intent_succeeded", "evt_v1", id="pi_v1")
    redelivered["livemode"] = True
    assert service.post_stripe(redelivered).json["status"] == "duplicate"
    fresh = stripe_event("payment_intent_succeeded", "evt_new", id="pi_new")
    assert service.post_stripe(fresh).json["status"] == "accepted"
    assert service.runtime.readiness() == []


MIGRATE = """
import sys, time
from webhooks.storage.database import make_engine
from webhooks.storage.migrations import migrate
url, start = sys.argv[1], float(sys.argv[2])
engine = make_engine(url, busy_timeout_ms=20000)
time.sleep(max(0.0, start - time.time()))
print(migrate(engine))
engine.dispose()
"""


@pytest.mark.parametrize("starting_from", ["empty", "version 1"])
def test_processes_migrating_at_once_are_safe(db_url: str, starting_from: str) -> None:
    if starting_from == "version 1":
        make_v1(db_url)
        before = snapshot(db_url)
    start = time.time() + 1.5  # all of them past their imports, then at once
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, db_url, str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [process.communicate(timeout=60) for process in processes]
    assert [
        (p.returncode, out.strip()) for p, (out, _) in zip(processes, results, strict=True)
    ] == [(0, "4")] * 3, [err for _, err in results]
    assert versions(db_url) == [1, 2, 3, 4]
    if starting_from == "version 1":
        assert snapshot(db_url) == before
