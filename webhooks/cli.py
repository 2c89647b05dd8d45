"""The `convert-webhooks` command: check-config, events, deliveries, replay, dispatch, migrate,
prune, exposures, report, send-test.

Every value read from the database is escaped before it reaches the terminal (a sender chose
many of them: an ANSI escape sequence in an event type must not drive the operator's
terminal), and table columns keep their width whatever the values hold.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from marshmallow import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from adapters import REGISTRY
from adapters.base import PlatformSpec
from adapters.payload import email_digest
from webhooks.core.errors import (
    PARSE_FAILURES,
    ConvertWebhooksError,
    PayloadError,
    StorageError,
)
from webhooks.core.events import SENDABLE_KINDS, NormalizedEvent, ParseResult
from webhooks.core.hits import HitFormat
from webhooks.core.logs import configure_logging, escape
from webhooks.core.places import PLACES
from webhooks.core.settings import MIN_KEEP_DAYS, Settings, SourceSettings
from webhooks.core.states import DeliveryStatus, EventState
from webhooks.storage.clock import SystemClock
from webhooks.storage.database import make_engine
from webhooks.storage.digests import keyed_digest
from webhooks.storage.exposures import (
    customer_filter,
    forget_exposures,
    read_exposures,
    store_in,
)
from webhooks.storage.ingest import checked_transaction
from webhooks.storage.migrations import migrate
from webhooks.storage.records import event_detail, list_deliveries, list_events
from webhooks.storage.report import DayOf, Report, Tally, build_report
from webhooks.storage.retention import PruneCounts, horizon, prune
from webhooks.wiring.config import load_settings
from webhooks.wiring.exposures import field_messages, read_row
from webhooks.wiring.observers import default_observer
from webhooks.wiring.replay import replay_delivery, resend_events
from webhooks.wiring.runtime import Runtime, build_runtime
from webhooks.wiring.send_test import (
    BIND_ENV,
    SAMPLE_PAIRS,
    Answer,
    NamedEvent,
    SendTestFailed,
    check_url,
    default_url,
    post,
    refusal,
    source_sample,
    wait_for_events,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConvertWebhooksError as exc:
        # Line by line: a config error lists one bad key a line; a value in it stays one.
        lines = f"error: {exc}".splitlines()
        print("\n".join(escape(line) for line in lines), file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: database unavailable: {type(exc).__name__}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert-webhooks", description=__doc__)
    parser.add_argument("--config", help="TOML config (default: $CONVERT_WEBHOOKS_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate the config and name each bad key")
    check.add_argument(
        "--sample",
        type=Path,
        metavar="FILE.json",
        help="also show what a source makes of this body: its event(s), or why it is "
        "ignored or refused; nothing is stored or sent",
    )
    check.add_argument(
        "--source",
        help="the source that reads --sample (default: the only custom or standard_webhooks "
        "source)",
    )
    check.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header the sender sends with --sample (e.g. its delivery id); repeatable",
    )
    check.set_defaults(handler=_check_config)

    ev = sub.add_parser("events", help="list events, or `events show ID`")
    ev.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    ev.add_argument("event_id", nargs="?", type=int)
    ev.add_argument("--state", choices=[str(state) for state in EventState])
    ev.add_argument("--source")
    ev.add_argument("--order", help="only this order / payment id (and its refunds)")
    ev.add_argument("--limit", type=_positive, default=50)
    ev.set_defaults(handler=_events)

    dl = sub.add_parser("deliveries", help="list received deliveries")
    dl.add_argument("--status", choices=[str(status) for status in DeliveryStatus])
    dl.add_argument("--limit", type=_positive, default=50)
    dl.set_defaults(handler=_deliveries)

    rp = sub.add_parser("replay", help="re-run a stored delivery, or resend dead events")
    group = rp.add_mutually_exclusive_group(required=True)
    group.add_argument("--delivery", type=int, help="re-parse and store this delivery again")
    group.add_argument("--event", type=int, action="append", help="resend this event")
    group.add_argument("--dead", action="store_true", help="resend every dead event")
    rp.add_argument("--no-send", action="store_true", help="queue only; the service sends")
    rp.set_defaults(handler=_replay)

    dp = sub.add_parser("dispatch", help="run the dispatcher in the foreground")
    dp.add_argument("--once", action="store_true", help="send what is due, then exit")
    dp.set_defaults(handler=_dispatch)

    mg = sub.add_parser("migrate", help="create or upgrade the database schema")
    mg.set_defaults(handler=_migrate)

    pr = sub.add_parser(
        "prune", help="delete delivered data older than the retention horizon (see README)"
    )
    pr.add_argument(
        "--older-than-days",
        type=float,
        help=f"horizon in days (default: retention.keep_days; at least {MIN_KEEP_DAYS:g})",
    )
    pr.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    pr.set_defaults(handler=_prune)

    ex = sub.add_parser("exposures", help="import, list or forget stored exposures")
    ex_sub = ex.add_subparsers(dest="exposures_action", required=True)
    imp = ex_sub.add_parser(
        "import",
        help="load a CSV (header: source,customer_id,email,visitor_id,pairs,exposed_at): "
        "every row is checked first, then all are stored in one transaction, or none",
    )
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=_exposures_import)
    for name, handler, text in (
        ("list", _exposures_list, "a customer's exposures"),
        ("forget", _exposures_forget, "delete a customer's exposures (privacy requests)"),
    ):
        each = ex_sub.add_parser(name, help=text)
        each.add_argument("--source")
        each.add_argument("--customer", help="the platform's customer id (with --source)")
        each.add_argument("--email")
        each.set_defaults(handler=handler)

    rep = sub.add_parser(
        "report",
        help="per source and UTC day: orders received, paid, attributed (and where), sent, "
        "skipped by reason, dead, and revenue sent per currency, with totals (see README)",
    )
    rep.add_argument(
        "--since",
        type=_since,
        default="7d",
        help="orders from this long ago (7d, 24h, 90m) or since an ISO date or time (UTC "
        "unless it names an offset); default 7d",
    )
    rep.add_argument("--source", help="only this source")
    rep.add_argument("--format", choices=["table", "json", "csv"], default="table")
    rep.add_argument(
        "--by",
        choices=[str(day_of) for day_of in DayOf],
        default=str(DayOf.RECEIVED),
        help="the day of an order: when the service received it (default), or when it was "
        "ordered on the platform (to compare with the platform's order export)",
    )
    rep.set_defaults(handler=_report)

    st = sub.add_parser(
        "send-test",
        help="post a signed sample delivery for a source to a running instance, and show the "
        "Convert request it led to",
    )
    st.add_argument("source", help="a source of the config (its platform's sample is sent)")
    st.add_argument(
        "--url",
        help="the webhook URL to post to (default: http://HOST:PORT/webhooks/SOURCE, with "
        f"gunicorn's bind address from ${BIND_ENV}, else 127.0.0.1:8000)",
    )
    st.add_argument(
        "--wait",
        type=_wait_seconds,
        default=10.0,
        help="seconds to wait for the dispatcher to handle the event (default 10, at most 300)",
    )
    st.set_defaults(handler=_send_test)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _runtime(args: argparse.Namespace, sends: bool = False) -> Runtime:
    """The runtime a command works with; one that sends to Convert (`sends`) logs and counts
    each attempt like the service does (the `convert attempt` lines, the metrics)."""
    configure_logging()
    settings = _settings(args)
    configure_logging(settings.logging)
    observer = default_observer(settings) if sends else None
    runtime = build_runtime(settings, SystemClock(), observer)
    runtime.ensure_schema()
    return runtime


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"config OK: {len(settings.sources)} source(s)")
    for name, source in settings.sources.items():
        print(f"  /webhooks/{name}  platform={source.platform}  secrets={len(source.secrets)}")
    mode = "dry run (logs instead of sending)" if settings.convert.dry_run else "sending"
    print(
        f"  convert: account {settings.convert.account_id}, project "
        f"{settings.convert.project_id}, {mode}"
    )
    tokens = len(settings.exposures.tokens)
    api = f"on, {tokens} token(s)" if tokens else "off (no exposures.tokens)"
    keyed = "keyed" if settings.privacy.email_key else "plain SHA-256 (no privacy.email_key)"
    print(f"  exposure API: {api}; email digests: {keyed}")
    if args.sample is not None:
        return _map_sample(settings, args.sample, args.source, args.header)
    return 0


# --- check-config --sample: a body through a source's mapping, stored nowhere ---------------

# Platforms whose sources map the body with their own field mapping: the default --source is
# the only source of these (any other source can be named).
MAPPED_PLATFORMS = frozenset({"custom", "standard_webhooks"})


def _map_sample(settings: Settings, path: Path, name: str | None, header_args: list[str]) -> int:
    """Print the sample's outcome as the source's parser sees it. 0: mapped (to events or
    ignored with a reason), 1: refused as the service would refuse it (400), 2: unusable."""
    source = _sample_source(settings, name)
    headers = _header_args(header_args)
    if source is None or headers is None:
        return 2
    try:
        raw = _read_limited(path, settings.max_body_bytes)
    except OSError as exc:
        print(f"error: cannot read {escape(str(path))}: {exc.strerror}", file=sys.stderr)
        return 2
    if raw is None:
        limit = settings.max_body_bytes
        print(f"error: the sample is over server.max_body_bytes ({limit}): 413", file=sys.stderr)
        return 2
    spec = REGISTRY[source.platform]
    # The headers the sender's signature brings (Standard Webhooks' webhook-id), then the
    # given ones: the parser reads what a signed delivery of this body would carry.
    signed = _signature_headers(spec, source, raw)
    try:
        result = spec.parser(source.options)({**signed, **headers}, raw)
    except (PayloadError, *PARSE_FAILURES) as exc:
        print(f"sample: refused (400) by source {source.name}: {escape(str(exc))}")
        return 1
    print(_json(_sample_outcome(source, result)))
    return 0


def _sample_source(settings: Settings, name: str | None) -> SourceSettings | None:
    if name is not None:
        source = settings.sources.get(name)
        if source is None:
            print(f"error: no source {escape(name)} in the config", file=sys.stderr)
        return source
    mapped = [s for s in settings.sources.values() if s.platform in MAPPED_PLATFORMS]
    if len(mapped) == 1:
        return mapped[0]
    found = ", ".join(s.name for s in mapped) or "none"
    print(f"error: name the source with --source (mapped sources: {found})", file=sys.stderr)
    return None


def _header_args(values: list[str]) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            print("error: --header takes 'NAME: VALUE'", file=sys.stderr)
            return None
        headers[name.strip().lower()] = text.strip()
    return headers


def _read_limited(path: Path, limit: int) -> bytes | None:
    with path.open("rb") as handle:
        raw = handle.read(limit + 1)
    return None if len(raw) > limit else raw


def _signature_headers(spec: PlatformSpec, source: SourceSettings, raw: bytes) -> dict[str, str]:
    scheme = spec.scheme_of(source.options)
    try:
        signed = scheme.sign(raw, source.secrets[0], time.time(), url=source.url)
    except ValueError:  # a scheme that cannot sign here (no URL): the body alone, then
        return {}
    return {name.lower(): value for name, value in signed.items()}


def _sample_outcome(source: SourceSettings, result: ParseResult) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "source": source.name,
        "platform": source.platform,
        "outcome": "accepted" if result.events else "ignored",
        "delivery_key": result.delivery_key,
        "event_type": result.topic,
    }
    if result.reason:
        outcome["reason"] = result.reason
    outcome["events"] = [_sample_event(source, event) for event in result.events]
    return outcome


def _sample_event(source: SourceSettings, event: NormalizedEvent) -> dict[str, Any]:
    revenue = event.revenue(source.revenue)
    shown: dict[str, Any] = {
        "kind": str(event.kind),
        "order_id": event.order_id,
        "revenue": f"{revenue.amount} {revenue.currency}",
        "item_count": event.item_count,
        "test_mode": event.test_mode,
        "occurred_at": _iso(event.occurred_at) if event.occurred_at else "unknown",
        "customer_id": event.customer_id,
        "email_digest": event.email_digest,
        "refund_of": event.refund_of,
        "attributes": dict(event.attributes),
    }
    if event.kind not in SENDABLE_KINDS:
        shown["note"] = f"{event.kind} events are recorded, not sent"
    elif event.test_mode and not source.allow_test_events:
        shown["note"] = "test mode: stored, not sent (the source does not allow test events)"
    return shown


def _events(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    if args.action == "show":
        if args.event_id is None:
            print("error: events show needs an event id", file=sys.stderr)
            return 2
        detail = event_detail(runtime.engine, args.event_id)
        if detail is None:
            print(f"error: no event {args.event_id}", file=sys.stderr)
            return 1
        print(_json(_readable(detail)))
        return 0
    rows = list_events(runtime.engine, args.state, args.source, args.limit, args.order)
    _print_table(
        [("id", 6, ">"), ("state", 8, "<"), ("kind", 21, "<"), ("source", 12, "<")]
        + [("order", 40, "<"), ("amount", 20, ">"), ("tries", 5, ">"), ("pairs from", 18, "<")]
        + [("reason", 0, "<")],
        (
            (r.id, r.state, r.kind, r.source, r.order_id, f"{r.amount} {r.currency}")
            + (r.attempts, r.attribution_format or "-", r.reason or "")
            for r in rows
        ),
    )
    return 0


def _deliveries(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    rows = list_deliveries(runtime.engine, args.status, args.limit)
    _print_table(
        [("id", 6, ">"), ("received", 20, "<"), ("status", 9, "<"), ("source", 12, "<")]
        + [("topic", 40, "<"), ("reason", 0, "<")],
        ((r.id, _iso(r.received_at), r.status, r.source, r.topic, r.reason or "") for r in rows),
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    runtime = _runtime(args, sends=not args.no_send)
    now = time.time()
    if args.delivery is not None:
        outcome = replay_delivery(runtime.engine, runtime.settings, args.delivery, now)
        print(_json(outcome.as_json()))
    else:
        chosen = resend_events(runtime.engine, None if args.dead else args.event, now)
        print(f"queued {len(chosen)} event(s): {', '.join(map(str, chosen)) or '-'}")
    if not args.no_send:
        handled = runtime.dispatcher.drain()
        print(f"dispatched {handled} event(s)")
    runtime.close()
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    runtime = _runtime(args, sends=True)
    if args.once:
        print(f"dispatched {runtime.dispatcher.drain()} event(s)")
        runtime.close()
        return 0
    signal.signal(signal.SIGTERM, lambda *_: runtime.dispatcher.request_stop())
    signal.signal(signal.SIGINT, lambda *_: runtime.dispatcher.request_stop())
    runtime.dispatcher.run_forever()
    runtime.close()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    print(f"schema at version {migrate(runtime.engine)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    settings = _settings(args)
    days = settings.retention.keep_days if args.older_than_days is None else args.older_than_days
    if days < MIN_KEEP_DAYS:
        print(
            f"error: --older-than-days must be at least {MIN_KEEP_DAYS:g}: platforms retry "
            "for days, and a redelivery inside the horizon must stay a duplicate",
            file=sys.stderr,
        )
        return 2
    runtime = _runtime(args)
    now = time.time()
    try:
        counts = prune(runtime.engine, now, days, dry_run=args.dry_run)
    finally:
        runtime.close()
    print(_prune_summary(counts, days, horizon(now, days), args.dry_run))
    return 0


MAX_ROW_ERRORS = 50  # bad rows reported; a file that bad needs fixing, not a longer list
PROGRESS_EVERY = 1000
_CSV_COLUMNS = ("source", "customer_id", "email", "visitor_id", "pairs", "exposed_at")


def _exposures_import(args: argparse.Namespace) -> int:
    """Two passes over the file: check every row (nothing kept in memory), then store them
    all in one transaction (a bad row or a failure stores nothing)."""
    settings = _settings(args)
    now = time.time()
    bad, total = _check_rows(args.file, settings, now)
    if bad:
        print(f"error: {bad} bad row(s); nothing imported", file=sys.stderr)
        return 1
    if total == 0:
        print("nothing to import: the file has no rows")
        return 0
    runtime = _runtime(args)
    try:
        with checked_transaction(runtime.engine) as conn:
            new = known = 0
            for done, (_, record) in enumerate(_records(args.file, settings, now), start=1):
                stored = store_in(conn, [record], now)
                new, known = new + stored.stored, known + stored.known
                if done % PROGRESS_EVERY == 0 or done == total:
                    print(f"stored {done}/{total} rows", file=sys.stderr, flush=True)
    finally:
        runtime.close()
    print(f"imported {total} row(s): {new} new pair(s), {known} already known")
    return 0


def _check_rows(path: Path, settings: Settings, now: float) -> tuple[int, int]:
    """(bad rows, rows): each bad row reported with its line number and fields."""
    bad = total = 0
    for line, record in _records(path, settings, now, strict=False):
        total += 1
        if isinstance(record, dict):
            bad += 1
            if bad <= MAX_ROW_ERRORS:
                problems = "; ".join(f"{k}: {v}" for k, v in sorted(record.items()))
                print(escape(f"line {line}: {problems}"), file=sys.stderr)
        if total % PROGRESS_EVERY == 0:
            print(f"checked {total} rows", file=sys.stderr, flush=True)
    if bad > MAX_ROW_ERRORS:
        print(f"... and {bad - MAX_ROW_ERRORS} more bad row(s)", file=sys.stderr)
    return bad, total


def _records(
    path: Path, settings: Settings, now: float, strict: bool = True
) -> Iterator[tuple[int, Any]]:
    """(line number, record) per row; with strict=False a bad row gives its messages (a
    dict) instead of raising."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ConvertWebhooksError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        try:
            names = set(reader.fieldnames or ())
            if "pairs" not in names or names - set(_CSV_COLUMNS):
                raise ConvertWebhooksError(
                    f"{path}: the header must name columns of {', '.join(_CSV_COLUMNS)}"
                    " (pairs required)"
                )
            for row in reader:
                line = reader.line_num
                try:
                    if None in row:  # more cells than the header names
                        raise ValidationError({"row": ["has more cells than the header"]})
                    yield line, read_row(row, settings, now)
                except ValidationError as exc:
                    if strict:
                        raise ConvertWebhooksError(f"line {line} changed since checked") from exc
                    yield line, field_messages(exc.messages)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ConvertWebhooksError(
                f"{path}: not a readable UTF-8 CSV file near line {reader.line_num}"
            ) from exc


