"""gunicorn settings. The dispatcher (and the pruner, when scheduled) start in every worker after
fork (a thread created before the fork would not survive it); claims are atomic and leased, so
workers never double-send, and two pruners at once are harmless (webhooks/storage/retention.py)."""

import os
import re
import tempfile

from gunicorn.glogging import Logger

bind = os.environ.get("CONVERT_WEBHOOKS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("CONVERT_WEBHOOKS_WORKERS", "2"))
# Threads, so the requests of one worker wait for a durable commit together: the group commit
# (webhooks/storage/group_commit.py) stores every delivery waiting in one transaction, one
# fsync for many requests. A sync worker holds one request, so each would commit alone.
# Slow clients hold a thread, not the worker; nginx in front still reads bodies in full.
worker_class = "gthread"
threads = int(os.environ.get("CONVERT_WEBHOOKS_THREADS", "16"))
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-" if os.environ.get("CONVERT_WEBHOOKS_ACCESS_LOG") else None
errorlog = "-"

# Metrics: every worker writes its counters to files in this directory (prometheus-client's
# multiprocess mode), which a scrape sums. It must be in the environment before a worker
# imports prometheus-client, so it is set here. Default: one directory per user and bind
# address, so two instances on one host never share (and never clean) each other's.
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_default_metrics_dir = not os.environ.get(METRICS_ENV)
if _default_metrics_dir:
    _where = re.sub(r"[^A-Za-z0-9.-]", "_", bind)[:64]
    os.environ[METRICS_ENV] = os.path.join(
        tempfile.gettempdir(), f"convert-webhooks-metrics-{os.getuid()}-{_where}"
    )


class ServiceLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing in the service's format (JSON lines or escaped text) from
    its first line on; the app factory applies the configured format in each worker."""

    def setup(self, cfg):  # type: ignore[no-untyped-def]
        super().setup(cfg)
        from webhooks.core.logs import configure_logging

        configure_logging()


logger_class = ServiceLogger


def on_starting(server):  # type: ignore[no-untyped-def]
    import sys

    from webhooks.core.errors import ConfigError
    from webhooks.wiring.metrics import prepare_directory
    from webhooks.wiring.startup import announce

    try:
        # Files left by an earlier run would be summed into this one's counters.
        prepare_directory(os.environ[METRICS_ENV])
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


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """In the master, after any worker ended (stopped, crashed or killed by the timeout): its
    live gauges (dispatcher_up) leave the scrape; its counters stay in the sums."""
    from webhooks.wiring.metrics import forget_process

    forget_process(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    from webhooks.wiring.metrics import clean_directory

    path = os.environ[METRICS_ENV]
    try:
        clean_directory(path)
        if _default_metrics_dir:
            os.rmdir(path)
    except OSError:
        pass  # cleaned at the next start anyway
