"""Engine creation, bounded transactions and schema migrations.

SQLite runs in WAL mode with synchronous=FULL: a platform that got a 2xx never resends, so an
acknowledged delivery must survive a power cut, not only a process crash. Every SQLite
transaction starts with BEGIN IMMEDIATE so a transaction never fails by trying to upgrade a
read lock. Every transaction goes through `transaction()`, which for SQLite first takes a lock
shared by all processes on that file (`FileLock`): a thread waits on a lock that wakes it the
moment it is free, where SQLite's own busy handler sleeps 1 to 100 ms between tries (under
load that made most of a request's time).

Every wait is bounded by `database.busy_timeout_ms`, and one budget covers a transaction's
waits together (the file lock, then SQLite's busy handler with what is left; on PostgreSQL
lock_timeout, statement_timeout and the pool checkout): a wait that runs out raises
StorageError, which the request path answers with 503 so the platform retries.

The SQLite file's identity (device, inode) is remembered at the first connection. If the path
is later gone or names another file, every transaction raises StorageError: writing on would
go into an unlinked file (lost at restart), and a new empty database would forget which
deliveries were already received (idempotency). Restoring the file or restarting decides.
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

from webhooks.core.errors import ConfigError, StorageError

MIN_SQLITE = (3, 35, 0)  # INSERT .. ON CONFLICT .. RETURNING
# A PostgreSQL statement may run this long at least, also with a tiny busy timeout.
MIN_STATEMENT_MS = 1000
# Within this much of the full budget, SQLite's busy timeout is left at the full budget
# (saves a PRAGMA per transaction on the fast path).
BUDGET_SLACK_MS = 10


def make_engine(url: str, busy_timeout_ms: int = 5000) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout_ms)
    return _postgres_engine(parsed, busy_timeout_ms)


def _postgres_engine(parsed: URL, busy_timeout_ms: int) -> Engine:
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    budget = max(1, busy_timeout_ms)  # 0 would mean "no limit" to PostgreSQL
    engine = create_engine(
        parsed,
        pool_pre_ping=True,  # a connection the server closed is replaced, not used
        pool_size=5,
        max_overflow=5,
        pool_timeout=budget / 1000,
        # libpq counts whole seconds and treats 1 as 2.
        connect_args={"connect_timeout": max(2, math.ceil(budget / 1000))},
    )
    # Set on each new connection, not as a startup `options` parameter, which PgBouncer
    # refuses; a setting the URL's own `options` names is left as it says.
    theirs = str(parsed.query.get("options", ""))
    settings = {"lock_timeout": budget, "statement_timeout": max(budget, MIN_STATEMENT_MS)}
    ours = {name: ms for name, ms in settings.items() if name not in theirs}

    @event.listens_for(engine, "connect")
    def _set_timeouts(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            for name, ms in ours.items():
                cursor.execute(f"SET {name} = {int(ms)}")
        dbapi_connection.commit()

    return engine


def _sqlite_engine(parsed: URL, busy_timeout_ms: int) -> Engine:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ConfigError(
            {
                "database.url": f"SQLite {sqlite3.sqlite_version} is too old: this "
                "Python needs SQLite 3.35 or newer, or use PostgreSQL"
            }
        )
    budget = max(0, busy_timeout_ms)
    path = sqlite_path(parsed)
    # A file database has a pool of connections: its checkout waits within the budget too.
    pool = {} if path is None else {"pool_timeout": max(budget, 1) / 1000}
    engine = create_engine(parsed, connect_args={"timeout": budget / 1000}, **pool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={budget}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    if path is not None:
        db = SqliteFile(path, FileLock(f"{path}.lock"), budget, is_uri=_is_uri(parsed))
        db.make_directory()
        _SQLITE[engine] = db
        event.listen(engine, "do_connect", db.before_connect)
        event.listen(engine, "connect", db.after_connect)  # after the PRAGMAs made the file
    return engine


def _is_uri(parsed: URL) -> bool:
    return str(parsed.query.get("uri", "")).lower() in ("true", "1")


def sqlite_path(parsed: URL) -> str | None:
    """The file a SQLite URL names (also as a `file:` URI), or None for an in-memory one."""
    database = parsed.database
    if not database or database == ":memory:":
        return None
    if not (_is_uri(parsed) and database.startswith("file:")):
        return database
    rest = database.removeprefix("file:")
    if rest.startswith("//"):  # file://host/path: the host part is empty or localhost
        rest = "/" + rest[2:].partition("/")[2]
    path = unquote(rest)
    return None if path == ":memory:" or parsed.query.get("mode") == "memory" else path


class FileLock:
    """An exclusive lock on a file, shared by every process that uses it, with a deadline.

    Threads of one process queue on a threading.Lock (woken the moment it is free, within
    their deadline); the thread at the front takes the flock. When another process holds it,
    a blocking flock, which cannot be given a timeout, runs on a helper thread (`_FlockWaiter`)
    and the thread that wants the lock waits for it until its deadline: so the kernel still
    wakes the waiter the moment the lock is free, and a lock held by a stuck or stopped
    process does not hold every request with it.
    A new lock, descriptor and helper after a fork: a child never shares its parent's lock.
    Re-entrant per thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._reset()
        _FORK_SAFE.add(self)

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._closer: weakref.finalize[[int], FileLock] | None = None  # closes _fd with us
        self._waiter: _FlockWaiter | None = None
        self._local = threading.local()

    def _after_fork(self) -> None:
        # The parent's open file description and helper thread: neither is ours (the helper
        # does not exist here). Closing our copies releases nothing of the parent's.
        if self._waiter is not None:
            self._waiter.forget()
        if self._closer is not None:
            self._closer()  # closes now, and never again (the number may be reused)
        self._reset()

    @contextmanager
    def hold(self, deadline: float, budget_ms: int = 0) -> Iterator[None]:
        """Hold the lock; StorageError if it is not free by `deadline` (time.monotonic())."""
        depth: int = getattr(self._local, "depth", 0)
        if depth == 0:
            self._acquire(deadline, budget_ms)
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                self._release()

    def _acquire(self, deadline: float, budget_ms: int) -> None:
        if not self._mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _busy(budget_ms)
        locked = False
        try:
            locked = self._flock(self._open(), deadline)
        finally:
            if not locked:  # timed out or failed: the next thread may try
                self._mutex.release()
        if not locked:
            raise _busy(budget_ms)

    def _open(self) -> int:
        if self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                # The path is not shown to clients; the operator knows where the database is.
                raise StorageError(
                    f"database unavailable: cannot open the lock file next to the database "
                    f"({exc.strerror})"
                ) from exc
            self._fd = fd
            self._closer = weakref.finalize(self, _close_quietly, fd)
        return self._fd

    def _flock(self, fd: int, deadline: float) -> bool:
        """Take the flock (we hold the mutex); False if it was not free by the deadline."""
        waiter = self._waiter
        if waiter is None or not waiter.in_flight:  # else its pending flock is this one's
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
        if waiter is None:
            waiter = self._waiter = _FlockWaiter(fd)
            weakref.finalize(self, waiter.close)
        return waiter.acquire(deadline - time.monotonic())

    def _release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()


