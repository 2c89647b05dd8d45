"""Fill a SQLite database fast with rows the service itself would have written.

One real webhook is first taken through the product in-process (route, store, dispatcher, sender
to the stand-in), in a child process so the bench keeps no engine or thread; its rows are the
templates. Copies then go in with executemany in one transaction, using the real schema
(created by `webhooks.storage.migrations.migrate`). Only ids, keys, order ids and times differ
per copy; delivery bodies are replaced by a small JSON object (1,000,000 real 12 KB bodies
would be a 12 GB file), which the request path never reads.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import Table

from bench.webhook import SOURCE, ShopifyWebhooks

_FORK = mp.get_context("fork")
TEMPLATE_ORDER_ID = 4_000_000_000_000


@dataclass(frozen=True)
class Templates:
    delivery: dict[str, Any]
    pending_event: dict[str, Any]
    sent_event: dict[str, Any]
    send: dict[str, Any]
    attempt: dict[str, Any]


def capture_templates(config: Path) -> Templates:
    """Rows of one real webhook, stored and sent by the product (database from `config`)."""
    parent, child = _FORK.Pipe()
    proc = _FORK.Process(target=_capture_child, args=(child, config), daemon=True)
    proc.start()
    child.close()
    result = parent.recv()
    proc.join(10)
    if isinstance(result, str):
        raise RuntimeError(f"template capture failed: {result}")
    assert isinstance(result, Templates)
    return result


def _capture_child(pipe: Connection, config: Path) -> None:
    try:
        pipe.send(_capture(config))
    except Exception as exc:  # reported to the parent, which raises
        pipe.send(f"{type(exc).__name__}: {exc}")
    finally:
        pipe.close()
        os._exit(0)


def _capture(config: Path) -> Templates:
    from sqlalchemy import select

    from webhooks.storage.schema import attempts, deliveries, events, sends
    from webhooks.web.app import create_app, runtime_of
    from webhooks.wiring.config import load_settings

    app = create_app(load_settings(config))
    runtime = runtime_of(app)
    hooks = ShopifyWebhooks("127.0.0.1", 80)
    body = hooks.body(TEMPLATE_ORDER_ID)
    response = app.test_client().post(
        f"/webhooks/{SOURCE}", data=body, headers=hooks.headers(TEMPLATE_ORDER_ID, body)
    )
    if response.status_code != 200 or (response.json or {}).get("status") != "accepted":
        raise RuntimeError(f"template webhook answered {response.status_code} {response.json}")
    with runtime.engine.connect() as conn:
        delivery = dict(conn.execute(select(deliveries)).mappings().one())
        pending = dict(conn.execute(select(events)).mappings().one())
    if pending["state"] != "pending":
        raise RuntimeError(f"template event is {pending['state']}: {pending['reason']}")
    runtime.dispatcher.drain()
    with runtime.engine.connect() as conn:
        sent = dict(conn.execute(select(events)).mappings().one())
        send = dict(conn.execute(select(sends)).mappings().one())
        attempt = dict(conn.execute(select(attempts)).mappings().one())
    runtime.close()
    if sent["state"] != "sent":
        raise RuntimeError(f"template event was not sent: {sent['state']} {sent['reason']}")
    return Templates(delivery, pending, sent, send, attempt)


def _insert_sql(table: Table) -> tuple[str, list[str]]:
    columns = [c.name for c in table.columns]
    marks = ",".join("?" * len(columns))
    return f"INSERT INTO {table.name} ({','.join(columns)}) VALUES ({marks})", columns


def _max_id(con: sqlite3.Connection, table: Table) -> int:
    value = con.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table.name}").fetchone()[0]
    return int(value)


def prefill(db_path: Path, templates: Templates, count: int, state: str, first_order: int) -> float:
    """Add `count` deliveries + events (state "sent": with their send and attempt rows, as after
    a normal life; state "pending": due now, for a backlog). Seconds taken."""
    from webhooks.storage.database import make_engine
    from webhooks.storage.migrations import migrate
    from webhooks.storage.schema import attempts, deliveries, events, sends

    started = time.monotonic()
    engine = make_engine(f"sqlite:///{db_path}")
    migrate(engine)
    engine.dispose()
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=OFF")
        con.execute("BEGIN IMMEDIATE")
        first = {t.name: _max_id(con, t) + 1 for t in (deliveries, events, sends, attempts)}
        now = time.time()
        old_id = str(TEMPLATE_ORDER_ID)

        def rows(
            table: Table, template: Mapping[str, Any], extra: Any
        ) -> Iterator[tuple[Any, ...]]:
            _, columns = _insert_sql(table)
            base = dict(template)
            for i in range(count):
                row = base | extra(i)
                yield tuple(row[c] for c in columns)

        def at(i: int) -> float:
            return now - (count - i) * 0.05

        def delivery(i: int) -> dict[str, Any]:
            order = first_order + i
            return {
                "id": first["deliveries"] + i,
                "delivery_key": f"orders/paid:event:prefill-{order}",
                "body": b'{"id": %d}' % order,
                "received_at": at(i),
            }

        is_sent = state == "sent"
        event_template = templates.sent_event if is_sent else templates.pending_event

        def event(i: int) -> dict[str, Any]:
            t = at(i)
            values = {
                "id": first["events"] + i,
                "delivery_id": first["deliveries"] + i,
                "order_id": str(first_order + i),
                "created_at": t,
                "horizon_start": t,
                "occurred_at": t,
                "updated_at": t,
                "next_attempt_at": t,
            }
            if not is_sent:
                values |= {"state": state, "next_attempt_at": now - 1.0}
            return values

        sql, _ = _insert_sql(deliveries)
        con.executemany(sql, rows(deliveries, templates.delivery, delivery))
        sql, _ = _insert_sql(events)
        con.executemany(sql, rows(events, event_template, event))
        if is_sent:
            payload = str(templates.send["payload"])

            def send(i: int) -> dict[str, Any]:
                return {
                    "id": first["sends"] + i,
                    "event_id": first["events"] + i,
                    "payload": payload.replace(old_id, str(first_order + i)),
                    "sent_at": at(i),
                }

            def attempt(i: int) -> dict[str, Any]:
                return {"id": first["attempts"] + i, "send_id": first["sends"] + i, "at": at(i)}

            sql, _ = _insert_sql(sends)
            con.executemany(sql, rows(sends, templates.send, send))
            sql, _ = _insert_sql(attempts)
            con.executemany(sql, rows(attempts, templates.attempt, attempt))
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return time.monotonic() - started


def count_states(db_path: Path) -> dict[str, int]:
    con = sqlite3.connect(db_path)
    try:
        return dict(con.execute("SELECT state, COUNT(*) FROM events GROUP BY state").fetchall())
    finally:
        con.close()
