"""What one process holds: settings, the database engine, the Convert client, the dispatcher, the
pruner, and the checks that say whether this process can take webhooks (`readiness`)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from adapters import REGISTRY
from adapters.base import Parse
from webhooks.convert.client import ConvertClient, make_client
from webhooks.core.clock import Clock
from webhooks.core.errors import StorageError
from webhooks.core.observe import NullObserver, Observer
from webhooks.core.settings import Settings, SourceSettings
from webhooks.delivery.worker import Dispatcher
from webhooks.storage.database import make_engine, mark_ready
from webhooks.storage.digests import rekey_email_digests
from webhooks.storage.group_commit import GroupCommitter
from webhooks.storage.ingest import Delivery, IngestOutcome
from webhooks.storage.migrations import migrate
from webhooks.storage.retention import Pruner


def process_name() -> str:
    """Who writes the readiness row: host and process id (fits the 64-character key)."""
    return f"{socket.gethostname()[:48]}:{os.getpid()}"


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    client: ConvertClient
    dispatcher: Dispatcher
    clock: Clock
    observer: Observer = field(default_factory=NullObserver)
    # Stores the deliveries of concurrent requests in one durable transaction (group commit).
    committer: GroupCommitter | None = None
    pruner: Pruner | None = None
    # Each source's parse function, made once from its options (PlatformSpec.parser).
    parsers: Mapping[str, Parse] = field(default_factory=dict)
    owner: str = field(default_factory=process_name)
    _schema_ready: bool = False
    _schema_problem: str = "database unavailable"
    _dispatcher_started: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ensure_schema(self) -> None:
        """Migrate once per process; a database that is down now may be up on the next call."""
        if self._schema_ready:
            return
        if self._lock.acquire(blocking=False):
            try:
                self._migrate()
            finally:
                self._lock.release()
            return
        # Another thread is trying now (a database that is down takes the whole budget to
        # say so): its answer is this one's too, rather than a second budget spent after it.
        if not self._lock.acquire(timeout=max(self.settings.busy_timeout_ms, 1) / 1000):
            raise StorageError("database unavailable: still checking the schema")
        self._lock.release()
        if not self._schema_ready:
            raise StorageError(self._schema_problem)

    def _migrate(self) -> None:
        if self._schema_ready:
            return
        try:
            migrate(self.engine)
            key = self.settings.privacy.email_key
            if key is not None:  # digests stored before the key (or before version 5)
                rekey_email_digests(self.engine, key, self.clock.now())
        except SQLAlchemyError as exc:
            self._schema_problem = f"database unavailable: {type(exc).__name__}"
            raise StorageError(self._schema_problem) from exc
        except StorageError as exc:
            self._schema_problem = str(exc)
            raise
        self._schema_ready = True

    def ingest(self, delivery: Delivery, now: float) -> IngestOutcome:
        """Store a delivery durably (with the others waiting at the same moment); returns
        once it is committed."""
        if self.committer is None:
            self.committer = GroupCommitter(self.engine, self.settings.busy_timeout_ms)
        return self.committer.ingest(delivery, now)

    def parser(self, source: SourceSettings) -> Parse:
        found = self.parsers.get(source.name)
        return found if found is not None else source_parser(source)

    def readiness(self) -> list[str]:
        """What keeps this process from taking webhooks now; empty when it is ready.

        The database must take a write (a read can succeed on a database that refuses
        writes: read-only file or mount, a PostgreSQL standby, a full disk), within the
        usual bounded wait, on the file this process opened, with the schema migrated.
        """
        problems = []
        try:
            self.ensure_schema()
            mark_ready(self.engine, self.owner, self.clock.now())
        except StorageError as exc:
            problems.append(str(exc))
        except SQLAlchemyError as exc:
            problems.append(f"database cannot be written: {_kind(exc)}")
        if self._dispatcher_started and not self.dispatcher.running:
            problems.append("dispatcher is not running: stored events are not being sent")
        return problems

    def start_background(self) -> None:
        """Start this process's threads (in a gunicorn worker: after the fork)."""
        if self.settings.dispatcher.enabled:
            self.dispatcher.start()
            self._dispatcher_started = True
        if self.settings.retention.prune_interval_seconds > 0 and self.pruner is None:
            self.pruner = Pruner(self.engine, self.settings.retention, self.clock)
            self.pruner.start()

    def stop_background(self, timeout: float = 10.0) -> None:
        if self.pruner is not None:
            self.pruner.stop(timeout)
        if self._dispatcher_started:
            self.dispatcher.stop(timeout=timeout)

    def close(self) -> None:
        if self.pruner is not None:
            self.pruner.stop()
        self.dispatcher.stop()
        self.client.close()
        self.engine.dispose()


def _kind(exc: SQLAlchemyError) -> str:
    """The error's type and the driver's (no message: it could quote stored values)."""
    orig = getattr(exc, "orig", None)
    return (
        f"{type(exc).__name__}({type(orig).__name__})" if orig is not None else type(exc).__name__
    )


def source_parser(source: SourceSettings) -> Parse:
    return REGISTRY[source.platform].parser(source.options)


def build_runtime(settings: Settings, clock: Clock, observer: Observer | None = None) -> Runtime:
    """The one place the parts are put together (and where an observer is attached)."""
    observer = observer or NullObserver()
    engine = make_engine(settings.database_url, settings.busy_timeout_ms)
    client = make_client(settings.convert)
    dispatcher = Dispatcher(engine, settings, client, clock, observer)
    # Only per-source parsers are made ahead; the others are the spec's own parse, looked up
    # when a delivery comes.
    parsers = {
        name: source_parser(source)
        for name, source in settings.sources.items()
        if REGISTRY[source.platform].configure is not None
    }
    committer = GroupCommitter(engine, settings.busy_timeout_ms)
    return Runtime(
        settings, engine, client, dispatcher, clock, observer, committer, parsers=parsers
    )