def _exposures_customer(args: argparse.Namespace, settings: Settings) -> Any:
    if args.email and not (args.source or args.customer):
        key, plain = settings.privacy.email_key, email_digest(args.email)
        if key is None or plain is None:
            raise ConvertWebhooksError("--email needs privacy.email_key and an address")
        return customer_filter(email_digest=keyed_digest(key, plain))
    if args.source and args.customer and not args.email:
        return customer_filter(source=args.source, customer_id=args.customer.strip())
    raise ConvertWebhooksError("give --source and --customer, or --email")


def _exposures_list(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    try:
        rows = read_exposures(runtime.engine, _exposures_customer(args, runtime.settings))
    finally:
        runtime.close()
    _print_table(
        [("exposed", 20, "<"), ("pair", 30, "<"), ("source", 12, "<"), ("customer", 30, "<")]
        + [("email", 5, "<"), ("visitor", 0, "<")],
        (
            (_iso(r.exposed_at), f"{r.experiment_id}-{r.variation_id}", r.source or "-")
            + (r.customer_id or "-", "yes" if r.email_digest else "-", r.visitor_id or "-")
            for r in rows
        ),
    )
    return 0


def _exposures_forget(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    try:
        forgotten = forget_exposures(runtime.engine, _exposures_customer(args, runtime.settings))
    finally:
        runtime.close()
    print(f"forgot {forgotten} exposure(s)")
    return 0


# --- report: per source and UTC day, what became of the orders -------------------------------

_SINCE_AGO = re.compile(r"([0-9]{1,6})([dhm])", re.ASCII)
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60}
MAX_SINCE_CHARS = 40


def since_time(text: str, now: float) -> float:
    """Unix seconds for --since: `7d`, `24h`, `90m` before `now`, or an ISO date or time
    (UTC unless it names an offset). ValueError otherwise."""
    if len(text) > MAX_SINCE_CHARS:
        raise ValueError("too long")
    ago = _SINCE_AGO.fullmatch(text)
    if ago:
        return now - int(ago[1]) * _UNIT_SECONDS[ago[2]]
    when = datetime.fromisoformat(text)  # ASCII digits only; ValueError for anything else
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _since(text: str) -> float:
    try:
        return since_time(text, time.time())
    except ValueError:
        # The value is not echoed: the message stays one safe line whatever was typed.
        raise argparse.ArgumentTypeError(
            "must be a duration (7d, 24h, 90m) or an ISO date or time (2027-01-15, "
            "2027-01-15T08:00:00+01:00)"
        ) from None


def _report(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    try:
        report = build_report(runtime.engine, args.since, DayOf(args.by), args.source)
    finally:
        runtime.close()
    {"table": _report_table, "json": _report_json, "csv": _report_csv}[args.format](report)
    return 0


ALL_SOURCES = "all sources"


def _report_lines(report: Report) -> list[tuple[str, str, Tally]]:
    """(source, day, counts): each source's days, then its total; then the total of all."""
    lines: list[tuple[str, str, Tally]] = []
    by_source = report.by_source()
    for source, tally in by_source.items():
        lines += [(s, day, t) for (s, day), t in report.days.items() if s == source]
        lines.append((source, "total", tally))
    if len(by_source) > 1:
        lines.append((ALL_SOURCES, "total", report.total()))
    return lines


def _report_table(report: Report) -> None:
    lines = _report_lines(report)
    _print_table(
        [("day", 10, "<"), ("source", 20, "<"), ("received", 8, ">"), ("paid", 8, ">")]
        + [("attributed", 10, ">"), ("sent", 8, ">"), ("dry run", 7, ">")]
        + [("pending", 7, ">"), ("skipped", 7, ">"), ("dead", 6, ">")]
        + [("revenue sent", 60, "<"), ("attributed where", 60, "<"), ("skipped why", 0, "<")],
        (
            (day, source, t.received, t.paid, t.attributed_total, t.sent, t.dry_run)
            + (t.pending, t.skipped_total, t.dead, _revenue_text(t.revenue) or "-")
            + (_counts_text(t.attributed) or "-", _counts_text(t.skipped) or "-")
            for source, day, t in lines
        ),
    )
    if not lines:
        print(f"no orders {_since_text(report)}")


def _since_text(report: Report) -> str:
    verb = "received" if report.day_of is DayOf.RECEIVED else "placed"
    return f"{verb} since {_iso(report.since)}"


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()) if count)


