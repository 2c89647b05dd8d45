"""Storage faults the service must survive without losing or falsely acknowledging a webhook:
the SQLite file deleted or replaced under it, a database that reads but refuses writes, locks
held longer than busy_timeout_ms (every wait bounded, 503 with Retry-After in time), pool
exhaustion, dead pooled connections, and a database that is down when the service starts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import ROOT, GunicornService, free_port, service_config
from tests.payloads import stripe_event
from webhooks.storage.database import make_engine, transaction
from webhooks.storage.schema import deliveries, readiness

SHOP_SECRET = "shpss_storage_faults_test"
BUSY_MS = 2000  # tests/config_file.py: database.busy_timeout_ms
BUSY = BUSY_MS / 1000


def intent(event_id: str) -> dict[str, Any]:
    return stripe_event("payment_intent_succeeded", event_id, id=f"pi_{event_id}")


def db_path(service: Service) -> Path:
    path = make_url(service.settings.database_url).database
    assert path
    return Path(path)


def assert_503(response: Any, words: str) -> None:
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert words in response.json["error"]


# -- the SQLite file deleted or replaced while the service runs ------------------------------


def test_deleted_database_file_answers_503_and_no_empty_database_is_made(
    service: Service,
) -> None:
    assert service.post_stripe(intent("evt_before")).json["status"] == "accepted"
    path = db_path(service)
    path.unlink()  # an operator's `rm`, a cleanup job, a volume swapped under the process
    response = service.post_stripe(intent("evt_after"))
    assert_503(response, "deleted")
    assert "restore" in response.json["error"]
    assert not path.exists(), "a new, empty database would forget what was received"
    assert service.client.get("/readyz").status_code == 503
    assert any("deleted" in problem for problem in service.runtime.readiness())
    # Below the check, a new connection opens only an existing file either.
    engine = service.runtime.engine
    engine.dispose()
    with pytest.raises(OperationalError), engine.connect():
        pass
    assert not path.exists()


def test_replaced_database_file_answers_503_until_the_original_is_back(
    service: Service,
) -> None:
    assert service.post_stripe(intent("evt_1")).json["status"] == "accepted"
    path = db_path(service)
    aside = path.with_name("aside.db")
    path.rename(aside)
    other = sqlite3.connect(path)  # another file now has the name (a restored old backup)
    other.execute("CREATE TABLE unrelated (x)")
    other.commit()
    other.close()
    assert_503(service.post_stripe(intent("evt_2")), "replaced")
    assert service.client.get("/readyz").status_code == 503
    check = sqlite3.connect(path)
    assert [r[0] for r in check.execute("SELECT name FROM sqlite_master")] == ["unrelated"]
    check.close()
    aside.replace(path)  # the original file (same inode) back in its place
    assert service.post_stripe(intent("evt_2")).json["status"] == "accepted"
    assert service.post_stripe(intent("evt_1")).json["status"] == "duplicate"


# -- /readyz: the database must take a write -----------------------------------------------


def read_only_url(db_url: str) -> str:
    """The same database, opened so that it reads but refuses writes.

    SQLite: a file the service's user may not write is opened read-only, silently, and every
    write fails. Tests run as root, whom file modes do not stop, so the file is opened
    read-only by URI (`mode=ro`): the same state of the SQLite connection. PostgreSQL: a
    session whose transactions are read-only, as on a hot standby after a failover.
    """
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///file:{url.database}?mode=ro&uri=true"
    options = f"{url.query['options']} -cdefault_transaction_read_only=on"
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


def test_readiness_writes_and_reports_a_database_that_refuses_writes(
    make_service: Any, db_url: str
) -> None:
    writable = make_service(db_url)
    assert writable.runtime.readiness() == []
    assert writable.client.get("/readyz").status_code == 200
    with writable.runtime.engine.connect() as conn:
        owners = list(conn.execute(select(readiness.c.owner)).scalars())
    assert owners == [writable.runtime.owner]

    read_only = make_service(read_only_url(db_url))
    with read_only.runtime.engine.connect() as conn:  # it reads
        assert conn.execute(select(func.count()).select_from(deliveries)).scalar() == 0
    problems = read_only.runtime.readiness()
    assert len(problems) == 1 and "cannot be written" in problems[0]
    assert read_only.client.get("/readyz").status_code == 503
    assert read_only.post_stripe(intent("evt_ro")).status_code == 503


def test_readiness_reports_a_dispatcher_that_stopped(make_service: Any, sqlite_url: str) -> None:
    svc = make_service(sqlite_url)
    svc.runtime.start_background()
    assert svc.runtime.readiness() == []
    svc.runtime.dispatcher.request_stop()
    deadline = time.monotonic() + 5
    while getattr(svc.runtime.dispatcher, "running", False) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any("dispatcher" in problem for problem in svc.runtime.readiness())


# -- every wait bounded by busy_timeout_ms ----------------------------------------------------

HOLDER = """
import fcntl, os, sqlite3, sys, time
path, flock_for, sqlite_for = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
conn = sqlite3.connect(path, isolation_level=None)
if sqlite_for:
    conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
