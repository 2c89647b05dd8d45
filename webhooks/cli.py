"""The `convert-webhooks` command: check-config, events, deliveries, replay, dispatch, migrate."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from webhooks.app import build_runtime
from webhooks.clock import SystemClock
from webhooks.config import Settings, load_settings
from webhooks.database import migrate
from webhooks.errors import ConvertWebhooksError
from webhooks.logs import configure_logging
from webhooks.records import event_detail, list_deliveries, list_events
from webhooks.replay import replay_delivery, resend_events
from webhooks.runtime import Runtime


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConvertWebhooksError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert-webhooks", description=__doc__)
    parser.add_argument("--config", help="TOML config (default: $CONVERT_WEBHOOKS_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate the config and name each bad key")
    check.set_defaults(handler=_check_config)

    ev = sub.add_parser("events", help="list events, or `events show ID`")
    ev.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    ev.add_argument("event_id", nargs="?", type=int)
    ev.add_argument("--state", choices=["pending", "sent", "dry_run", "skipped", "dead"])
    ev.add_argument("--source")
    ev.add_argument("--order", help="only this order / payment id (and its refunds)")
    ev.add_argument("--limit", type=int, default=50)
    ev.set_defaults(handler=_events)

    dl = sub.add_parser("deliveries", help="list received deliveries")
    dl.add_argument("--status", choices=["accepted", "duplicate", "ignored", "rejected"])
    dl.add_argument("--limit", type=int, default=50)
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
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _runtime(args: argparse.Namespace) -> Runtime:
    configure_logging()
    runtime = build_runtime(_settings(args), SystemClock())
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
    return 0


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
        print(json.dumps(_readable(detail), indent=2, default=str))
        return 0
    rows = list_events(runtime.engine, args.state, args.source, args.limit, args.order)
    print(
        f"{'id':>6}  {'state':8} {'kind':21} {'source':12} {'order':28} {'amount':>12} "
        f"{'tries':>5}  reason"
    )
    for r in rows:
        print(
            f"{r.id:>6}  {r.state:8} {r.kind:21} {r.source[:12]:12} {r.order_id:28} "
            f"{r.amount + ' ' + r.currency:>12} {r.attempts:>5}  {r.reason or ''}"
        )
    return 0


def _deliveries(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    for r in list_deliveries(runtime.engine, args.status, args.limit):
        print(
            f"{r.id:>6}  {_iso(r.received_at)}  {r.status:9} {r.source[:12]:12} "
            f"{r.topic[:40]:40} {r.reason or ''}"
        )
    return 0


def _replay(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    now = time.time()
    if args.delivery is not None:
        outcome = replay_delivery(runtime.engine, runtime.settings, args.delivery, now)
        print(json.dumps(outcome.as_json(), indent=2, default=str))
    else:
        chosen = resend_events(runtime.engine, None if args.dead else args.event, now)
        print(f"queued {len(chosen)} event(s): {', '.join(map(str, chosen)) or '-'}")
    if not args.no_send:
        handled = runtime.dispatcher.drain()
        print(f"dispatched {handled} event(s)")
    runtime.close()
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
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