def _revenue_text(revenue: dict[str, Decimal]) -> str:
    return ", ".join(f"{_amount_text(amount)} {code}" for code, amount in sorted(revenue.items()))


def _amount_text(amount: Decimal) -> str:
    return format(amount, "f")  # never exponent notation


def _tally_json(t: Tally) -> dict[str, Any]:
    return {
        "received": t.received,
        "paid": t.paid,
        "attributed": t.attributed_total,
        "attributed_by_place": {place: t.attributed[place] for place in PLACES},
        "sent": t.sent,
        "dry_run": t.dry_run,
        "pending": t.pending,
        "skipped": t.skipped_total,
        "skipped_by_reason": dict(sorted(t.skipped.items())),
        "dead": t.dead,
        "revenue_sent": {code: _amount_text(a) for code, a in sorted(t.revenue.items())},
    }


def _report_json(report: Report) -> None:
    document = {
        "since": _iso(report.since),
        "day_of": str(report.day_of),
        "days": [
            {"source": source, "day": day, **_tally_json(tally)}
            for (source, day), tally in report.days.items()
        ],
        "sources": {source: _tally_json(t) for source, t in report.by_source().items()},
        "total": _tally_json(report.total()),
    }
    print(_json(document))


def _report_csv(report: Report) -> None:
    """One row per source and day, then total rows (day "total"): a column per skip reason and
    per currency found. Every cell is escaped and made safe to open in a spreadsheet."""
    lines = _report_lines(report)
    reasons = sorted({reason for _, _, t in lines for reason in t.skipped})
    currencies = sorted({code for _, _, t in lines for code in t.revenue})
    header = ["day", "source", "received", "paid", "attributed"]
    header += [f"attributed_{place}" for place in PLACES]
    header += ["sent", "dry_run", "pending", "skipped"]
    header += [f"skipped_{reason}" for reason in reasons] + ["dead"]
    header += [f"revenue_sent_{code}" for code in currencies]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([_csv_cell(title) for title in header])
    for source, day, t in lines:
        row: list[object] = [day, source, t.received, t.paid, t.attributed_total]
        row += [t.attributed[place] for place in PLACES]
        row += [t.sent, t.dry_run, t.pending, t.skipped_total]
        row += [t.skipped[reason] for reason in reasons] + [t.dead]
        row += [_amount_text(t.revenue.get(code, Decimal(0))) for code in currencies]
        writer.writerow([_csv_cell(value) for value in row])


