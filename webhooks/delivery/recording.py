"""Writing what a round learned: retried until it commits, because a send result forgotten is
a send repeated."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from webhooks.core.errors import StorageError
from webhooks.core.logs import describe
from webhooks.storage.database import transaction

log = logging.getLogger(__name__)
DATABASE_ERRORS = (SQLAlchemyError, StorageError)
MAX_PAUSE = 2.0


class Writer:
    def __init__(self, engine: Engine, stop: threading.Event) -> None:
        self.engine = engine
        self.stop = stop

    def write(self, work: Callable[[Connection], None], what: str) -> bool:
        """Run `work` in a transaction until it commits. Backs off up to MAX_PAUSE between
        tries while the process runs; once stopping, one last try (False if it failed)."""
        pause = 0.05
        tries = 0
        while True:
            stopping = self.stop.is_set()
            tries += 1
            try:
                with transaction(self.engine) as conn:
                    work(conn)
            except DATABASE_ERRORS as exc:
                if stopping:
                    log.error("could not record %s before stopping (%s)", what, describe(exc))
                    return False
                if math.log10(tries).is_integer():  # the 1st, 10th, 100th... failure
                    log.warning(
                        "could not record %s (%s, %d tries); retrying", what, describe(exc), tries
                    )
                self.stop.wait(pause)
                pause = min(pause * 2, MAX_PAUSE)
                continue
            if tries > 1:
                log.info("recorded %s after %d tries", what, tries)
            return True