start = time.monotonic()
for at, release in sorted([(flock_for, "flock"), (sqlite_for, "sqlite")]):
    time.sleep(max(0.0, at - (time.monotonic() - start)))
    if release == "flock":
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif sqlite_for:
        conn.execute("ROLLBACK")
"""


@pytest.fixture
def holder(service: Service) -> Iterator[Any]:
    """Another process that holds the service's file lock and/or SQLite's write lock."""
    started: list[subprocess.Popen[str]] = []

    def hold(flock_for: float, sqlite_for: float = 0.0) -> None:
        args = [str(db_path(service)), str(flock_for), str(sqlite_for)]
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"

    yield hold
    for process in started:
        process.kill()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def timed_post(service: Service, event_id: str) -> tuple[Any, float]:
    start = time.monotonic()
    response = service.post_stripe(intent(event_id))
    return response, time.monotonic() - start


def test_file_lock_held_by_another_process_answers_503_within_the_budget(
    service: Service, holder: Any
) -> None:
    service.runtime.ensure_schema()
    holder(flock_for=8)
    response, elapsed = timed_post(service, "evt_locked")
    assert_503(response, "busy")
    assert elapsed < BUSY * 1.5 + 0.5
    assert elapsed >= BUSY * 0.9  # it did wait its budget for the lock


def test_a_file_lock_freed_within_the_budget_is_taken_at_once(
    service: Service, holder: Any
) -> None:
    service.runtime.ensure_schema()
    holder(flock_for=0.5)
    response, elapsed = timed_post(service, "evt_soon")
    assert response.json["status"] == "accepted"
    assert elapsed < 0.5 + 0.8  # it got the lock when it was freed, not at its deadline


def lock_is_free(service: Service) -> bool:
    other = os.open(f"{db_path(service)}.lock", os.O_RDWR)  # another open file description
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(other)


def test_the_next_request_takes_over_a_wait_given_up_on(service: Service, holder: Any) -> None:
    service.runtime.ensure_schema()
    holder(flock_for=BUSY + 0.7)
    first, _ = timed_post(service, "evt_first")
    assert_503(first, "busy")
    second, elapsed = timed_post(service, "evt_second")
    assert second.json["status"] == "accepted"
    assert elapsed < 0.7 + 0.8  # it got the lock when it was freed
    assert lock_is_free(service)


def test_a_wait_given_up_on_does_not_keep_the_lock(service: Service, holder: Any) -> None:
    service.runtime.ensure_schema()
    holder(flock_for=BUSY + 0.3)
    assert_503(service.post_stripe(intent("evt_first")), "busy")
    time.sleep(0.8)  # the holder has freed it; nobody here wants it any more
    assert lock_is_free(service)
    assert service.post_stripe(intent("evt_first")).json["status"] == "accepted"


CONTENDER = """
import os, sys, threading, time
from webhooks.storage.database import FileLock
path, log, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = FileLock(path)

def work(name):
    for _ in range(rounds):
        with lock.hold(time.monotonic() + 10, 10000):
            with open(log, "a") as out:
                out.write(f"in {name}\\n")
            time.sleep(0.0005)
            with open(log, "a") as out:
                out.write(f"out {name}\\n")

