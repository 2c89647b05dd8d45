"""Fault-injection soak: the figures behind RELIABILITY.md.

Posts signed Shopify orders/paid webhooks to the real service under gunicorn, every order
twice (the second time under another event id, as a platform's second topic or a replay from
its dashboard would), while a killer SIGKILLs the whole process group or SIGTERMs it at random
moments and starts it again. Senders behave like a platform: a request that got no 2xx is sent
again until it does. At the end it waits until nothing is pending, then counts, per order, the
requests the Convert stand-in received:

    lost        acknowledged orders that never reached Convert        (must be 0)
    duplicated  orders that reached Convert more than once             (bounded by in-flight)

    .venv/bin/python -m bench.chaos --orders 2000 --delay 0.05
    .venv/bin/python -m bench.chaos --database postgresql://root@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import make_url

from bench import servers
from bench.servers import GUNICORN, ROOT, free_port
from bench.standin import StandIn
from bench.webhook import SOURCE, ShopifyWebhooks, order_id_of

WORKERS = 2
SEND_CONCURRENCY = 8  # the dispatcher's sends per worker: the in-flight bound per kill


@dataclass
class Figures:
    orders: int = 0
    posts: int = 0
    retried_posts: int = 0
    sigkills: int = 0
    sigterms: int = 0
    acknowledged: int = 0
    never_acknowledged: int = 0  # a sender thread that died: a bug in this script
    reached_convert: int = 0
    convert_requests: int = 0
    lost: int = 0
    duplicated: int = 0
    extra_requests: int = 0
    in_flight_bound: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    lost_orders: list[int] = field(default_factory=list)
    unsent_states: list[str] = field(default_factory=list)


def write_config(path: Path, database_url: str, endpoint: str) -> None:
    servers.write_config(
        path,
        database_url,
        endpoint,
        convert_extra="connect_timeout_seconds = 0.5\nread_timeout_seconds = 2.0",
        database_extra="busy_timeout_ms = 2000",
        # The shortest lease the config accepts for these timeouts: a killed round's events
        # come back quickly, which is when a double send would show.
        dispatcher_extra="lease_seconds = 23\npoll_seconds = 0.2\nretry_base_seconds = 1",
    )


class Service:
    """The service under gunicorn, in its own process group so a kill takes every worker."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.env = {
            **os.environ,
            "CONVERT_WEBHOOKS_CONFIG": str(config),
            "CONVERT_WEBHOOKS_BIND": f"127.0.0.1:{self.port}",
            "CONVERT_WEBHOOKS_WORKERS": str(WORKERS),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [GUNICORN, "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {self.log}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def post(webhooks: ShopifyWebhooks, port: int, order_id: int, event_id: str) -> int:
    body = webhooks.body(order_id)
    headers = webhooks.headers(order_id, body) | {"X-Shopify-Event-Id": event_id}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/webhooks/{SOURCE}", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0  # refused, reset or cut while the service restarts: the platform sends again
    finally:
        conn.close()


def sender(
    webhooks: ShopifyWebhooks,
    service: Service,
    orders: list[int],
    figures: Figures,
    lock: threading.Lock,
    acknowledged: set[int],
) -> None:
    for order_id in orders:
        for event_id in (f"paid-{order_id}", f"replay-{order_id}"):
            tries = 0
            while True:
                status = post(webhooks, service.port, order_id, event_id)
                tries += 1
                with lock:
                    figures.posts += 1
                    figures.statuses[str(status)] = figures.statuses.get(str(status), 0) + 1
                if 200 <= status < 300:
                    break
                time.sleep(0.05 * min(tries, 20))
            with lock:
                figures.retried_posts += tries - 1
        with lock:
            acknowledged.add(order_id)


def killer(
    service: Service,
    stop: threading.Event,
    rng: random.Random,
    figures: Figures,
    sigkill_share: float,
) -> None:
    while not stop.wait(rng.uniform(1.0, 2.5)):
        print(
            f"posts {figures.posts}, kills {figures.sigkills}, terms {figures.sigterms}, "
            f"statuses {figures.statuses}",
            file=sys.stderr,
            flush=True,
        )
        if rng.random() < sigkill_share:
            service.signal(signal.SIGKILL)
            figures.sigkills += 1
        else:
            service.signal(signal.SIGTERM)
            figures.sigterms += 1
        service.start()


def pending(database_url: str) -> int:
    engine = create_engine(_driver(database_url))
    try:
        with engine.connect() as conn:
            count = conn.execute(
                text("SELECT count(*) FROM events WHERE state = 'pending'")
            ).scalar()
            return int(count or 0)
    finally:
        engine.dispose()


def unsent_states(database_url: str, orders: list[int]) -> list[str]:
    """What the database says of the orders that never reached Convert."""
    if not orders:
        return []
    engine = create_engine(_driver(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT e.order_id, e.state, e.reason_code, e.reason, "
                    "(SELECT count(*) FROM deliveries d WHERE d.delivery_key LIKE "
                    "'%' || e.order_id || '%') FROM events e WHERE e.order_id IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": [str(o) for o in orders]},
            ).all()
            return [" | ".join(map(str, row)) for row in rows]
    finally:
        engine.dispose()


def _driver(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def settle(database_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = pending(database_url)
        if left == 0:
            return
        print(f"settling: {left} events pending", file=sys.stderr, flush=True)
        time.sleep(1.0)
    raise RuntimeError(f"events still pending after {timeout} s")


def count(figures: Figures, paths: list[bytes], acknowledged: set[int]) -> None:
    per_order = Counter(o for o in map(order_id_of, paths) if o is not None)
    figures.convert_requests = len(paths)
    figures.acknowledged = len(acknowledged)
    figures.never_acknowledged = figures.orders - len(acknowledged)
    figures.reached_convert = len(set(per_order) & acknowledged)
    figures.lost_orders = sorted(acknowledged - set(per_order))[:20]
    figures.lost = len(acknowledged - set(per_order))
    figures.duplicated = sum(1 for n in per_order.values() if n > 1)
    figures.extra_requests = sum(n - 1 for n in per_order.values() if n > 1)
    figures.in_flight_bound = (figures.sigkills + figures.sigterms) * WORKERS * SEND_CONCURRENCY


def run(
    orders: int,
    delay: float,
    database_url: str | None,
    seed: int,
    folder: Path,
    sigkill_share: float = 0.6,
) -> Figures:
    rng = random.Random(seed)
    url = database_url or f"sqlite:///{folder / 'chaos.db'}"
    figures = Figures(orders=orders)
    standin = StandIn(delay=delay).start()
    config = folder / "chaos.toml"
    write_config(config, url, standin.base_url)
    service = Service(config, folder / "gunicorn.log")
    service.start()
    started = time.monotonic()
    lock, stop = threading.Lock(), threading.Event()
    acknowledged: set[int] = set()
    webhooks = ShopifyWebhooks("127.0.0.1", service.port)
    ids = list(range(10_000_001, 10_000_001 + orders))
    senders = [
        threading.Thread(
            target=sender, args=(webhooks, service, ids[i::8], figures, lock, acknowledged)
        )
        for i in range(8)
    ]
    kill_thread = threading.Thread(
        target=killer, args=(service, stop, rng, figures, sigkill_share)
    )
    try:
        for thread in [*senders, kill_thread]:
            thread.start()
        for thread in senders:
            thread.join()
        stop.set()
        kill_thread.join()
        settle(url, timeout=180)
        figures.seconds = round(time.monotonic() - started, 1)
        count(figures, standin.collect().paths, acknowledged)
        figures.unsent_states = unsent_states(url, figures.lost_orders)
    finally:
        stop.set()
        service.signal(signal.SIGTERM)
        standin.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.05, help="Convert's answer time, s")
    parser.add_argument("--database", help="a PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sigkill-share", type=float, default=0.6, help="share of SIGKILLs (the rest: SIGTERM)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cw-chaos-") as tmp:
        database, schema = args.database, None
        if database and database.startswith("postgresql"):
            schema = f"chaos_{int(time.time())}"
            database = _fresh_schema(database, schema)
        try:
            figures = run(
                args.orders, args.delay, database, args.seed, Path(tmp), args.sigkill_share
            )
        finally:
            if schema:
                _drop_schema(args.database, schema)
    print(json.dumps(asdict(figures), indent=2))
    return 0 if figures.lost == 0 and figures.extra_requests <= figures.in_flight_bound else 1


def _drop_schema(url: str, schema: str) -> None:
    engine = create_engine(_driver(url))
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def _fresh_schema(url: str, schema: str) -> str:
    """A new schema in the given PostgreSQL database, so every run starts empty."""
    engine = create_engine(_driver(url))
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


if __name__ == "__main__":
    raise SystemExit(main())
