"""Engine creation and schema migrations.

SQLite runs in WAL mode with synchronous=FULL: a platform that got a 2xx never resends, so an
acknowledged delivery must survive a power cut, not only a process crash. Every SQLite
transaction starts with BEGIN IMMEDIATE so writers queue on the busy timeout instead of
failing when a read transaction tries to upgrade.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import make_url

from webhooks.schema import metadata, schema_version


def make_engine(url: str, busy_timeout_ms: int = 5000) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout_ms)
    if parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    # A bounded connect timeout: /readyz and the request path must answer, not hang.
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"connect_timeout": 5}
    )


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


# Append-only: each step moves the schema one version forward without losing stored data.
MIGRATIONS: Sequence[Callable[[Connection], None]] = (_create_v1,)


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version; safe to run from several processes at once."""
    with engine.begin() as conn:
        if is_postgres(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(7351020)"))
        if not inspect(conn).has_table(schema_version.name):
            schema_version.create(conn)
        current = (
            conn.execute(
                select(schema_version.c.version).order_by(schema_version.c.version.desc()).limit(1)
            ).scalar()
            or 0
        )
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            step(conn)
            conn.execute(insert(schema_version).values(version=version, applied_at=time.time()))
        return len(MIGRATIONS)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
