"""gunicorn settings. The dispatcher (and the pruner, when scheduled) start in every worker after
fork (a thread created before the fork would not survive it); claims are atomic and leased, so
workers never double-send, and two pruners at once are harmless (webhooks/storage/retention.py)."""

import os

bind = os.environ.get("CONVERT_WEBHOOKS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("CONVERT_WEBHOOKS_WORKERS", "2"))
worker_class = "sync"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-" if os.environ.get("CONVERT_WEBHOOKS_ACCESS_LOG") else None
errorlog = "-"


def on_starting(server):  # type: ignore[no-untyped-def]
    import sys

    from webhooks.core.errors import ConfigError
    from webhooks.wiring.startup import announce

    try:
        announce(bind)
    except ConfigError as exc:
        # The operator needs the bad keys, not a traceback through gunicorn's arbiter.
        print(f"convert-webhooks: {exc}", file=sys.stderr)
        sys.exit(2)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    from webhooks.web.app import runtime_of

    runtime_of(worker.wsgi).start_background()


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    from webhooks.web.app import runtime_of

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        # Long enough for a send in flight at its full timeouts (3.05 + 10 s) to finish and be
        # recorded, inside graceful_timeout: what was sent is not sent again after a restart.
        runtime_of(app).stop_background(timeout=15)