class _FlockWaiter:
    """Waits for a flock in a blocking call on its own thread, for whichever thread of the
    process wants it, until that thread's deadline. A wait given up on leaves the call
    pending: the next thread that wants the lock takes it over; if nobody does, the lock is
    released as soon as it is obtained."""

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)  # the same open file description, so the same lock
        self._cond = threading.Condition()
        self._wanted = self._granted = self._in_flight = self._closed = False
        threading.Thread(target=self._run, name="flock-waiter", daemon=True).start()

    @property
    def in_flight(self) -> bool:
        with self._cond:
            return self._in_flight

    def acquire(self, timeout: float) -> bool:
        with self._cond:
            self._wanted = True
            self._cond.notify_all()
            got = self._cond.wait_for(lambda: self._granted, max(0.0, timeout))
            self._wanted = self._granted = False
            return got

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def forget(self) -> None:
        """In a forked child: the thread is not here, only the descriptor."""
        _close_quietly(self._fd)

    def _run(self) -> None:
        try:
            while self._next():
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                with self._cond:
                    self._in_flight = False
                    if self._wanted:
                        self._granted = True
                        self._cond.notify_all()
                    else:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)  # given up on meanwhile
        finally:
            _close_quietly(self._fd)

    def _next(self) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._wanted and not self._granted))
            self._in_flight = not self._closed
            return self._in_flight


