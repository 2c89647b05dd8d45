"""gunicorn settings. The dispatcher starts in every worker after fork (a thread created before
the fork would not survive it); claims are atomic and leased, so workers never double-send."""

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
    from webhooks.startup import announce

    announce(bind)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    from webhooks.app import runtime_of

    runtime = runtime_of(worker.wsgi)
    if runtime.settings.dispatcher.enabled:
        runtime.dispatcher.start()


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    from webhooks.app import runtime_of

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        runtime_of(app).dispatcher.stop(timeout=5)
