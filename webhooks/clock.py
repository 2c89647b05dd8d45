"""Time as the service sees it. Tests replace the clock, never the logic that reads it.

Three readings, each for one purpose:
- `now()`: wall-clock Unix seconds, for what is stored and shown (received, due, updated);
- `monotonic()`: for budgets and pauses inside one process (it never jumps with NTP);
- `lease_now(conn)`: the clock leases are written and compared on. Workers on several hosts
  share a PostgreSQL database, so its clock is the one they all agree on; a SQLite file is
  used from one host, whose clock is that one.
"""

from __future__ import annotations

import time
from typing import Protocol

from sqlalchemy import Connection, text

_DATABASE_NOW = text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; only differences mean something."""

    def lease_now(self, conn: Connection) -> float:
        """Unix seconds on the clock every worker compares leases on."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def lease_now(self, conn: Connection) -> float:
        if conn.dialect.name == "postgresql":
            return float(conn.execute(_DATABASE_NOW).scalar_one())
        return time.time()
