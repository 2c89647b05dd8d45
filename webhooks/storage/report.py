"""The accuracy report's queries: per source and UTC day, what became of the orders stored.

An order is an event of a kind that becomes Convert requests (core.events.SENDABLE_KINDS:
purchase, subscription_renewal); refunds are recorded only and are not counted. Each order is
counted once (the business key makes two topics of one purchase one event), on the UTC day of
its `created_at` (when the service stored it) or of its `occurred_at` (the platform's order
time, to compare with the platform's order export), and in exactly one of sent, dry run,
pending, skipped (by reason code) and dead: received = sent + dry_run + pending + skipped +
dead. Revenue is summed exactly: the stored text amounts as Decimal, never a float.

Two grouped reads, whose results stay small however many events there are: the states (by
state, reason, place found and details step) and the sent amounts (by currency and amount).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Engine, String, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from webhooks.core.errors import StorageError
from webhooks.core.events import SENDABLE_KINDS
from webhooks.core.places import place_class
from webhooks.core.states import EventState, Reason
from webhooks.storage.database import transaction
from webhooks.storage.schema import DETAILS_PENDING, events


class DayOf(StrEnum):
    """Which time puts an order on a day."""

    RECEIVED = "received"  # created_at: when the service stored the order
    ORDERED = "ordered"  # occurred_at: the order's time as the platform gave it


NO_REASON = "none"  # a skipped row without a reason code (stored by an old version)


@dataclass
class Tally:
    """The counts of one source and day (or of a total)."""

    received: int = 0
    paid: int = 0
    attributed: Counter[str] = field(default_factory=Counter)  # place class -> orders
    sent: int = 0
    dry_run: int = 0
    pending: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason code -> orders
    dead: int = 0
    revenue: dict[str, Decimal] = field(default_factory=dict)  # currency -> sum (sent only)

    @property
    def attributed_total(self) -> int:
        return sum(self.attributed.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def add(self, other: Tally) -> None:
        self.received += other.received
        self.paid += other.paid
        self.attributed.update(other.attributed)
        self.sent += other.sent
        self.dry_run += other.dry_run
        self.pending += other.pending
        self.skipped.update(other.skipped)
        self.dead += other.dead
        for currency, amount in other.revenue.items():
            self.revenue[currency] = _exact_sum(self.revenue.get(currency, Decimal(0)), amount)


@dataclass
class Report:
    since: float
    day_of: DayOf
    days: dict[tuple[str, str], Tally]  # (source, "YYYY-MM-DD") -> counts, sorted

    def by_source(self) -> dict[str, Tally]:
        totals: dict[str, Tally] = {}
        for (source, _), tally in self.days.items():
            totals.setdefault(source, Tally()).add(tally)
        return totals

    def total(self) -> Tally:
        total = Tally()
        for tally in self.days.values():
            total.add(tally)
        return total


def build_report(
    engine: Engine, since: float, day_of: DayOf = DayOf.RECEIVED, source: str | None = None
) -> Report:
    """The counts of the orders whose `day_of` time is at or after `since` (Unix seconds)."""
    column = events.c.created_at if day_of is DayOf.RECEIVED else events.c.occurred_at
    day: ColumnElement[str] = utc_day(column)
    where = [events.c.kind.in_(sorted(SENDABLE_KINDS)), column >= since]
    if source is not None:
        where.append(events.c.source == source)
    states = (
        select(
            events.c.source,
            day,
            events.c.state,
            events.c.reason_code,
            events.c.attributed_from,
            events.c.details,
            func.count(),
        )
        .where(*where)
        .group_by(
            events.c.source,
            day,
            events.c.state,
            events.c.reason_code,
            events.c.attributed_from,
            events.c.details,
        )
    )
    amounts = (
        select(events.c.source, day, events.c.currency, events.c.amount, func.count())
        .where(*where, events.c.state == EventState.SENT)
        .group_by(events.c.source, day, events.c.currency, events.c.amount)
    )
    with transaction(engine) as conn:
        state_rows = conn.execute(states).all()
        amount_rows = conn.execute(amounts).all()
    days: dict[tuple[str, str], Tally] = {}
    for row in state_rows:
        _count(days.setdefault((row[0], row[1]), Tally()), *row[2:])
    for src, when, currency, amount, count in amount_rows:
        tally = days.setdefault((src, when), Tally())
        so_far = tally.revenue.get(currency, Decimal(0))
        tally.revenue[currency] = _exact_sum(so_far, _amount(amount), count)
    return Report(since, day_of, dict(sorted(days.items())))


def _count(
    tally: Tally,
    state: str,
    reason_code: str | None,
    attributed_from: str | None,
    details: str | None,
    count: int,
) -> None:
    tally.received += count
    awaiting = details == DETAILS_PENDING  # the platform's API has not said what it is yet
    if not awaiting and reason_code != Reason.NOT_A_PURCHASE:
        tally.paid += count
    if attributed_from is not None:
        tally.attributed[place_class(attributed_from)] += count
    if state == EventState.SENT:
        tally.sent += count
    elif state == EventState.DRY_RUN:
        tally.dry_run += count
    elif state == EventState.PENDING:
        tally.pending += count
    elif state == EventState.SKIPPED:
        tally.skipped[reason_code or NO_REASON] += count
    else:  # dead, or a state of a later version: never dropped from the sum
        tally.dead += count


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise StorageError("a stored amount is not a decimal number") from exc
    if not value.is_finite():
        raise StorageError("a stored amount is not a finite number")
    return value


def _exact_sum(total: Decimal, amount: Decimal, times: int = 1) -> Decimal:
    """total + amount x times. Decimal's default 28 digits could round a large sum: a wide
    context that raises rather than rounds."""
    with localcontext() as ctx:
        ctx.prec = 100
        ctx.traps[Inexact] = True
        return total + amount * times


# --- the UTC day of a Unix time, as "YYYY-MM-DD", in SQL -------------------------------------
# Literal text, not bound parameters: PostgreSQL accepts the expression in GROUP BY only when
# it is the same text as in the SELECT, and two renderings of a bound value are not.


class utc_day(FunctionElement[str]):  # noqa: N801 (an SQL function's name)
    type = String()
    name = "utc_day"
    inherit_cache = True


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d', {seconds}, 'unixepoch')"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    expression = func.to_char(
        func.timezone(literal_column("'UTC'"), func.to_timestamp(literal_column(seconds))),
        literal_column("'YYYY-MM-DD'"),
    )
    return str(compiler.process(expression, **kw))
