"""The real clock (see webhooks/core/clock.py): the host's, and PostgreSQL's for leases."""

from __future__ import annotations

import time

from sqlalchemy import Connection, text

_DATABASE_NOW = text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def lease_now(self, conn: Connection) -> float:
        if conn.dialect.name == "postgresql":
            return float(conn.execute(_DATABASE_NOW).scalar_one())
        return time.time()