_FORMULA_START = ("=", "+", "-", "@")


def _csv_cell(value: object) -> str:
    """Escaped for the terminal; a text starting like a formula gets a leading apostrophe, so
    a spreadsheet shows it instead of evaluating it (counts and amounts never start so)."""
    text = escape(str(value))
    return f"'{text}" if text.startswith(_FORMULA_START) else text


# --- send-test: a signed sample through a running instance, and what came of it -------------

MAX_WAIT_SECONDS = 300.0
STILL_PENDING = 3  # the exit code when the dispatcher has not finished within --wait


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0 <= value <= MAX_WAIT_SECONDS:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_WAIT_SECONDS:g} seconds")
    return value


def _send_test(args: argparse.Namespace) -> int:
    """0: every event led to a Convert request (sent, or logged in a dry run); 1: refused or
    not sent (skipped, dead, no event); 2: usage or config; 3: still pending after --wait."""
    settings = _settings(args)
    source = settings.sources.get(args.source)
    if source is None:
        known = ", ".join(sorted(settings.sources)) or "none"
        raise ConvertWebhooksError(f"no source '{args.source}' in the config (sources: {known})")
    url = check_url(args.url) if args.url else default_url(source.name, os.environ.get(BIND_ENV))
    sample = source_sample(source, time.time())
    print(
        escape(
            f"posting the {source.platform} sample ({sample.fixture}, experiment pairs "
            f"{SAMPLE_PAIRS}) to {url}, signed with sources.{source.name}.secrets[0]"
        )
    )
    try:
        answer = post(url, sample)
        print(f"answer: {answer.status} {_answer_text(answer)}")
        problem = refusal(source.name, url, answer)
        if problem is not None:
            raise SendTestFailed(problem)
    except SendTestFailed as exc:
        print(escape(f"error: {exc}"), file=sys.stderr)
        return 1
    named = answer.events()
    if not named:
        reason = (answer.json() or {}).get("reason") or "no reason given"
        print(escape(f"no event stored: {reason}"))
        return 1
    engine = make_engine(settings.database_url, settings.busy_timeout_ms)
    try:
        details = wait_for_events(engine, [n.id for n in named], args.wait)
    except (SQLAlchemyError, StorageError) as exc:
        print(
            f"error: the service stored it, but this config's database (database.url) cannot "
            f"be read ({type(exc).__name__}): is it the service's? Look there with "
            f"`convert-webhooks events show {named[0].id}`",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()
    return max(_show_event(source.name, n, details[n.id], args.wait) for n in named)


def _answer_text(answer: Answer) -> str:
    found = answer.json()
    if found is not None:
        return json.dumps(found, ensure_ascii=True)  # one line, every control escaped
    text = answer.body.decode("utf-8", "replace")
    return escape(text[:300] + ("..." if len(text) > 300 else "")) or "(empty)"


def _show_event(source: str, named: NamedEvent, detail: dict[str, Any] | None, wait: float) -> int:
    if detail is None:
        print(
            f"event {named.id}: not in this config's database (database.url): the service "
            f"uses another one; look there with `convert-webhooks events show {named.id}`"
        )
        return 1
    event = detail["event"]
    if event["source"] != source or named.order_id not in (None, event["order_id"]):
        print(
            f"event {named.id} in this config's database is another order: the service uses "
            "another database than this config's database.url"
        )
        return 1
    if named.duplicate:
        print("the sample order was counted before (an earlier send-test); as stored then:")
    state, code = event["state"], event["reason_code"]
    head = f"event {named.id} ({event['kind']}, order {event['order_id']}, "
    head += f"{event['amount']} {event['currency']}): {state}"
    if code and state not in (EventState.SENT, EventState.DRY_RUN):
        head += f" ({code}: {event['reason']})"
    print(escape(head))
    if event["attributed_from"]:
        print(escape(f"  experiment data from {event['attributed_from']}"))
    for send in detail["sends"]:
        _show_send(send)
    if state == EventState.PENDING:
        print(
            f"  still pending after {wait:g} s: the dispatcher has not finished it; look "
            f"with `convert-webhooks events show {named.id}`"
        )
        return STILL_PENDING
    if not detail["sends"]:
        print("  no Convert request")
    return 0 if state in (EventState.SENT, EventState.DRY_RUN) else 1


def _show_send(send: dict[str, Any]) -> None:
    said = f", HTTP {send['last_status']}" if send["last_status"] is not None else ""
    if send["last_error"] and send["last_error"] != said.removeprefix(", "):
        said += f", {send['last_error']}"
    if send["state"] == "dry_run":
        said += " (dry run: logged, not sent)"
    head = f"  Convert request ({send['format']}, pair {send['pair']}): {send['state']}{said}"
    print(escape(head))
    shown = _shown_payload(send["format"], send["payload"])
    text = shown if isinstance(shown, str) else _json(shown)
    for line in text.splitlines():
        print(f"    {escape(line)}")


def _shown_payload(hit_format: object, payload: str) -> Any:
    """A JSON request body (the v1 format) as the document it is; a URL as it is."""
    if hit_format != HitFormat.V1_JSON:
        return payload
    try:
        return json.loads(payload)
    except ValueError:  # not what the format stores: shown as stored
        return payload


def _prune_summary(counts: PruneCounts, days: float, before: float, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    lines = [
        f"{verb} {counts.deliveries} deliveries, {counts.events} events, {counts.sends} "
        f"Convert requests and {counts.attempts} attempts received before {_iso(before)} "
        f"({days:g} days)"
    ]
    if counts.kept:
        lines.append(
            f"kept {counts.kept} older deliveries whose events are pending, dead or changed "
            "since: act on dead ones with `replay --dead`"
        )
    return "\n".join(lines)


def _json(value: Any) -> str:
    """JSON for the terminal: ensure_ascii (the default) writes every control character, DEL
    and non-ASCII character as a \\u escape, so no stored value reaches the terminal raw."""
    return json.dumps(value, indent=2, default=str, ensure_ascii=True)


def _print_table(columns: Sequence[tuple[str, int, str]], rows: Iterable[Sequence[object]]) -> None:
    """Columns of (title, widest, alignment): each is as wide as its widest escaped value up
    to `widest` (longer values are cut, marked with '~'); the last column is not cut."""
    cells = [[escape(str(value)) for value in row] for row in rows]
    titles = [title for title, _, _ in columns]
    widths = [
        max([_width(title)] + [min(_width(row[i]), widest) for row in cells])
        for i, (title, widest, _) in enumerate(columns[:-1])
    ]
    for row in [titles, *cells]:
        parts = [
            _fit(value, width, align)
            for value, width, (_, _, align) in zip(row, widths, columns, strict=False)
        ]
        print("  ".join([*parts, row[-1]]).rstrip())


def _fit(text: str, width: int, align: str) -> str:
    if _width(text) > width:
        while _width(text) > width - 1:
            text = text[:-1]
        text += "~"
    pad = " " * (width - _width(text))
    return pad + text if align == ">" else text + pad


def _width(text: str) -> int:
    """Terminal columns: wide (East Asian) characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _readable(detail: dict[str, Any]) -> dict[str, Any]:
    """Unix times as ISO strings; attributes as an object."""

    def fix(row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in row.items():
            if key.endswith(("_at", "_until", "_start")) or key == "at":
                out[key] = _iso(value)
            elif key == "attributes" and isinstance(value, str):
                out[key] = json.loads(value)
            elif key == "payload" and isinstance(value, str):
                out[key] = _shown_payload(row.get("format"), value)
            else:
                out[key] = value
        return out

    return {
        "event": fix(detail["event"]),
        "delivery": detail["delivery"],
        "sends": [fix(s) for s in detail["sends"]],
        "attempts": [fix(a) for a in detail["attempts"]],
    }


if __name__ == "__main__":
    sys.exit(main())
