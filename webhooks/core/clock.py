"""Time as the service sees it. Tests replace the clock, never the logic that reads it.

Three readings, each for one purpose:
- `now()`: wall-clock Unix seconds, for what is stored and shown (received, due, updated);
- `monotonic()`: for budgets and pauses inside one process (it never jumps with NTP);
- `lease_now(conn)`: the clock leases are written and compared on. Workers on several hosts
  share a PostgreSQL database, so its clock is the one they all agree on; a SQLite file is
  used from one host, whose clock is that one. The real clock reads the database, so it lives
  with the storage (`webhooks.storage.clock.SystemClock`).
"""

from __future__ import annotations

from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; only differences mean something."""

    def lease_now(self, conn: Any) -> float:
        """Unix seconds on the clock every worker compares leases on (`conn`: the open
        database connection of the transaction that writes or compares the lease)."""
