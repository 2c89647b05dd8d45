"""Engine creation and schema migrations.

SQLite runs in WAL mode with synchronous=FULL: a platform that got a 2xx never resends, so an
acknowledged delivery must survive a power cut, not only a process crash. Every SQLite
transaction starts with BEGIN IMMEDIATE so a transaction never fails by trying to upgrade a
read lock. Every transaction goes through `transaction()`, which for SQLite first takes an
flock shared by all processes on that file: waiters sleep in the kernel and are woken the
moment the lock is free, where SQLite's own busy handler sleeps 1 to 100 ms between tries
(under load that made most of a request's time).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import make_url

from webhooks.errors import ConfigError
from webhooks.schema import V2_COLUMNS, V2_INDEXES, metadata, readiness, schema_version


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


MIN_SQLITE = (3, 35, 0)  # INSERT .. ON CONFLICT .. RETURNING


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ConfigError(
            {
                "database.url": f"SQLite {sqlite3.sqlite_version} is too old: this "
                "Python needs SQLite 3.35 or newer, or use PostgreSQL"
            }
        )
    database = make_url(url).database
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        _LOCKS[engine] = FileLock(f"{database}.lock")

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


class FileLock:
    """An exclusive lock on a file, shared by every process and thread that uses it.

    One descriptor per thread (flock excludes other descriptors, also in this process), and
    a new one after a fork, so a child never shares its parent's lock. Re-entrant per thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _fd(self) -> int:
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            self._local.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._local.pid = pid
            self._local.depth = 0
        fd: int = self._local.fd
        return fd

    @contextmanager
    def hold(self) -> Iterator[None]:
        fd = self._fd()
        if self._local.depth == 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._local.depth += 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if self._local.depth == 0:
                fcntl.flock(fd, fcntl.LOCK_UN)


_LOCKS: weakref.WeakKeyDictionary[Engine, FileLock] = weakref.WeakKeyDictionary()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction, committed on success; for SQLite taken under the file's flock."""
    lock = _LOCKS.get(engine)
    if lock is None:
        with engine.begin() as conn:
            yield conn
        return
    with lock.hold(), engine.begin() as conn:
        yield conn


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


def _v2_customer_refs_readiness_pruning(conn: Connection) -> None:
    """Customer references on deliveries, the readiness table, indexes for pruning.

    Written to run on a version-1 database and on one that `_create_v1` just made from the
    current metadata (which already has everything): each part checks before it adds.
    """
    inspector = inspect(conn)
    for table, columns in V2_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        for name in columns:
            if name not in present:
                column = metadata.tables[table].c[name]
                kind = column.type.compile(conn.dialect)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
    readiness.create(conn, checkfirst=True)
    for each in metadata.sorted_tables:
        for index in each.indexes:
            if index.name in V2_INDEXES:
                index.create(conn, checkfirst=True)


# Append-only: each step moves the schema one version forward without losing stored data.
MIGRATIONS: Sequence[Callable[[Connection], None]] = (
    _create_v1,
    _v2_customer_refs_readiness_pruning,
)


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version; safe to run from several processes at once."""
    with transaction(engine) as conn:
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
    with transaction(engine) as conn:
        conn.execute(text("SELECT 1"))
