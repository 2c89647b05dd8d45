"""Group commit: the deliveries of requests that arrive while a transaction commits are stored
together in the next one, so one durable commit (one fsync, one turn on SQLite's write lock)
answers many requests instead of one.

One writer thread per process takes every delivery waiting, stores each in its own SAVEPOINT
(the same statements as a lone `ingest`), and commits once. Each request waits for its own
delivery's commit before it is answered, so a 2xx still means durably stored:
- a delivery the database refuses (UnstorableError) rolls back to its savepoint alone, and its
  neighbours are committed;
- a commit that fails, or a database that cannot be written, fails exactly the requests of
  that batch (StorageError: 503, the platform retries); none of their rows are kept;
- two requests with one delivery key in one batch: the second sees the first's row in the same
  transaction and is a duplicate, as it would be a moment later.
The writer never waits for more requests: when idle a delivery is committed at once (the
latency of a lone webhook is unchanged); under load a batch is what queued during the commit
before it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from webhooks.core.errors import StorageError, UnstorableError
from webhooks.core.logs import describe
from webhooks.storage.ingest import (
    VALUE_FAILURES,
    Delivery,
    IngestOutcome,
    checked_transaction,
    ingest_into,
    is_refusal,
    refusal_message,
)

log = logging.getLogger(__name__)
MAX_BATCH = 256  # deliveries per transaction: bounds how long one commit holds the lock
WAIT_MARGIN = 10.0  # beyond the database's own budget, how long a request waits for its batch


@dataclass
class _Waiting:
    delivery: Delivery
    now: float
    done: threading.Event = field(default_factory=threading.Event)
    outcome: IngestOutcome | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the writer did (for the benchmark's profile and the tests)."""

    batches: int = 0
    deliveries: int = 0
    largest: int = 0
    committing: int = 0  # deliveries in the transaction being made now


class GroupCommitter:
    def __init__(self, engine: Engine, busy_timeout_ms: int, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.stats = BatchStats()
        # A request gives up waiting after the writer's worst case for the batch before its
        # own and its own (each bounded by the database budget), plus a margin.
        self._wait_seconds = 2 * busy_timeout_ms / 1000 + WAIT_MARGIN
        self._queue: SimpleQueue[_Waiting] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ingest(self, delivery: Delivery, now: float) -> IngestOutcome:
        """Store the delivery with whatever else is waiting; returns once it is committed.
        UnstorableError if the database refuses a value of it, StorageError if its batch
        could not be committed."""
        waiting = _Waiting(delivery, now)
        self._ensure_writer()
        self._queue.put(waiting)
        if not waiting.done.wait(self._wait_seconds):
            # The writer is stuck past every budget: not answered 2xx, the platform retries
            # (a commit that lands later makes its retry a duplicate, never a loss).
            raise StorageError("database unavailable: the write did not finish in time")
        if waiting.error is not None:
            raise waiting.error
        assert waiting.outcome is not None
        return waiting.outcome

    # -- the writer thread -----------------------------------------------------------------
    def _ensure_writer(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # Started on first use, so in a gunicorn worker it starts after the fork.
                self._thread = threading.Thread(
                    target=self._run, name="group-commit", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except Empty:
                    break
            self.stats.committing = len(batch)
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a request waiting on a dead writer
                log.error("group commit: unexpected %s", describe(exc))
                for waiting in batch:
                    if not waiting.done.is_set():
                        waiting.error = StorageError(f"database unavailable: {type(exc).__name__}")
                        waiting.done.set()

    def _commit(self, batch: list[_Waiting]) -> None:
        try:
            with checked_transaction(self.engine) as conn:
                for waiting in batch:
                    _store_one(conn, waiting)
        except (StorageError, UnstorableError) as exc:
            # The transaction is gone: nothing of this batch was kept, whatever each step said.
            failed = exc if isinstance(exc, StorageError) else _unavailable(exc)
            for waiting in batch:
                waiting.outcome, waiting.error = None, failed
        self.stats.committing = 0
        self.stats.batches += 1
        self.stats.deliveries += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        for waiting in batch:
            waiting.done.set()


def _store_one(conn: Connection, waiting: _Waiting) -> None:
    """One delivery in its own savepoint: a value the database refuses, or a bug, rolls back
    this delivery alone. A failure of the database itself ends the whole transaction."""
    try:
        with conn.begin_nested():
            waiting.outcome = ingest_into(conn, waiting.delivery, waiting.now)
    except SQLAlchemyError as exc:
        if not is_refusal(exc):
            raise
        waiting.error = UnstorableError(refusal_message(exc))
        waiting.error.__cause__ = exc
    except VALUE_FAILURES as exc:
        waiting.error = UnstorableError(refusal_message(exc))
        waiting.error.__cause__ = exc
    except (StorageError, UnstorableError) as exc:
        waiting.error = exc
    except Exception as exc:  # a bug on one delivery: its request gets the error, not all
        waiting.error = exc


def _unavailable(exc: BaseException) -> StorageError:
    error = StorageError(f"database unavailable: {type(exc).__name__}")
    error.__cause__ = exc
    return error