threads = [threading.Thread(target=work, args=(f"{os.getpid()}-{i}",)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_file_lock_excludes_every_thread_of_every_process(tmp_path: Path) -> None:
    """Three processes of two threads each, contending all the time (so waits go through the
    helper thread): never two in the lock at once, and nobody left waiting."""
    log = tmp_path / "log"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path / "x.lock"), str(log), "60"],
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    assert [p.wait(60) for p in processes] == [0, 0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 3 * 2 * 60 * 2
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert (enter.split()[0], leave.split()[0]) == ("in", "out")
        assert enter.split()[1] == leave.split()[1]


def test_file_lock_and_sqlite_lock_share_one_budget(service: Service, holder: Any) -> None:
    """The wait for the file lock counts against busy_timeout_ms: a request that got the file
    lock late gives SQLite's busy handler only what is left, not a fresh budget."""
    service.runtime.ensure_schema()
    holder(flock_for=BUSY * 0.9, sqlite_for=10)
    response, elapsed = timed_post(service, "evt_shared")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert elapsed < BUSY + 0.8  # separate budgets would take about 1.9 * BUSY


def test_a_thread_holding_the_lock_bounds_the_wait_of_the_others(service: Service) -> None:
    service.runtime.ensure_schema()
    engine = service.runtime.engine
    inside = threading.Event()

    def long_transaction() -> None:
        with transaction(engine):
            inside.set()
            time.sleep(BUSY + 1)

    thread = threading.Thread(target=long_transaction)
    thread.start()
    try:
        assert inside.wait(5)
        response, elapsed = timed_post(service, "evt_thread")
        assert_503(response, "busy")
        assert elapsed < BUSY * 1.5 + 0.5
    finally:
        thread.join()
    assert service.post_stripe(intent("evt_thread")).json["status"] == "accepted"


def test_postgres_lock_held_elsewhere_answers_503_within_the_budget(
    make_service: Any, pg_url: str
) -> None:
    svc = make_service(pg_url)
    locked, done = threading.Event(), threading.Event()

    def hold_table_lock() -> None:  # an operator's migration or VACUUM FULL, say
        other = create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"))
        with other.connect() as conn:
            conn.execute(text("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            done.wait(BUSY + 6)
            conn.rollback()
        other.dispose()

    thread = threading.Thread(target=hold_table_lock)
    thread.start()
    try:
        assert locked.wait(10)
        response, elapsed = timed_post(svc, "evt_pg_locked")
    finally:
        done.set()
        thread.join()
    assert_503(response, "database unavailable")
    assert elapsed < BUSY * 1.5 + 0.5
    assert svc.post_stripe(intent("evt_pg_locked")).json["status"] == "accepted"


def test_postgres_pool_checkout_is_bounded(pg_url: str) -> None:
    engine = make_engine(pg_url, busy_timeout_ms=500)
    held = [engine.connect() for _ in range(10)]  # pool_size + max_overflow
    try:
        start = time.monotonic()
        with pytest.raises(PoolTimeout), transaction(engine):
            pass
        assert time.monotonic() - start < 0.5 * 1.5 + 0.5
    finally:
        for conn in held:
            conn.close()
        engine.dispose()


def test_postgres_waits_follow_the_budget_unless_the_url_says_otherwise(pg_url: str) -> None:
    def shown(url: str) -> tuple[str, str]:
        engine = make_engine(url, busy_timeout_ms=2500)
        with transaction(engine) as conn:
            found = (
                conn.execute(text("SHOW lock_timeout")).scalar_one(),
                conn.execute(text("SHOW statement_timeout")).scalar_one(),
            )
        engine.dispose()
        return found

    assert shown(pg_url) == ("2500ms", "2500ms")
    url = make_url(pg_url)
    options = f"{url.query['options']} -clock_timeout=7s"
    assert shown(url.update_query_dict({"options": options}).render_as_string(False)) == (
        "7s",
        "2500ms",
    )


def test_postgres_statement_running_too_long_is_cancelled_within_the_budget(
    pg_url: str,
) -> None:
    engine = make_engine(pg_url, busy_timeout_ms=1000)
    start = time.monotonic()
    try:
        with (
            pytest.raises(OperationalError, match="statement timeout"),
            transaction(engine) as conn,
        ):
            conn.execute(text("SELECT pg_sleep(6)"))  # a stalled server, a runaway query
        assert time.monotonic() - start < 1.0 * 1.5 + 0.5
    finally:
        engine.dispose()


def test_postgres_server_that_accepts_but_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """A listening socket nobody serves: the TCP handshake succeeds (the kernel's backlog),
    the server's greeting never comes. Connecting gives up within the budget (libpq counts
    whole seconds, at least 2), not after a fixed 5 s."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql://nobody@127.0.0.1:{port}/none", busy_timeout_ms=2000)
        start = time.monotonic()
        try:
            with pytest.raises(OperationalError), transaction(engine):
                pass
            assert time.monotonic() - start < BUSY * 1.5 + 0.5
        finally:
            engine.dispose()


def test_callers_queued_behind_a_schema_check_wait_within_the_budget(
    make_service: Any,
) -> None:
    """While one request spends its budget finding the database unreachable, the next one
    does not wait for that and then spend its own budget too."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        svc = make_service(f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/none")
        took: list[float] = []

        def probe() -> None:
            start = time.monotonic()
            assert svc.runtime.readiness()
            took.append(time.monotonic() - start)

        threads = [threading.Thread(target=probe) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(took) == 2 and max(took) < BUSY * 1.5 + 0.5


def test_postgres_connections_killed_by_the_server_are_replaced(
    make_service: Any, pg_url: str
) -> None:
    svc = make_service(pg_url)
    assert svc.post_stripe(intent("evt_a")).json["status"] == "accepted"
    with svc.runtime.engine.connect() as conn:  # the pooled connection the next post gets
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    admin = create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:  # a server restart or an idle-connection reaper
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    admin.dispose()
    assert svc.post_stripe(intent("evt_b")).json["status"] == "accepted"


# -- a database that is down when the service starts ----------------------------------------


class StartingService(GunicornService):
    """Started when it answers at all (/healthz): its database may not be there yet."""

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/healthz") == 200:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not start; log:\n{self.log.read_text()}")

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0


def signed_intent(event_id: str) -> tuple[bytes, dict[str, str]]:
    from tests.config_file import STRIPE_SECRET
    from tests.payloads import body
    from tests.signing import stripe_signature_header

    data = body(intent(event_id))
    header = stripe_signature_header(data, STRIPE_SECRET, int(time.time()))
    return data, {"Stripe-Signature": header, "Content-Type": "application/json"}


@pytest.fixture
def started() -> Iterator[list[GunicornService]]:
    services: list[GunicornService] = []
    yield services
    for each in services:
        each.stop()


def check_down_then_back(service: StartingService, bring_back: Any) -> None:
    status, answer = service.post("/webhooks/stripe", *signed_intent("evt_down"))
    assert status == 503, answer
    assert service.get("/readyz") == 503
    bring_back()
    status, answer = service.post("/webhooks/stripe", *signed_intent("evt_down"))
    assert (status, b"accepted" in answer) == (200, True), answer
    deadline = time.monotonic() + 10
    while service.get("/readyz") != 200 and time.monotonic() < deadline:
        time.sleep(0.2)  # each worker migrates (a no-op by now) and writes its row
    assert service.get("/readyz") == 200


def test_service_starts_while_its_sqlite_directory_cannot_be_made_and_recovers(
    tmp_path: Path, recorder: ConvertRecorder, started: list[GunicornService]
) -> None:
    # As root no file mode stops us, so the fault is a file where the directory must go
    # (a volume not mounted yet leaves a similar gap).
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    db_url = f"sqlite:///{blocker / 'webhooks.db'}"
    config = service_config(tmp_path / "config.toml", db_url, recorder.base_url)
    service = StartingService(config, workers=2, env={"SHOP_SECRET": SHOP_SECRET})
    started.append(service.start())

    def bring_back() -> None:
        blocker.unlink()
        blocker.mkdir()

    check_down_then_back(service, bring_back)
    assert "database unavailable at start-up" in service.log.read_text()
    assert (blocker / "webhooks.db").exists()


class TcpProxy:
    """A real TCP forwarder to PostgreSQL, started only when the test brings the database
    'back' (until then nothing listens on its port: connection refused)."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.listener: socket.socket | None = None
        self.sockets: list[socket.socket] = []

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, sink):
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        for each in [self.listener, *self.sockets]:
            if each is not None:
                each.close()


def test_service_starts_while_postgres_is_down_and_migrates_when_it_is_back(
    tmp_path: Path, recorder: ConvertRecorder, started: list[GunicornService], pg_url: str
) -> None:
    real = make_url(pg_url)
    proxy = TcpProxy(free_port(), (real.host or "127.0.0.1", real.port or 5432))
    db_url = real.set(port=proxy.port).render_as_string(hide_password=False)
    config = service_config(tmp_path / "config.toml", db_url, recorder.base_url)
    service = StartingService(config, workers=2, env={"SHOP_SECRET": SHOP_SECRET})
    started.append(service.start())
    try:
        check_down_then_back(service, proxy.start)
    finally:
        service.stop()
        proxy.stop()
    assert "database unavailable at start-up" in service.log.read_text()