def _close_quietly(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)


def _busy(budget_ms: int) -> StorageError:
    return StorageError(
        f"database busy: another writer held the lock longer than busy_timeout_ms ({budget_ms})"
    )


_FORK_SAFE: weakref.WeakSet[FileLock] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    for lock in list(_FORK_SAFE):
        lock._after_fork()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


@dataclass
class SqliteFile:
    """A SQLite database file: its lock, its wait budget and the identity it was opened with."""

    path: str
    lock: FileLock
    budget_ms: int
    is_uri: bool = False
    identity: tuple[int, int] | None = None

    def make_directory(self) -> None:
        """Create the file's directory, before the first connection only; a directory that
        cannot be made now (not mounted yet, a file in the way) may be there later."""
        if self.identity is None:
            # If it fails, connecting fails and says so; the request path answers 503.
            with suppress(OSError):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    def before_connect(self, _dialect: Any, _record: Any, cargs: list[Any], cparams: Any) -> None:
        """Once the file is known, open it only if it exists: never a new empty database."""
        if self.identity is None:
            self.make_directory()
        elif not self.is_uri:
            cargs[0] = f"file:{quote(self.path)}?mode=rw"
            cparams["uri"] = True

    def after_connect(self, _dbapi_connection: Any, _record: Any) -> None:
        if self.identity is None:
            st = os.stat(self.path)
            self.identity = (st.st_dev, st.st_ino)

    def check(self) -> None:
        """StorageError if the path no longer names the file this process opened."""
        if self.identity is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StorageError(
                "database file was deleted while the service ran: restore it from a backup "
                "and restart the service (a new, empty one would not know which deliveries "
                "were already received)"
            ) from None
        except OSError as exc:
            raise StorageError(f"database unavailable: {exc.strerror}") from exc
        if (st.st_dev, st.st_ino) != self.identity:
            raise StorageError(
                "database file was replaced while the service ran: restart the service to "
                "use the file now in its place (or put the original back)"
            )

    def spend(self, conn: Connection, deadline: float) -> None:
        """Give SQLite's busy handler only what is left of the budget after the file lock."""
        left = int((deadline - time.monotonic()) * 1000)
        wanted = self.budget_ms if left >= self.budget_ms - BUDGET_SLACK_MS else max(0, left)
        if conn.info.get("busy_timeout_ms", self.budget_ms) != wanted:
            driver: Any = conn.connection.driver_connection
            driver.execute(f"PRAGMA busy_timeout={wanted}")
            conn.info["busy_timeout_ms"] = wanted


_SQLITE: weakref.WeakKeyDictionary[Engine, SqliteFile] = weakref.WeakKeyDictionary()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction, committed on success; for SQLite taken under the file's lock.

    StorageError when a wait outlasts busy_timeout_ms or the SQLite file was deleted or
    replaced; the driver's errors (SQLAlchemyError) otherwise.
    """
    db = _SQLITE.get(engine)
    if db is None:
        with engine.begin() as conn:
            yield conn
        return
    deadline = time.monotonic() + db.budget_ms / 1000
    db.check()
    with db.lock.hold(deadline, db.budget_ms), engine.connect() as conn:
        db.spend(conn, deadline)
        with conn.begin():
            yield conn


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


_MARK_READY = text(
    "INSERT INTO readiness (owner, checked_at) VALUES (:owner, :now) "
    "ON CONFLICT (owner) DO UPDATE SET checked_at = excluded.checked_at"
)


def mark_ready(engine: Engine, owner: str, now: float) -> None:
    """Write this process's row: proves the database takes writes, not only reads."""
    with transaction(engine) as conn:
        conn.execute(_MARK_READY, {"owner": owner, "now": now})
