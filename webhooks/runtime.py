"""What one process holds: settings, the database engine, the sender and the dispatcher."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from webhooks.clock import Clock
from webhooks.config import Settings
from webhooks.database import migrate, ping
from webhooks.dispatcher import Dispatcher
from webhooks.errors import StorageError
from webhooks.sender import Sender


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sender: Sender
    dispatcher: Dispatcher
    clock: Clock
    _schema_ready: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ensure_schema(self) -> None:
        """Migrate once per process; a database that is down now may be up on the next call."""
        if self._schema_ready:
            return
        with self._lock:
            if self._schema_ready:
                return
            try:
                migrate(self.engine)
            except SQLAlchemyError as exc:
                raise StorageError(f"database unavailable: {type(exc).__name__}") from exc
            self._schema_ready = True

    def check_database(self) -> None:
        ping(self.engine)

    def close(self) -> None:
        self.dispatcher.stop()
        self.sender.close()
        self.engine.dispose()
