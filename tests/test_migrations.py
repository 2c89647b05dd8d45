"""Schema migrations: a version-1 database with data becomes the newest version without losing
a row (SQLite and PostgreSQL), a second migration is a no-op, and processes migrating at once
are safe. The version-1 schema is the DDL version 1 created (tests/fixtures/schema_v1/)."""

from __future__ import annotations

import hashlib
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
from webhooks.storage.digests import keyed_digest, rekey_email_digests
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
    assert migrate(engine) == len(MIGRATIONS) == 7
    assert versions(db_url) == [1, 2, 3, 4, 5, 6, 7]
    assert snapshot(db_url) == before
    with engine.connect() as conn:
        inspector = inspect(conn)
        assert {"customer_id", "email_digest"} <= {
            c["name"] for c in inspector.get_columns("deliveries")
        }
        assert inspector.has_table("readiness")
        # Version 5: the exposure store (empty) and the storage settings table.
        assert inspector.has_table("exposures") and inspector.has_table("storage_settings")
        assert {"ix_exposures_customer", "ix_exposures_email"} <= {
            i["name"] for i in inspector.get_indexes("exposures")
        }
        assert conn.execute(text("SELECT count(*) FROM exposures")).scalar() == 0
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
    assert migrate(engine) == 7  # a second run is a no-op
    assert versions(db_url) == [1, 2, 3, 4, 5, 6, 7]
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
    ] == [(0, "7")] * 3, [err for _, err in results]
    assert versions(db_url) == [1, 2, 3, 4, 5, 6, 7]
    if starting_from == "version 1":
        assert snapshot(db_url) == before


def migrate_to(url: str, version: int) -> None:
    """Run the steps up to `version` on a version-1 database, as the code of that version
    did (the versions after it do not exist yet)."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for number, step in enumerate(MIGRATIONS[1:version], start=2):
            step(conn)
            conn.execute(
                text("INSERT INTO schema_version (version, applied_at) VALUES (:v, 0)"),
                {"v": number},
            )
    engine.dispose()


BUYER = "Buyer@Example.com "
PLAIN = hashlib.sha256(BUYER.strip().lower().encode()).hexdigest()
EMAIL_KEY = b"k" * 40


def digests(url: str) -> dict[str, list[Any]]:
    engine = raw_engine(url)
    with engine.connect() as conn:
        found = {
            table: [
                row[0]
                for row in conn.execute(text(f"SELECT email_digest FROM {table} ORDER BY id"))
            ]
            for table in ("deliveries", "events")
        }
    engine.dispose()
    return found


def test_version_4_digests_are_rekeyed_once_with_the_configured_key(db_url: str) -> None:
    """Plain SHA-256 digests stored by version 4 become HMAC(key, plain) at start-up; a second
    start (or a second process) changes nothing; the done mark names the key, not its value."""
    make_v1(db_url)
    migrate_to(db_url, 4)
    assert versions(db_url) == [1, 2, 3, 4]
    engine = raw_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE deliveries SET email_digest = :d WHERE id = 1"), {"d": PLAIN})
        conn.execute(text("UPDATE events SET email_digest = :d WHERE id = 1"), {"d": PLAIN})
    engine.dispose()
    assert digests(db_url) == {"deliveries": [PLAIN, None, None], "events": [PLAIN, "ab12"]}

    store = make_engine(db_url)
    assert migrate(store) == 7
    assert rekey_email_digests(store, EMAIL_KEY, 1_800_000_000.0) == 3
    keyed = keyed_digest(EMAIL_KEY, PLAIN)
    assert keyed.startswith("k:") and len(keyed) == 64 and PLAIN not in keyed
    # "ab12" is no real digest (written by hand?): keyed all the same, nothing stays plain.
    assert digests(db_url) == {
        "deliveries": [keyed, None, None],
        "events": [keyed, keyed_digest(EMAIL_KEY, "ab12")],
    }
    assert rekey_email_digests(store, EMAIL_KEY, 1_800_000_001.0) == 0
    assert digests(db_url)["events"][0] == keyed
    # Marked done for this key: a later start does not scan the tables again (a plain digest
    # written since, by hand here, stays; every ingest with the key writes keyed ones).
    with store.begin() as conn:
        conn.execute(text("UPDATE events SET email_digest = :d WHERE id = 2"), {"d": PLAIN})
    assert rekey_email_digests(store, EMAIL_KEY, 1_800_000_002.0) == 0
    assert digests(db_url)["events"][1] == PLAIN
    with store.connect() as conn:
        marks = conn.execute(text("SELECT name, value FROM storage_settings")).all()
    assert [(name, len(value)) for name, value in marks] == [("email_digest_key", 16)]
    assert EMAIL_KEY.decode() not in marks[0][1]
    store.dispose()


def test_rekeying_resumes_row_by_row_and_a_new_key_is_noticed(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop half-way (some rows keyed, no done mark) resumes without keying a keyed row
    twice; a different key later re-keys only rows still plain and says the key changed."""
    make_v1(sqlite_url)
    store = make_engine(sqlite_url)
    migrate(store)
    half = keyed_digest(EMAIL_KEY, PLAIN)
    with store.begin() as conn:
        conn.execute(text("UPDATE deliveries SET email_digest = :d WHERE id = 1"), {"d": half})
        conn.execute(text("UPDATE events SET email_digest = :d WHERE id = 1"), {"d": PLAIN})
    assert rekey_email_digests(store, EMAIL_KEY, 1.0) == 2  # events 1 and 2, not deliveries 1
    assert digests(sqlite_url)["deliveries"][0] == half
    assert digests(sqlite_url)["events"][0] == half
    with caplog.at_level("ERROR"):
        assert rekey_email_digests(store, b"z" * 40, 2.0) == 0
    assert "privacy.email_key differs" in caplog.text
    store.dispose()


def test_version_5_database_gets_the_details_columns_without_losing_rows(db_url: str) -> None:
    """Version 6: events record whether their details were read from the platform's API
    (NULL for every event stored before: their webhooks carried everything)."""
    make_v1(db_url)
    migrate_to(db_url, 5)
    before = snapshot(db_url)
    engine = make_engine(db_url)
    assert migrate(engine) == 7
    assert versions(db_url) == [1, 2, 3, 4, 5, 6, 7]
    assert snapshot(db_url) == before
    with engine.connect() as conn:
        columns = {c["name"]: c for c in inspect(conn).get_columns("events")}
        assert {"details", "details_ref"} <= set(columns)
        assert columns["details"]["nullable"] and columns["details_ref"]["nullable"]
        added = conn.execute(text("SELECT details, details_ref FROM events ORDER BY id")).all()
        assert [tuple(row) for row in added] == [(None, None), (None, None)]
    assert migrate(engine) == 7  # a second run is a no-op
    engine.dispose()


def test_version_6_database_gets_the_convert_format_column_without_losing_rows(
    db_url: str,
) -> None:
    """Version 7: events record the Convert format they go out in; those stored before were
    stored under the legacy GET, and NULL says so (read as legacy)."""
    make_v1(db_url)
    migrate_to(db_url, 6)
    before = snapshot(db_url)
    engine = make_engine(db_url)
    assert migrate(engine) == 7
    assert versions(db_url) == [1, 2, 3, 4, 5, 6, 7]
    assert snapshot(db_url) == before
    with engine.connect() as conn:
        column = {c["name"]: c for c in inspect(conn).get_columns("events")}["convert_format"]
        assert column["nullable"]
        indexes = {i["name"] for i in inspect(conn).get_indexes("events")}
        assert "ix_events_open" in indexes  # what the metrics' scrape reads
        added = conn.execute(text("SELECT convert_format FROM events ORDER BY id")).all()
        assert [tuple(row) for row in added] == [(None,), (None,)]
    assert migrate(engine) == 7
    engine.dispose()
